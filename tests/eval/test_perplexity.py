"""Perplexity windows and values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ropelab.config import ModelConfig
from ropelab.errors import RopelabError
from ropelab.eval.perplexity import perplexity, truncated_windows
from ropelab.models import build_tiny_llama

DOCS = [list(range(i, i + 100)) for i in (0, 1000)]


def test_windows_are_bos_plus_disjoint_segments_chosen_by_seed():
    w = truncated_windows(DOCS, 10, 5, 7, torch.Generator().manual_seed(0))
    assert w.shape == (5, 10) and torch.all(w[:, 0] == 7)
    starts = {tuple(row[1:3].tolist()) for row in w}
    assert len(starts) == 5
    again = truncated_windows(DOCS, 10, 5, 7, torch.Generator().manual_seed(0))
    assert torch.equal(w, again)
    other = truncated_windows(DOCS, 10, 5, 7, torch.Generator().manual_seed(1))
    assert not torch.equal(w, other)


def test_too_few_windows_is_a_clear_error():
    with pytest.raises(RopelabError, match="has 2 windows of 100 tokens; 3 were asked"):
        truncated_windows(DOCS, 100, 3, 7, torch.Generator())


def test_perplexity_equals_manual_token_weighted_nll():
    model = build_tiny_llama(ModelConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=64), 0).eval()
    windows = torch.randint(0, 256, (3, 20), generator=torch.Generator().manual_seed(0))
    result = perplexity(model, windows, batch_size=2)
    with torch.no_grad():
        logits = model(windows).logits[:, :-1]
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1))
    assert result.ppl == pytest.approx(math.exp(nll.item()), rel=1e-5)
    assert result.tokens == 3 * 19 and 100 < result.ppl < 1000  # an untrained model is near uniform (260)
