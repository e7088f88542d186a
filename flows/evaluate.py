"""`ropelab evaluate`: the method-zoo report for the base model (or a user's model)."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from ropelab import identity
from ropelab.artifacts import DataArtifact, EvalArtifact, ModelArtifact, RulerArtifact
from ropelab.config import RunConfig
from ropelab.errors import RopelabError
from ropelab.flows.base import upstream
from ropelab.rope.factors_io import recorded_factor
from ropelab.tasks import runner
from ropelab.tasks.evaluate import evaluate_zoo
from ropelab.tasks.ruler import evaluate_ruler


def lambda_files(paths) -> tuple[tuple[Path, str], ...]:
    """λ files with their content identities (the cache key sees an edited file)."""
    missing = [str(p) for p in paths if not Path(p).is_file()]
    if missing:
        raise RopelabError(f"eval.rescale_factor_files: no such file {', '.join(missing)}")
    for p in paths:  # a λ file without its factor is refused before any stage, never guessed
        recorded_factor(p)
    return tuple((Path(p), identity.sha256_file(Path(p))[:16]) for p in paths)


def evaluate_stage(name: str, cfg: RunConfig, parent_run_id: str | None, model: ModelArtifact, data: DataArtifact,
                   refresh: bool = False, settings: dict | None = None, title: str = "") -> EvalArtifact:
    """One zoo report on ``model`` as its own stage run."""
    with runner.stage(name, cfg, parent_run_id=parent_run_id, data_version=data.fingerprint,
                      consumed={"model": model, "data": data}, refresh=refresh) as stage:
        return stage.record(stage.call(evaluate_zoo, model, data, cfg.eval,
                                       lambda_files(cfg.eval.rescale_factor_files), settings, title))


@flow(name="evaluate", flow_run_name="evaluate-{cfg.preset}")
def evaluate_flow(cfg: RunConfig, parent_run_id: str | None = None, model: ModelArtifact | None = None,
                  data: DataArtifact | None = None) -> EvalArtifact:
    model, data = upstream(cfg, parent_run_id, model, data)
    report = evaluate_stage("evaluate", cfg, parent_run_id, model, data)
    print((report.path / "zoo.md").read_text())
    print(f"report: {report.path}")
    return report


def ruler_stage(name: str, cfg: RunConfig, parent_run_id: str | None, model: ModelArtifact, data: DataArtifact,
                refresh: bool = False, title: str = "") -> RulerArtifact:
    """RULER on ``model`` as its own stage run (table, plot and scores in MLflow)."""
    with runner.stage(name, cfg, parent_run_id=parent_run_id, data_version=data.fingerprint,
                      consumed={"model": model}, refresh=refresh) as stage:
        return stage.record(stage.call(evaluate_ruler, model, cfg.ruler, title))


@flow(name="evaluate-ruler", flow_run_name="evaluate-ruler-{cfg.preset}")
def ruler_flow(cfg: RunConfig, parent_run_id: str | None = None, model: ModelArtifact | None = None,
               data: DataArtifact | None = None) -> RulerArtifact:
    """`ropelab evaluate --suite ruler`: RULER on the base model (or the user's)."""
    model, data = upstream(cfg, parent_run_id, model, data)
    report = ruler_stage("ruler", cfg, parent_run_id, model, data)
    print((report.path / "ruler.md").read_text())
    print(f"report: {report.path}")
    return report
