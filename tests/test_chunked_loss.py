"""The chunked loss (hidden states → LM head chunk by chunk) equals the full-logits loss: evaluation NLL and
training loss and gradients, on a tiny random Llama from transformers."""

from __future__ import annotations

import pytest
import torch

from ropelab.chunked_loss import base_and_head, chunked_mean_loss, chunked_nll
from ropelab.config import ModelConfig
from ropelab.models import build_tiny_llama

CFG = ModelConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, context_length=64)


@pytest.fixture(scope="module")
def model():
    return build_tiny_llama(CFG, seed=0).eval()


def ids(rows: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (rows, length), generator=torch.Generator().manual_seed(seed))


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize("score_from", [1, 5])
def test_chunked_eval_nll_equals_full(model, score_from):
    batch = ids(3, 50)
    full = chunked_nll(model, batch, score_from, chunk_tokens=0)  # the full-logits path
    with torch.no_grad():  # and the plain HF loss, independently
        logits = model(input_ids=batch).logits[:, score_from - 1: -1].float()
    hf = torch.nn.functional.cross_entropy(logits.transpose(1, 2), batch[:, score_from:], reduction="none").sum(1)
    assert relative(full, hf) <= 1e-6
    for chunk in (7, 16, 4096):  # uneven last chunk, several chunks, one chunk
        assert relative(chunked_nll(model, batch, score_from, chunk_tokens=chunk), full) <= 1e-6


def test_chunked_training_loss_and_gradients_equal_full(model):
    batch = ids(2, 40, seed=1)
    params = [p for p in model.parameters() if p.requires_grad]

    def loss_and_grads(chunk_tokens: int):
        model.zero_grad(set_to_none=True)
        loss = chunked_mean_loss(model, batch, chunk_tokens=chunk_tokens)
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in params]

    full_loss, full_grads = loss_and_grads(0)  # model(labels=...).loss
    loss, grads = loss_and_grads(6)
    assert relative(loss, full_loss) <= 1e-6
    assert max(relative(g, f) for g, f in zip(grads, full_grads, strict=True)) <= 1e-6
    model.zero_grad(set_to_none=True)


def test_training_never_materialises_full_logits(model, monkeypatch):
    """Each head call sees at most one chunk of positions, in the backward too (checkpoint recomputes one)."""
    _, head = base_and_head(model)
    seen = []
    hook = head.register_forward_hook(lambda m, i, o: seen.append(o.shape[0] * o.shape[1]))
    try:
        chunked_mean_loss(model, ids(2, 40), chunk_tokens=10).backward()
    finally:
        hook.remove()
        model.zero_grad(set_to_none=True)
    assert seen and max(seen) <= 10
    assert len(seen) >= 2 * (2 * 39 // 10)  # forward + the recompute in the backward
