"""`ropelab clex`: train CLEX on the base model, next to a PI fine-tune on the same tokens, and compare."""

from __future__ import annotations

from prefect import flow

from ropelab import recipe
from ropelab.artifacts import DataArtifact, EvalArtifact, ModelArtifact
from ropelab.config import RunConfig
from ropelab.eval.report import clex_caption, comparison_markdown
from ropelab.flows.base import upstream
from ropelab.flows.evaluate import evaluate_stage
from ropelab.flows.finetune import finetune_flow
from ropelab.tasks import runner
from ropelab.tasks.clex import train_clex_model


def clex_stage(cfg: RunConfig, parent_run_id: str | None, model: ModelArtifact, data: DataArtifact,
               refresh: bool = False) -> ModelArtifact:
    with runner.stage("clex", cfg, parent_run_id=parent_run_id, data_version=data.fingerprint,
                      consumed={"model": model, "data": data}, refresh=refresh) as stage:
        return stage.record(stage.call(train_clex_model, model, data, cfg.clex))


def pi_name(cfg: RunConfig) -> str:
    return f"pi-{cfg.clex.compare_pi_scale:g}x fine-tuned"


def evaluate_native(cfg: RunConfig, parent_run_id: str | None, models: dict[str, ModelArtifact],
                    data: DataArtifact, original_length: int, refresh: bool = False) -> dict[str, EvalArtifact]:
    """Zoo with only the model's own RoPE on each named model, at multiples of the base model's L."""
    view = recipe.native_eval(cfg, original_length)
    return {name: evaluate_stage(f"evaluate-{name.split()[0]}", view, parent_run_id, model, data, refresh,
                                 title=name) for name, model in models.items()}


@flow(name="clex", flow_run_name="clex-{cfg.preset}")
def clex_flow(cfg: RunConfig, parent_run_id: str | None = None, model: ModelArtifact | None = None,
              data: DataArtifact | None = None, refresh: bool = False) -> dict[str, EvalArtifact]:
    """Train CLEX and the PI comparison, evaluate both with their own RoPE; returns the reports by row name."""
    model, data = upstream(cfg, parent_run_id, model, data)
    models = {"clex": clex_stage(cfg, parent_run_id, model, data, refresh)}
    if cfg.clex.compare_pi_scale:
        models[pi_name(cfg)] = finetune_flow(recipe.pi_comparison(cfg), parent_run_id, model, data, refresh)
    reports = evaluate_native(cfg, parent_run_id, models, data, models["clex"].original_length, refresh)
    print(comparison_markdown({k: r.table["native"] for k, r in reports.items()}, cfg, clex_caption(cfg)))
    return reports
