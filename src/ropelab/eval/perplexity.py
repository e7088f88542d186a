"""Perplexity of a causal LM on held-out windows (../shared/algorithms.md §5).

Protocol ``truncated``: the held-out token stream of each document is cut into non-overlapping segments of
``length − 1`` tokens; N segments are chosen by a seeded generator; each is scored as one window with BOS
prepended. PPL = exp(token-weighted mean NLL). Long held-out documents thus give many windows.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ropelab.errors import RopelabError


@dataclass(frozen=True)
class PerplexityResult:
    protocol: str
    length: int
    num_windows: int
    nll: float
    tokens: int

    @property
    def ppl(self) -> float:
        return math.exp(self.nll)


def truncated_windows(token_docs: Sequence[Sequence[int]], length: int, num_windows: int, bos: int,
                      generator: torch.Generator) -> torch.Tensor:
    """(num_windows, length) windows: BOS + a random non-overlapping segment of length-1 tokens."""
    segment = length - 1
    candidates = [(d, s) for d, doc in enumerate(token_docs) for s in range(0, len(doc) - segment + 1, segment)]
    if len(candidates) < num_windows:
        raise RopelabError(f"the held-out split has {len(candidates)} windows of {length} tokens; "
                           f"{num_windows} were asked for (add documents or lower eval.num_windows)")
    chosen = torch.randperm(len(candidates), generator=generator)[:num_windows].tolist()
    rows = [[bos, *token_docs[candidates[i][0]][candidates[i][1]: candidates[i][1] + segment]] for i in sorted(chosen)]
    return torch.tensor(rows, dtype=torch.long)


@torch.no_grad()
def window_nll(model, windows: torch.Tensor, batch_size: int = 8) -> tuple[float, int]:
    """(summed NLL, scored tokens) of next-token prediction over every position after BOS."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, windows.shape[0], batch_size):
        batch = windows[start: start + batch_size].to(device)
        logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
        target = batch[:, 1:]
        total += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), reduction="sum").item()
        count += target.numel()
    return total, count


def perplexity(model, windows: torch.Tensor, batch_size: int = 8) -> PerplexityResult:
    total, count = window_nll(model, windows, batch_size)
    return PerplexityResult("truncated", windows.shape[1], windows.shape[0], total / count, count)
