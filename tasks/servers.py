"""Local servers of a project home: the Prefect server (runs, deployments, schedules, concurrency slots) and the
MLflow UI, each a child process of ``ropelab server`` / ``ropelab ui`` with its state in the home (SQLite).

Both bind 127.0.0.1 unless told otherwise (neither UI has authentication). ``ropelab server`` writes
``.prefect/server.json`` while it is up, so every other ropelab command on this home talks to it (``connect``)
instead of starting a temporary API of its own on the same database.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

from ropelab.errors import RopelabError
from ropelab.tasks.home import Paths

STARTUP_SECONDS = 180  # a cold Prefect server takes ~15 s on 2 cores, more under load
STOP_SECONDS = 20
TRAINING_VIEW = "workflowType=machine_learning"


@dataclass(frozen=True)
class Service:
    """One server: how to start it, where it answers when ready, what it exposes."""

    name: str
    command: list[str]
    env: dict[str, str]
    health: str
    url: str
    log: Path
    landing: str = ""  # the page to open first (default: url)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def exposure_warning(host: str, what: str) -> str | None:
    if is_loopback(host):
        return None
    return (f"warning: {what} will listen on {host}, reachable from other machines, and has no authentication: "
            "anyone who can reach this port can read and change this project's runs")


def check_port_free(host: str, port: int) -> None:
    """One clear line instead of a server that dies in its log: is ``host:port`` free to bind?"""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise RopelabError(f"cannot listen on {host}:{port}: {exc.strerror or exc} (another server? pass "
                               "--port N)") from None


def prefect_service(paths: Paths, host: str, port: int) -> Service:
    url = f"http://{url_host(host)}:{port}"
    env = {"PREFECT_HOME": str(paths.prefect_home), "PREFECT_UI_API_URL": f"{url}/api",
           "PREFECT_SERVER_API_HOST": host, "PREFECT_SERVER_API_PORT": str(port)}
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", host, "--port", str(port)]
    return Service("Prefect server", command, env, f"{url}/api/health", url, paths.prefect_home / "server.log")


def mlflow_service(paths: Paths, host: str, port: int) -> Service:
    url = f"http://{url_host(host)}:{port}"
    command = [sys.executable, "-m", "mlflow", "ui", "--host", host, "--port", str(port),
               "--backend-store-uri", paths.tracking_uri, "--workers", "1"]
    if not is_loopback(host):  # the UI refuses other Host headers unless told
        command += ["--allowed-hosts", "*"]
    # MLflow 3's UI opens in its GenAI (traces) view; this parameter opens the runs tables of model training
    return Service("MLflow UI", command, {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}, f"{url}/health", url,
                   paths.mlflow_db.parent / "ui.log", f"{url}/#/?{TRAINING_VIEW}")


def url_host(host: str) -> str:
    """Where a browser on this machine reaches a server bound to ``host``."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else f"[{host}]" if ":" in host else host


def start(service: Service, cancelled: Callable[[], bool] = lambda: False) -> subprocess.Popen:
    """Start the server in its own process group (so stopping it stops its workers) and wait until it answers
    (or ``cancelled()``: a stop requested while it starts)."""
    service.log.parent.mkdir(parents=True, exist_ok=True)
    with service.log.open("ab") as log:
        child = subprocess.Popen(service.command, env=os.environ | service.env, stdout=log, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise RopelabError(f"the {service.name} exited at start (code {child.returncode}): {last_line(service.log)}"
                               f" — full log in {service.log}")
        if cancelled() or answers(service.health):
            return child
        time.sleep(0.5)
    stop(child)
    raise RopelabError(f"the {service.name} did not answer within {STARTUP_SECONDS} s; its log: {service.log}")


def answers(url: str, timeout: float = 2.0) -> bool:
    try:
        return httpx.get(url, timeout=timeout).status_code == 200
    except httpx.HTTPError:
        return False


def last_line(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip()[:300] if lines else "(no output)"


def stop(child: subprocess.Popen) -> None:
    """SIGTERM the server's process group, wait, then SIGKILL whatever is left."""
    if child.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGTERM)
    try:
        child.wait(STOP_SECONDS)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()


def run_until_signal(service: Service, on_ready: Callable[[], None] = lambda: None,
                     on_exit: Callable[[], None] = lambda: None) -> int:
    """Start, announce, then block until SIGINT/SIGTERM (or the server dies); always stop the whole group."""
    stopping = []

    def request_stop(signum, _frame):
        stopping.append(signum)

    # handlers first: a client may see the server answer (and send SIGTERM) before our own poll of it does
    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    child = None
    try:
        child = start(service, cancelled=lambda: bool(stopping))
        on_ready()
        while not stopping and child.poll() is None:
            time.sleep(0.2)
    finally:
        if child is not None:
            stop(child)
        on_exit()
        for s, handler in previous.items():
            signal.signal(s, handler)
    if not stopping:
        raise RopelabError(f"the {service.name} stopped unexpectedly: {last_line(service.log)} (log: {service.log})")
    return 0


# ------------------------------------------------------------------ discovery of this home's Prefect server

def server_file(paths: Paths) -> Path:
    return paths.prefect_home / "server.json"


def announce(paths: Paths, url: str, pid: int) -> None:
    server_file(paths).write_text(json.dumps({"api": f"{url}/api", "ui": url, "pid": pid}))


def withdraw(paths: Paths) -> None:
    server_file(paths).unlink(missing_ok=True)


def running_server(paths: Paths) -> dict | None:
    """The server ``ropelab server`` runs for this home, if it is up and answering."""
    try:
        found = json.loads(server_file(paths).read_text())
    except (OSError, ValueError):
        return None
    return found if answers(f"{found.get('api', '')}/health") else None


def connect(paths: Paths) -> str | None:
    """Point this process's Prefect client at the home's server (unless PREFECT_API_URL is set); its API URL."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    found = running_server(paths)
    if found is None:
        return None
    os.environ["PREFECT_API_URL"] = found["api"]
    os.environ.setdefault("PREFECT_UI_URL", found["ui"])
    return found["api"]


def require_server(paths: Paths, command: str) -> str:
    api = connect(paths)
    if api is None:
        raise RopelabError(f"`ropelab {command}` needs a Prefect server for this project and none is running: start "
                           "one with `ropelab server` (or set PREFECT_API_URL)")
    if not answers(f"{api.rstrip('/')}/health"):
        raise RopelabError(f"the Prefect server at {api} is not reachable: start it with `ropelab server`, or fix "
                           "PREFECT_API_URL")
    return api
