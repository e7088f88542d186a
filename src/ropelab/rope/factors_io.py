"""Reading and writing λ (rescale factor) files: one value per line, a JSON list, or JSON with a key."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path

from ropelab.atomic import write_text_atomic
from ropelab.errors import RopelabError

JSON_KEYS = ("rescale_factors", "long_factor")


def _parse_json(text: str, path: Path) -> list:
    data = json.loads(text)
    if isinstance(data, dict):
        for key in JSON_KEYS:
            if key in data:
                return data[key]
        raise RopelabError(f"{path}: JSON object has none of the keys {', '.join(JSON_KEYS)}")
    return data


def read_rescale_factors(path: str | Path) -> tuple[float, ...]:
    """λ values from a file (one per line, a JSON list, or a JSON object with 'rescale_factors')."""
    path = Path(path)
    try:
        text = path.read_text().strip()
    except OSError as exc:
        raise RopelabError(f"cannot read rescale factors from {path}: {exc.strerror or exc}") from None
    if not text:
        raise RopelabError(f"{path}: no rescale factors in the file")
    try:
        values = _parse_json(text, path) if text[:1] in "[{" else [ln for ln in text.splitlines() if ln.strip()]
        factors = tuple(float(v) for v in values)
    except (ValueError, TypeError) as exc:
        raise RopelabError(f"{path}: not a list of numbers ({exc})") from None
    if not factors:
        raise RopelabError(f"{path}: no rescale factors in the file")
    return factors


def read_rescale_metadata(path: str | Path) -> dict:
    """The metadata stored beside λ in a JSON file (factor, start_tokens, …); {} for other formats."""
    try:
        text = Path(path).read_text().strip()
        data = json.loads(text) if text.startswith("{") else {}
    except OSError as exc:
        raise RopelabError(f"cannot read rescale factors from {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise RopelabError(f"{path}: broken JSON ({exc}); write a JSON list of numbers or "
                           '{"rescale_factors": [...]}') from None
    return {k: v for k, v in data.items() if k not in JSON_KEYS}


def recorded_factor(path: str | Path) -> float:
    """The extension ratio s a λ file was made for; a file that records none is an error (never guessed)."""
    meta = read_rescale_metadata(path)
    if "factor" not in meta:
        raise RopelabError(f"{path}: the λ file records no factor (the extension ratio s it was searched for): "
                           'write it as JSON with one, e.g. {"rescale_factors": [...], "factor": 8}')
    return float(meta["factor"])


def read_rescale_spec(path: str | Path, *, head_dim: int, base: float, original_max_position_embeddings: int,
                      default_factor: float | None = None):
    """The longrope setting a λ file stands for: λ plus the factor, n̂, attention factor/policy recorded with it
    (a search writes them). Without a recorded factor: ``default_factor`` when the caller has one (a fine-tune's
    configured scale), else an error naming the file."""
    from ropelab.rope.registry import RopeSpec

    meta = read_rescale_metadata(path)
    factor = recorded_factor(path) if default_factor is None else float(meta.get("factor", default_factor))
    return RopeSpec("longrope", head_dim, base, factor=factor,
                    original_max_position_embeddings=original_max_position_embeddings,
                    rescale_factors=read_rescale_factors(path), start_tokens=int(meta.get("start_tokens", 0)),
                    attention_policy=meta.get("attention_policy", "su"), attention_factor=meta.get("attention_factor"))


def _stage_label(path: Path) -> str:
    """What the file records about the stage that made it: mode and factor (and the search's own ratio when it
    differs: a second-stage search on a fine-tuned model), else the file's stem."""
    meta = read_rescale_metadata(path) if path.is_file() else {}
    if "factor" not in meta:
        return _safe(path.stem)
    factor, searched = float(meta["factor"]), float(meta.get("search_scale", meta["factor"]))
    label = f"{meta.get('mode', 'extend')}-{factor:g}x"
    return _safe(label if searched == factor else f"{label}-searched-{searched:g}x")


def _safe(name: str) -> str:
    """Letters, digits, '-', '_', '.' only: labels become MLflow metric names and file names."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-") or "lambda"


def _telling_directories(group: Sequence[Path]) -> list[str]:
    """For files that share a label: the names of the nearest ancestor level at which they all differ (else the
    nearest at which any differ)."""
    parents = [p.resolve().parent.parts for p in group]
    depth = max(map(len, parents))
    levels = [[ps[-level] if level <= len(ps) else "" for ps in parents] for level in range(1, depth + 1)]
    for names in levels:
        if len(set(names)) == len(names):
            return names
    return next((names for names in levels if len(set(names)) > 1), [""] * len(group))


def lambda_labels(paths: Sequence[str | Path]) -> list[str]:
    """One distinct, readable label per λ file, in order: the stage recorded in the file (``_stage_label``),
    and, where files share it (every search writes rescale_factors.json), the parent directory names that tell
    them apart; what is still shared (the same file twice) gets its position (input-2). No input is ever dropped."""
    paths = [Path(p) for p in paths]
    labels = [_stage_label(p) for p in paths]
    for shared in {lab for lab in labels if labels.count(lab) > 1}:
        where = [i for i, lab in enumerate(labels) if lab == shared]
        for i, name in zip(where, _telling_directories([paths[i] for i in where]), strict=True):
            labels[i] = f"{shared} {_safe(name)}" if name else shared
    return [lab if labels.index(lab) == i else f"{lab} input-{i + 1}" for i, lab in enumerate(labels)]


def write_rescale_factors(path: str | Path, factors: Sequence[float], **metadata) -> Path:
    """Write λ as JSON ({'rescale_factors': [...], **metadata}); '.txt'/'.csv' give one value per line.

    Atomic: a later stage reads λ back, so a killed write must never leave a truncated list under the name.
    """
    path = Path(path)
    values = [float(v) for v in factors]
    if not all(math.isfinite(v) for v in values):
        raise RopelabError("refusing to write non-finite rescale factors")
    if path.suffix in {".txt", ".csv"}:
        return write_text_atomic(path, "".join(f"{v!r}\n" for v in values))
    return write_text_atomic(path, json.dumps({"rescale_factors": values, **metadata}, indent=2))
