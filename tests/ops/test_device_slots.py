"""Two pipelines on one machine never do device work at the same time: the device tasks of two smoke pipelines
started together hold the machine's device slot one at a time (intervals read from Prefect's API). A device task
answered from the cache does no device work and runs without the slot (not tagged with it)."""

from __future__ import annotations

import datetime
import subprocess

import httpx
import pytest

from ropelab.tasks.devices import limit_name, slot_tag
from tests.ops.conftest import ROPELAB, client_env

pytestmark = pytest.mark.slow


def device_task_runs(api: str, since: datetime.datetime) -> list[dict]:
    runs = httpx.post(f"{api}/task_runs/filter", json={"task_runs": {
        "tags": {"all_": ["device", slot_tag()]}, "start_time": {"after_": since.isoformat()}}}).json()
    return [r for r in runs if r["start_time"] and r["end_time"]]


def test_two_pipelines_started_together_take_turns_on_the_device(prefect_server, prefect_api):
    since = datetime.datetime.now(datetime.UTC)
    runs = [subprocess.Popen([ROPELAB, "pipeline", "--config", "smoke", "--set", f"search.seed={seed}",
                              "--set", "experiment=device-slots"], env=client_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True) for seed in (101, 102)]
    outputs = [run.communicate(timeout=1500)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    tasks = sorted(device_task_runs(prefect_api, since), key=lambda r: r["start_time"])
    flows = {r["flow_run_id"] for r in tasks}
    assert len(tasks) >= 10 and len(flows) >= 4  # searches, fine-tunes, evaluations of both pipelines ran
    for earlier, later in zip(tasks, tasks[1:], strict=False):
        assert earlier["end_time"] <= later["start_time"], f"{earlier['name']} overlaps {later['name']}"
    limit = httpx.get(f"{prefect_api}/v2/concurrency_limits/{limit_name()}").json()
    assert limit["limit"] == 1 and limit["active_slots"] == 0
