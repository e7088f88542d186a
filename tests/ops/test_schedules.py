"""A served interval schedule creates and completes a smoke pipeline against a real Prefect server; its MLflow
runs carry the deployment's name and schedule, exactly as a CLI run carries its own lineage."""

from __future__ import annotations

import subprocess

import httpx
import pytest

from ropelab.tasks import tracking
from tests.ops.conftest import ROPELAB, client_env, wait_for

pytestmark = pytest.mark.slow


def finished_pipeline(experiment: str):
    found = tracking.client().get_experiment_by_name(experiment)
    if found is None:
        return None
    runs = tracking.client().search_runs([found.experiment_id], "tags.`ropelab.stage` = 'pipeline' and "
                                         "attributes.status = 'FINISHED'")
    return runs[0] if runs else None


def test_an_interval_schedule_runs_a_smoke_pipeline_with_deployment_lineage(prefect_server, prefect_api, tmp_path):
    config = tmp_path / "schedules.yaml"
    config.write_text("schedules:\n  - {name: smoke-every-15s, flow: pipeline, config: smoke, interval: 15,\n"
                      "     overrides: [experiment=scheduled-smoke]}\n")
    served = subprocess.Popen([ROPELAB, "serve", "--config", str(config)], env=client_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        run = wait_for(lambda: served.poll() is None and finished_pipeline("scheduled-smoke"), 900,
                       "a scheduled smoke pipeline to finish", every=5)
        # the MLflow run closes inside the pipeline subflow, a moment before the deployment's own flow run
        # completes: keep `serve` up until Prefect records that (terminating it earlier would crash the run)
        pipeline = httpx.get(f"{prefect_api}/flow_runs/{run.data.tags['prefect.flow_run_id']}").json()
        caller = httpx.get(f"{prefect_api}/task_runs/{pipeline['parent_task_run_id']}").json()
        scheduled = wait_for(lambda: completed_flow_run(prefect_api, caller["flow_run_id"]), 120,
                             "the scheduled flow run to complete", every=2)
    finally:
        served.terminate()
        out, _ = served.communicate(timeout=120)
    assert run, out[-3000:]
    tags = run.data.tags
    assert tags["prefect.deployment"] == "smoke-every-15s" and tags["prefect.schedule"] == "every 15 s"
    assert tags["ropelab.started_by"] == "schedule" and tags["ropelab.preset"] == "smoke"
    stages = tracking.child_runs(run.info.run_id)
    assert {"data", "base", "evaluate-base", "evaluate-finetuned"} <= {r.info.run_name for r in stages}
    assert all(r.data.tags["prefect.deployment"] == "smoke-every-15s" for r in stages)
    # the Prefect side: the deployment has its schedule; its completed flow run holds the pipeline subflow
    deployment = httpx.get(f"{prefect_api}/deployments/name/ropelab/smoke-every-15s").json()
    assert deployment["schedules"][0]["schedule"]["interval"] == 15
    assert scheduled["deployment_id"] == deployment["id"]


def completed_flow_run(api: str, flow_run_id: str):
    found = httpx.get(f"{api}/flow_runs/{flow_run_id}").json()
    state = found["state"]["type"]
    assert state not in {"FAILED", "CRASHED", "CANCELLED"}, f"the scheduled flow run ended {state}"
    return found if state == "COMPLETED" else None
