"""Batched candidate evaluation equals one-candidate-at-a-time evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ropelab.config import ModelConfig
from ropelab.errors import RopelabError
from ropelab.models import build_tiny_llama
from ropelab.rope.modules import install_per_row_rope, uninstall_rope
from ropelab.search.evolution import mutate
from ropelab.search.fitness import batched_fitness, reference_fitness
from ropelab.search.space import PAPER_START_TOKENS, SearchSpace, seed_vectors

L = 32


@pytest.fixture(scope="module")
def model():
    return build_tiny_llama(ModelConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                        intermediate_size=128, context_length=L), 0).eval()


def candidates(space, count, seed=0):
    rng = np.random.default_rng(seed)
    seeds = [space.candidate(v) for v in seed_vectors(space).values()]
    seen = {c.key(space.step) for c in seeds}
    out = list(seeds)
    while len(out) < count:
        child = mutate(out[rng.integers(len(out))], space, 0.3, rng, seen)
        seen.add(child.key(space.step))
        out.append(child)
    return out


@pytest.mark.parametrize("tokens_per_batch", [64, 1000, 10_000])
def test_batched_equals_one_at_a_time(model, tokens_per_batch):
    space = SearchSpace(16, 10000.0, 4.0, L, start_token_choices=PAPER_START_TOKENS)
    windows = torch.randint(0, 256, (3, 4 * L), generator=torch.Generator().manual_seed(0))
    batch = candidates(space, 7)
    ours = batched_fitness(model, space, windows, tokens_per_batch=tokens_per_batch)(batch)
    reference = reference_fitness(model, space, windows)(batch)
    assert np.allclose(ours, reference, rtol=1e-4, atol=0)
    assert len(set(np.round(reference, 6))) > 1  # the candidates really differ
    assert type(model.model.rotary_emb).__name__ == "LlamaRotaryEmbedding"  # restored


def test_per_row_module_needs_one_spec_per_row(model):
    module = install_per_row_rope(model)
    try:
        with pytest.raises(RopelabError, match="one spec per batch row"):
            model(torch.zeros(2, 8, dtype=torch.long))
        space = SearchSpace(16, 10000.0, 4.0, L)
        module.set_rows([space.spec(space.candidate(np.full(8, 4.0)))])
        assert model(torch.zeros(1, 8, dtype=torch.long)).logits.shape == (1, 8, 260)
    finally:
        uninstall_rope(model)
