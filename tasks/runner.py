"""The stage runner: the one place that opens a stage's MLflow run, calls its tasks, records and ends it.

A stage's run gets its name, the resolved config as params, the lineage tags (Prefect flow run, package and
code version, git commit, data version, parent, the runs it consumed) and then exactly what its results'
``record()`` say — whether each task body ran or its result came from the cache, so the MLflow view of a
stage is the same either way. The run ends FINISHED, or FAILED with the one-line error as a tag (the parent
too, since the error propagates through its stage). ``ropelab.cache`` says hit, miss or partial.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ropelab import identity
from ropelab.artifacts import Artifact, ExportArtifact, ModelArtifact, SearchArtifact
from ropelab.config import RunConfig
from ropelab.tasks import devices, tracking
from ropelab.tasks.caching import code_version, has_cached_result, result_options
from ropelab.tasks.home import paths
from ropelab.tasks.progress import run_logger

SHOWN_METRICS = 6


@dataclass
class Stage:
    name: str
    run_id: str
    refresh: bool = False
    consumed: tuple[str, ...] = ()
    hits: list[bool] = field(default_factory=list)

    def call(self, task, *args, valid=None, refresh: bool | None = None, **kwargs):
        """Run ``task`` with this home's result storage (``refresh``: recompute, default this stage's). A cached
        result that is no longer valid (its files are gone: ``exists()``, or ``valid(result)`` is false) is
        recomputed."""
        state = self._submit(task, self.refresh if refresh is None else refresh, args, kwargs)
        result = state.result()
        hit = state.name == "Cached"
        if hit and not still_valid(result, valid):
            result, hit = self._submit(task, True, args, kwargs).result(), False
        self.hits.append(hit)
        return result

    def _submit(self, task, refresh: bool, args, kwargs):
        # refresh_cache=None defers to PREFECT_TASKS_REFRESH_CACHE, which `--refresh` sets
        options = task.with_options(refresh_cache=True if refresh else None, **result_options(paths().results))

        def run(t):
            return t(*args, return_state=True, **kwargs)

        if devices.needs_device(task) and not self._will_hit(task, refresh, args, kwargs):
            return devices.run_in_slot(options, run, run_logger().warning)
        return run(options)

    @staticmethod
    def _will_hit(task, refresh: bool, args, kwargs) -> bool:
        """A cache hit does no device work: it skips the device slot, whose acquisition on the SQLite store
        often costs Prefect's client a ~2 s back-off (a cached rerun of the pipeline is mostly such calls)."""
        from prefect.settings import PREFECT_TASKS_REFRESH_CACHE

        if refresh or PREFECT_TASKS_REFRESH_CACHE.value():
            return False
        return has_cached_result(task, args, kwargs, paths().results)

    def record(self, *items):
        """Log each item's record() on this stage's run; artifacts come back stamped with this run."""
        out = []
        for item in items:
            record = item.record()
            tracking.log_record(self.run_id, record)
            log_result(self.name, record)
            if isinstance(item, Artifact):
                item = item.recorded_by(self.run_id, self.consumed)
            out.append(item)
        return out[0] if len(out) == 1 else tuple(out)

    def durations(self) -> list[tuple[str, float]]:
        """(run name, seconds) of this stage's finished child runs (a pipeline's stages), in start order."""
        return tracking.stage_durations(self.run_id)

    def report_dir(self) -> Path:
        """Where this run's own report files go (its summary, plots) before they are logged."""
        return paths().artifacts / "reports" / self.run_id

    def cache_state(self) -> str:
        if not self.hits:
            return "none"
        return "hit" if all(self.hits) else "miss" if not any(self.hits) else "partial"


@functools.lru_cache(maxsize=1)
def same_threads() -> int:
    """Every run sets torch's thread pool the same way, once, before any stage computes: whether pretraining ran
    or came from the cache, later stages see the same intra-op threads and reduce sums in the same order, so
    a resumed run is bit-identical to an uninterrupted one. Returns the thread count."""
    import torch

    threads = max(1, torch.get_num_threads())
    torch.set_num_threads(threads)
    return threads


def log_result(stage_name: str, record) -> None:
    """A stage's headline numbers in the Prefect run's log (the Prefect UI's Logs tab)."""
    shown = ", ".join(f"{k} = {v:.4g}" for k, v in list(record.metrics.items())[:SHOWN_METRICS])
    more = len(record.metrics) - SHOWN_METRICS
    run_logger().info(f"{stage_name}: " + (shown or "recorded") + (f" (+{more} more in MLflow)" if more > 0 else ""))


def still_valid(result, valid=None) -> bool:
    if valid is not None:
        return bool(valid(result))
    exists = getattr(result, "exists", None)
    if callable(exists) and not exists():
        return False
    problem = content_problem(result)
    if problem:
        run_logger().warning(f"cached result not used: {problem}; recomputing it")
    return problem is None


@functools.lru_cache(maxsize=64)
def _model_fingerprint(path: Path, signature: str) -> str:
    """Hashed once per process and content state (``signature``: names, sizes, times of the files)."""
    return identity.model_fingerprint(path)


def content_problem(result) -> str | None:
    """What is wrong with a cached artifact's files, or None: a model or export whose weights or config no longer
    hash to its recorded fingerprint (truncated, corrupted, edited), or a search whose λ file changed."""
    if isinstance(result, (ModelArtifact, ExportArtifact)) and result.path.is_dir():
        found = _model_fingerprint(result.path, identity.stat_signature(result.path))
        if found != result.fingerprint:
            return f"{result.path} does not match its recorded sha256 fingerprint (truncated, corrupted or edited)"
    if isinstance(result, SearchArtifact) and result.lam.is_file():
        if identity.sha256_file(result.lam)[:16] != result.fingerprint:
            return f"{result.lam} does not match its recorded sha256 (edited or corrupted)"
    return None


@contextlib.contextmanager
def stage(name: str, config: RunConfig, *, parent_run_id: str | None = None, data_version: str | None = None,
          consumed: Mapping[str, Artifact] | None = None, refresh: bool = False) -> Iterator[Stage]:
    """Open the stage's MLflow run, yield the Stage to call tasks and record results through, end the run."""
    if parent_run_id is None:  # a top-level run: first close what killed runs on this home left RUNNING
        same_threads()
        tracking.close_abandoned_runs(config.experiment)
    runs = {k: a.run_id for k, a in (consumed or {}).items()}
    tags = tracking.lineage_tags(name, config, code_version(), parent_run_id, data_version, runs)
    current = Stage(name, tracking.create_run(config, tags), refresh, tuple(r for r in runs.values() if r))
    try:
        yield current
    except BaseException as exc:
        tracking.end_run(current.run_id, exc)
        raise
    tracking.set_tags(current.run_id, {"ropelab.cache": current.cache_state()})
    tracking.end_run(current.run_id)
    run_logger().info(f"stage {name} finished (cache: {current.cache_state()}); MLflow run {current.run_id}")
