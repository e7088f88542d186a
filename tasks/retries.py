"""Retries for transient failures only: a user mistake or an out-of-memory error is final, said once."""

from __future__ import annotations

import contextlib

from ropelab.errors import RopelabError


def transient_only(task, task_run, state) -> bool:
    """Prefect retry_condition_fn: retry unless the failure is a RopelabError (retrying cannot fix it)."""
    return not isinstance(getattr(state, "data", None), RopelabError)


@contextlib.contextmanager
def out_of_memory_is_final(stage: str, length: int, hint: str):
    """Turn an out-of-memory error into one clear, final message naming the stage and the sequence length."""
    try:
        yield
    except (RuntimeError, MemoryError) as exc:  # torch.OutOfMemoryError is a RuntimeError
        if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
            raise RopelabError(f"{stage} ran out of memory at sequence length {length:,}: {hint}") from None
        raise
