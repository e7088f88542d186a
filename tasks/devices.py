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
life (the kernel drops it when the process dies, however it dies); a process on a temporary server that finds the
lock free knows no live ropelab process can hold a slot and gives orphaned slots back, saying so; so does
``ropelab server`` when it starts (its leases are in memory too). A running server repossesses a dead client's
lease itself when it expires (60 s), so its clients never reclaim: the server could later decrement the count
again under a live holder.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import time
from collections.abc import Callable
from pathlib import Path

from prefect import task

DEVICE_TAG = "device"


def device_kind() -> str:
    import torch  # here, not at import: `ropelab server` imports this module and needs no torch

    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def device_slots() -> int:
    import torch

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


SLOT_PREFIX = "tag:ropelab-device-"


def reclaim_orphaned_slots(client) -> None:
    """Give back every device slot taken: call only when this process found no other live ropelab process on
    the home (``hold_home_lock`` was True), so each one was taken by a process that died holding it."""
    from prefect.client.schemas.actions import GlobalConcurrencyLimitUpdate
    from prefect.logging import get_logger

    for limit in client.read_global_concurrency_limits(limit=200):
        if limit.name.startswith(SLOT_PREFIX) and limit.active_slots:
            client.update_global_concurrency_limit(limit.name, GlobalConcurrencyLimitUpdate(active_slots=0))
            get_logger("ropelab").warning(
                f"released {limit.active_slots} slot(s) of {limit.name} held by a process that is gone (killed "
                "during device work?): no live ropelab process uses this home")


@functools.cache
def ensure_limit(name: str, slots: int, api_url: str, reclaim: bool = False) -> None:
    """Create the limit if this Prefect API does not have it yet (two processes racing: one creates it); with
    ``reclaim``, first give back the slots of processes that died holding them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    # every slot user holds the lock, whichever API: a `ropelab server` restarted under a live client must not
    # take that client's slot for an orphan
    alone = hold_home_lock(home_lock_file())
    with get_client(sync_client=True) as client:
        if reclaim and alone:
            reclaim_orphaned_slots(client)
        try:
            client.read_global_concurrency_limit_by_name(name)
            return
        except ObjectNotFound:
            pass
        with contextlib.suppress(ObjectAlreadyExists):
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=slots))


def reclaim_for_new_server(api_url: str) -> None:
    """``ropelab server`` once it answers: its leases live in its memory, so slots a previous server (or a killed
    temporary one) granted are orphans if no ropelab process is alive on the home."""
    from prefect.client.orchestration import get_client
    from prefect.logging import get_logger
    from prefect.settings import PREFECT_API_URL, temporary_settings

    try:
        with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
            if hold_home_lock(home_lock_file()):
                reclaim_orphaned_slots(client)
    except Exception as exc:  # the server is up and useful either way: say what was not checked
        get_logger("ropelab").warning(f"could not check the device slots for orphans: {exc}")


def on_temporary_api() -> bool:
    """Without PREFECT_API_URL every command runs its own temporary Prefect server, which keeps leases in memory
    and never repossesses an expired one: a slot its dead process held is given back only by ``reclaim``. A
    server (``ropelab server`` or an outside one) repossesses a dead client's lease itself once it expires."""
    return not os.environ.get("PREFECT_API_URL")


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

    ensure_limit(limit_name(), device_slots(), str(PREFECT_API_URL.value()), reclaim=on_temporary_api())
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
