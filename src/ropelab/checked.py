"""Checked JSON-lines files: each line carries the sha256 of its own content, so a reader keeps only lines that
a ropelab writer wrote in full — a line cut by a kill, or one edited or planted by hand, is dropped (and named
in one warning) instead of being trusted. Used by the fitness cache, which later searches read."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from ropelab.atomic import write_text_atomic
from ropelab.identity import json_identity

DIGEST_KEY = "sha256"


def checked_line(row: dict) -> str:
    """One JSON line: ``row`` plus the sha256 of its canonical JSON."""
    return json.dumps({**row, DIGEST_KEY: json_identity(row)}) + "\n"


def _valid(line: str) -> dict | None:
    try:
        row = json.loads(line)
    except ValueError:
        return None
    if not isinstance(row, dict):
        return None
    digest = row.pop(DIGEST_KEY, None)
    return row if digest == json_identity(row) else None


def read_checked_lines(path: Path) -> list[dict]:
    """The rows of ``path`` whose digest holds. When any line is broken, the file is rewritten (atomically)
    with the good lines only, so the next append starts on a clean line, and one warning names the file."""
    path = Path(path)
    if not path.exists():
        return []
    text = path.read_text()
    lines = text.splitlines()
    rows = [r for r in map(_valid, lines) if r is not None]
    if len(rows) != len(lines) or (text and not text.endswith("\n")):
        warnings.warn(f"{path}: dropped {len(lines) - len(rows)} broken or unverifiable line(s) (cut by a kill, "
                      "or edited by hand); their values are recomputed", stacklevel=2)
        write_text_atomic(path, "".join(checked_line(r) for r in rows))
    return rows
