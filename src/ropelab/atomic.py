"""Atomic writers shared by every writer in ropelab: a half-written file or directory never looks complete.

Every artifact a later stage consumes is written through these, so a kill, a full disk or an exception half way
leaves either the previous content or nothing under the final name, never a truncated file. The trick is the
same everywhere (write beside the target, then rename over it: ``os.replace`` is atomic on POSIX within one
file system), so it lives once, here, instead of a hand copy per writer.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path

from ropelab.identity import sha256_file  # the one module that hashes content


def _sibling(path: Path, suffix: str) -> Path:
    """A hidden, unique name beside ``path`` (same directory, so the final rename never crosses devices)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{suffix}")


def _fsync_directory(directory: Path) -> None:
    """Make a rename inside ``directory`` durable (POSIX: the directory entry is data of the directory)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def staged_directory(target: Path) -> Iterator[Path]:
    """Yield a sibling '<target>.partial' directory; on success replace ``target`` by it, else remove it.

    Readers treat a directory as complete when it exists under its final name, so everything is written into
    the staging directory first; a stale '.partial' from a killed run is cleared before starting.
    """
    target = Path(target)
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)


@contextlib.contextmanager
def replacing(path: Path, *, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for a writer that wants a file name (torch.save, safetensors);
    when the block succeeds the temporary file replaces ``path``, else it is removed and ``path`` is untouched.

    The temporary file is created by the writer with the usual permissions (no mkstemp 0600 surprise).
    ``fsync`` flushes the file and the directory entry to disk, for checkpoints that must survive a power cut.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(path, ".tmp")
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        _fsync_directory(path.parent)


def write_bytes_atomic(path: Path, data: bytes, *, fsync: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically: a reader sees the old content or all of ``data``."""
    with replacing(path, fsync=fsync) as tmp:
        with open(tmp, "xb") as fh:
            fh.write(data)
    return Path(path)


def write_text_atomic(path: Path, text: str, *, fsync: bool = False) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically: a reader sees the old content or all of ``text``."""
    return write_bytes_atomic(path, text.encode("utf-8"), fsync=fsync)


# --- recorded digests: a file a later stage trusts carries its sha256 beside it, checked on load ---------------
DIGEST_SUFFIX = ".sha256"


def digest_path(path: Path) -> Path:
    return Path(path).with_name(Path(path).name + DIGEST_SUFFIX)


def record_digest(path: Path) -> str:
    """Write '<path>.sha256' for a completed file (atomically); returns the digest."""
    digest = sha256_file(path)
    write_text_atomic(digest_path(path), f"{digest}  {Path(path).name}\n")
    return digest


def digest_problem(path: Path) -> str | None:
    """None when ``path`` matches its recorded sha256; else what is wrong, in words (for one error line).

    A file without a digest beside it is a problem too: every writer that a reader checks records one, so a
    missing digest means a kill between the two writes or a file planted by hand."""
    path, recorded = Path(path), digest_path(path)
    if not path.is_file():
        return f"{path} is missing"
    if not recorded.is_file():
        return f"{path} has no recorded sha256 ({recorded.name})"
    expected = recorded.read_text().split()[:1]
    if expected != [sha256_file(path)]:
        return f"{path} does not match its recorded sha256 (truncated, corrupted or edited)"
    return None


def write_with_digest(path: Path, write) -> Path:
    """``write(tmp)`` into a temporary file, replace ``path`` atomically, then record its sha256."""
    with replacing(path) as tmp:
        write(tmp)
    record_digest(path)
    return Path(path)
