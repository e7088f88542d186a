"""Perplexity of a causal LM on held-out text, by two named protocols (truncated, and sliding with a stride as in the YaRN and LongRoPE evaluators).

``truncated``: the held-out token stream of each document is cut into non-overlapping segments; N segments are
chosen by a seeded generator; each is one window of ``length`` tokens with BOS first (when the tokenizer has
one), every position after the first scored. (One window per "document", where a document is a segment: long
held-out books give many windows.)

``sliding``: N whole documents are chosen by a seeded generator (the same documents at every length) and each is
scored from its first token to its last by windows of ``length`` tokens that advance by ``stride``; each window
scores only the tokens no earlier window scored, so every token is scored once, with at least
``length − stride`` tokens of context. No cap on the number of windows (the LongRoPE code silently stops after
10). Where BOS goes is a named choice (``SLIDING_BOS``):

- ``every_window`` (default): BOS, then ``length − 1`` document tokens, in every window, as the YaRN evaluator
  does (jquesnelle/yarn eval/perplexity.py @ 995db5b, ``add_start_token``; copied by microsoft/LongRoPE
  evaluation/perplexity.py @ c9e56aa); the document's first token is predicted from BOS.
- ``first_window``: BOS once, before the document, and windows over that stream (the transformers perplexity
  guide's loop); a window's first token is never a target.

A tokenizer without BOS (Qwen2) gets neither: windows are plain document tokens and a window's (and the
document's) first token is never a target. Every result names its protocol, stride and BOS placement.

Both protocols are token-weighted: PPL = exp(total NLL / scored tokens) (the references average per-window mean
losses). Fast path: windows batched under a token budget, no KV cache, ``torch.no_grad``, the loss from hidden states in
chunks of positions (memory bounded by the chunk, not the length). ``reference_nll`` is
the plain one-window-at-a-time HF forward it is tested against.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass

import torch

from ropelab.chunked_loss import LOSS_CHUNK_TOKENS, chunked_nll
from ropelab.errors import RopelabError

TOKENS_PER_BATCH = 16384  # batch rows so one forward holds at most this many tokens
SLIDING_BOS = ("every_window", "first_window")  # EvalConfig.sliding_bos; "none" when the tokenizer has no BOS
BOS_WORDS = {"every_window": "BOS on every window", "first_window": "BOS before each document only",
             "none": "no BOS (the tokenizer has none)"}


@dataclass(frozen=True)
class PerplexityResult:
    protocol: str
    length: int
    num_windows: int
    nll: float
    tokens: int
    stride: int | None = None
    bos: str = "every_window"  # every_window, first_window or none (SLIDING_BOS; truncated: every_window or none)
    documents: int | None = None  # sliding: whole documents scored

    @property
    def ppl(self) -> float:
        return math.exp(self.nll)

    @property
    def protocol_words(self) -> str:
        """The protocol in words: which windows, the stride, where BOS went."""
        if self.protocol == "truncated":
            return f"truncated windows, {BOS_WORDS[self.bos]}"
        return f"sliding windows over whole documents, stride {self.stride}, {BOS_WORDS[self.bos]}"

    def describe(self) -> str:
        """The protocol and how much text, for every report that shows the number."""
        amount = (f"{self.num_windows} windows" if self.documents is None
                  else f"{self.documents} documents, {self.num_windows} windows")
        return f"{self.protocol_words} ({amount}, {self.tokens} scored tokens)"

    def to_dict(self) -> dict:
        return {**asdict(self), "ppl": self.ppl, "described": self.describe()}


def bos_placement(bos: int | None, sliding_bos: str = "every_window") -> str:
    """The placement actually used: the configured one, or none for a tokenizer without BOS."""
    if sliding_bos not in SLIDING_BOS:
        raise RopelabError(f"sliding BOS placement must be one of {', '.join(SLIDING_BOS)}, got {sliding_bos!r}")
    return "none" if bos is None else sliding_bos


def _prefix(bos: int | None) -> list[int]:
    return [] if bos is None else [bos]


def _segments(token_docs: Sequence[Sequence[int]], size: int) -> list[tuple[int, int]]:
    return [(d, s) for d, doc in enumerate(token_docs) for s in range(0, len(doc) - size + 1, size)]


def _choose(candidates: list, count: int, generator: torch.Generator, what: str) -> list:
    if len(candidates) < count:
        raise RopelabError(f"the held-out split has {len(candidates)} {what}; {count} were asked for "
                           f"(add documents or lower eval.num_windows)")
    return sorted(torch.randperm(len(candidates), generator=generator)[:count].tolist())


def truncated_windows(token_docs: Sequence[Sequence[int]], length: int, num_windows: int, bos: int | None,
                      generator: torch.Generator) -> torch.Tensor:
    """(num_windows, length) windows: BOS (if any) + a random non-overlapping segment of the rest."""
    head = _prefix(bos)
    size = length - len(head)
    segments = _segments(token_docs, size)
    chosen = _choose(segments, num_windows, generator, f"windows of {length} tokens")
    rows = [[*head, *token_docs[segments[i][0]][segments[i][1]: segments[i][1] + size]] for i in chosen]
    return torch.tensor(rows, dtype=torch.long)


def choose_documents(token_docs: Sequence[Sequence[int]], min_tokens: int, count: int,
                     generator: torch.Generator) -> list[list[int]]:
    """``count`` whole documents of at least ``min_tokens`` tokens, chosen by the generator (sliding protocol;
    the references filter with ``--dataset-min-tokens`` likewise)."""
    long_enough = [d for d, doc in enumerate(token_docs) if len(doc) >= min_tokens]
    chosen = _choose(long_enough, count, generator, f"documents of at least {min_tokens} tokens")
    return [list(token_docs[long_enough[i]]) for i in chosen]


def _batch_rows(length: int) -> int:
    return max(1, TOKENS_PER_BATCH // length)


@torch.no_grad()
def scored_nll(model, inputs: torch.Tensor, score_from: int = 1, chunk_tokens: int = LOSS_CHUNK_TOKENS) -> torch.Tensor:
    """Per-row summed NLL of tokens at positions >= score_from (predicted from the previous position), from the
    hidden states in chunks of positions (``ropelab.chunked_loss``): never the whole sequence's logits."""
    device = next(model.parameters()).device
    return chunked_nll(model, inputs.to(device), score_from, chunk_tokens).cpu().double()


