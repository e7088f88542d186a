"""What the device slot costs a task on the home's SQLite-backed Prefect API, and so what a cache hit saves by
skipping it (the stage runner runs cached device calls without the slot).

Side by side in one run, on a fresh project home and its temporary Prefect server: N trivial task runs without
the slot tag, then N with it (one at a time, nothing else running), printing seconds per task run, the ratio,
and how often an acquisition met Prefect's client back-off (a 503 from 'database is locked') or a
slot reported still taken (423).

    .venv/bin/python bench/slot_cost.py [N]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ENV = {k: v for k, v in os.environ.items() if not k.startswith(("ROPELAB_", "PREFECT_", "MLFLOW_"))}
MEASURE = """
import sys, time
from pathlib import Path
from ropelab.tasks.home import configure_environment
configure_environment(Path(sys.argv[1]))
import prefect.client.base as base
import prefect.concurrency.services as services
backoffs, locked = [], []
def counting(logger, needle, into):
    real = logger.debug
    def debug(msg, *args, **kwargs):
        if needle in str(msg):
            into.append(msg)
        return real(msg, *args, **kwargs)
    logger.debug = debug
counting(base.logger, "retryable status code 503", backoffs)
counting(services.logger, "Unable to acquire concurrency slot", locked)
from prefect import flow, task
from ropelab.tasks.devices import device_task, run_in_slot

@task(name="plain")
def plain(i):
    return i

@device_task(name="slotted")
def slotted(i):
    return i

@flow
def measure(n: int):
    plain(-1)  # the server is up and the client warm before timing
    t = time.monotonic(); [plain(i) for i in range(n)]; free = (time.monotonic() - t) / n
    run_in_slot(slotted, lambda s: s(-1, return_state=True))
    before = len(backoffs), len(locked)
    t = time.monotonic(); [run_in_slot(slotted, lambda s, i=i: s(i, return_state=True)) for i in range(n)]
    held = (time.monotonic() - t) / n
    return free, held, len(backoffs) - before[0], len(locked) - before[1]

print(*measure(int(sys.argv[2])))
"""


def main(n: int = 20) -> None:
    bin_dir = Path(sys.executable).parent
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "project"
        subprocess.run([bin_dir / "ropelab", "init", str(home)], env=ENV, check=True, capture_output=True)
        out = subprocess.run([sys.executable, "-c", MEASURE, str(home), str(n)], env=ENV, cwd=home,
                             capture_output=True, text=True, check=True).stdout.split()
    free, held, waits, locked = float(out[-4]), float(out[-3]), int(out[-2]), int(out[-1])
    print(f"task runs, one at a time, on a fresh home's temporary Prefect server (SQLite), n = {n} each")
    print(f"  without the device slot: {free:.3f} s per task run")
    print(f"  with the device slot:    {held:.3f} s per task run   ({held / free:.1f}x)")
    print(f"  back-offs of the client (503, database is locked; 2 s, doubling): {waits} over {n} acquisitions")
    print(f"  waits on a slot reported taken (423, Retry-After): {locked} over {n} acquisitions")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20)
