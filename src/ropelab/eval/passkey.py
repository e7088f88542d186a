"""Passkey retrieval (Mohtashami & Jaggi 2023) with the prompt of the LongRoPE and YaRN evaluators.

Reference: microsoft/LongRoPE evaluation/passkey.py @ c9e56aa (``generate_prompt``; the same as jquesnelle/yarn
eval/passkey.py @ 995db5b, from epfml/landmark-attention): five lines joined by newlines,

    TASK / filler prefix / "The pass key is K. Remember it. K is the pass key." / filler suffix / QUESTION

where both filler pieces are prefixes of the filler sentences repeated (joined by spaces), K =
``random.randint(1, 50000)``, the answer is greedy decoding of at most 10 new tokens, and it is correct when its
first integer equals K.

Named differences: the prompt is assembled from token ids (the five lines tokenized separately, the filler cut
at a token, not a character) so every prompt has exactly ``length`` tokens for any tokenizer; for a byte-level
tokenizer it is the reference text byte for byte. The needle sits at a grid of depths (the fraction of the
filler before it) rather than a uniformly random one, so accuracy is reported per (length, depth), each cell
with its trials and a Wilson 95% interval.

Controls: ``check_scorer`` reads every key back through the tokenizer and the parser before any model runs (a
broken scorer is an error, never a table of zeros); the positive control is the needle right before the
question at the shortest length (a cell every model that retrieves at all solves, so zeros elsewhere mean
the extension failed, not the scorer); ``needle=False`` leaves the needle out (the negative control: accuracy
must be at chance, 1 / 50000).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from ropelab.errors import RopelabError
from ropelab.rope.generation import greedy_generate, length_setting

TASK = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
        "I will quiz you about the important information there.")
FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key."
QUESTION = "What is the pass key? The pass key is"
KEY_RANGE = (1, 50000)  # random.randint(1, 50000): both ends included
MAX_NEW_TOKENS = 10
CONTROL_DEPTH = 1.0  # the positive control: the needle right before the question
Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


@dataclass(frozen=True)
class PasskeyPrompt:
    ids: list[int]
    key: int
    depth: float
    needle_start: int  # token index where the needle line begins (its leading newline)
    needle_length: int  # 0 when the needle was left out


@dataclass(frozen=True)
class PasskeyResult:
    length: int
    depth: float
    key: int
    answer: int | None
    continuation: str
    control: bool = False  # a positive-control trial, not a grid cell

    @property
    def correct(self) -> bool:
        return self.answer == self.key

    def to_dict(self) -> dict:
        return {**asdict(self), "correct": self.correct}


def _pieces(tokenizer, key: int | None) -> tuple[list[int], list[int], list[int]]:
    """(BOS + task line + newline, newline + needle + newline, newline + question); no needle: one newline."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    needle = tokenizer.encode("\n" + NEEDLE.format(key=key) + "\n") if key is not None else tokenizer.encode("\n")
    return bos + tokenizer.encode(TASK + "\n"), needle, tokenizer.encode("\n" + QUESTION)


