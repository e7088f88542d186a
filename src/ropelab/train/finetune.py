"""Fine-tuning with a fixed RoPE at a longer sequence length (LongRoPE §3.3; the CLEX stage reuses the loop), and
LongRoPE2's mixed context window fine-tuning (short packed documents with the original RoPE, long blocks with
the searched one)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from ropelab.config import TrainConfig
from ropelab.errors import RopelabError
from ropelab.rope.adapter import base_spec
from ropelab.rope.modules import RopelabRotaryEmbedding, install_rope
from ropelab.rope.registry import RopeSpec
from ropelab.train.loop import StepRecord, train_causal_lm
from ropelab.train.mixed import MixedBatches, PackedRows


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


def install_for_mixed(model, long: RopeSpec) -> RopelabRotaryEmbedding:
    """``long`` beyond L and the model's own RoPE up to L (short factor 1.0), one attention factor for both
    (transformers' longrope rule), so the trained model exports as stock longrope with short_factor = 1.0."""
    return install_rope(model, long, base_spec(model.config), short_attention="long")


def _check_mixture(short: PackedRows, long_blocks: torch.Tensor, switch_length: int) -> None:
    """Each half must land on its own side of the switch, or it would silently train with the other RoPE."""
    if short.max_position + 1 > switch_length:
        raise RopelabError(f"short rows reach position {short.max_position}, beyond the original context "
                           f"{switch_length}: pack them with max_doc_len <= {switch_length}")
    if long_blocks.shape[1] <= switch_length:
        raise RopelabError(f"long blocks of {long_blocks.shape[1]} tokens do not exceed the original context "
                           f"{switch_length}: they would train with the original RoPE")


def mixed_finetune(model, short: PackedRows, long_blocks: torch.Tensor, long: RopeSpec, cfg: TrainConfig, *,
                   long_fraction: float, short_batch_size: int | None = None,
                   on_step: Callable[[StepRecord], None] | None = None, checkpoint_dir: Path | None = None
                   ) -> list[StepRecord]:
    """Mixed context window fine-tuning (LongRoPE2 §3.3): packed short ``short`` rows with the original RoPE and
    ``long_blocks`` (n, L' > L) with ``long``, a share ``long_fraction`` of the micro-batches long
    (``mixed.MixedBatches``); cfg.batch_size long rows per long micro-batch, ``short_batch_size`` (default the
    same) packed rows per short one. Resumable like ``finetune``."""
    module = install_for_mixed(model, long)
    _check_mixture(short, long_blocks, module.switch_length)
    dtype = next(model.parameters()).dtype  # the additive mask's minimum must be finite in the model's dtype
    source = MixedBatches(short, long_blocks, long_fraction, cfg.batch_size, short_batch_size or cfg.batch_size,
                          mask_dtype=dtype)
    return train_causal_lm(model, None, cfg, batch_source=source, on_step=on_step, checkpoint_dir=checkpoint_dir)
