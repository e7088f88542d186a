"""Reading and writing λ (rescale factor) files: one value per line, a JSON list, or JSON with a key."""

from __future__ import annotations

import json
import math
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
    text = Path(path).read_text().strip()
    if not text.startswith("{"):
        return {}
    return {k: v for k, v in json.loads(text).items() if k not in JSON_KEYS}


def read_rescale_spec(path: str | Path, *, head_dim: int, base: float, original_max_position_embeddings: int,
                      default_factor: float):
    """The longrope setting a λ file stands for: λ plus the factor, n̂, attention factor/policy recorded with it
    (a search writes them); ``default_factor`` when the file records none (plain lists)."""
    from ropelab.rope.registry import RopeSpec

    meta = read_rescale_metadata(path)
    return RopeSpec("longrope", head_dim, base, factor=float(meta.get("factor", default_factor)),
                    original_max_position_embeddings=original_max_position_embeddings,
                    rescale_factors=read_rescale_factors(path), start_tokens=int(meta.get("start_tokens", 0)),
                    attention_policy=meta.get("attention_policy", "su"), attention_factor=meta.get("attention_factor"))


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
