"""The causal-LM training loop shared by pretraining, fine-tuning and CLEX.

No logging inside: progress and tracking go through the ``on_step`` callback. Resumable: with a
``checkpoint_dir`` the loop saves model, optimiser, scheduler and sampler state every K steps and resumes from
the last checkpoint, giving the same result as an uninterrupted run.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch

from ropelab.atomic import digest_problem, write_with_digest
from ropelab.chunked_loss import chunked_mean_loss
from ropelab.config import TrainConfig
from ropelab.errors import RopelabError
from ropelab.train.data import Batch, random_batches

CHECKPOINT = "checkpoint.pt"
BatchSource = Callable[[torch.Generator], Batch]  # one micro-batch from the loop's generator


class NonFiniteLossError(RopelabError):
    """The loss or gradient became NaN/inf: stop instead of training on garbage."""


@dataclass(frozen=True)
class StepRecord:
    step: int
    loss: float
    lr: float
    grad_norm: float
    tokens: int


@dataclass(frozen=True)
class Optimization:
    """AdamW's betas and weight decay and the schedule's shape. ``Optimization.of(cfg)`` is ropelab's own, used
    by every stage unless its caller passes another (CLEX's reference settings: ``ropelab.clex.train``)."""

    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 0.1  # on matrices (≥ 2-D parameters); vectors (norms, biases) never decay
    schedule: Literal["linear", "cosine"] = "linear"  # the decay after the warm-up
    min_lr_ratio: float = 0.1  # the final learning rate as a fraction of the peak

    @classmethod
    def of(cls, cfg: TrainConfig) -> Optimization:
        return cls((0.9, 0.95), cfg.weight_decay, "linear", cfg.min_lr_ratio)


def learning_rate(step: int, cfg: TrainConfig, opt: Optimization | None = None) -> float:
    """Linear warm-up to cfg.lr, then linear (or cosine, half a period) decay to cfg.lr · min_lr_ratio at the
    last step. The warm-up's first step already trains ((step + 1) / warm-up; transformers' starts at 0)."""
    opt = opt or Optimization.of(cfg)
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    remaining = 0.5 * (1 + math.cos(math.pi * progress)) if opt.schedule == "cosine" else 1 - progress
    return cfg.lr * (opt.min_lr_ratio + (1 - opt.min_lr_ratio) * remaining)


def _optimizer(params: list[torch.nn.Parameter], cfg: TrainConfig, opt: Optimization) -> torch.optim.Optimizer:
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": opt.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=opt.betas, fused=False)


def _save(path: Path, model, optimizer, generator, step: int, history: list[StepRecord]) -> None:
    """Write the checkpoint atomically with its sha256 beside it: a kill mid-save leaves the previous one intact."""
    write_with_digest(path, lambda tmp: torch.save({
        "model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
        "generator": generator.get_state(), "history": [asdict(h) for h in history]}, tmp))


def _load(path: Path) -> dict | None:
    """The checkpoint if it matches its recorded sha256, else None (warned, naming the file): training restarts
    instead of resuming from a truncated or planted file. ``weights_only``: a checkpoint never runs code."""
    problem = digest_problem(path)
    if problem is None:
        try:
            return torch.load(path, weights_only=True)
        except Exception as exc:  # a pickle that needs more than tensors and plain containers
            problem = f"{path} cannot be read safely ({type(exc).__name__})"
    warnings.warn(f"ignoring checkpoint: {problem}; training starts again from step 0", stacklevel=2)
    return None


def _batches(blocks: torch.Tensor | None, batch_source: BatchSource | None, batch_size: int,
             generator: torch.Generator) -> Iterator[Batch]:
    """Micro-batches from exactly one of ``blocks`` (random rows, plain causal) or ``batch_source``; both draw
    only from ``generator``, whose state the checkpoint keeps."""
    if (blocks is None) == (batch_source is None):
        raise RopelabError("train_causal_lm takes exactly one of blocks or batch_source")
    if blocks is not None:
        return (Batch(rows) for rows in random_batches(blocks, batch_size, generator))
    return (batch_source(generator) for _ in itertools.count())


def _position_kwargs(position_ids, step: int, batch: Batch, generator: torch.Generator) -> dict:
    """The model's keyword arguments: the batch's own, or the caller's custom positions (CLEX) with an
    explicit all-ones mask, since transformers reads gapped position ids without a mask as packed sequences."""
    if position_ids is None:
        return batch.model_kwargs()
    if batch.position_ids is not None:
        raise RopelabError("custom position_ids cannot be combined with a batch source that sets positions")
    return {"position_ids": position_ids(step, batch.input_ids.shape[1], generator).to(batch.input_ids.device),
            "attention_mask": torch.ones_like(batch.input_ids)}


def train_causal_lm(
    model: torch.nn.Module,
    blocks: torch.Tensor | None,
    cfg: TrainConfig,
    *,
    batch_source: BatchSource | None = None,
    extra_parameters: Iterable[torch.nn.Parameter] = (),
    position_ids: Callable[[int, int, torch.Generator], torch.Tensor] | None = None,
    describe: Callable[[], str] | None = None,
    on_step: Callable[[StepRecord], None] | None = None,
    checkpoint_dir: Path | None = None,
    optimization: Optimization | None = None,
) -> list[StepRecord]:
    """Train ``model`` on random batches of ``blocks`` (n, seq_len), or on the micro-batches
    ``batch_source(generator)`` returns (``Batch``: labels, positions, 4-D masks; mixed context window training),
    for cfg.steps optimiser steps. ``batch_source`` must draw only from the generator it is given, so that a
    resumed run continues with the same batches.

    ``position_ids(step, seq_len, generator)`` may supply custom positions per micro-batch (CLEX); they come
    with an explicit all-ones attention mask, since transformers reads gapped position ids without a mask as
    packed sequences and would cut attention at every gap. ``describe()`` adds the caller's state (CLEX: the
    scale t) to a non-finite-loss error. ``optimization`` replaces ropelab's AdamW betas, weight decay and
    schedule shape (``Optimization.of(cfg)``). The loss is the mean next-token cross-entropy over the labelled
    tokens of each micro-batch; ``StepRecord.tokens`` counts real input tokens seen. Returns the history.
    """
    def where(step: int) -> str:
        return f"step {step}" + (f" ({describe()})" if describe is not None else "")

    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad] + list(extra_parameters)
    opt = optimization or Optimization.of(cfg)
    optimizer = _optimizer(params, cfg, opt)
    generator = torch.Generator().manual_seed(cfg.seed)
    history: list[StepRecord] = []
    start = 0
    ckpt = checkpoint_dir / CHECKPOINT if checkpoint_dir else None
    state = _load(ckpt) if ckpt is not None and ckpt.exists() else None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        start, history = state["step"], [StepRecord(**h) for h in state["history"]]
    batches = _batches(blocks, batch_source, cfg.batch_size, generator)
    tokens = history[-1].tokens if history else 0
    model.train()
    for step in range(start, cfg.steps):
        lr = learning_rate(step, cfg, opt)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum = 0.0
        for _ in range(cfg.grad_accum):
            batch = next(batches).to(device)
            kwargs = _position_kwargs(position_ids, step, batch, generator)
            # never the whole batch's logits at once
            loss = chunked_mean_loss(model, batch.input_ids, labels=batch.labels, **kwargs)
            tokens += batch.token_count()
            if not torch.isfinite(loss):
                raise NonFiniteLossError(f"non-finite loss at {where(step)}; lower the learning rate "
                                         "(the last checkpoint is intact)")
            if loss.requires_grad:  # not when only the CLEX ODE trains and t = 1 bypasses it
                (loss / cfg.grad_accum).backward()
            loss_sum += loss.item()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip))
        if not math.isfinite(grad_norm):
            raise NonFiniteLossError(f"non-finite gradient norm at {where(step)}; lower the "
                                     "learning rate (the last checkpoint is intact)")
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        record = StepRecord(step, loss_sum / cfg.grad_accum, lr, grad_norm, tokens)
        history.append(record)
        if on_step is not None:
            on_step(record)
        if ckpt is not None and cfg.checkpoint_every and (step + 1) % cfg.checkpoint_every == 0:
            _save(ckpt, model, optimizer, generator, step + 1, history)
    model.eval()
    return history
