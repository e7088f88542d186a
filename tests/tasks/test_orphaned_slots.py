"""A process killed inside a device task leaves its slot taken in the home's database, and the temporary Prefect
server that granted it dies with its lease: the next process on the home gives the slot back (saying so) instead
of waiting forever, and never while a live ropelab process may hold it."""

from __future__ import annotations

import fcntl
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCRIPT = '''
import sys, time
from pathlib import Path
from ropelab.tasks.home import configure_environment
configure_environment(Path(sys.argv[1]))
from prefect import flow
from ropelab.tasks.devices import device_task, run_in_slot

@device_task(name="slot-holder")
def hold(seconds: float, marker: str) -> str:
    Path(marker).write_text("inside")
    time.sleep(seconds)
    return "done"

@flow(name="slot-test")
def work(seconds: float, marker: str) -> str:
    print("flow started", flush=True)
    return run_in_slot(hold, lambda t: t(seconds, marker, return_state=True)).result()

print(work(float(sys.argv[2]), sys.argv[3]), flush=True)
'''


def start(home: Path, seconds: float, marker: Path) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PREFECT_", "MLFLOW_")) and k != "ROPELAB_HOME"}
    return subprocess.Popen([sys.executable, str(home / "holder.py"), str(home), str(seconds), str(marker)],
                            cwd=home, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def active_slots(home: Path) -> int:
    with sqlite3.connect(home / ".prefect" / "prefect.db") as db:
        return db.execute("select active_slots from concurrency_limit_v2").fetchone()[0]


def orphan_a_slot(home: Path) -> None:
    """A fresh project home where a process was SIGKILLed inside its device task."""
    from ropelab.tasks.home import init_home

    init_home(home)
    (home / "holder.py").write_text(SCRIPT)
    marker = home / "inside"
    killed = start(home, 600, marker)
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert killed.poll() is None and time.monotonic() < deadline, killed.stdout.read()[-2000:]
        time.sleep(0.2)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    assert active_slots(home) == 1  # the orphan: nobody will ever release it


def test_a_killed_holders_slot_is_given_back_by_the_next_process_but_never_while_one_may_be_alive(tmp_path):
    orphan_a_slot(tmp_path)

    # a live ropelab process on the home (its lock held): the slot may be its own, so the next one waits
    lock = os.open(tmp_path / ".prefect" / "device-slots.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_SH)
    waiting = start(tmp_path, 0, tmp_path / "second")
    with pytest.raises(subprocess.TimeoutExpired):
        waiting.communicate(timeout=60)
    os.killpg(waiting.pid, signal.SIGKILL)
    output = waiting.communicate()[0]
    assert "flow started" in output and "released" not in output, output[-2000:]
    assert active_slots(tmp_path) == 1 and not (tmp_path / "second").exists()
    os.close(lock)

    # nobody alive on the home: the orphan is given back, with a line saying so, and the work runs
    after = start(tmp_path, 0, tmp_path / "third")
    output = after.communicate(timeout=300)[0]
    assert after.returncode == 0 and output.strip().endswith("done"), output[-2000:]
    assert "released 1 slot(s) of tag:ropelab-device-cpu held by a process that is gone" in output
    assert active_slots(tmp_path) == 0


def test_ropelab_server_gives_orphaned_slots_back_when_it_starts(tmp_path):
    from tests.ops.conftest import free_port

    orphan_a_slot(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    server = subprocess.Popen([str(Path(sys.executable).parent / "ropelab"), "server", "--port", str(free_port()),
                               "--home", str(tmp_path)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        lines = []
        deadline = time.monotonic() + 240
        while not any("Ctrl-C stops it" in line for line in lines):
            assert server.poll() is None and time.monotonic() < deadline, "".join(lines)[-2000:]
            lines.append(server.stdout.readline())
        assert active_slots(tmp_path) == 0
        assert any("released 1 slot(s) of tag:ropelab-device-cpu held by a process that is gone" in line
                   for line in lines), "".join(lines)[-2000:]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
