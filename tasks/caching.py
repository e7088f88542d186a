"""Cache keys: a task's inputs + its own source + the code version of the library and the task layer.

TASK_SOURCE alone hashes only the task function's text, so a change in a helper or in src/ropelab would
silently reuse stale results; the code version makes "a stage's cache key is its inputs' hashes plus its code"
hold. Conservative by design: any code change recomputes the stages run after it.
"""

from __future__ import annotations

import functools
import hashlib

from prefect.cache_policies import INPUTS, TASK_SOURCE, CachePolicy

from tasks.settings import REPO_ROOT


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    digest = hashlib.sha256()
    for folder in (REPO_ROOT / "src" / "ropelab", REPO_ROOT / "tasks"):
        for file in sorted(folder.rglob("*.py")):
            digest.update(str(file.relative_to(REPO_ROOT)).encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


CODE = CachePolicy.from_cache_key_fn(lambda task_ctx, inputs, *args, **kwargs: code_version())


def cached_on(*exclude: str):
    """INPUTS (minus run-specific arguments) + TASK_SOURCE + CODE."""
    inputs = INPUTS
    for name in exclude:
        inputs = inputs - name
    return inputs + TASK_SOURCE + CODE
