"""Content identities: the one module that turns files, directories, tensors, configs and artifacts into hashes.

Cache keys, fingerprints, work-directory names and lineage ids are all computed here, so "same content → same
identity" has one definition. Identities are hex SHA-256 digests (``short()`` cuts them for names).
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import importlib.util
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

BLOCK = 1 << 20


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    """Streamed, so a multi-GB weight file never sits in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


def files_identity(files: Iterable[Path], root: Path | None = None) -> str:
    """Names (relative to ``root``) and contents of ``files``, in sorted order."""
    digest = hashlib.sha256()
    for file in sorted(files):
        digest.update(str(file.relative_to(root) if root else file.name).encode())
        digest.update(sha256_file(file).encode())
    return digest.hexdigest()


def model_fingerprint(directory: Path) -> str:
    """A saved model's weights + config.json (tokenizer files and notes do not change what it computes)."""
    return files_identity([*directory.glob("*.safetensors"), directory / "config.json"])[:16]


def tree_identity(path: Path) -> str:
    """Every file below ``path`` (or the file itself): user corpora, exports."""
    files = [f for f in path.rglob("*") if f.is_file()] if path.is_dir() else [path]
    return files_identity(files, path if path.is_dir() else path.parent)


def stat_signature(path: Path) -> str:
    """Names, sizes and modification times below ``path``: a cheap change detector for a user's model, whose
    content hash (gigabytes) is computed once the signature changes."""
    files = [f for f in path.rglob("*") if f.is_file()] if path.is_dir() else [path]
    return json_identity([(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(files)])


def plain(value: Any) -> Any:
    """A JSON-ready view: dataclasses as dicts (an artifact as its ``identity()``), tuples as lists, paths as
    strings, enums by value."""
    if hasattr(value, "identity") and callable(value.identity):
        return {"identity": value.identity()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.value
    return value


def json_identity(value: Any) -> str:
    """Canonical JSON (sorted keys) of ``plain(value)``: configs, specs, λ sets, key parts."""
    text = json.dumps(plain(value), sort_keys=True, separators=(",", ":"), default=repr)
    return sha256_bytes(text.encode())


def tensor_identity(tensor) -> str:
    """Shape, dtype and bytes of a tensor (evaluation windows)."""
    array = tensor.detach().cpu().contiguous().numpy()
    return sha256_bytes(f"{array.shape}{array.dtype}".encode() + array.tobytes())


def short(identity: str, n: int = 12) -> str:
    return identity[:n]


def _module_files(package: str) -> dict[str, Path]:
    """{dotted module name: source file} of an installed package, found without importing it."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return {}
    files = {}
    for location in map(Path, spec.submodule_search_locations):
        for file in location.rglob("*.py"):
            parts = file.relative_to(location).with_suffix("").parts
            name = ".".join((package, *parts)).removesuffix(".__init__")
            files[name] = file
    return files


def code_version(packages: Iterable[str], exclude: Iterable[str] = ()) -> str:
    """Hash of the source files of the installed ``packages`` (by module name, so an editable checkout and a
    wheel of the same code agree), leaving out modules under any of ``exclude``."""
    files: dict[str, Path] = {}
    for package in packages:
        files.update(_module_files(package))
    skipped = tuple(exclude)
    digest = hashlib.sha256()
    for name in sorted(files):
        if not any(name == e or name.startswith(e + ".") for e in skipped):
            digest.update(name.encode())
            digest.update(files[name].read_bytes())
    return digest.hexdigest()[:16]