def build_prompt(tokenizer, length: int, depth: float, key: int, *, needle: bool = True) -> PasskeyPrompt:
    """A prompt of exactly ``length`` tokens with the needle after ``depth`` of the filler (reference layout)."""
    if not 0.0 <= depth <= 1.0:
        raise RopelabError(f"passkey depth must be in [0, 1], got {depth}")
    head, middle, question = _pieces(tokenizer, key if needle else None)
    budget = length - len(head) - len(middle) - len(question)
    if budget < 0:
        raise RopelabError(f"passkey length {length} is shorter than the task line, needle and question "
                           f"({length - budget} tokens)")
    unit = tokenizer.encode(FILLER + " ")  # the reference joins the filler sentences with spaces
    stream = unit * (budget // len(unit) + 1)
    before = int(round(depth * budget))
    ids = head + stream[:before] + middle + stream[: budget - before] + question
    return PasskeyPrompt(ids, key, depth, len(head) + before, len(middle) if needle else 0)


KEY_PROBES = (1, 9, 99, 999, 9999, 12345, 31415, 49999, 50000)  # digit counts and BPE merges differ by key


def min_prompt_length(tokenizer) -> int:
    """The shortest prompt that holds the task line, any needle and the question."""
    return max(sum(map(len, _pieces(tokenizer, key))) for key in KEY_PROBES)


def first_integer(text: str) -> int | None:
    match = re.search(r"\d+", text)
    return int(match.group()) if match else None


def check_scorer(tokenizer, keys: Sequence[int]) -> None:
    """The scorer's own positive control, before any model runs: the answer a perfect model gives (" K. Remember
    it.") must decode through this tokenizer and parse back to K, for every key of the evaluation."""
    for key in keys:
        text = tokenizer.decode(tokenizer.encode(f" {key}. Remember it."))
        if first_integer(text) != key:
            raise RopelabError(f"the passkey scorer cannot read key {key} back through this tokenizer (it decodes "
                               f"to {text!r}): passkey accuracy would be meaningless")


@torch.no_grad()
def greedy_continuation(model, ids: Sequence[int], max_new_tokens: int = MAX_NEW_TOKENS) -> list[int]:
    """Greedy decoding with the KV cache (the model's installed RoPE is used for every position).

    A rotary module whose setting changes with the length (CLEX's t; a LongRoPE short/long pair crossing L)
    decodes through ``greedy_generate``, which rebuilds the cache when the setting changes; others use
    transformers' ``generate``."""
    if not ids:
        raise RopelabError("greedy decoding needs at least one context token")
    device = next(model.parameters()).device
    inputs = torch.tensor([list(ids)], device=device)
    if length_setting(model) is not None:
        return greedy_generate(model, inputs, max_new_tokens)
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    out = model.generate(inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=max_new_tokens,
                         do_sample=False, pad_token_id=pad)
    return out[0, inputs.shape[1]:].tolist()


def passkey_trial(model, tokenizer, length: int, depth: float, key: int, *, control: bool = False,
                  needle: bool = True) -> PasskeyResult:
    prompt = build_prompt(tokenizer, length, depth, key, needle=needle)
    text = tokenizer.decode(greedy_continuation(model, prompt.ids))
    return PasskeyResult(length, depth, key, first_integer(text), text, control)


def random_key(generator: torch.Generator) -> int:
    """A key from the reference range, 1..50000 inclusive."""
    return int(torch.randint(KEY_RANGE[0], KEY_RANGE[1] + 1, (1,), generator=generator))


RETRIEVAL_DEPTHS = (0.0, 0.25, 0.5, 0.75, 1.0)


def retrieval_check(model, tokenizer, length: int, keys_per_depth: int, generator: torch.Generator,
                    depths: Sequence[float] = RETRIEVAL_DEPTHS) -> tuple[PasskeyCell, PasskeyCell]:
    """Does this model retrieve at ``length`` (its own L, for a base)? The same prompts with and without the
    needle: (accuracy with it, accuracy without it). A model that retrieves scores high on the first; the second
    is the negative control and must stay at chance (1 / 50000), or the model is answering without reading."""
    keys = [(d, random_key(generator)) for d in depths for _ in range(keys_per_depth)]
    check_scorer(tokenizer, [k for _, k in keys])
    found = [sum(passkey_trial(model, tokenizer, length, d, k, needle=needle).correct for d, k in keys)
             for needle in (True, False)]
    return PasskeyCell(length, math.nan, found[0], len(keys)), PasskeyCell(length, math.nan, found[1], len(keys))


def wilson_interval(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (Wilson 1927; Newcombe 1998, method 3)."""
    if trials == 0:
        return 0.0, 1.0
    p, z2 = successes / trials, z * z
    denominator = 1 + z2 / trials
    centre = (p + z2 / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / denominator
    # exactly 0 (1) with no successes (failures): the closed form, which rounding would leave a hair off
    low = 0.0 if successes == 0 else max(0.0, centre - half)
    return low, 1.0 if successes == trials else min(1.0, centre + half)


@dataclass(frozen=True)
class PasskeyCell:
    """One (length, depth) cell: correct answers out of trials, with the Wilson 95% interval."""

    length: int
    depth: float
    correct: int
    trials: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.trials

    @property
    def interval(self) -> tuple[float, float]:
        return wilson_interval(self.correct, self.trials)

    def to_dict(self) -> dict:
        return {**asdict(self), "accuracy": self.accuracy, "ci95": list(self.interval)}


def cells(results: Sequence[PasskeyResult]) -> list[PasskeyCell]:
    """The cells of these trials (grid and control are kept apart by the caller), sorted by length, depth."""
    tally: dict[tuple[int, float], list[bool]] = {}
    for r in results:
        tally.setdefault((r.length, r.depth), []).append(r.correct)
    return [PasskeyCell(n, d, sum(v), len(v)) for (n, d), v in sorted(tally.items())]


def accuracy_table(results: Sequence[PasskeyResult]) -> dict[int, dict[float, float]]:
    """{length: {depth: accuracy}} of the grid trials (controls left out)."""
    table: dict[int, dict[float, float]] = {}
    for cell in cells([r for r in results if not r.control]):
        table.setdefault(cell.length, {})[cell.depth] = cell.accuracy
    return table


def control_cell(results: Sequence[PasskeyResult]) -> PasskeyCell | None:
    found = cells([r for r in results if r.control])
    return found[0] if found else None


def cells_by_length(results: Sequence[PasskeyResult]) -> dict[int, PasskeyCell]:
    """One cell per length, pooling every depth (depth reported as NaN)."""
    tally: dict[int, list[bool]] = {}
    for r in results:
        tally.setdefault(r.length, []).append(r.correct)
    return {n: PasskeyCell(n, math.nan, sum(v), len(v)) for n, v in sorted(tally.items())}
