"""Perplexity of a causal LM on held-out text, by two named protocols (truncated, and sliding with a stride as in the YaRN and LongRoPE evaluators).

``truncated``: the held-out token stream of each document is cut into non-overlapping segments of
``length − 1`` tokens; N segments are chosen by a seeded generator; each is one window with BOS prepended,
every position after BOS scored. (One window per "document", where a document is a segment: long held-out
books give many windows.)

``sliding``: for each chosen stretch of ``span`` tokens (BOS + text), windows of ``length`` tokens advance by
``stride``; each window scores only the tokens no earlier window scored, so every token is scored at most once
with at least ``length − stride`` tokens of context (a window's first token is never a target, as in the HF
perplexity guide's loop; with stride = length this is the truncated protocol on consecutive windows). No cap
on the number of windows (the LongRoPE code silently stops after 10).

Both are token-weighted: PPL = exp(total NLL / scored tokens). Fast path: windows batched under a token
budget, no KV cache, ``torch.no_grad``. ``reference_nll`` is the plain one-window-at-a-time HF forward it is
tested against.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from ropelab.errors import RopelabError

TOKENS_PER_BATCH = 16384  # batch rows so one forward holds at most this many tokens


@dataclass(frozen=True)
class PerplexityResult:
    protocol: str
    length: int
    num_windows: int
    nll: float
    tokens: int
    stride: int | None = None

    @property
    def ppl(self) -> float:
        return math.exp(self.nll)

    def to_dict(self) -> dict:
        return {**asdict(self), "ppl": self.ppl}


def _segments(token_docs: Sequence[Sequence[int]], size: int) -> list[tuple[int, int]]:
    return [(d, s) for d, doc in enumerate(token_docs) for s in range(0, len(doc) - size + 1, size)]


def _choose(candidates: list, count: int, generator: torch.Generator, what: str) -> list:
    if len(candidates) < count:
        raise RopelabError(f"the held-out split has {len(candidates)} {what}; {count} were asked for "
                           f"(add documents or lower eval.num_windows)")
    return sorted(torch.randperm(len(candidates), generator=generator)[:count].tolist())


def truncated_windows(token_docs: Sequence[Sequence[int]], length: int, num_windows: int, bos: int,
                      generator: torch.Generator) -> torch.Tensor:
    """(num_windows, length) windows: BOS + a random non-overlapping segment of length-1 tokens."""
    segments = _segments(token_docs, length - 1)
    chosen = _choose(segments, num_windows, generator, f"windows of {length} tokens")
    rows = [[bos, *token_docs[segments[i][0]][segments[i][1]: segments[i][1] + length - 1]] for i in chosen]
    return torch.tensor(rows, dtype=torch.long)


def sliding_stretches(token_docs: Sequence[Sequence[int]], span: int, count: int, bos: int,
                      generator: torch.Generator) -> torch.Tensor:
    """(count, span) stretches (BOS + span-1 tokens) to be scored by sliding windows."""
    return truncated_windows(token_docs, span, count, bos, generator)


def _batch_rows(length: int) -> int:
    return max(1, TOKENS_PER_BATCH // length)


@torch.no_grad()
def scored_nll(model, inputs: torch.Tensor, score_from: int = 1) -> torch.Tensor:
    """Per-row summed NLL of tokens at positions >= score_from (predicted from the previous position)."""
    device = next(model.parameters()).device
    batch = inputs.to(device)
    logits = model(input_ids=batch, use_cache=False).logits[:, score_from - 1: -1].float()
    target = batch[:, score_from:]
    nll = F.cross_entropy(logits.transpose(1, 2), target, reduction="none")
    return nll.sum(dim=1).cpu().double()


def window_nll(model, windows: torch.Tensor, batch_size: int | None = None) -> tuple[float, int]:
    """(summed NLL, scored tokens) over every position after BOS, batched."""
    rows = batch_size or _batch_rows(windows.shape[1])
    total = sum(scored_nll(model, windows[i: i + rows]).sum().item() for i in range(0, windows.shape[0], rows))
    return total, windows.shape[0] * (windows.shape[1] - 1)


def perplexity(model, windows: torch.Tensor, batch_size: int | None = None) -> PerplexityResult:
    """Protocol ``truncated`` on prepared windows."""
    total, count = window_nll(model, windows, batch_size)
    return PerplexityResult("truncated", windows.shape[1], windows.shape[0], total / count, count)


def sliding_plan(span: int, length: int, stride: int) -> list[tuple[int, int, int]]:
    """[(begin, end, score_from)]: window [begin, end) scores positions >= begin + score_from."""
    if not 0 < stride <= length:
        raise RopelabError(f"stride must be in [1, window length {length}], got {stride}")
    plan, scored_until, begin = [], 1, 0
    while scored_until < span:
        end = min(begin + length, span)
        # a window's first token has no context inside the window: it is never a target (as in HF's loop)
        plan.append((begin, end, max(1, scored_until - begin)))
        scored_until = end
        begin += stride
    return plan


def sliding_perplexity(model, stretches: torch.Tensor, length: int, stride: int) -> PerplexityResult:
    """Protocol ``sliding`` over prepared stretches: every token after BOS scored once."""
    total, count, windows = 0.0, 0, 0
    for begin, end, score_from in sliding_plan(stretches.shape[1], length, stride):
        piece = stretches[:, begin:end]
        rows = _batch_rows(piece.shape[1])
        for i in range(0, piece.shape[0], rows):
            total += scored_nll(model, piece[i: i + rows], score_from).sum().item()
        count += piece.shape[0] * (piece.shape[1] - score_from)
        windows += piece.shape[0]
    return PerplexityResult("sliding", length, windows, total / count, count, stride)


@torch.no_grad()
def reference_nll(model, windows: torch.Tensor) -> tuple[float, int]:
    """The plain HF way, one window at a time: mean loss from ``labels`` × scored tokens."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for row in windows:
        ids = row[None].to(device)
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss.item()
        total += loss * (ids.shape[1] - 1)
        count += ids.shape[1] - 1
    return total, count
