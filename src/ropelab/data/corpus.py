"""Assembling documents into deterministic document-level splits, writing them, and reading them back.

Splits: ``train`` (pretraining, fine-tuning), ``validation`` (search fitness, model selection), ``test``
(reported results only). ``CorpusReader`` refuses to hand the test split to training or search code and keeps
a ledger (sha256 of every document handed out, per purpose) so tests can prove it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ropelab.config import DataConfig
from ropelab.data.retrieval import SOURCE as RETRIEVAL_SOURCE
from ropelab.data.retrieval import retrieval_documents
from ropelab.data.sources import Document
from ropelab.errors import RopelabError

SPLITS = ("train", "validation", "test")
MAY_READ = {  # purpose -> splits it may read
    "pretrain": {"train"}, "finetune": {"train"}, "search": {"validation"}, "select": {"validation"},
    "evaluate": {"validation", "test"}, "inspect": set(SPLITS),
}


def text_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def prepare(documents: Iterable[Document], config: DataConfig) -> list[Document]:
    """Filter short documents, apply smoke-test truncation, reject duplicate names."""
    kept, seen, per_source = [], set(), {}
    for doc in documents:
        text = doc.text[: config.max_doc_chars] if config.max_doc_chars else doc.text
        if len(text) < config.min_doc_chars:
            continue
        count = per_source.get(doc.source, 0)
        if config.max_docs and count >= config.max_docs and doc.name not in config.validation_docs + config.test_docs:
            continue
        if doc.name in seen:
            raise RopelabError(f"two documents are named {doc.name!r}; rename one (names pick the splits)")
        seen.add(doc.name)
        per_source[doc.source] = count + 1
        kept.append(Document(doc.name, doc.source, text))
    return kept


def split(documents: list[Document], config: DataConfig) -> dict[str, list[Document]]:
    """Assign whole documents: named validation/test documents, everything else to train (sorted by name)."""
    names = {d.name for d in documents}
    validation = [n for n in config.validation_docs if n in names]
    test = [n for n in config.test_docs if n in names]
    if not validation or not test:
        which = "validation_docs" if not validation else "test_docs"
        raise RopelabError(f"none of data.{which} {list(getattr(config, which))} is in the corpus; "
                           f"available: {', '.join(sorted(names)[:12])}…")
    overlap = set(validation) & set(test)
    if overlap:
        raise RopelabError(f"documents in both validation and test: {sorted(overlap)}")
    chosen = {**dict.fromkeys(validation, "validation"), **dict.fromkeys(test, "test")}
    splits = {s: [] for s in SPLITS}
    for doc in sorted(documents, key=lambda d: d.name):
        splits[chosen.get(doc.name, "train")].append(doc)
    if not splits["train"]:
        raise RopelabError("the train split is empty: add sources or fewer held-out documents")
    return splits


def with_retrieval(splits: dict[str, list[Document]], config: DataConfig) -> dict[str, list[Document]]:
    """The splits with ``data.retrieval_share`` of synthetic retrieval documents added to train (built from the
    train split's own text: held-out text never enters training through them)."""
    extra = retrieval_documents(splits["train"], config.retrieval_share, config.retrieval_seed)
    return {**splits, "train": splits["train"] + extra} if extra else splits


def manifest(splits: dict[str, list[Document]], config: DataConfig) -> dict:
    """What was built, deterministically (no timestamps: the same inputs give the same DVC hash)."""
    synthetic = [d for d in splits["train"] if d.source == RETRIEVAL_SOURCE]
    return {
        "sources": list(config.sources),
        **({"retrieval": {"share": config.retrieval_share, "seed": config.retrieval_seed,
                          "documents": len(synthetic), "chars": sum(len(d.text) for d in synthetic)}}
           if synthetic else {}),
        "splits": {s: [{"name": d.name, "source": d.source, "chars": len(d.text), "sha256": text_hash(d.text)}
                       for d in docs] for s, docs in splits.items()},
        "chars": {s: sum(len(d.text) for d in docs) for s, docs in splits.items()},
    }


def write_corpus(splits: dict[str, list[Document]], config: DataConfig, out_dir: Path) -> dict:
    """Write ``<out_dir>/<split>.jsonl`` and ``manifest.json``; returns the manifest."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, docs in splits.items():
        with open(out_dir / f"{name}.jsonl", "w", encoding="utf-8") as fh:
            for doc in docs:
                fh.write(json.dumps({"name": doc.name, "source": doc.source, "text": doc.text}) + "\n")
    info = manifest(splits, config)
    (out_dir / "manifest.json").write_text(json.dumps(info, indent=2, sort_keys=True))
    return info


@dataclass
class CorpusReader:
    """Reads splits for a declared purpose; training and search can never read the test split."""

    corpus_dir: Path
    ledger: dict[str, set[str]] = field(default_factory=dict)

    def documents(self, split_name: str, purpose: str) -> list[Document]:
        if purpose not in MAY_READ:
            raise RopelabError(f"unknown purpose {purpose!r}; one of {', '.join(MAY_READ)}")
        if split_name not in MAY_READ[purpose]:
            raise RopelabError(f"{purpose} may not read the {split_name} split (allowed: {sorted(MAY_READ[purpose])})")
        path = self.corpus_dir / f"{split_name}.jsonl"
        if not path.exists():
            raise RopelabError(f"{path} is missing: run `ropelab data` first")
        docs = [Document(**json.loads(line)) for line in path.read_text(encoding="utf-8").splitlines() if line]
        self.ledger.setdefault(purpose, set()).update(text_hash(d.text) for d in docs)
        return docs

    def manifest(self) -> dict:
        return json.loads((self.corpus_dir / "manifest.json").read_text())
