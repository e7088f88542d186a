"""The shared training loop: it learns, resumes exactly, and stops on non-finite values."""

from __future__ import annotations

import pytest
import torch

from ropelab.config import ModelConfig, TrainConfig
from ropelab.models import build_tiny_llama
from ropelab.train.data import pack_documents, random_batches
from ropelab.train.loop import CHECKPOINT, NonFiniteLossError, Optimization, learning_rate, train_causal_lm

SMALL = ModelConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                    context_length=32)
PATTERN = [list(b"abcabdabeabf" * 40), list(b"the cat sat on the mat. " * 20)]


def blocks():
    return pack_documents(PATTERN, 32, 256, 257)


def test_packing_adds_bos_eos_and_drops_tail():
    packed = pack_documents([[1, 2, 3], [4, 5]], 3, 256, 257)
    assert packed.tolist() == [[256, 1, 2], [3, 257, 256], [4, 5, 257]]
    with pytest.raises(ValueError, match="shorter than one block"):
        pack_documents([[1]], 10, 256, 257)


def test_batches_depend_only_on_the_generator():
    b = blocks()
    first = [next(random_batches(b, 4, torch.Generator().manual_seed(3))) for _ in range(2)]
    assert torch.equal(first[0], first[1])


def test_learning_rate_warms_up_and_decays():
    cfg = TrainConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert learning_rate(0, cfg) == pytest.approx(0.1) and learning_rate(9, cfg) == pytest.approx(1.0)
    assert learning_rate(100, cfg) == pytest.approx(0.1) and learning_rate(55, cfg) == pytest.approx(0.55)


def test_cosine_decay_is_transformers_cosine_schedule_after_the_warm_up():
    """The reference trains CLEX with transformers' cosine schedule (half a period, to 0); the warm-up differs on
    purpose (ours trains at step 0: (step + 1) / warm-up, transformers' step / warm-up)."""
    from transformers import get_cosine_schedule_with_warmup

    cfg = TrainConfig(steps=40, lr=2.0, warmup_steps=6)
    cosine = Optimization(schedule="cosine", min_lr_ratio=0.0)
    reference = get_cosine_schedule_with_warmup(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=2.0), 6, 40)
    factors = [reference.lr_lambdas[0](step) for step in range(40)]
    assert [learning_rate(s, cfg, cosine) for s in range(6, 40)] == pytest.approx([2.0 * f for f in factors[6:]])
    assert [learning_rate(s, cfg, cosine) for s in range(6)] == pytest.approx([2.0 * (s + 1) / 6 for s in range(6)])
    floor = Optimization(schedule="cosine", min_lr_ratio=0.25)  # a floor keeps the shape: lr·(m + (1 − m)·cos)
    assert learning_rate(20, cfg, floor) == pytest.approx(2.0 * (0.25 + 0.75 * factors[20]))
    assert learning_rate(20, cfg) == pytest.approx(learning_rate(20, cfg, Optimization.of(cfg)))  # default linear
    assert learning_rate(20, cfg) != pytest.approx(learning_rate(20, cfg, floor))


@pytest.mark.parametrize("opt,betas,decay", [(None, (0.9, 0.95), 0.1), (Optimization((0.9, 0.999), 0.0, "cosine", 0.0),
                                                                        (0.9, 0.999), 0.0)])
def test_the_optimizer_uses_the_callers_betas_weight_decay_and_schedule(tmp_path, opt, betas, decay):
    """What AdamW ran with, read back from the loop's own checkpoint (no reimplementation of the loop)."""
    cfg = TrainConfig(steps=4, batch_size=2, lr=1e-3, warmup_steps=1, seq_len=32, checkpoint_every=4)
    train_causal_lm(build_tiny_llama(SMALL, 0), blocks(), cfg, checkpoint_dir=tmp_path, optimization=opt)
    groups = torch.load(tmp_path / CHECKPOINT, weights_only=True)["optimizer"]["param_groups"]
    assert [tuple(g["betas"]) for g in groups] == [betas, betas]
    assert [g["weight_decay"] for g in groups] == [decay, 0.0]  # matrices decay, vectors never
    assert groups[0]["lr"] == pytest.approx(learning_rate(3, cfg, opt))


def test_loss_falls_on_a_repetitive_corpus():
    history = train_causal_lm(build_tiny_llama(SMALL, 0), blocks(),
                              TrainConfig(steps=60, batch_size=8, lr=1e-2, warmup_steps=5, seq_len=32))
    assert history[-1].loss < 0.6 * history[0].loss


def test_resume_from_checkpoint_equals_uninterrupted(tmp_path):
    cfg = TrainConfig(steps=12, batch_size=4, lr=5e-3, warmup_steps=2, seq_len=32, checkpoint_every=4, grad_accum=2)
    straight = build_tiny_llama(SMALL, 0)
    train_causal_lm(straight, blocks(), cfg)
    interrupted = build_tiny_llama(SMALL, 0)

    def crash(rec):
        if rec.step == 9:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_causal_lm(interrupted, blocks(), cfg, on_step=crash, checkpoint_dir=tmp_path)
    resumed = build_tiny_llama(SMALL, 0)  # a fresh process would start from initial weights
    history = train_causal_lm(resumed, blocks(), cfg, checkpoint_dir=tmp_path)
    assert [h.step for h in history] == list(range(12))
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_non_finite_loss_stops_with_the_step():
    model = build_tiny_llama(SMALL, 0)
    with torch.no_grad():
        model.model.embed_tokens.weight[5] = float("nan")
    nan_blocks = torch.full((4, 32), 5)
    with pytest.raises(NonFiniteLossError, match="step 0"):
        train_causal_lm(model, nan_blocks, TrainConfig(steps=3, batch_size=2, seq_len=32))
