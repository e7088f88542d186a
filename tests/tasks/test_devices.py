"""Device slots: device tasks run under the machine's device limit; a transient failure is retried as a new
task run with the slot released while waiting; a user error is final."""

from __future__ import annotations

import pytest
from prefect import flow
from prefect.client.orchestration import get_client

from ropelab.errors import RopelabError
from ropelab.tasks.devices import device_task, limit_name, needs_device, retry_delays, run_in_slot, slot_tag
from ropelab.tasks.retries import transient_only

ATTEMPTS: list[str] = []
SLOTS_WHILE_WAITING: list[int] = []


@device_task(name="flaky-device-work", retries=2, retry_delay_seconds=[1, 1], retry_condition_fn=transient_only)
def flaky(kind: str) -> str:
    ATTEMPTS.append(kind)
    if kind == "user-error":
        raise RopelabError("bad input")
    if ATTEMPTS.count(kind) < 3:
        raise OSError("device busy")
    return "done"


def active_slots() -> int:
    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(limit_name()).active_slots


def note_slots(_line: str) -> None:
    SLOTS_WHILE_WAITING.append(active_slots())


@flow
def device_work(kind: str):
    return run_in_slot(flaky, lambda t: t(kind, return_state=True), note_slots)


def task_runs_of(flow_state) -> list:
    with get_client(sync_client=True) as client:
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[
            flow_state.state_details.flow_run_id])))
    return sorted(runs, key=lambda r: r.start_time)


@pytest.mark.slow
def test_a_transient_failure_is_retried_as_new_task_runs_with_the_slot_released_meanwhile():
    state = device_work("transient", return_state=True)
    assert state.is_completed() and state.result().result() == "done"
    assert ATTEMPTS.count("transient") == 3 and SLOTS_WHILE_WAITING == [0, 0]
    runs = task_runs_of(state)
    assert [r.state.type.value for r in runs] == ["FAILED", "FAILED", "COMPLETED"]
    assert all(slot_tag() in r.tags and "device" in r.tags for r in runs)
    with get_client(sync_client=True) as client:  # created on first use, one slot on this CPU machine
        assert client.read_global_concurrency_limit_by_name(limit_name()).limit == 1


@pytest.mark.slow
def test_a_user_error_in_a_device_task_is_not_retried():
    state = device_work("user-error", return_state=True)
    with pytest.raises(RopelabError, match="bad input"):
        state.result()
    assert ATTEMPTS.count("user-error") == 1 and not SLOTS_WHILE_WAITING[2:]
    assert len(task_runs_of(state)) == 1


def test_retry_delays_follow_the_tasks_own_settings():
    assert retry_delays(flaky) == [1, 1] and needs_device(flaky)
    assert retry_delays(flaky.with_options(retries=3, retry_delay_seconds=5)) == [5, 5, 5]
    assert retry_delays(flaky.with_options(retries=3, retry_delay_seconds=[10, 60])) == [10, 60, 60]
    assert retry_delays(flaky.with_options(retries=0)) == []
