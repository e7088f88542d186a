"""Training CLEX: one scale t per optimisation step, positions spread over t·L, the shared training loop."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from ropelab.clex.rotary import ClexRotaryEmbedding
from ropelab.config import POSITION_SCHEMES, ClexConfig
from ropelab.errors import RopelabError
from ropelab.rope.adapter import rope_basics
from ropelab.rope.generation import refuse_stale_cache
from ropelab.rope.modules import install_rotary
from ropelab.train.loop import Optimization, StepRecord, train_causal_lm

# The reference trains model and ODE with transformers' Trainer (DAMO-NLP-SG/CLEX@023709d9, train/train_lm.py,
# train/argument.py optim "adamw_torch": AdamW β (0.9, 0.999), ε 1e-8) and scripts/train_lm.sh's --weight_decay 0.
# --lr_scheduler_type cosine (to 0, half a period) --warmup_ratio 0.03. Note: the DeepSpeed config that script
# names (playground/deepspeed_zero3_offload.json) has a "scheduler" (WarmupLR), and transformers' DeepSpeed
# integration then uses it instead of the cosine one: constant after the warm-up. ropelab follows the arguments.
REFERENCE_OPTIMIZATION = Optimization(betas=(0.9, 0.999), weight_decay=0.0, schedule="cosine", min_lr_ratio=0.0)


def optimization(cfg: ClexConfig) -> Optimization:
    """clex.optimizer: the reference's AdamW and schedule, or ropelab's own (clex.train's weight decay and final
    learning rate, linear decay)."""
    return REFERENCE_OPTIMIZATION if cfg.optimizer == "reference" else Optimization.of(cfg.train)


class ClexPositions:
    """The training positions: per optimisation step draw t uniformly from {1..max_t}; per micro-batch,
    positions for a sequence of ``seq_len`` tokens span [0, t·L) — 0 and t·L − 1 fixed, the rest a sorted
    random subset of the sample grid [1, seq_len·t − 1) scaled by L/seq_len (reference code), or evenly spaced."""

    def __init__(self, original_length: int, max_t: int, scheme: str = "random", chunks: int = 2):
        if scheme not in POSITION_SCHEMES:
            raise RopelabError(f"unknown CLEX position scheme {scheme!r}; choose one of {', '.join(POSITION_SCHEMES)}")
        if chunks < 2:
            raise RopelabError(f"clex.chunks must be ≥ 2, got {chunks}")
        self.original_length, self.max_t, self.scheme, self.chunks = original_length, max_t, scheme, chunks
        self.t, self._step = 1, None

    def __call__(self, step: int, seq_len: int, generator: torch.Generator) -> torch.Tensor:
        if step != self._step:
            self.t, self._step = int(torch.randint(1, self.max_t + 1, (1,), generator=generator)), step
        return self.positions(self.t, seq_len, generator)[None]

    def positions(self, t: int, seq_len: int, generator: torch.Generator) -> torch.Tensor:
        last = t * self.original_length - 1
        if seq_len < self.original_length:  # shorter sequences could not span t·L at the basis' resolution
            raise RopelabError(f"CLEX trains on sequences of at least L = {self.original_length} tokens; "
                               f"got clex.train.seq_len = {seq_len}")
        if self.scheme == "uniform":
            return torch.linspace(0, last, seq_len)
        if self.scheme == "chunks":
            return self.chunked(t, seq_len, generator)
        grid = seq_len * t  # sample indices, later scaled by L / seq_len to span [0, t·L)
        middle = torch.randperm(grid - 2, generator=generator)[: seq_len - 2].sort().values + 1
        scaled = middle.float() * self.original_length / seq_len
        if seq_len == self.original_length:  # the common case (train at L): keep integer positions
            scaled = middle
        return torch.cat([torch.zeros(1, dtype=scaled.dtype), scaled, torch.tensor([last], dtype=scaled.dtype)])

    def chunked(self, t: int, seq_len: int, generator: torch.Generator) -> torch.Tensor:
        """PoSE-style (Zhu et al. 2023): the sequence cut into ``chunks`` contiguous pieces at random points,
        the pieces separated by random skips that together fill [0, t·L): positions stay dense inside a piece
        (as at inference, where tokens are contiguous) while distances between pieces reach t·L − 1."""
        span = t * self.original_length
        step = self.original_length / seq_len  # < 1 only when training beyond L: positions scaled back
        pieces = min(self.chunks, seq_len)
        cuts = torch.randperm(seq_len - 1, generator=generator)[: pieces - 1].sort().values + 1
        piece = torch.bucketize(torch.arange(seq_len), cuts, right=True)  # piece index of every token
        room = span - 1 - (seq_len - 1) * step  # total skip to distribute between pieces
        splits = torch.rand(pieces - 2, generator=generator, dtype=torch.float64).sort().values
        shares = torch.diff(torch.cat([torch.zeros(1, dtype=torch.float64), splits, torch.ones(1, dtype=torch.float64)]))
        skips = torch.cat([torch.zeros(1, dtype=torch.float64), torch.cumsum(shares * room, 0)])  # per piece
        positions = torch.arange(seq_len, dtype=torch.float64) * step + skips[piece]
        if step == 1:
            return positions.round().long()
        return positions.float()

    def describe(self) -> str:
        return f"t = {self.t}"


def install_clex(model, cfg: ClexConfig, *, generator: torch.Generator | None = None) -> ClexRotaryEmbedding:
    """Make CLEX the model's rotary module (ODE untrained: dynamic-NTK-style frequencies)."""
    b = rope_basics(model.config)
    module = ClexRotaryEmbedding(b.head_dim, b.base, b.original_max_position_embeddings, cfg.max_t,
                                 time_dt=cfg.time_dt, amplification=cfg.amplification, activation=cfg.activation,
                                 log_scale=cfg.log_scale, log_scale_rule=cfg.log_scale_rule, backend=cfg.backend,
                                 generator=generator)
    install_rotary(model, module)
    refuse_stale_cache(model)
    return module


def train_clex(model, blocks: torch.Tensor, cfg: ClexConfig, *,
               on_step: Callable[[StepRecord, int], None] | None = None,
               checkpoint_dir: Path | None = None) -> tuple[ClexRotaryEmbedding, list[StepRecord]]:
    """Install CLEX into ``model`` and train it (with the model, or alone with cfg.ode_only); resumable.
    ``on_step(record, t)`` sees each step with the scale t it trained at."""
    b = rope_basics(model.config)
    module = install_clex(model, cfg, generator=torch.Generator().manual_seed(cfg.train.seed))
    ode = {id(p) for p in module.parameters()}
    if cfg.ode_only:
        for p in model.parameters():
            p.requires_grad_(id(p) in ode)
    schedule = ClexPositions(b.original_max_position_embeddings, cfg.max_t, cfg.positions, cfg.chunks)
    history = train_causal_lm(model, blocks, cfg.train, position_ids=schedule, describe=schedule.describe,
                              on_step=(lambda record: on_step(record, schedule.t)) if on_step else None,
                              checkpoint_dir=checkpoint_dir, optimization=optimization(cfg))
    for p in model.parameters():
        p.requires_grad_(True)
    return module, history
