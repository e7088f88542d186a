"""Cache keys: a task's inputs by content identity + the code version of the installed package.

Prefect's INPUTS policy would hash an artifact's path and run id, so the same model recorded by another run
would miss, and TASK_SOURCE alone would miss a change in a helper or the library. Here every input is
reduced by ``ropelab.identity`` (artifacts by ``identity()``, configs by their fields), run-specific arguments
are left out, and the code version of ``ropelab`` + ``ropelab.tasks`` is part of every key: any code change
recomputes the stages run after it.
"""

from __future__ import annotations

import functools

from prefect.cache_policies import CachePolicy

from ropelab import identity

RUN_SPECIFIC = frozenset({"run_id", "parent_run_id"})


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """The installed package's own files (never a checkout path); flows only compose and are left out."""
    return identity.code_version(("ropelab", "ropelab.tasks"), exclude=("ropelab.flows", "ropelab.presets"))


def cache_key(task_name: str, inputs: dict) -> str:
    kept = {k: v for k, v in inputs.items() if k not in RUN_SPECIFIC}
    return identity.json_identity({"task": task_name, "inputs": kept, "code": code_version()})


def _key_fn(context, inputs, *args, **kwargs) -> str:
    return cache_key(context.task.name, inputs)


IDENTITY = CachePolicy.from_cache_key_fn(_key_fn)
