"""Offline always: entry points set the offline environment, and nothing reaches the network."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from ropelab.offline import HUB_OFFLINE, TELEMETRY_OFF
from tests import conftest

CLEAN_ENV = {k: v for k, v in os.environ.items() if k not in {**HUB_OFFLINE, **TELEMETRY_OFF}}


def run_python(code: str, env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout,
                          env=env or CLEAN_ENV, cwd="/")


def test_console_entry_point_enforces_offline_settings_and_importing_does_not():
    code = ("import os, json, contextlib, io, ropelab.flows.cli as cli\nbefore = dict(os.environ)\n"
            "with contextlib.redirect_stdout(io.StringIO()): cli.main(['rope', 'methods'])\n"
            "print(json.dumps([before, dict(os.environ)]))")
    done = run_python(code)
    before, after = __import__("json").loads(done.stdout)
    for key, value in {**HUB_OFFLINE, **TELEMETRY_OFF}.items():
        assert before.get(key) is None and after.get(key) == value, key


def test_hub_name_fails_fast_instead_of_waiting_on_the_network():
    code = ("import ropelab\nfrom transformers import AutoConfig\n"
            "try:\n    AutoConfig.from_pretrained('meta-llama/Llama-2-7b-hf')\nexcept OSError as e:\n    print('OFFLINE', e)")
    start = time.monotonic()
    done = run_python(code)
    assert "OFFLINE" in done.stdout, done.stdout + done.stderr
    assert time.monotonic() - start < 60  # online lookups on this machine wait 50 s and more


def test_network_guard_blocks_and_records_outside_connections():
    before = len(conftest.NETWORK_ATTEMPTS)
    with pytest.raises(OSError, match="offline"):
        socket.create_connection(("192.0.2.10", 80), timeout=1)  # TEST-NET-1: never a real host
    assert len(conftest.NETWORK_ATTEMPTS) == before + 1
    del conftest.NETWORK_ATTEMPTS[before:]  # the self-test's own attempt is not a leak


def test_network_guard_lets_loopback_through():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    with socket.create_connection(server.getsockname(), timeout=5):
        pass
    server.close()
