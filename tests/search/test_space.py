"""Search spaces for the later stages: product with the fine-tuned λ, recovery's shared attention factor."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ropelab.rope.methods import rope_frequencies
from ropelab.search.space import SearchSpace, seed_vectors

FINETUNED = tuple(np.linspace(1.0, 8.0, 16).round(2))


def test_second_stage_stores_the_product_and_scores_with_the_total_ratio():
    space = SearchSpace(32, 10000.0, 4.0, 256, reference_length=2048, base_rescale=FINETUNED, total_factor=32.0)
    candidate = space.candidate(np.full(16, 2.0))
    spec = space.spec(candidate)
    assert spec.rescale_factors == pytest.approx(tuple(2.0 * v for v in FINETUNED))
    inv, attention = spec.compute()
    torch.testing.assert_close(inv, rope_frequencies(32, 10000.0) / torch.tensor([2.0 * v for v in FINETUNED], dtype=torch.float32))
    assert attention == pytest.approx(math.sqrt(1 + math.log(32) / math.log(256)))
    assert space.target_length == 8192


def test_second_stage_seeds_are_relative_to_the_fine_tuned_length():
    stage2 = seed_vectors(SearchSpace(32, 10000.0, 4.0, 256, reference_length=2048))["yarn"]
    stage1 = seed_vectors(SearchSpace(32, 10000.0, 4.0, 256))["yarn"]
    assert stage2[-1] == pytest.approx(4.0) and not np.allclose(stage1, stage2)  # different ramp position


def test_recovery_space_keeps_the_explicit_attention_factor_and_reduced_bound():
    space = SearchSpace(32, 10000.0, 1.0, 256, max_rescale=1.2, attention_factor=1.27)
    assert space.upper == pytest.approx(1.2) and space.target_length == 256
    candidate = space.candidate(np.linspace(1.0, 1.5, 16))
    assert max(candidate.rescale_factors) <= 1.2
    assert space.spec(candidate).compute()[1] == pytest.approx(1.27)
