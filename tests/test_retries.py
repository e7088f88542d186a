"""Retries are for transient failures: user mistakes and out-of-memory errors are final and clear."""

from __future__ import annotations

import pytest
from prefect import flow, task
from prefect.states import Failed

from ropelab.errors import RopelabError
from ropelab.tasks.retries import out_of_memory_is_final, transient_only

ATTEMPTS: list[str] = []


def test_retry_condition():
    assert transient_only(None, None, Failed(data=ConnectionError("blip")))
    assert not transient_only(None, None, Failed(data=RopelabError("bad config")))


def test_out_of_memory_becomes_one_clear_final_message():
    with pytest.raises(RopelabError, match="fine-tuning ran out of memory at sequence length 131,072: lower"):
        with out_of_memory_is_final("fine-tuning", 131072, "lower the batch"):
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
    with pytest.raises(RuntimeError, match="shape mismatch"):  # other errors pass through unchanged
        with out_of_memory_is_final("search", 10, ""):
            raise RuntimeError("shape mismatch")


@pytest.mark.slow
def test_prefect_retries_transient_failures_but_not_out_of_memory():
    @task(retries=3, retry_delay_seconds=0, retry_condition_fn=transient_only)
    def flaky(kind: str) -> str:
        ATTEMPTS.append(kind)
        if kind == "oom":
            with out_of_memory_is_final("search", 8192, "lower tokens_per_batch"):
                raise RuntimeError("CUDA out of memory")
        if ATTEMPTS.count(kind) < 3:
            raise ConnectionError("transient")
        return "ok"

    @flow
    def run(kind: str) -> str:
        return flaky(kind)

    assert run("transient") == "ok" and ATTEMPTS.count("transient") == 3
    with pytest.raises(RopelabError, match="search ran out of memory at sequence length 8,192"):
        run("oom")
    assert ATTEMPTS.count("oom") == 1  # never retried
