"""Test-wide settings: offline environment before any heavy import, and a guard that fails the session if
anything tries to reach a non-loopback address (the proof that tests run offline)."""

from __future__ import annotations

import atexit
import ipaddress
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from ropelab import offline

REPO = Path(__file__).resolve().parents[1]
# A throwaway project home for the whole session: a clone of the repository's committed state (so a test can
# check that running a preset leaves `git status` clean), configured before anything imports prefect or mlflow,
# so tests never touch the developer's stores. Deleted when the session ends.
offline.enforce()
SESSION_TMP = Path(tempfile.mkdtemp(prefix="ropelab-test-"))
SESSION_HOME = SESSION_TMP / "home"
subprocess.run(["git", "clone", "--quiet", "--no-hardlinks", str(REPO), str(SESSION_HOME)], check=True)
atexit.register(shutil.rmtree, SESSION_TMP, ignore_errors=True)
os.environ.pop("PREFECT_API_URL", None)
os.environ.pop("ROPELAB_TRACKING_URI", None)

from ropelab.tasks.home import configure_environment  # noqa: E402

configure_environment(SESSION_HOME)

import pytest  # noqa: E402, I001  (after the environment above)

NETWORK_ATTEMPTS: list[str] = []
_real_connect, _real_connect_ex = socket.socket.connect, socket.socket.connect_ex
_real_getaddrinfo = socket.getaddrinfo
LOCAL_NAMES = {"localhost", "localhost.localdomain", "", None}


def _is_local(host) -> bool:
    if host in LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


def _check(address, what: str) -> None:
    if isinstance(address, tuple) and address and not _is_local(address[0]):
        NETWORK_ATTEMPTS.append(f"{what} {address[0]}")
        raise OSError(f"ropelab tests are offline: blocked {what} to {address[0]}")


def _guarded_connect(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        _check(address, "connect")
    return _real_connect(self, address)


def _guarded_connect_ex(self, address):
    if self.family in (socket.AF_INET, socket.AF_INET6):
        _check(address, "connect")
    return _real_connect_ex(self, address)


def _guarded_getaddrinfo(host, *args, **kwargs):
    if not _is_local(host if not isinstance(host, bytes) else host.decode()):
        NETWORK_ATTEMPTS.append(f"dns {host}")
        raise socket.gaierror(socket.EAI_NONAME, f"ropelab tests are offline: blocked DNS lookup of {host}")
    return _real_getaddrinfo(host, *args, **kwargs)


socket.socket.connect = _guarded_connect
socket.socket.connect_ex = _guarded_connect_ex
socket.getaddrinfo = _guarded_getaddrinfo


def pytest_sessionfinish(session, exitstatus):
    if NETWORK_ATTEMPTS:
        print(f"\nNETWORK ACCESS ATTEMPTED during tests: {sorted(set(NETWORK_ATTEMPTS))}")
        session.exitstatus = 1


@pytest.fixture
def tiny_llama():
    """A factory of tiny random Llama models built from a config (nothing downloaded)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    def build(rope_parameters=None, max_position_embeddings=64, head_dim=16, seed=0, layers=2):
        config = LlamaConfig(
            vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
            num_attention_heads=2, num_key_value_heads=2, head_dim=head_dim,
            max_position_embeddings=max_position_embeddings,
            rope_parameters=rope_parameters or {"rope_type": "default", "rope_theta": 10000.0},
            attn_implementation="sdpa",
        )
        torch.manual_seed(seed)
        return LlamaForCausalLM(config).eval()

    return build
