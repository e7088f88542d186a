"""Synthetic retrieval documents: seeded, the configured share, every question answered by a key stated before it,
built from the train split only, and no evaluation passkey can occur in the training data."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ropelab.config import DataConfig, load_config
from ropelab.data.corpus import manifest, prepare, split, with_retrieval
from ropelab.data.retrieval import SOURCE, TRAIN_KEY_RANGES, retrieval_documents
from ropelab.data.sources import Document, read_shakespeare_excerpt
from ropelab.eval.passkey import KEY_RANGE
from ropelab.eval.zoo import passkey_keys

TRAIN = [Document(f"t{i}", "s", ("the quick brown fox jumps over the lazy dog\n" * 60)) for i in range(4)]  # ASCII
QUESTION = re.compile(r"What is the (\w+(?: \w+)?) key\? The \1 key is (\d+)\.")


def test_same_seed_same_documents_other_seed_others():
    one, again, other = (retrieval_documents(TRAIN, 0.3, seed) for seed in (0, 0, 1))
    assert one == again and [d.text for d in one] != [d.text for d in other]
    assert all(d.source == SOURCE for d in one)


def test_share_of_characters_as_configured():
    train = TRAIN * 20  # documents are ~4 KB each: the share is met to within one of them
    for share in (0.1, 0.3, 0.5):
        docs = retrieval_documents(train, share, 0)
        made, plain = sum(len(d.text) for d in docs), sum(len(d.text) for d in train)
        assert abs(made / (made + plain) - share) < 0.02
    assert retrieval_documents(TRAIN, 0.0, 0) == []


def test_every_question_is_answered_by_the_key_stated_before_it():
    text = "".join(d.text for d in retrieval_documents(TRAIN * 20, 0.3, 0))
    questions = list(QUESTION.finditer(text))
    assert len(questions) > 50 and {m.group(1) for m in questions} > {"pass"}  # both episode kinds
    for m in questions:
        name, key = m.group(1), m.group(2)
        before = text[: m.start()]
        stated = before.rfind(f"The {name} key is {key}.")
        assert stated >= 0, m.group(0)
        # no other value was stated for the same name between the statement and the question
        assert not re.search(rf"The {name} key is (?!{key}\.)\d+\.", before[stated:])


def test_numbers_are_outside_the_evaluation_range_and_text_is_train_only():
    held_out = Document("h", "s", "ééé " * 500)
    cfg = DataConfig(sources=("s",), validation_docs=("h",), test_docs=("h2",), min_doc_chars=10, retrieval_share=0.3)
    splits = with_retrieval(split(TRAIN + [held_out, Document("h2", "s", "ñññ " * 500)], cfg), cfg)
    synthetic = [d for d in splits["train"] if d.source == SOURCE]
    assert synthetic and not any("é" in d.text or "ñ" in d.text for d in synthetic)
    numbers = {int(n) for d in synthetic for n in re.findall(r"\d+", d.text)}
    assert numbers and all(any(lo <= n <= hi for lo, hi in TRAIN_KEY_RANGES) for n in numbers)
    assert not any(KEY_RANGE[0] <= n <= KEY_RANGE[1] for n in numbers)
    assert manifest(splits, cfg)["retrieval"] == {"share": 0.3, "seed": 0, "documents": len(synthetic),
                                                  "chars": sum(len(d.text) for d in synthetic)}


def test_the_tiny_preset_evaluation_keys_never_occur_in_its_training_split():
    """The keys the tiny preset's passkey evaluation draws (every length up to the final one, every depth and
    trial, the control) are not whole numbers anywhere in a train split with retrieval documents (Shakespeare
    excerpts here, the share measured in docs/results.md)."""
    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml")
    data = DataConfig(sources=("shakespeare-excerpt",), validation_docs=("hamlet",), test_docs=("othello",),
                      retrieval_share=0.4, retrieval_seed=cfg.data.retrieval_seed)
    splits = with_retrieval(split(prepare(read_shakespeare_excerpt(), data), data), data)
    in_training = {int(n) for d in splits["train"] for n in re.findall(r"\d+", d.text)}
    L = cfg.model.context_length
    lengths = [m * L for m in (1, 2, 4, 8, 16, 32)]
    keys = set(passkey_keys(lengths, cfg.eval.passkey_depths, cfg.eval.passkey_trials,
                            torch.Generator().manual_seed(cfg.eval.seed)).values())
    assert len(keys) > 100 and not keys & in_training
