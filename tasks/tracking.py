"""MLflow records: the only module that imports mlflow.

Runs are created and written through an explicit ``MlflowClient`` with explicit run ids, never the
thread-local active-run stack (Prefect runs tasks in worker threads, where ``start_run(nested=True)`` would
create unlinked runs). Every run carries the lineage contract: Prefect flow-run id, git commit, data version,
preset, full resolved config (params + YAML artifact), parent run, and the runs it consumed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import yaml
from mlflow.tracking import MlflowClient

import mlflow
from ropelab.config import RunConfig, flatten, to_dict
from tasks.settings import REPO_ROOT, paths

MAX_PARAM = 500  # MLflow's param value limit is larger, but long lists belong in artifacts


def client() -> MlflowClient:
    return MlflowClient(tracking_uri=os.environ["MLFLOW_TRACKING_URI"])


def experiment_id(name: str) -> str:
    c = client()
    found = c.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    location = paths().mlflow_artifacts.as_uri()
    return c.create_experiment(name, artifact_location=location)


def git_commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except OSError:
        return "unknown"
    return (sha or "unknown") + ("-dirty" if dirty else "")


def flow_run_id() -> str:
    from prefect.runtime import flow_run

    return str(flow_run.id or "none")


def start_run(stage: str, config: RunConfig, *, parent_run_id: str | None = None, data_version: str | None = None,
              consumed: Mapping[str, str] | None = None) -> str:
    """Create a run for one stage with the lineage tags, params and config artifact; return its id."""
    tags = {"ropelab.stage": stage, "ropelab.preset": config.preset, "prefect.flow_run_id": flow_run_id(),
            "git.commit": git_commit(), "data.version": data_version or "none",
            "mlflow.runName": stage}
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    for name, run_id in (consumed or {}).items():
        tags[f"ropelab.consumed.{name}"] = run_id
    run = client().create_run(experiment_id(config.experiment), tags=tags, run_name=stage)
    run_id = run.info.run_id
    params = {k: str(v)[:MAX_PARAM] for k, v in flatten(to_dict(config)).items()}
    client().log_batch(run_id, params=[mlflow.entities.Param(k, v) for k, v in params.items()])
    log_text(run_id, yaml.safe_dump(to_dict(config), sort_keys=False), "config.yaml")
    return run_id


def finish_run(run_id: str, ok: bool = True) -> None:
    client().set_terminated(run_id, "FINISHED" if ok else "FAILED")


@contextlib.contextmanager
def stage_run(stage: str, config: RunConfig, **kwargs) -> Iterator[str]:
    run_id = start_run(stage, config, **kwargs)
    try:
        yield run_id
    except BaseException:
        finish_run(run_id, ok=False)
        raise
    finish_run(run_id)


def stage_durations(parent_run_id: str) -> list[tuple[str, float]]:
    """(run name, seconds) of the parent's finished child runs, in the order they started."""
    parent = client().get_run(parent_run_id)
    children = client().search_runs([parent.info.experiment_id],
                                    filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
                                    order_by=["attributes.start_time ASC"], max_results=1000)
    return [(r.info.run_name, (r.info.end_time - r.info.start_time) / 1000) for r in children if r.info.end_time]


def metric_name(name: str) -> str:
    """MLflow accepts alphanumerics, _ - . space : / in metric names; anything else becomes _."""
    return re.sub(r"[^A-Za-z0-9_\-. :/]", "_", name)


def log_metrics(run_id: str, metrics: Mapping[str, float], step: int | None = None) -> None:
    entities = [mlflow.entities.Metric(metric_name(k), float(v), int(mlflow.utils.time.get_current_time_millis()), step or 0)
                for k, v in metrics.items()]
    client().log_batch(run_id, metrics=entities)


def set_tags(run_id: str, tags: Mapping[str, str]) -> None:
    for key, value in tags.items():
        client().set_tag(run_id, key, str(value))


def log_artifact(run_id: str, path: Path, artifact_path: str | None = None) -> None:
    if path.is_dir():
        client().log_artifacts(run_id, str(path), artifact_path)
    else:
        client().log_artifact(run_id, str(path), artifact_path)


def log_text(run_id: str, text: str, name: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / name
        target.write_text(text)
        client().log_artifact(run_id, str(target))


def log_json(run_id: str, data, name: str) -> None:
    log_text(run_id, json.dumps(data, indent=2), name)


def log_dataset(run_id: str, name: str, digest: str, source: str, context: str) -> None:
    """The data version as an MLflow dataset input (shown under 'Datasets' in the UI)."""
    dataset = mlflow.entities.Dataset(name=name, digest=digest, source_type="dvc", source=source)
    tag = mlflow.entities.InputTag("mlflow.data.context", context)
    client().log_inputs(run_id, datasets=[mlflow.entities.DatasetInput(dataset, tags=[tag])])
