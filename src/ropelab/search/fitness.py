"""Fitness of LongRoPE candidates: perplexity of the model with each candidate's RoPE on fixed windows.

``ModelScorer`` scores (candidate, window) pairs, several per forward pass: each batch row gets its candidate's
cos/sin (``PerRowRotaryEmbedding``); per-window results let the search race (``ropelab.search.racing``) and the
fitness cache keep partial results. ``batched_fitness`` (every candidate on every window) is tested equal to
``reference_fitness``, which installs one candidate at a time and runs the plain perplexity evaluator.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ropelab.errors import RopelabError
from ropelab.eval.perplexity import TOKENS_PER_BATCH, perplexity, scored_nll
from ropelab.rope.modules import install_per_row_rope, install_rope, uninstall_rope
from ropelab.search.racing import RacingRule, Request, WindowedFitness
from ropelab.search.space import Candidate, SearchSpace


class ModelScorer:
    """Scores (candidate, windows) requests: per window, the summed NLL of ``windows[w]`` (N, length) with the
    candidate's RoPE, several (candidate, window) rows per forward, one RoPE per batch row. ``forwarded``
    counts the rows run (forward tokens = forwarded · length); ``on_value(request, window, value)`` sees each
    result as soon as its forward returns (the fitness cache persists it then). ``score_from``: only positions
    ≥ it are scored (1: every predicted token; a needle set's answer start: LongRoPE2's needle-driven PPL)."""

    def __init__(self, model, space: SearchSpace, windows: torch.Tensor, *, tokens_per_batch: int = TOKENS_PER_BATCH,
                 attention_policy: str = "su", on_batch: Callable[[int], None] | None = None, score_from: int = 1):
        self.model, self.space, self.windows, self.policy, self.on_batch = model, space, windows, attention_policy, on_batch
        self.n, self.length = windows.shape
        if not 1 <= score_from < self.length:
            raise RopelabError(f"score_from must be in [1, {self.length - 1}], got {score_from}")
        self.score_from = score_from
        self.tokens = self.length - score_from  # scored tokens per window
        self.rows_per_forward = max(1, tokens_per_batch // self.length)
        self.forwarded = 0

    def __call__(self, requests: list[Request], on_value: Callable[[int, int, float], None] | None = None
                 ) -> list[list[float]]:
        specs = [self.space.spec(c, self.policy) for c, _ in requests]
        pairs = [(k, w) for k, (_, wanted) in enumerate(requests) for w in wanted]  # request-major rows
        values: list[dict[int, float]] = [{} for _ in requests]
        module = install_per_row_rope(self.model)
        try:
            for start in range(0, len(pairs), self.rows_per_forward):
                chunk = pairs[start: start + self.rows_per_forward]
                module.set_rows([specs[k] for k, _ in chunk])
                nll = scored_nll(self.model, self.windows[[w for _, w in chunk]], self.score_from).tolist()
                self.forwarded += len(chunk)
                for (k, w), value in zip(chunk, nll, strict=True):
                    values[k][w] = value
                    if on_value is not None:
                        on_value(k, w, value)
                if self.on_batch is not None:
                    self.on_batch(len(chunk))
        finally:
            uninstall_rope(self.model)
        return [[v[w] for w in wanted] for v, (_, wanted) in zip(values, requests, strict=True)]


def windowed_fitness(scorer: ModelScorer, rule: RacingRule | None = None) -> WindowedFitness:
    """The search's fitness over ``scorer``'s windows: full (``rule`` None) or racing."""
    return WindowedFitness(scorer, scorer.n, scorer.tokens, rule)


def batched_fitness(model, space: SearchSpace, windows: torch.Tensor, *, tokens_per_batch: int = TOKENS_PER_BATCH,
                    attention_policy: str = "su", on_batch: Callable[[int], None] | None = None, score_from: int = 1
                    ) -> Callable[[Sequence[Candidate]], list[float]]:
    """A fitness function: candidates → PPL on ``windows`` (N, length) from ``score_from`` on, several
    candidates per forward."""
    return windowed_fitness(ModelScorer(model, space, windows, tokens_per_batch=tokens_per_batch,
                                        attention_policy=attention_policy, on_batch=on_batch, score_from=score_from))


def reference_fitness(model, space: SearchSpace, windows: torch.Tensor, attention_policy: str = "su"
                      ) -> Callable[[Sequence[Candidate]], list[float]]:
    """One candidate at a time through the ordinary adapter: the check for ``batched_fitness``."""

    def fitness(candidates: Sequence[Candidate]) -> list[float]:
        out = []
        try:
            for candidate in candidates:
                install_rope(model, space.spec(candidate, attention_policy))
                out.append(perplexity(model, windows, batch_size=1).ppl)
        finally:
            uninstall_rope(model)
        return out

    return fitness
