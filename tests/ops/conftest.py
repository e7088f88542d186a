"""Real servers for the operations tests: `ropelab server` / `ropelab ui` started as a user starts them, in the
session's project home, on free loopback ports; stopped with SIGTERM, and checked to leave nothing behind."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from ropelab.tasks.home import paths

ROPELAB = str(Path(sys.executable).parent / "ropelab")
ARTIFACTS = Path(os.environ.get("ROPELAB_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "build" /
                 "test-artifacts"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def client_env(**extra: str) -> dict[str, str]:
    """The environment a user's shell has in the session home: no Prefect API chosen by hand."""
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PREFECT_UI_URL")}
    return env | {"ROPELAB_HOME": str(paths().home)} | extra


def wait_for(check, timeout: float, what: str, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


class Server:
    """A `ropelab server|ui` child process and every process it started (captured while it runs)."""

    def __init__(self, command: str, port: int, health: str):
        self.port, self.url = port, f"http://127.0.0.1:{port}"
        self.process = subprocess.Popen([ROPELAB, command, "--port", str(port)], env=client_env(),
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: self.process.poll() is not None or answers(self.url + health), 240, f"{command} to answer")
        assert self.process.poll() is None, self.process.stderr.read()
        self.tree = [psutil.Process(self.process.pid), *psutil.Process(self.process.pid).children(recursive=True)]

    def listening(self) -> set[tuple[str, int]]:
        found = set()
        for proc in self.tree:
            try:
                found |= {(c.laddr.ip, c.laddr.port) for c in proc.net_connections(kind="inet")
                          if c.status == psutil.CONN_LISTEN}
            except psutil.NoSuchProcess:
                pass
        return found

    def stop(self) -> tuple[int, str]:
        self.process.send_signal(signal.SIGTERM)
        out, _ = self.process.communicate(timeout=60)
        return self.process.returncode, out

    def leftovers(self) -> list[psutil.Process]:
        gone, alive = psutil.wait_procs(self.tree, timeout=10)
        return alive


@pytest.fixture(scope="session")
def prefect_server():
    server = Server("server", free_port(), "/api/health")
    wait_for(lambda: (paths().prefect_home / "server.json").exists(), 30, "server.json")
    yield server
    code, _ = server.stop()
    assert code == 0 and not server.leftovers(), "the Prefect server left processes behind"
    assert not (paths().prefect_home / "server.json").exists()


@pytest.fixture
def prefect_api(prefect_server, monkeypatch):
    """This test process talks to the session's server too (as every ropelab command on the home does)."""
    api = json.loads((paths().prefect_home / "server.json").read_text())["api"]
    monkeypatch.setenv("PREFECT_API_URL", api)
    return api
