"""Needle perplexity: the loss on a needle's answer tokens only (LongRoPE2's needle-driven PPL; the reference
code's ``cus_labels``: every other label masked). Samples come from ``ropelab.data.needles``."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from ropelab.data.needles import NeedleSet
from ropelab.errors import RopelabError
from ropelab.eval.perplexity import TOKENS_PER_BATCH
from ropelab.eval.zoo import effective_setting, install_setting
from ropelab.rope.modules import uninstall_rope


def needle_tensors(needles: NeedleSet) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids (N, length), answer_mask (N, length)): the mask is True at the answer's target positions."""
    ids = torch.tensor([s.input_ids for s in needles.samples], dtype=torch.long)
    mask = torch.zeros_like(ids, dtype=torch.bool)
    for row, s in enumerate(needles.samples):
        mask[row, s.answer_start: s.answer_end] = True
    mask[:, 0] = False  # position 0 is never predicted
    return ids, mask


def answer_windows(needles: NeedleSet) -> tuple[torch.Tensor, int]:
    """(input_ids (N, length), the answer's first position): the needle set as fitness windows scored from the
    answer on (``ModelScorer(score_from=...)``), which needs every answer to start at the same position."""
    starts = {s.answer_start for s in needles.samples}
    if len(starts) != 1:
        raise RopelabError(f"needle answers start at {len(starts)} different positions (the tokenizer splits the "
                           "numbers unevenly); needle fitness needs one answer length: use search.fitness ppl")
    return torch.tensor([s.input_ids for s in needles.samples], dtype=torch.long), starts.pop()


def answer_nll(logits: torch.Tensor, input_ids: torch.Tensor, answer_mask: torch.Tensor) -> torch.Tensor:
    """Per-row summed NLL of the masked targets: logits at t − 1 predict token t; every other label is
    ignored (−100), so it cannot contribute."""
    labels = input_ids.masked_fill(~answer_mask, -100)[:, 1:]
    nll = F.cross_entropy(logits[:, :-1].float().transpose(1, 2), labels, reduction="none", ignore_index=-100)
    return nll.sum(dim=1).double()


@torch.no_grad()
def needle_nll(model, input_ids: torch.Tensor, answer_mask: torch.Tensor) -> torch.Tensor:
    """Per-row summed answer NLL of one forward pass."""
    device = next(model.parameters()).device
    logits = model(input_ids=input_ids.to(device), use_cache=False).logits
    return answer_nll(logits.cpu(), input_ids, answer_mask)


@dataclass(frozen=True)
class NeedleResult:
    split: str
    length: int
    samples: int
    nll: float  # mean NLL per answer token
    tokens: int

    @property
    def ppl(self) -> float:
        return math.exp(self.nll)

    def to_dict(self) -> dict:
        return {**asdict(self), "ppl": self.ppl}


def needle_perplexity(model, needles: NeedleSet, tokens_per_batch: int = TOKENS_PER_BATCH) -> NeedleResult:
    """Needle PPL of ``model`` as installed: exp(answer-token-weighted mean NLL), batched."""
    ids, mask = needle_tensors(needles)
    rows = max(1, tokens_per_batch // ids.shape[1])
    total = sum(needle_nll(model, ids[i: i + rows], mask[i: i + rows]).sum().item()
                for i in range(0, ids.shape[0], rows))
    tokens = int(mask.sum())
    return NeedleResult(needles.split, needles.length, ids.shape[0], total / tokens, tokens)


def evaluate_needle_grid(model, basics, methods: Mapping[str, Callable], needle_sets: Mapping[int, NeedleSet],
                         on_cell: Callable[[str, NeedleResult], None] | None = None) -> dict[str, dict[int, float]]:
    """Needle PPL of every zoo method (``ropelab.eval.zoo`` settings) at every length: {method: {length: PPL}};
    the same samples for every method, a setting computing the same RoPE as one already scored reuses its result."""
    table: dict[str, dict[int, float]] = {}
    done: dict = {}
    try:
        for name, make in methods.items():
            for length, needles in sorted(needle_sets.items()):
                setting = make(length, basics)
                key = effective_setting(setting, length, basics)
                if key is None or (key, length) not in done:
                    install_setting(model, setting)
                    done[(key, length)] = needle_perplexity(model, needles)
                table.setdefault(name, {})[length] = done[(key, length)].ppl
                if on_cell is not None:
                    on_cell(name, done[(key, length)])
    finally:
        uninstall_rope(model)
    return table
