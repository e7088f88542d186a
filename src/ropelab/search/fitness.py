"""Fitness of LongRoPE candidates: perplexity of the model with each candidate's RoPE on fixed windows.

``batched_fitness`` evaluates several candidates in one forward pass: the windows are repeated once per
candidate and each batch row gets its candidate's cos/sin (``PerRowRotaryEmbedding``). It is tested equal to
``reference_fitness``, which installs one candidate at a time and runs the plain perplexity evaluator.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from ropelab.eval.perplexity import TOKENS_PER_BATCH, perplexity, scored_nll
from ropelab.rope.modules import install_per_row_rope, install_rope, uninstall_rope
from ropelab.search.space import Candidate, SearchSpace


def batched_fitness(model, space: SearchSpace, windows: torch.Tensor, *, tokens_per_batch: int = TOKENS_PER_BATCH,
                    attention_policy: str = "su", on_batch: Callable[[int], None] | None = None
                    ) -> Callable[[Sequence[Candidate]], list[float]]:
    """A fitness function: candidates → PPL on ``windows`` (N, length), several candidates per forward."""
    n_windows, length = windows.shape
    rows_per_forward = max(1, tokens_per_batch // length)

    def fitness(candidates: Sequence[Candidate]) -> list[float]:
        specs = [space.spec(c, attention_policy) for c in candidates]
        # rows = (candidate, window) pairs, candidate-major
        pairs = [(k, n) for k in range(len(specs)) for n in range(n_windows)]
        totals = torch.zeros(len(specs), dtype=torch.float64)
        module = install_per_row_rope(model)
        try:
            for start in range(0, len(pairs), rows_per_forward):
                chunk = pairs[start: start + rows_per_forward]
                module.set_rows([specs[k] for k, _ in chunk])
                nll = scored_nll(model, windows[[n for _, n in chunk]])
                totals.index_add_(0, torch.tensor([k for k, _ in chunk]), nll)
                if on_batch is not None:
                    on_batch(len(chunk))
        finally:
            uninstall_rope(model)
        tokens = n_windows * (length - 1)
        return [math.exp(t / tokens) for t in totals.tolist()]

    return fitness


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
