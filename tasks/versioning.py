"""DVC: the project's data/ is versioned with `dvc add data` → data.dvc; its md5 is the data version."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

from ropelab.errors import RopelabError


def _dvc(home: Path, *args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=home, capture_output=True, text=True,
                          timeout=600)
    if done.returncode != 0:
        raise RopelabError(f"dvc {' '.join(args)} failed: {(done.stderr or done.stdout).strip()[-400:]}")
    return done.stdout


def ensure_repo(home: Path) -> None:
    """Initialise DVC in the project (inside git when there is one) with analytics and update checks off."""
    if not (home / ".dvc").exists():
        _dvc(home, "init", "--quiet", *(() if (home / ".git").exists() else ("--no-scm",)))
    _dvc(home, "config", "core.analytics", "false")
    _dvc(home, "config", "core.check_update", "false")


def add(home: Path, target: str = "data") -> str:
    """`dvc add <target>`; returns the md5 recorded in <target>.dvc."""
    _dvc(home, "add", "--quiet", target)
    return data_version(home, target)


def data_version(home: Path, target: str = "data") -> str | None:
    pointer = home / f"{target}.dvc"
    if not pointer.exists():
        return None
    outs = (yaml.safe_load(pointer.read_text()) or {}).get("outs") or [{}]
    return outs[0].get("md5")


def is_clean(home: Path, target: str = "data") -> bool:
    """True when data/ matches data.dvc (`dvc status` reports nothing)."""
    out = _dvc(home, "status", f"{target}.dvc")
    return "changed" not in out and "deleted" not in out and "new" not in out
