"""Passkey retrieval (Mohtashami & Jaggi 2023; the LongRoPE/CLEX protocol).

Filler text repeated to the target length, the needle "The pass key is K. Remember it. K is the pass key."
at a chosen depth, the question "What is the pass key? The pass key is" at the end; greedy decoding of at most
10 tokens; the first integer in the continuation must equal K. Prompts are built from token ids, so every
prompt has exactly ``length`` tokens for any tokenizer (byte-level or HF).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch

from ropelab.errors import RopelabError
from ropelab.rope.generation import greedy_generate
from ropelab.rope.modules import rotary_module

FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
NEEDLE = "The pass key is {key}. Remember it. {key} is the pass key. "
QUESTION = "What is the pass key? The pass key is"
MAX_NEW_TOKENS = 10


@dataclass(frozen=True)
class PasskeyPrompt:
    ids: list[int]
    key: int
    depth: float
    needle_start: int  # token index where the needle begins
    needle_length: int


@dataclass(frozen=True)
class PasskeyResult:
    length: int
    depth: float
    key: int
    answer: int | None
    continuation: str

    @property
    def correct(self) -> bool:
        return self.answer == self.key

    def to_dict(self) -> dict:
        return {**asdict(self), "correct": self.correct}


def build_prompt(tokenizer, length: int, depth: float, key: int) -> PasskeyPrompt:
    """A prompt of exactly ``length`` tokens with the needle starting at ``depth`` of the filler."""
    if not 0.0 <= depth <= 1.0:
        raise RopelabError(f"passkey depth must be in [0, 1], got {depth}")
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    needle, question = tokenizer.encode(NEEDLE.format(key=key)), tokenizer.encode(QUESTION)
    unit = tokenizer.encode(FILLER)
    budget = length - len(bos) - len(needle) - len(question)
    if budget < 0:
        raise RopelabError(f"passkey length {length} is shorter than the needle and question "
                           f"({length - budget} tokens)")
    stream = unit * (budget // len(unit) + 1)
    before = int(round(depth * budget))
    ids = bos + stream[:before] + needle + stream[: budget - before] + question
    return PasskeyPrompt(ids, key, depth, len(bos) + before, len(needle))


def min_prompt_length(tokenizer) -> int:
    """The shortest prompt that holds BOS, a 5-digit needle and the question."""
    return 1 + len(tokenizer.encode(NEEDLE.format(key=99999))) + len(tokenizer.encode(QUESTION))


def first_integer(text: str) -> int | None:
    match = re.search(r"\d+", text)
    return int(match.group()) if match else None


@torch.no_grad()
def greedy_continuation(model, ids: Sequence[int], max_new_tokens: int = MAX_NEW_TOKENS) -> list[int]:
    """Greedy decoding with the KV cache (the model's installed RoPE is used for every position).

    A rotary module whose setting changes with the length (CLEX) decodes through ``greedy_generate``, which
    rebuilds the cache when the setting changes; others use transformers' ``generate``."""
    device = next(model.parameters()).device
    inputs = torch.tensor([list(ids)], device=device)
    if hasattr(rotary_module(model), "setting_for_length"):
        return greedy_generate(model, inputs, max_new_tokens)
    out = model.generate(inputs, attention_mask=torch.ones_like(inputs), max_new_tokens=max_new_tokens,
                         do_sample=False, pad_token_id=model.config.pad_token_id or 0)
    return out[0, inputs.shape[1]:].tolist()


def passkey_trial(model, tokenizer, length: int, depth: float, key: int) -> PasskeyResult:
    prompt = build_prompt(tokenizer, length, depth, key)
    text = tokenizer.decode(greedy_continuation(model, prompt.ids))
    return PasskeyResult(length, depth, key, first_integer(text), text)


def random_key(generator: torch.Generator, digits: int = 5) -> int:
    low = 10 ** (digits - 1)
    return int(torch.randint(low, 10 * low, (1,), generator=generator))


def accuracy_table(results: Sequence[PasskeyResult]) -> dict[int, dict[float, float]]:
    """{length: {depth: accuracy}}."""
    table: dict[int, dict[float, list[bool]]] = {}
    for r in results:
        table.setdefault(r.length, {}).setdefault(r.depth, []).append(r.correct)
    return {n: {d: sum(v) / len(v) for d, v in sorted(row.items())} for n, row in sorted(table.items())}
