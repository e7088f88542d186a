"""Batched vs naive (one candidate at a time) LongRoPE fitness, measured side by side in one run.

Usage: .venv/bin/python bench/batched_fitness.py [--model artifacts/models/base-…] [--length 2048]
       [--candidates 8] [--windows 8]
Without --model a freshly initialised tiny model (same shapes as the embedded default) is used.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from ropelab.config import ModelConfig
from ropelab.models import build_tiny_llama, load_model
from ropelab.rope.adapter import rope_basics
from ropelab.search.evolution import mutate
from ropelab.search.fitness import batched_fitness, reference_fitness
from ropelab.search.space import SearchSpace, seed_vectors


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="")
    parser.add_argument("--length", type=int, default=2048)
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--windows", type=int, default=8)
    parser.add_argument("--tokens-per-batch", type=int, default=16384)
    args = parser.parse_args()
    torch.set_num_threads(2)
    model = load_model(args.model)[0] if args.model else build_tiny_llama(ModelConfig(), 0).eval()
    b = rope_basics(model.config)
    space = SearchSpace(b.head_dim, b.base, args.length / b.original_max_position_embeddings,
                        b.original_max_position_embeddings)
    rng = np.random.default_rng(0)
    pool = [space.candidate(v) for v in seed_vectors(space).values()]
    seen = {c.key(space.step) for c in pool}
    while len(pool) < args.candidates:
        child = mutate(pool[rng.integers(len(pool))], space, 0.3, rng, seen)
        seen.add(child.key(space.step))
        pool.append(child)
    windows = torch.randint(0, 256, (args.windows, args.length), generator=torch.Generator().manual_seed(0))
    timings, values = {}, {}
    for name, make in (("naive", lambda: reference_fitness(model, space, windows)),
                       ("batched", lambda: batched_fitness(model, space, windows,
                                                           tokens_per_batch=args.tokens_per_batch))):
        fn = make()
        fn(pool[:1])  # warm-up
        start = time.perf_counter()
        values[name] = fn(pool)
        timings[name] = time.perf_counter() - start
    agree = np.max(np.abs(np.array(values["batched"]) / np.array(values["naive"]) - 1))
    print(f"{args.candidates} candidates × {args.windows} windows × {args.length} tokens "
          f"(tokens per forward: {args.tokens_per_batch})")
    print(f"{'path':>8} {'seconds':>9} {'candidates/s':>13}")
    for name in ("naive", "batched"):
        print(f"{name:>8} {timings[name]:>9.2f} {args.candidates / timings[name]:>13.3f}")
    print(f"speed-up batched/naive: {timings['naive'] / timings['batched']:.2f}×; max relative difference {agree:.1e}")


if __name__ == "__main__":
    main()
