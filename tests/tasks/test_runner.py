"""The stage runner: one MLflow run per stage, the same record on a hit as on a miss, FAILED with the error."""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect import flow, task

from ropelab import identity
from ropelab.artifacts import ModelArtifact, Series
from ropelab.config import load_config
from ropelab.errors import RopelabError
from ropelab.tasks import runner, tracking
from ropelab.tasks.caching import IDENTITY
from ropelab.tasks.devices import device_task, slot_tag

CALLS: list[str] = []


@task(name="test-make-model", cache_policy=IDENTITY)
def make_model(where: Path, value: int) -> ModelArtifact:
    CALLS.append(str(value))
    where.mkdir(parents=True, exist_ok=True)
    (where / "config.json").write_text(str(value))
    return ModelArtifact(where, identity.model_fingerprint(where), "dv", metrics={"quality": value / 10},
                         history=(Series("loss", ((0, 2.0), (1, 1.0))),))


@task(name="test-user-error", cache_policy=IDENTITY)
def user_error(value: int) -> None:
    raise RopelabError(f"value {value} is wrong")


@flow(name="test-stage")
def one_stage(cfg, where: Path, value: int, fail: bool = False):
    with runner.stage(f"stage-{value}", cfg) as stage:
        if fail:
            stage.call(user_error, value)
        return stage.record(stage.call(make_model, where, value))


def view(run_id: str):
    run = tracking.client().get_run(run_id)
    history = [(m.step, m.value) for m in tracking.client().get_metric_history(run_id, "loss")]
    return run.info.status, run.data.metrics, history, run.data.tags.get("ropelab.cache")


@pytest.mark.slow
def test_a_cache_hit_is_recorded_exactly_like_the_run_that_computed_it(tmp_path):
    cfg = load_config(None, ["experiment=runner-test"])
    CALLS.clear()
    first = one_stage(cfg, tmp_path / "m", 7)
    second = one_stage(cfg, tmp_path / "m", 7)
    assert CALLS == ["7"] and first.run_id != second.run_id and second.path == first.path
    (status1, metrics1, history1, cache1), (status2, metrics2, history2, cache2) = view(first.run_id), view(second.run_id)
    assert status1 == status2 == "FINISHED" and metrics1 == metrics2 == {"quality": 0.7, "loss": 1.0}
    assert history1 == history2 == [(0, 2.0), (1, 1.0)]
    assert (cache1, cache2) == ("miss", "hit")
    tags = tracking.client().get_run(second.run_id).data.tags
    assert tags["ropelab.stage"] == "stage-7" and tags["model.fingerprint"] == first.fingerprint and tags["ropelab.code_version"]


@pytest.mark.slow
def test_a_cached_result_whose_files_are_gone_is_recomputed(tmp_path):
    import shutil

    cfg = load_config(None, ["experiment=runner-test"])
    CALLS.clear()
    one_stage(cfg, tmp_path / "gone", 8)
    shutil.rmtree(tmp_path / "gone")
    again = one_stage(cfg, tmp_path / "gone", 8)
    assert CALLS == ["8", "8"] and (again.path / "config.json").exists()
    assert view(again.run_id)[3] == "miss"


@pytest.mark.slow
def test_a_failed_stage_is_marked_failed_with_the_one_line_error():
    cfg = load_config(None, ["experiment=runner-test"])
    with pytest.raises(RopelabError, match="value 9 is wrong"):
        one_stage(cfg, Path("/nonexistent"), 9, fail=True)
    client = tracking.client()
    experiment = client.get_experiment_by_name("runner-test")
    failed = client.search_runs([experiment.experiment_id], "tags.`ropelab.stage` = 'stage-9'")[0]
    assert failed.info.status == "FAILED" and failed.data.tags["ropelab.error"] == "RopelabError: value 9 is wrong"


def test_runs_left_running_by_a_dead_process_are_closed_as_killed_and_live_ones_are_not():
    import socket
    import subprocess

    client = tracking.client()
    experiment = tracking.experiment_id("reaper-test")
    ended = subprocess.Popen(["true"])
    ended.wait()
    tags = {"ropelab.host": socket.gethostname()}
    dead = client.create_run(experiment, tags={**tags, "ropelab.pid": str(ended.pid)}).info.run_id
    alive = client.create_run(experiment, tags={**tags, "ropelab.pid": str(__import__("os").getpid())}).info.run_id
    assert tracking.close_abandoned_runs("reaper-test") == [dead]
    assert client.get_run(dead).info.status == "KILLED" and "killed" in client.get_run(dead).data.tags["ropelab.error"]
    assert client.get_run(alive).info.status == "RUNNING"
    client.set_terminated(alive)


@device_task(name="test-device-model", cache_policy=IDENTITY)
def device_model(where: Path, value: int) -> ModelArtifact:
    return make_model.fn(where, value)


@flow(name="test-device-stage")
def device_stage(cfg, where: Path, value: int):
    with runner.stage(f"device-stage-{value}", cfg) as stage:
        return stage.record(stage.call(device_model, where, value)), list(stage.hits)


def device_task_runs(flow_state) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        return client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[
            flow_state.state_details.flow_run_id])))


@pytest.mark.slow
def test_a_device_task_holds_the_device_slot_when_it_computes_and_skips_it_on_a_cache_hit(tmp_path):
    cfg = load_config(None, ["experiment=runner-test"])
    CALLS.clear()
    states = [device_stage(cfg, tmp_path / "d", 11, return_state=True) for _ in range(2)]
    (first, first_hits), (second, second_hits) = (s.result() for s in states)
    assert CALLS == ["11"] and (first_hits, second_hits) == ([False], [True]) and second.path == first.path
    (computed,), (cached,) = (device_task_runs(s) for s in states)
    assert computed.state.name == "Completed" and slot_tag() in computed.tags
    assert cached.state.name == "Cached" and slot_tag() not in cached.tags and "device" in cached.tags
