"""Perplexity: windows, the two protocols, the fast path against the reference evaluator."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ropelab.config import ModelConfig
from ropelab.errors import RopelabError
from ropelab.eval.perplexity import (
    perplexity,
    reference_nll,
    sliding_perplexity,
    sliding_plan,
    truncated_windows,
    window_nll,
)
from ropelab.models import build_tiny_llama

DOCS = [list(range(i, i + 100)) for i in (0, 1000)]


@pytest.fixture(scope="module")
def model():
    return build_tiny_llama(ModelConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                        intermediate_size=64), 0).eval()


def test_windows_are_bos_plus_disjoint_segments_chosen_by_seed():
    w = truncated_windows(DOCS, 10, 5, 7, torch.Generator().manual_seed(0))
    assert w.shape == (5, 10) and torch.all(w[:, 0] == 7)
    assert len({tuple(row[1:3].tolist()) for row in w}) == 5
    assert torch.equal(w, truncated_windows(DOCS, 10, 5, 7, torch.Generator().manual_seed(0)))
    assert not torch.equal(w, truncated_windows(DOCS, 10, 5, 7, torch.Generator().manual_seed(1)))


def test_too_few_windows_is_a_clear_error():
    with pytest.raises(RopelabError, match="has 2 windows of 100 tokens; 3 were asked"):
        truncated_windows(DOCS, 100, 3, 7, torch.Generator())


def test_perplexity_equals_manual_token_weighted_nll(model):
    windows = torch.randint(0, 256, (3, 20), generator=torch.Generator().manual_seed(0))
    result = perplexity(model, windows, batch_size=2)
    with torch.no_grad():
        logits = model(windows).logits[:, :-1]
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1))
    assert result.ppl == pytest.approx(math.exp(nll.item()), rel=1e-5)
    assert result.tokens == 3 * 19 and 100 < result.ppl < 1000  # an untrained model is near uniform (260)


def test_fast_batched_path_equals_reference_evaluator(model):
    windows = torch.randint(0, 256, (6, 48), generator=torch.Generator().manual_seed(1))
    fast_total, fast_count = window_nll(model, windows)
    ref_total, ref_count = reference_nll(model, windows)
    assert fast_count == ref_count
    assert abs(fast_total / fast_count - ref_total / ref_count) / (ref_total / ref_count) <= 1e-4


def test_sliding_with_stride_equal_to_window_is_truncated_on_the_same_windows(model):
    stretch = torch.randint(0, 256, (2, 96), generator=torch.Generator().manual_seed(2))
    sliding = sliding_perplexity(model, stretch, length=32, stride=32)
    truncated = perplexity(model, stretch.reshape(-1, 32))
    assert sliding.tokens == truncated.tokens == 6 * 31 and sliding.num_windows == 6
    assert sliding.nll == pytest.approx(truncated.nll, rel=1e-6)


def hf_guide_sliding_nll(model, ids: torch.Tensor, length: int, stride: int) -> tuple[float, int]:
    """The loop of the transformers perplexity guide, with labels = -100 for context tokens."""
    total, count, prev_end = 0.0, 0, 0
    for begin in range(0, ids.shape[1], stride):
        end = min(begin + length, ids.shape[1])
        target_len = end - prev_end
        inputs = ids[:, begin:end]
        labels = inputs.clone()
        labels[:, :-target_len] = -100
        with torch.no_grad():
            loss = model(input_ids=inputs, labels=labels).loss.item()
        scored = int((labels[:, 1:] != -100).sum())
        total, count, prev_end = total + loss * scored, count + scored, end
        if end == ids.shape[1]:
            break
    return total, count


@pytest.mark.parametrize("stride", [8, 16, 24])
def test_sliding_equals_the_transformers_guide_loop(model, stride):
    stretch = torch.randint(0, 256, (1, 80), generator=torch.Generator().manual_seed(3))
    ours = sliding_perplexity(model, stretch, length=32, stride=stride)
    total, count = hf_guide_sliding_nll(model, stretch, 32, stride)
    assert ours.tokens == count == 79  # every token after the first scored exactly once
    assert ours.nll == pytest.approx(total / count, rel=1e-5)


def test_sliding_plan_has_no_window_cap_and_rejects_bad_strides():
    plan = sliding_plan(span=10_000, length=100, stride=10)
    assert len(plan) > 10 and plan[-1][1] == 10_000
    with pytest.raises(RopelabError, match="stride"):
        sliding_plan(100, 10, 0)
