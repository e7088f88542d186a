"""Fine-tuning with a fixed RoPE: scaled factors only beyond the original length (the reference rule)."""

from __future__ import annotations

import torch

from ropelab.config import ModelConfig, TrainConfig
from ropelab.models import build_tiny_llama
from ropelab.rope.registry import RopeSpec
from ropelab.train.data import pack_documents
from ropelab.train.finetune import finetune, install_for_finetune

SMALL = ModelConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                    context_length=32)
PI = RopeSpec("linear", 16, 10000.0, factor=4.0)


def test_plain_rope_up_to_the_original_length_scaled_beyond():
    model = build_tiny_llama(SMALL, 0)
    module = install_for_finetune(model, PI, only_beyond_original=True)
    assert module.select(32).method == "default" and module.select(33).method == "linear"
    always = install_for_finetune(build_tiny_llama(SMALL, 0), PI, only_beyond_original=False)
    assert always.select(8).method == "linear"


def test_finetune_trains_at_the_longer_length():
    model = build_tiny_llama(SMALL, 0)
    blocks = pack_documents([list(b"the cat sat on the mat. " * 40)], 128, 256, 257)
    history = finetune(model, blocks, PI, TrainConfig(steps=30, batch_size=2, seq_len=128, lr=1e-2, warmup_steps=3))
    assert history[-1].loss < 0.7 * history[0].loss
    assert type(model.model.rotary_emb).__name__ == "RopelabRotaryEmbedding"
    with torch.no_grad():
        assert torch.isfinite(model(blocks[:1]).logits).all()
