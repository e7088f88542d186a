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
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable

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


@functools.cache
def ensure_limit(name: str, slots: int, api_url: str) -> None:
    """Create the limit if this Prefect API does not have it yet (two processes racing: one creates it)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
            return
        except ObjectNotFound:
            pass
        with contextlib.suppress(ObjectAlreadyExists):
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=slots))


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

    ensure_limit(limit_name(), device_slots(), str(PREFECT_API_URL.value()))
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
