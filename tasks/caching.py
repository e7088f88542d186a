"""Cache keys: a task's inputs by content identity + the code version of the installed package.

Prefect's INPUTS policy would hash an artifact's path and run id, so the same model recorded by another run
would miss, and TASK_SOURCE alone would miss a change in a helper or the library. Here every input is
reduced by ``ropelab.identity`` (artifacts by ``identity()``, configs by their fields), run-specific arguments
are left out, and the code version of ``ropelab`` + ``ropelab.tasks`` is part of every key: any code change
recomputes the stages run after it.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import json
from pathlib import Path
from typing import Any

from prefect.cache_policies import CachePolicy
from prefect.serializers import Serializer
from pydantic import Field

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
    key = cache_key(context.task.name, inputs)
    storage = getattr(context.task, "result_storage", None)
    if isinstance(storage, Path):  # Prefect reads a cached record with the serializer it names: check it first
        refuse_foreign_record(storage / key)
    return key


IDENTITY = CachePolicy.from_cache_key_fn(_key_fn)


# --- persisted results: JSON of ropelab's own dataclasses, never pickle -------------------------------------
# Prefect's default result serializer is cloudpickle, and Prefect loads a cached result with the serializer its
# record names (even to check that a cache entry exists): write access to a home would be code execution on the
# next run. Results here are JSON that can only rebuild ropelab's frozen dataclasses, paths, tuples and plain
# values; a record another serializer wrote is moved aside before Prefect looks its key up (a cache miss).
SERIALIZER_TYPE = "ropelab-json"


def _encode(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        cls = type(value)
        return {"__dataclass__": f"{cls.__module__}:{cls.__qualname__}",
                "fields": {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value)}}
    if isinstance(value, Path):
        return {"__path__": str(value)}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v) for v in value]}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value) and "__dataclass__" not in value:
            return {k: _encode(v) for k, v in value.items()}
        return {"__items__": [[_encode(k), _encode(v)] for k, v in value.items()]}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"ropelab persists only dataclasses, paths and plain values, not {type(value).__name__}")


def _dataclass(name: str) -> type:
    """A dataclass of ropelab's own, by 'module:qualname'; anything else is refused (never imported)."""
    module, _, qualname = name.partition(":")
    if module != "ropelab" and not module.startswith("ropelab."):
        raise ValueError(f"refusing to rebuild {name}: not a ropelab type")
    cls = importlib.import_module(module)
    for part in qualname.split("."):
        cls = getattr(cls, part)
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise ValueError(f"refusing to rebuild {name}: not a dataclass")
    return cls


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "__dataclass__" in value:
        return _dataclass(value["__dataclass__"])(**{k: _decode(v) for k, v in value["fields"].items()})
    if "__path__" in value:
        return Path(value["__path__"])
    if "__tuple__" in value:
        return tuple(_decode(v) for v in value["__tuple__"])
    if "__items__" in value:
        return {_decode(k): _decode(v) for k, v in value["__items__"]}
    return {k: _decode(v) for k, v in value.items()}


class ArtifactJSON(Serializer):
    """Task results as JSON (see above); no settings, so a record cannot name a library to load it with."""

    type: str = Field(default=SERIALIZER_TYPE, frozen=True)

    def dumps(self, obj: Any) -> bytes:
        return json.dumps(_encode(obj)).encode()

    def loads(self, blob: bytes) -> Any:
        return _decode(json.loads(blob.decode()))


def written_by_us(content: bytes) -> bool:
    """A Prefect result record whose serializer is exactly ``ArtifactJSON`` (checked with json, not Prefect)."""
    try:
        serializer = json.loads(content)["metadata"]["serializer"]
    except (ValueError, KeyError, TypeError):
        return False
    return serializer == {"type": SERIALIZER_TYPE}


def has_cached_result(task, args: tuple, kwargs: dict, storage: Path) -> bool:
    """Will Prefect answer this call from ``storage`` without running its body? Only for tasks keyed here
    (``IDENTITY``), whose record exists and was written by ropelab: the same key and check Prefect makes."""
    if task.cache_policy is not IDENTITY:
        return False
    from prefect.utilities.callables import get_call_parameters

    try:  # inputs Prefect could not key either (it then runs uncached) are a miss here, never an error
        path = storage / cache_key(task.name, get_call_parameters(task.fn, args, kwargs))
        return written_by_us(path.read_bytes())
    except Exception:
        return False


def refuse_foreign_record(path: Path) -> bool:
    """Move aside a result file under a cache key that ``ArtifactJSON`` did not write (an old or planted pickle)
    before Prefect looks the key up, so it reads as a cache miss and is recomputed. True when one was moved."""
    try:
        content = path.read_bytes()
    except OSError:
        return False
    if written_by_us(content):
        return False
    path.replace(path.with_name(path.name + ".refused"))
    return True


def result_options(directory: Path) -> dict:
    """What every task call gets (``runner.Stage``): JSON results in the home's result directory."""
    return {"result_storage": directory, "result_serializer": ArtifactJSON()}
