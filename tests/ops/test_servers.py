"""`ropelab server` and `ropelab ui`: loopback by default, one line for a port in use or a missing server,
clean stop on SIGTERM (children included)."""

from __future__ import annotations

import signal
import socket
import subprocess

import psutil
import pytest

from tests.ops.conftest import ROPELAB, Server, client_env, free_port, wait_for


def run(*argv: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([ROPELAB, *argv], capture_output=True, text=True, timeout=120, env=client_env(**env))


def error_lines(done: subprocess.CompletedProcess) -> list[str]:
    return [line for line in done.stderr.strip().splitlines() if line.strip()]


def test_the_prefect_server_listens_on_loopback_only_and_announces_itself(prefect_server):
    listening = prefect_server.listening()
    assert ("127.0.0.1", prefect_server.port) in listening
    assert all(ip in ("127.0.0.1", "::1") for ip, _ in listening), listening


def test_the_mlflow_ui_serves_the_store_on_loopback_and_stops_with_its_children_on_sigterm():
    ui = Server("ui", free_port(), "/health")
    try:
        listening = ui.listening()
        assert ("127.0.0.1", ui.port) in listening and all(ip == "127.0.0.1" for ip, _ in listening), listening
        assert len(ui.tree) > 1  # mlflow ui runs a server process under ropelab: both must go
    finally:
        code, out = ui.stop()
    assert code == 0 and f"http://127.0.0.1:{ui.port}/#/?workflowType=machine_learning" in out  # the runs view
    assert not ui.leftovers()


def test_a_stop_requested_while_the_ui_starts_stops_it_cleanly_with_its_children():
    """SIGTERM before the server answers (a scheduler cancelling at once) must not leave an orphaned server."""
    process = subprocess.Popen([ROPELAB, "ui", "--port", str(free_port())], env=client_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    root = psutil.Process(process.pid)
    wait_for(lambda: process.poll() is not None or root.children(recursive=True), 60, "the ui to start its server")
    tree = [root, *root.children(recursive=True)]
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert not psutil.wait_procs(tree, timeout=10)[1]


@pytest.mark.parametrize("command", ["ui", "server"])
def test_a_port_in_use_is_one_line(command):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = run(command, "--port", str(port))
    assert done.returncode == 2
    assert error_lines(done) == [f"ropelab: error: cannot listen on 127.0.0.1:{port}: Address "
                                 "already in use (another server? pass --port N)"]


def test_binding_beyond_loopback_warns_about_the_exposure():
    with socket.socket() as taken:  # taken on every interface, so nothing actually starts on them
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        done = run("ui", "--host", "0.0.0.0", "--port", str(taken.getsockname()[1]))
    lines = error_lines(done)
    assert done.returncode == 2 and len(lines) == 2
    assert lines[0].startswith("ropelab: warning: the MLflow UI will listen on 0.0.0.0") and "no authentication" in lines[0]


def test_trigger_without_a_server_is_one_line(tmp_path):
    home = tmp_path / "lonely"
    assert run("init", str(home)).returncode == 0
    done = run("trigger", "nightly", ROPELAB_HOME=str(home))
    assert done.returncode == 2
    assert error_lines(done) == ["ropelab: error: `ropelab trigger` needs a Prefect server for this project and none "
                                 "is running: start one with `ropelab server` (or set PREFECT_API_URL)"]


def test_trigger_with_an_unreachable_server_url_is_one_line():
    done = run("trigger", "nightly", PREFECT_API_URL=f"http://127.0.0.1:{free_port()}/api")
    assert done.returncode == 2 and len(error_lines(done)) == 1
    assert "is not reachable" in done.stderr


def test_triggering_an_unknown_deployment_is_one_line(prefect_server):
    done = run("trigger", "no-such-deployment")
    assert done.returncode == 2 and len(error_lines(done)) == 1, done.stderr
    assert "no deployment named 'no-such-deployment'" in done.stderr


@pytest.mark.parametrize("entry, message", [
    ("{name: x, flow: pipe, interval: 60}", "schedules.flow: 'pipe' is not one of"),
    ("{name: x, cron: '61 * * * *'}", "not a valid cron line '61 * * * *': Bad minute"),
    ("{name: x}", "set exactly one of cron"),
    ("{name: x, cron: '0 3 * * *', interval: 60}", "set exactly one of cron"),
])
def test_bad_schedules_are_one_line_before_anything_starts(tmp_path, entry, message):
    config = tmp_path / "schedules.yaml"
    config.write_text(f"schedules:\n  - {entry}\n")
    done = run("serve", "--config", str(config))
    assert done.returncode == 2 and len(error_lines(done)) == 1 and message in done.stderr, done.stderr


def test_serve_without_schedules_says_how_to_add_them(prefect_server):
    done = run("serve", "--config", "smoke")
    assert done.returncode == 2 and "has no `schedules:` section" in done.stderr
