"""MLflow records: the only module that imports mlflow.

Runs are created and written through an explicit ``MlflowClient`` with explicit run ids, never the
thread-local active-run stack (Prefect runs tasks in worker threads, where ``start_run(nested=True)`` would
create unlinked runs). Only the stage runner (``runner.py``) opens and ends runs.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import re
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

import yaml
from filelock import FileLock
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param
from mlflow.tracking import MlflowClient
from mlflow.utils.time import get_current_time_millis

import ropelab
from ropelab.artifacts import Record
from ropelab.config import RunConfig, flatten, to_dict
from ropelab.tasks.home import paths

MAX_PARAM = 500  # MLflow's param value limit is larger, but long lists belong in artifacts
BATCH = 900  # MLflow's log_batch takes at most 1000 metrics


def client() -> MlflowClient:
    uri = paths().tracking_uri
    if uri not in _READY_STORES:
        create_store(uri)
    return MlflowClient(tracking_uri=uri)


_READY_STORES: set[str] = set()


def create_store(uri: str) -> None:
    """Create the store's tables once, under a lock: two processes opening a fresh SQLite store at the same
    moment both run MLflow's migrations and the second dies with `table ... already exists`."""
    lock = paths().mlflow_db.parent / ".create.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock), timeout=300):
        MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    _READY_STORES.add(uri)


EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}  # the UI's runs table, not GenAI traces


def experiment_id(name: str) -> str:
    c = client()
    found = c.get_experiment_by_name(name)
    if found is None:
        return c.create_experiment(name, artifact_location=paths().mlflow_artifacts.as_uri(), tags=EXPERIMENT_KIND)
    if found.tags.get("mlflow.experimentKind") is None:  # made by an older ropelab
        c.set_experiment_tag(found.experiment_id, *next(iter(EXPERIMENT_KIND.items())))
    return found.experiment_id


def git_commit(home: Path) -> str:
    """The project's commit (the home's git repository), '-dirty' when tracked files changed."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=home, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=home,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except OSError:
        return "unknown"
    return (sha or "none") + ("-dirty" if sha and dirty else "")


def flow_run_id() -> str:
    from prefect.runtime import flow_run

    return str(flow_run.id or "none")


# the deployment and schedule a run was started by (set by a deployment's entry flow; empty for CLI runs)
_DEPLOYMENT: contextvars.ContextVar[tuple[tuple[str, str], ...]] = contextvars.ContextVar(
    "ropelab_deployment", default=(("ropelab.started_by", "cli"),))


@contextlib.contextmanager
def deployment_context(name: str, schedule: str):
    """Every run opened inside carries the deployment's name and schedule ("manual" for `ropelab trigger`)."""
    token = _DEPLOYMENT.set((("prefect.deployment", name), ("prefect.schedule", schedule),
                             ("ropelab.started_by", "trigger" if schedule == "manual" else "schedule")))
    try:
        yield
    finally:
        _DEPLOYMENT.reset(token)


def top_level_name(stage: str, config: RunConfig) -> str:
    """Readable and distinct in the runs list: what ran, on which preset, when (a stage inside a pipeline is
    named by its stage alone, under its parent)."""
    return f"{stage}-{config.preset}-{time.strftime('%m%d-%H%M%S')}"


def lineage_tags(stage: str, config: RunConfig, code_version: str, parent_run_id: str | None,
                 data_version: str | None, consumed: Mapping[str, str]) -> dict[str, str]:
    tags = {"ropelab.stage": stage, "ropelab.preset": config.preset, "prefect.flow_run_id": flow_run_id(),
            "ropelab.version": ropelab.__version__, "ropelab.code_version": code_version,
            "git.commit": git_commit(paths().home), "data.version": data_version or "none",
            "mlflow.runName": stage if parent_run_id else top_level_name(stage, config)}
    tags |= {"ropelab.host": socket.gethostname(), "ropelab.pid": str(os.getpid())} | dict(_DEPLOYMENT.get())
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    tags |= {f"ropelab.consumed.{name}": run_id for name, run_id in consumed.items() if run_id}
    return tags


def create_run(config: RunConfig, tags: dict[str, str]) -> str:
    """A run with the lineage tags, the resolved config as params and as config.yaml; returns its id."""
    run_id = client().create_run(experiment_id(config.experiment), tags=tags, run_name=tags["mlflow.runName"]).info.run_id
    params = [Param(k, str(v)[:MAX_PARAM]) for k, v in flatten(to_dict(config)).items()]
    for i in range(0, len(params), 100):
        client().log_batch(run_id, params=params[i:i + 100])
    log_text(run_id, yaml.safe_dump(to_dict(config), sort_keys=False), "config.yaml")
    return run_id


