"""Splits by whole document, deterministic; the test split is never handed to training or search."""

from __future__ import annotations

import pytest

from ropelab.config import DataConfig
from ropelab.data.corpus import CorpusReader, prepare, split, text_hash, write_corpus
from ropelab.data.sources import Document
from ropelab.errors import RopelabError

DOCS = [Document(f"doc{i}", "s", f"text of document {i} " * 200) for i in range(6)]
CFG = DataConfig(sources=("s",), validation_docs=("doc1",), test_docs=("doc4", "absent"), min_doc_chars=100)


def test_split_by_whole_document_and_sorted():
    splits = split(prepare(reversed(DOCS), CFG), CFG)
    assert [d.name for d in splits["train"]] == ["doc0", "doc2", "doc3", "doc5"]
    assert [d.name for d in splits["validation"]] == ["doc1"] and [d.name for d in splits["test"]] == ["doc4"]


def test_same_inputs_write_identical_files(tmp_path):
    for out in ("a", "b"):
        write_corpus(split(prepare(DOCS, CFG), CFG), CFG, tmp_path / out)
    for name in ("train.jsonl", "validation.jsonl", "test.jsonl", "manifest.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_missing_heldout_documents_and_short_corpus_are_errors():
    with pytest.raises(RopelabError, match="none of data.test_docs"):
        split(DOCS, DataConfig(validation_docs=("doc1",), test_docs=("zzz",)))
    with pytest.raises(RopelabError, match="train split is empty"):
        split(DOCS[:2], DataConfig(validation_docs=("doc0",), test_docs=("doc1",)))
    assert prepare(DOCS, DataConfig(min_doc_chars=10**6)) == []


def test_reader_refuses_test_split_for_training_and_search(tmp_path):
    write_corpus(split(prepare(DOCS, CFG), CFG), CFG, tmp_path)
    reader = CorpusReader(tmp_path)
    for purpose in ("pretrain", "finetune", "search"):
        with pytest.raises(RopelabError, match="may not read the test split"):
            reader.documents("test", purpose)
    reader.documents("train", "pretrain")
    reader.documents("validation", "search")
    test_hashes = {text_hash(d.text) for d in reader.documents("test", "evaluate")}
    assert reader.ledger["pretrain"] and not (reader.ledger["pretrain"] | reader.ledger["search"]) & test_hashes
