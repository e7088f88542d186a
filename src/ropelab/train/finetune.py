"""Fine-tuning with a fixed RoPE at a longer sequence length (LongRoPE §3.3; the CLEX stage reuses the loop)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from ropelab.config import TrainConfig
from ropelab.rope.adapter import base_spec
from ropelab.rope.modules import RopelabRotaryEmbedding, install_rope
from ropelab.rope.registry import RopeSpec
from ropelab.train.loop import StepRecord, train_causal_lm


def install_for_finetune(model, long: RopeSpec, only_beyond_original: bool) -> RopelabRotaryEmbedding:
    """The scaled RoPE, and plain RoPE for sequences that fit the original length when asked
    (the reference training code uses the searched factors only when the sequence is longer than L)."""
    return install_rope(model, long, base_spec(model.config) if only_beyond_original else None)


def finetune(model, blocks: torch.Tensor, long: RopeSpec, cfg: TrainConfig, *, only_beyond_original: bool = True,
             on_step: Callable[[StepRecord], None] | None = None, checkpoint_dir: Path | None = None
             ) -> list[StepRecord]:
    """Continue training ``model`` on ``blocks`` (n, seq_len) with ``long`` installed; resumable."""
    install_for_finetune(model, long, only_beyond_original)
    return train_causal_lm(model, blocks, cfg, on_step=on_step, checkpoint_dir=checkpoint_dir)