def end_status(error: BaseException | None) -> str:
    """FINISHED; KILLED for Ctrl-C, SIGTERM or an exit (the work was stopped, not wrong); else FAILED."""
    if error is None:
        return "FINISHED"
    return "KILLED" if isinstance(error, (KeyboardInterrupt, SystemExit, GeneratorExit)) else "FAILED"


def end_run(run_id: str, error: BaseException | None = None) -> None:
    if error is not None:
        text = f"{type(error).__name__}: {error}".splitlines() or [type(error).__name__]
        set_tags(run_id, {"ropelab.error": text[0][:500]})
    client().set_terminated(run_id, end_status(error))


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def close_abandoned_runs(experiment: str) -> list[str]:
    """Mark KILLED the runs this machine's processes left RUNNING when they died (SIGKILL, power loss): a run
    whose recorded process no longer exists. Returns their ids. A live process's runs are never touched."""
    found = client().get_experiment_by_name(experiment)
    if found is None:
        return []
    host = socket.gethostname()
    running = client().search_runs([found.experiment_id], "attributes.status = 'RUNNING'", max_results=5000)
    dead = [r for r in running if r.data.tags.get("ropelab.host") == host
            and r.data.tags.get("ropelab.pid", "").isdigit() and not process_alive(int(r.data.tags["ropelab.pid"]))]
    for run in dead:
        set_tags(run.info.run_id, {"ropelab.error": f"process {run.data.tags['ropelab.pid']} ended without closing "
                                                    "this run (killed); closed by a later run"})
        client().set_terminated(run.info.run_id, "KILLED")
    return [r.info.run_id for r in dead]


def recent_pipelines(limit: int = 10) -> list[dict]:
    """The newest pipeline runs of every experiment: state, preset, headline and duration (``ropelab runs``)."""
    experiments = [e.experiment_id for e in client().search_experiments()]
    runs = client().search_runs(experiments, "tags.`ropelab.stage` = 'pipeline'",
                                order_by=["attributes.start_time DESC"], max_results=limit) if experiments else []
    names = {e.experiment_id: e.name for e in client().search_experiments()}
    return [{"started": r.info.start_time / 1000, "experiment": names.get(r.info.experiment_id, "?"),
             "preset": r.data.tags.get("ropelab.preset", "?"), "status": r.info.status,
             "ratio": r.data.metrics.get("headline/final_length_ppl_over_base_at_L"),
             "change": r.data.metrics.get("headline/change_at_L"),
             "minutes": ((r.info.end_time or r.info.start_time) - r.info.start_time) / 60000,
             "error": r.data.tags.get("ropelab.error", ""), "run_id": r.info.run_id} for r in runs]


def child_runs(parent_run_id: str) -> list:
    parent = client().get_run(parent_run_id)
    return client().search_runs([parent.info.experiment_id],
                                filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'",
                                order_by=["attributes.start_time ASC"], max_results=1000)


def stage_durations(parent_run_id: str) -> list[tuple[str, float]]:
    """(run name, seconds) of the parent's finished child runs, in the order they started."""
    return [(r.info.run_name, (r.info.end_time - r.info.start_time) / 1000) for r in child_runs(parent_run_id)
            if r.info.end_time]


def metric_name(name: str) -> str:
    """MLflow accepts alphanumerics, _ - . space : / in metric names; anything else becomes _."""
    return re.sub(r"[^A-Za-z0-9_\-. :/]", "_", name)


def log_metrics(run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
    now = get_current_time_millis()
    log_points(run_id, [Metric(metric_name(k), float(v), now, step) for k, v in metrics.items()])


def log_points(run_id: str, points: list) -> None:
    for i in range(0, len(points), BATCH):
        client().log_batch(run_id, metrics=points[i:i + BATCH])


def log_record(run_id: str, record: Record) -> None:
    """Everything a stage's result says about itself: metrics, series (with steps), tags, files."""
    log_metrics(run_id, record.metrics)
    now = get_current_time_millis()
    log_points(run_id, [Metric(metric_name(s.name), float(v), now, int(step)) for s in record.series
                        for step, v in s.points])
    set_tags(run_id, record.tags)
    for path, folder in record.files:
        log_artifact(run_id, path, folder or None)
    for name, digest, source in record.datasets:
        log_dataset(run_id, name, digest, source, "training")


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


def log_dataset(run_id: str, name: str, digest: str, source: str, context: str) -> None:
    """The data version as an MLflow dataset input (shown under 'Datasets' in the UI)."""
    dataset = Dataset(name=name, digest=digest, source_type="dvc", source=source)
    client().log_inputs(run_id, datasets=[DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context)])])
