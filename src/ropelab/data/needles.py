"""Needle documents for LongRoPE2's needle-driven perplexity (Shang et al. 2025 §3.2), built from ropelab's own
held-out corpora (the authors' builder is not public).

A sample is exactly ``length`` tokens: [BOS] haystack-with-needle question answer. The haystack is a span of
ONE split's documents (joined with EOS); the needle "The special magic number is K." sits at a seeded depth
near the start (default the first 10 %); the question at the end asks for it and the answer K closes the
sample. Only the answer tokens are scored (``ropelab.eval.needle``), so the loss measures exactly the
long-range retrieval that average perplexity dilutes. Parts are tokenized separately and concatenated, so the
answer's tokens are the same ids in the needle and at the end, and their span is known exactly.

``shuffle_answer`` writes a digit permutation of K (≠ K) into the needle while the answer stays K: the control
the tests use (a model that retrieves must do worse on it).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from ropelab.data.corpus import SPLITS
from ropelab.data.sources import Document
from ropelab.errors import RopelabError
from ropelab.identity import sha256_bytes

NEEDLE = ("The special magic number is ", ". Remember it. ")
QUESTION = " What is the special magic number? The special magic number is "
HELD_OUT = ("validation", "test")  # needles never come from the training split


@dataclass(frozen=True)
class NeedleSample:
    input_ids: tuple[int, ...]
    answer_start: int  # the answer's tokens are input_ids[answer_start:answer_end] (the end of the sample)
    answer_end: int
    needle_at: int  # where the needle starts
    key: str  # the asked answer
    written: str  # the number written into the needle (= key unless shuffled)


@dataclass(frozen=True)
class NeedleSet:
    split: str
    length: int
    seed: int
    depth: tuple[float, float]
    samples: tuple[NeedleSample, ...]

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> NeedleSet:
        data = json.loads(text)
        samples = tuple(NeedleSample(**{**s, "input_ids": tuple(s["input_ids"])}) for s in data.pop("samples"))
        return cls(**{**data, "depth": tuple(data["depth"]), "samples": samples})

    def digest(self) -> str:
        return sha256_bytes(self.to_json().encode("utf-8"))


def _shuffled(key: str, rng: random.Random) -> str:
    if len(set(key)) < 2:
        raise RopelabError(f"cannot shuffle the single-digit-kind key {key!r}")
    while True:
        digits = list(key)
        rng.shuffle(digits)
        if "".join(digits) != key:
            return "".join(digits)


def min_needle_length(encode: Callable[[str], list[int]], bos: int | None, digits: int = 5) -> int:
    """The shortest sample that holds BOS, the needle, the question, the answer and one haystack token."""
    number = "9" * digits
    parts = encode(NEEDLE[0]) + encode(number) + encode(NEEDLE[1]) + encode(QUESTION) + encode(number)
    return len(parts) + (bos is not None) + 1


def build_needles(documents: Sequence[Document], split: str, encode: Callable[[str], list[int]], *, length: int,
                  count: int, seed: int, bos: int | None, eos: int | None, depth: tuple[float, float] = (0.0, 0.1),
                  digits: int = 5, shuffle_answer: bool = False) -> NeedleSet:
    """``count`` needle samples of ``length`` tokens from ``documents`` (all of ONE held-out split, named by
    ``split``), chosen by ``random.Random(seed)``; the same inputs give the same set."""
    if split not in HELD_OUT:
        raise RopelabError(f"needles come from a held-out split ({', '.join(HELD_OUT)}), got {split!r}"
                           + ("" if split in SPLITS else f"; splits are {', '.join(SPLITS)}"))
    if not 0 <= depth[0] <= depth[1] <= 1:
        raise RopelabError(f"needle depth must be 0 ≤ low ≤ high ≤ 1, got {list(depth)}")
    rng = random.Random(seed)
    stream: list[int] = []
    for doc in documents:
        stream.extend(encode(doc.text))
        if eos is not None:
            stream.append(eos)
    question = encode(QUESTION)
    samples = []
    for _ in range(count):
        key = str(rng.randrange(10 ** (digits - 1), 10 ** digits))
        written = _shuffled(key, rng) if shuffle_answer else key
        needle = encode(NEEDLE[0]) + encode(written) + encode(NEEDLE[1])
        answer = encode(key)
        prefix = [bos] if bos is not None else []
        hay = length - len(prefix) - len(needle) - len(question) - len(answer)
        if hay < 1 or hay > len(stream):
            raise RopelabError(f"needle length {length} needs {max(hay, 1)} haystack tokens; the {split} split "
                               f"has {len(stream)}")
        start = rng.randrange(0, len(stream) - hay + 1)
        haystack = stream[start: start + hay]
        at = int(round(hay * rng.uniform(*depth)))
        ids = prefix + haystack[:at] + needle + haystack[at:] + question + answer
        samples.append(NeedleSample(tuple(ids), length - len(answer), length, len(prefix) + at, key, written))
    return NeedleSet(split, length, seed, (float(depth[0]), float(depth[1])), tuple(samples))