def window_nll(model, windows: torch.Tensor, batch_size: int | None = None) -> tuple[float, int]:
    """(summed NLL, scored tokens) over every position after the first, batched."""
    rows = batch_size or _batch_rows(windows.shape[1])
    total = sum(scored_nll(model, windows[i: i + rows]).sum().item() for i in range(0, windows.shape[0], rows))
    return total, windows.shape[0] * (windows.shape[1] - 1)


def perplexity(model, windows: torch.Tensor, batch_size: int | None = None, bos: str = "every_window") -> PerplexityResult:
    """Protocol ``truncated`` on prepared windows (``bos``: "none" when they carry no BOS)."""
    total, count = window_nll(model, windows, batch_size)
    return PerplexityResult("truncated", windows.shape[1], windows.shape[0], total / count, count, bos=bos)


def sliding_plan(span: int, length: int, stride: int, first_target: int = 1) -> list[tuple[int, int, int]]:
    """[(begin, end, score_from)] over a stream of ``span`` tokens: window [begin, end) scores the stream's
    positions >= begin + score_from; positions before ``first_target`` are never scored."""
    if not 0 < stride <= length:
        raise RopelabError(f"eval.stride must be in [1, {length}] (the window's document tokens), got {stride}")
    plan, scored_until, begin = [], first_target, 0
    while scored_until < span:
        end = min(begin + length, span)
        # a window's first token has no context inside the window: never a target, unless BOS precedes it
        plan.append((begin, end, max(first_target, scored_until - begin)))
        scored_until = end
        begin += stride
    return plan


@dataclass(frozen=True)
class SlidingSet:
    """Whole documents prepared for the sliding protocol at one window length: each document as the stream the
    windows run over, the prefix every window gets, and the windows' plan."""

    length: int
    stride: int
    bos: str  # SLIDING_BOS or "none"
    streams: tuple[tuple[int, ...], ...]
    prefix: tuple[int, ...]
    plans: tuple[tuple[tuple[int, int, int], ...], ...]

    def groups(self) -> dict[tuple[int, int], list[tuple[int, int, int]]]:
        """(window length, first scored position) -> [(document, begin, end)]: windows that batch together."""
        out: dict[tuple[int, int], list[tuple[int, int, int]]] = {}
        for d, plan in enumerate(self.plans):
            for begin, end, score_from in plan:
                out.setdefault((len(self.prefix) + end - begin, len(self.prefix) + score_from), []).append((d, begin, end))
        return out

    def forward_lengths(self) -> set[int]:
        """The exact sequence lengths of the forward passes (what a length-dependent RoPE sees)."""
        return {n for n, _ in self.groups()}

    def rows(self, windows: Sequence[tuple[int, int, int]]) -> torch.Tensor:
        return torch.tensor([[*self.prefix, *self.streams[d][b:e]] for d, b, e in windows], dtype=torch.long)


def sliding_set(docs: Sequence[Sequence[int]], length: int, stride: int, bos: int | None,
                sliding_bos: str = "every_window") -> SlidingSet:
    """The windows of whole documents: see the module docstring for the three BOS placements."""
    placement = bos_placement(bos, sliding_bos)
    if placement == "every_window":  # YaRN: BOS + length-1 document tokens; the first token is a target
        streams, prefix, size, first = [tuple(d) for d in docs], (bos,), length - 1, 0
    elif placement == "first_window":
        streams, prefix, size, first = [(bos, *d) for d in docs], (), length, 1
    else:
        streams, prefix, size, first = [tuple(d) for d in docs], (), length, 1
    plans = tuple(tuple(sliding_plan(len(s), size, stride, first)) for s in streams)
    return SlidingSet(length, stride, placement, tuple(streams), prefix, plans)


def _batches(sset: SlidingSet) -> Iterator[tuple[torch.Tensor, int]]:
    for (size, score_from), windows in sorted(sset.groups().items()):
        rows = _batch_rows(size)
        for i in range(0, len(windows), rows):
            yield sset.rows(windows[i: i + rows]), score_from


def sliding_perplexity(model, sset: SlidingSet) -> PerplexityResult:
    """Protocol ``sliding`` over prepared documents: every token of every document scored once (see above)."""
    total, count, windows = 0.0, 0, 0
    for batch, score_from in _batches(sset):
        total += scored_nll(model, batch, score_from).sum().item()
        count += batch.shape[0] * (batch.shape[1] - score_from)
        windows += batch.shape[0]
    return PerplexityResult("sliding", sset.length, windows, total / count, count, sset.stride, sset.bos,
                            len(sset.streams))


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
