"""Synthetic retrieval documents mixed into a pretraining corpus, so a small base model learns to copy a far
token (an induction/copy circuit) and passkey evaluation can tell a good context extension from a bad one.

A document is ordinary training text with retrieval *episodes* inserted at random points. An episode states
one or more keys and, after a stretch of ordinary text, asks for one of them and answers it:

- passkey style: ``The pass key is K. Remember it. K is the pass key.`` … ``What is the pass key? The pass key
  is K.`` (the sentences of the passkey evaluation, so the base knows the format; never its filler or its keys);
- key–value style: two to four named keys (``The amber key is K.``), one of them asked for by name: the model
  must match the name, not only the template;
- list style: two to four numbers said, then said again (every digit of the repeat is predictable only by
  copying: the densest signal for an induction circuit).

Keys are whole numbers outside the evaluation's range (``TRAIN_KEY_RANGES`` against
``ropelab.eval.passkey.KEY_RANGE``), so no evaluation key can occur in training data; names are drawn from a
fixed list. The gap between a key and its question is log-uniform up to ``max_gap`` characters: most episodes fit
a pretraining block, the long ones give fine-tuning at longer lengths retrievals to learn from. Everything is
drawn from ``random.Random(seed)``: the same inputs give the same documents, byte for byte.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

from ropelab.data.sources import Document
from ropelab.errors import RopelabError
from ropelab.eval.passkey import KEY_RANGE

SOURCE = "synthetic-retrieval"
TRAIN_KEY_RANGES = ((50001, 99999), (100000, 999999))  # 5 and 6 digits, never in KEY_RANGE (1..50000)
NAMES = ("amber", "silver", "iron", "crimson", "north", "garden", "river", "tower", "winter", "copper", "violet",
         "harbour", "stone", "velvet", "falcon", "orchard")
PASSKEY = ("The pass key is {key}. Remember it. {key} is the pass key.", "What is the pass key? The pass key is {key}.")
NAMED = ("The {name} key is {key}.", "What is the {name} key? The {name} key is {key}.")
LISTED = ("Remember the numbers {keys}.", "The numbers were {keys}.")
SEPARATORS = ("\n", " ")

assert all(hi < KEY_RANGE[0] or lo > KEY_RANGE[1] for lo, hi in TRAIN_KEY_RANGES), "training keys must not overlap"


def training_key(rng: random.Random) -> int:
    lo, hi = TRAIN_KEY_RANGES[rng.randrange(len(TRAIN_KEY_RANGES))]
    return rng.randint(lo, hi)


class _Passages:
    """Random stretches of the training text as written (line breaks kept), cut at whitespace (words stay whole)."""

    def __init__(self, texts: Sequence[str], rng: random.Random):
        self.text = "\n".join(texts)
        if len(self.text) < 1000:
            raise RopelabError(f"retrieval documents need at least 1000 characters of training text, got "
                               f"{len(self.text)}")
        self.rng = rng

    def take(self, chars: int) -> str:
        if chars <= 0:
            return ""
        chars = min(chars, len(self.text) // 2)
        start = self.rng.randrange(0, len(self.text) - chars)
        words = self.text[start: start + chars].split(" ")
        return " ".join(words[1:-1]).strip() if len(words) > 2 else ""


def _gap(rng: random.Random, max_gap: int) -> int:
    """Log-uniform on [1, max_gap] characters (0 one time in ten: the question right after the key)."""
    return 0 if rng.random() < 0.1 else int(math.exp(rng.uniform(0.0, math.log(max_gap))))


def episode(rng: random.Random, passages: _Passages, max_gap: int) -> str:
    sep = lambda: rng.choice(SEPARATORS)  # noqa: E731
    kind = rng.random()
    if kind < 0.4:
        key = training_key(rng)
        statement, question = (s.format(key=key) for s in PASSKEY)
        return statement + sep() + passages.take(_gap(rng, max_gap)) + sep() + question
    if kind < 0.7:  # a list said twice: every number of the repeat can only be predicted by copying
        keys = ", ".join(str(training_key(rng)) for _ in range(rng.randint(2, 4)))
        statement, repeat = (s.format(keys=keys) for s in LISTED)
        return statement + sep() + passages.take(_gap(rng, max_gap)) + sep() + repeat
    names = rng.sample(NAMES, rng.randint(2, 4))
    keys = {name: training_key(rng) for name in names}
    parts = []
    for name in names:
        parts += [NAMED[0].format(name=name, key=keys[name]), passages.take(_gap(rng, max_gap) // len(names))]
    asked = rng.choice(names)
    return sep().join(p for p in parts if p) + sep() + NAMED[1].format(name=asked, key=keys[asked])


def retrieval_documents(train: Sequence[Document], share: float, seed: int, *, doc_chars: int = 4096,
                        max_gap: int = 1500, text_between: int = 80) -> list[Document]:
    """Synthetic documents making up ``share`` of the characters of ``train`` + them, built from ``train``'s text.

    Each is ~``doc_chars`` characters: ordinary text (up to ``text_between`` characters at a time) and episodes,
    alternating. ``share`` 0 gives none."""
    if not 0.0 <= share < 1.0:
        raise RopelabError(f"data.retrieval_share must be in [0, 1), got {share}")
    if share == 0.0:
        return []
    rng = random.Random(seed)
    passages = _Passages([d.text for d in train], rng)
    target = share / (1.0 - share) * sum(len(d.text) for d in train)
    documents, made = [], 0
    while made < target:
        pieces, size = [], 0
        while size < doc_chars:
            piece = passages.take(rng.randint(0, text_between)) + "\n" + episode(rng, passages, max_gap) + "\n"
            pieces.append(piece)
            size += len(piece)
        text = "".join(pieces)
        documents.append(Document(f"retrieval-{len(documents):05d}", SOURCE, text))
        made += len(text)
    return documents
