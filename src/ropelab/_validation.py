"""How ``ropelab.config`` turns pydantic's errors into one line per mistake, and merges a partial tree over defaults.

Kept apart from the dataclasses so config.py reads as the list of settings; nothing here knows a field by name.
Pydantic reports each error as a dict (type, loc, input, ctx); a user should see `dotted.key: problem` with the
valid values, never pydantic's multi-line dump, so every error type a config can produce has a sentence here.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Mapping
from typing import Any, Literal

from pydantic_core import PydanticCustomError

from ropelab.errors import RopelabError

BOUNDS = {"greater_than_equal": "≥", "greater_than": ">", "less_than_equal": "≤", "less_than": "<"}
TYPES = {"float_parsing": "a number", "float_type": "a number", "int_parsing": "an integer", "int_type": "an integer",
         "int_from_float": "an integer", "bool_type": "true or false", "bool_parsing": "true or false",
         "string_type": "a string", "tuple_type": "a list", "dataclass_type": "a mapping"}


@functools.cache
def field_types(cls) -> dict[str, Any]:
    """Field name -> resolved annotation (with Annotated extras: the choices and ranges live there)."""
    hints = typing.get_type_hints(cls, include_extras=True)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def choices(kind) -> list[str]:
    """The values of a Literal type, also inside Annotated[...] or tuple[..., ...]; [] for other types."""
    if typing.get_origin(kind) is Literal:
        return [str(a) for a in typing.get_args(kind)]
    return [c for a in typing.get_args(kind) if not isinstance(a, (int, str, float)) for c in choices(a)]


def not_bool(value: Any) -> Any:
    """Floats accept numbers and numeric strings (YAML 1.1 reads `1e-3` as a string), but not true/false."""
    if isinstance(value, bool):
        raise PydanticCustomError("float_type", "expected a number")
    return value


def _section(cls, loc: tuple[str, ...]) -> type:
    """The dataclass that holds the last key of ``loc``."""
    for key in loc:
        kind = field_types(cls).get(key)
        if not dataclasses.is_dataclass(kind):
            break
        cls = kind
    return cls


UNKNOWN = ("unexpected_keyword_argument", "extra_forbidden")


def _loc(error: dict) -> tuple[str, ...]:
    return tuple(str(x) for x in error["loc"] if not isinstance(x, int))  # list indices: the field is the key


def unknown_keys(cls, section: tuple[str, ...], keys: list[str]) -> str:
    valid = ", ".join(field_types(_section(cls, section)))
    return f"{'.'.join(section) + ': ' if section else ''}unknown key(s) {', '.join(keys)}; valid keys: {valid}"


def problem(cls, error: dict) -> str:
    """One pydantic error as `dotted.key: what is wrong`, naming the valid values where there is a list."""
    loc = _loc(error)
    key, value, kind, ctx = ".".join(loc), error.get("input"), error["type"], error.get("ctx") or {}
    if kind == "literal_error":
        valid = choices(field_types(_section(cls, loc[:-1])).get(loc[-1])) or [str(ctx.get("expected", ""))]
        return f"{key}: {value!r} is not one of {', '.join(valid)}"
    if kind in BOUNDS:
        return f"{key} must be {BOUNDS[kind]} {next(iter(ctx.values()))}, got {value!r}"
    if kind in ("too_short", "too_long"):
        size = f"at least {ctx['min_length']}" if kind == "too_short" else f"at most {ctx['max_length']}"
        return f"{key} must have {size} item(s), got {value!r}"
    if kind == "string_pattern_mismatch":
        return f"{key}: {value!r} must be a plain name (letters, digits, - _ .; no '/', no '..', no leading dot)"
    if kind == "value_error":  # the config's own validators word their errors "must …, got …"
        return f"{key} {ctx.get('error', error['msg'])}"
    if kind in TYPES:
        return f"{key}: expected {TYPES[kind]}, got {value!r}"
    return f"{key}: {' '.join(error['msg'].split()).lower()}, got {value!r}"


def problems(cls, errors: list[dict], where: str) -> RopelabError:
    """All of a validation's errors as one line, `<where>: <problem>; <problem>`: unknown keys grouped per
    section, and no length complaint about a list whose items are already reported (pydantic counts only the
    valid ones)."""
    with_bad_items = {_loc(e) for e in errors if any(isinstance(x, int) for x in e["loc"])}
    unknown: dict[tuple[str, ...], list[str]] = {}
    lines: dict[Any, None] = {}
    for error in errors:
        loc = _loc(error)
        if error["type"] in UNKNOWN:
            unknown.setdefault(loc[:-1], []).append(loc[-1])
            lines[loc[:-1]] = None  # a placeholder keeps the section where its first unknown key was
        elif not (error["type"] in ("too_short", "too_long") and loc in with_bad_items):
            lines[problem(cls, error)] = None
    text = [unknown_keys(cls, line, unknown[line]) if isinstance(line, tuple) else line for line in lines]
    return RopelabError(f"{where}: " + "; ".join(text))


def deep_merge(base: dict, data: Mapping) -> dict:
    """``data`` over ``base`` (the defaults as a plain tree): a partial nested section keeps the parent's default
    values for the rest. A scalar where the default is a list becomes a one-item list (`--set eval.methods=pi`)."""
    out = dict(base)
    for key, value in data.items():
        default = base.get(key)
        if isinstance(value, Mapping) and isinstance(default, dict):
            value = deep_merge(default, value)
        elif isinstance(default, list) and not isinstance(value, (list, tuple, Mapping)) and value is not None:
            value = [value]
        out[key] = value
    return out
