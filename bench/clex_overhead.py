"""CLEX training overhead: the same fine-tune with and without the ODE, measured side by side.

Usage: .venv/bin/python bench/clex_overhead.py [--steps 24] [--batch-size 8] [--seq-len 256] [--max-t 8]
       [--time-dt 0.01 0.05]
Both arms train a freshly initialised model of the embedded default's shape on the same random blocks with the
same gapped CLEX positions (so attention work is identical); the baseline installs a fixed RoPE (PI at max_t),
the CLEX arm solves the ODE (forward + backward) every step. Reported: median seconds per step and overhead.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ropelab.clex.ode import ClexDynamics, frequency_table
from ropelab.clex.train import ClexPositions, install_clex
from ropelab.config import ClexConfig, ModelConfig, TrainConfig
from ropelab.models import build_tiny_llama
from ropelab.rope.adapter import rope_basics
from ropelab.rope.modules import install_rope
from ropelab.rope.registry import RopeSpec
from ropelab.train.loop import train_causal_lm


def step_seconds(model, blocks, cfg: TrainConfig, schedule) -> list[float]:
    stamps = [time.perf_counter()]
    train_causal_lm(model, blocks, cfg, position_ids=schedule, on_step=lambda r: stamps.append(time.perf_counter()))
    return [b - a for a, b in zip(stamps[:-1], stamps[1:], strict=True)][2:]  # drop warm-up steps


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--max-t", type=int, default=8)
    parser.add_argument("--time-dt", type=float, nargs="+", default=[0.01, 0.05, 0.1])
    args = parser.parse_args()
    torch.set_num_threads(2)
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, seq_len=args.seq_len, lr=1e-4, warmup_steps=1)
    blocks = torch.randint(0, 256, (64, args.seq_len), generator=torch.Generator().manual_seed(0))
    model = build_tiny_llama(ModelConfig(), 0)
    b = rope_basics(model.config)
    results = {}
    for arm in ["fixed", *[f"clex dt={dt:g}" for dt in args.time_dt]] * 2:  # interleaved, twice: fair under noise
        model = build_tiny_llama(ModelConfig(), 0)
        if arm == "fixed":
            install_rope(model, RopeSpec("linear", b.head_dim, b.base, factor=float(args.max_t)))
        else:
            install_clex(model, ClexConfig(max_t=args.max_t, time_dt=float(arm.split("=")[1])))
        schedule = ClexPositions(b.original_max_position_embeddings, args.max_t)  # same positions in every arm
        results.setdefault(arm, []).extend(step_seconds(model, blocks, cfg, schedule))
    accuracy = solver_error(b, args.max_t, args.time_dt)
    base = statistics.median(results["fixed"])
    print(f"tokens per step: {args.batch_size * args.seq_len}; max_t {args.max_t}; {torch.get_num_threads()} threads")
    for arm, seconds in results.items():
        median = statistics.median(seconds)
        error = f"  max |Δ log inv_freq| vs dt=0.001: {accuracy[arm]:.1e}" if arm in accuracy else ""
        print(f"{arm:>14}: {median:.3f} s/step  overhead {100 * (median / base - 1):+.1f}%{error}")


def solver_error(b, max_t: int, steps: list[float]) -> dict[str, float]:
    """How far each time_dt's frequency table is from a 10× finer solve, for an ODE that is not the identity."""
    dynamics = ClexDynamics(b.head_dim, b.base, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        dynamics.down.normal_(0, 0.3, generator=torch.Generator().manual_seed(1))
        reference = frequency_table(dynamics, max_t, 0.001).log()
        return {f"clex dt={dt:g}": float((frequency_table(dynamics, max_t, dt).log() - reference).abs().max())
                for dt in steps}


if __name__ == "__main__":
    main()
