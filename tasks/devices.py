"""Device slots: tasks that run on an accelerator take a slot of a Prefect concurrency limit named after the
device kind (slots = devices on this machine, 1 on CPU), so two pipelines on one machine — two schedules, or a
schedule and a CLI run — never do device work at the same time.

The slot is Prefect's own tag-based concurrency: a device task run carries the tag ``ropelab-device-<kind>`` and
Prefect's task engine holds a slot of the limit ``tag:ropelab-device-<kind>`` from before the run enters Running
until it ends (a waiting task stays Pending, so the UI never shows two device tasks Running). Prefect's in-run
retries would keep the slot through the retry delay, so device tasks are retried here instead, as new task runs
of the same task: the failed attempt stays visible as a Failed task run, and the slot is free while waiting.
The limit is created on first use and shows on the Prefect UI's Concurrency page; raising its slot count there
is how a machine with N GPUs runs N device tasks at once.

A process killed inside a device task (SIGKILL, OOM, a lost machine) never releases its slot, and the API that
granted it — Prefect's temporary server, started by each command without ``ropelab server`` — dies with it and
its in-memory lease, so nothing would ever give the slot back and every later run on the home would wait
forever. So every process that takes device slots holds a shared lock on ``.prefect/device-slots.lock`` for its
life (the kernel drops it when the process dies, however it dies); a process that finds the lock free knows no
live ropelab process can hold a slot of the home's own API and gives orphaned slots back, saying so.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
from prefect import task

DEVICE_TAG = "device"


def device_kind() -> str:
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def device_slots() -> int:
    return torch.cuda.device_count() if device_kind() == "cuda" else 1


def slot_tag() -> str:
    return f"ropelab-device-{device_kind()}"


def limit_name() -> str:
    """The limit Prefect's engine takes a slot of for a task run tagged ``slot_tag()``."""
    return f"tag:{slot_tag()}"


_HOME_LOCKS: dict[Path, int] = {}  # lock file → descriptor, open (and locked shared) until the process exits


def hold_home_lock(lock_file: Path) -> bool:
    """Hold a shared lock on ``lock_file`` for the rest of this process; True if, before that, no other process
    held it (this one got it exclusively: no live process can be using the home's device slots)."""
    if lock_file in _HOME_LOCKS:
        return False
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        alone = True
    except BlockingIOError:
        alone = False
    fcntl.flock(fd, fcntl.LOCK_SH)  # from exclusive: a conversion, never a wait on ourselves
    _HOME_LOCKS[lock_file] = fd
    return alone


def home_lock_file() -> Path:
    from prefect.settings import PREFECT_HOME

    return Path(PREFECT_HOME.value()) / "device-slots.lock"


@functools.cache
def ensure_limit(name: str, slots: int, api_url: str, home_api: bool = True) -> None:
    """Create the limit if this Prefect API does not have it yet (two processes racing: one creates it); on the
    home's own API (``home_api``), give back the slots of processes that died holding them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, GlobalConcurrencyLimitUpdate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    alone = hold_home_lock(home_lock_file()) if home_api else False
    with get_client(sync_client=True) as client:
        try:
            found = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=slots))
            return
        if alone and found.active_slots:
            client.update_global_concurrency_limit(name, GlobalConcurrencyLimitUpdate(active_slots=0))
            from prefect.logging import get_logger

            get_logger("ropelab").warning(
                f"released {found.active_slots} slot(s) of {name} held by a process that is gone (killed during "
                "device work?): no live ropelab process uses this home")


def home_api() -> bool:
    """Is this process talking to the home's own Prefect API (a temporary server, or the home's ``ropelab
    server``), whose every client is a process on this machine? An outside PREFECT_API_URL may have clients
    elsewhere, whose slots a local lock says nothing about."""
    from ropelab.tasks.home import paths
    from ropelab.tasks.servers import running_server

    api = os.environ.get("PREFECT_API_URL")
    if not api:
        return True
    with contextlib.suppress(Exception):
        found = running_server(paths())
        return found is not None and found.get("api", "").rstrip("/") == api.rstrip("/")
    return False


def needs_device(task) -> bool:
    return DEVICE_TAG in task.tags


def device_task(**options) -> Callable:
    """``@task(**options)`` for a body that runs on the device (tagged ``device``; run through ``run_in_slot``)."""
    return task(tags=[DEVICE_TAG, *options.pop("tags", [])], **options)


def retry_delays(task) -> list[float]:
    delays = task.retry_delay_seconds
    delays = list(delays) if isinstance(delays, (list, tuple)) else [delays or 0] * task.retries
    return (delays + delays[-1:] * task.retries)[:task.retries] if delays else []


def run_in_slot(task, run: Callable, log: Callable[[str], None] = lambda line: None):
    """``run(task')`` where task' carries the slot tag and no in-run retries; a failure the task's
    ``retry_condition_fn`` calls transient is run again after the task's retry delay, outside the slot."""
    from prefect.settings import PREFECT_API_URL
    from prefect.states import Failed

    ensure_limit(limit_name(), device_slots(), str(PREFECT_API_URL.value()), home_api=home_api())
    slotted = task.with_options(tags={*task.tags, slot_tag()}, retries=0)
    delays = retry_delays(task)
    for attempt in range(len(delays) + 1):
        state = run(slotted)
        if not state.is_failed() or attempt == len(delays):
            return state
        error = state.result(raise_on_failure=False)
        if task.retry_condition_fn is not None and not task.retry_condition_fn(task, None, Failed(data=error)):
            return state
        log(f"{task.name} failed ({type(error).__name__}: {error}); retry {attempt + 1} of {len(delays)} in "
            f"{delays[attempt]:g} s, device slot released")
        time.sleep(delays[attempt])
    return state
