"""A pipeline killed (SIGKILL, no cleanup) during the stage-2 search continues from its completed stages."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # two pipeline runs, each with its own 900 s bound


def pipeline_process(home: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "PREFECT_HOME", "ROPELAB_HOME")}
    return subprocess.Popen([sys.executable, "-m", "ropelab.flows.cli", "pipeline", "--config", "smoke",
                             "--home", str(home)], cwd=home, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def stage_two_started(art: Path) -> bool:
    """Both fine-tunes exported and a third search (stage 2, on the fine-tuned model) has saved a generation."""
    tuned = list((art / "finetune").glob("*/model/config.json")) if (art / "finetune").exists() else []
    searches = [d for d in (art / "search").iterdir()] if (art / "search").exists() else []
    return len(tuned) >= 2 and len(searches) >= 3 and any(
        not (d / "result").exists() and any(d.glob("state-*.json")) for d in searches)


def produced(art: Path) -> dict:
    return {str(p.relative_to(art)): p.stat().st_mtime_ns
            for pattern in ("models/*/model.safetensors", "finetune/*/model/model.safetensors",
                            "search/*/result/rescale_factors.json")
            for p in art.glob(pattern)}


def test_killed_during_stage_two_rerun_continues_from_completed_stages(tmp_path):
    from ropelab.tasks.home import init_home

    init_home(tmp_path)
    art = tmp_path / "artifacts"
    first = pipeline_process(tmp_path)
    deadline = time.monotonic() + 900
    while not stage_two_started(art):
        assert first.poll() is None, f"pipeline ended before stage 2:\n{first.stdout.read()[-3000:]}"
        assert time.monotonic() < deadline, "stage 2 never started"
        time.sleep(0.5)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    before = produced(art)
    assert len([k for k in before if k.startswith("finetune/")]) == 2 and any(k.startswith("models/") for k in before)

    second = pipeline_process(tmp_path)
    output, _ = second.communicate(timeout=900)
    assert second.returncode == 0, output[-3000:]
    after = produced(art)
    for name, mtime in before.items():  # base model, both fine-tunes, stage-1 searches: reused, not redone
        assert after[name] == mtime, f"{name} was recomputed"
    assert len(after) > len(before)  # stage 2 and recovery finished in the rerun
    assert list((art / "exports").glob("longrope-smoke-*/config.json"))
    # the killed process's MLflow runs were closed as KILLED by the rerun, never left RUNNING
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow/mlflow.db")
    experiment = client.get_experiment_by_name("ropelab-smoke")
    statuses = [r.info.status for r in client.search_runs([experiment.experiment_id], max_results=5000)]
    assert "RUNNING" not in statuses and "KILLED" in statuses
