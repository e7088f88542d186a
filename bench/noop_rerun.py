"""The fixed cost of a fully cached rerun: `ropelab pipeline --config smoke` a second time in a fresh project.

Prints, side by side in one run: the rerun's wall time; what a process pays before any stage (importing the
flows; the first Prefect flow call, which starts the temporary local API server; each later flow call); and
the stage runs' own time as MLflow recorded it. The remainder is Prefect/MLflow bookkeeping per stage.

    .venv/bin/python bench/noop_rerun.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BIN = Path(sys.executable).parent
ENV = {k: v for k, v in os.environ.items() if not k.startswith(("ROPELAB_", "PREFECT_", "MLFLOW_"))}
FLOW_COST = """
import time, sys
from pathlib import Path
from ropelab.tasks.home import configure_environment
configure_environment(Path(sys.argv[1]))
from prefect import flow
@flow
def empty():
    return 1
t = time.monotonic(); empty(); first = time.monotonic() - t
t = time.monotonic(); [empty() for _ in range(5)]; later = (time.monotonic() - t) / 5
print(first, later)
"""


def timed(cmd: list[str], cwd: Path) -> float:
    start = time.monotonic()
    subprocess.run(cmd, cwd=cwd, env=ENV, check=True, capture_output=True)
    return time.monotonic() - start


def stage_seconds(home: Path) -> tuple[float, int]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{home}/mlflow/mlflow.db")
    experiment = client.get_experiment_by_name("ropelab-smoke")
    parent = client.search_runs([experiment.experiment_id], "tags.`ropelab.stage` = 'pipeline'",
                                order_by=["attributes.start_time DESC"], max_results=1)[0]
    kids = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    return sum((k.info.end_time - k.info.start_time) / 1000 for k in kids), len(kids)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "project"
        subprocess.run([BIN / "ropelab", "init", str(home)], env=ENV, check=True, capture_output=True)
        cold = timed([BIN / "ropelab", "pipeline", "--config", "smoke"], home)
        rerun = timed([BIN / "ropelab", "pipeline", "--config", "smoke"], home)
        imports = timed([sys.executable, "-c", "import ropelab.flows.pipeline"], home)
        out = subprocess.run([sys.executable, "-c", FLOW_COST, str(home)], env=ENV, capture_output=True, text=True,
                             check=True).stdout.split()
        first_flow, later_flow = map(float, out[-2:])
        stages, count = stage_seconds(home)
    print("| what | seconds | share of the rerun |\n|---|---:|---:|")
    rows = [("first run (everything computed)", cold), ("cached rerun, wall", rerun),
            ("  importing the flows (torch, transformers, prefect, mlflow)", imports),
            ("  first flow call (starts Prefect's temporary API server)", first_flow),
            ("  one later flow call (each stage subflow pays it: data, base, searches, fine-tunes)", later_flow),
            (f"  the {count} stage runs' own time (MLflow start→end)", stages)]
    for name, seconds in rows:
        print(f"| {name} | {seconds:.1f} | {seconds / rerun:.2f} |")


if __name__ == "__main__":
    main()
