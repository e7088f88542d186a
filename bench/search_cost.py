"""Search cost: the same search (seed, space, windows, settings) with full fitness and with racing, side by side.

Usage: .venv/bin/python bench/search_cost.py [--model artifacts/models/base-…] [--config configs/tiny.yaml]
       [--scale 8] [--spread 2] [--first-windows 1] [--set search.iterations=8 ...]
Without --model the newest pretrained base under artifacts/models/ is used (`ropelab base --config tiny` makes
one). The search settings are the config's stage-1 search at ``--scale`` (tiny: population 16, 4 + 4 children,
8 parents, 4 generations, 8 validation windows of 2048 tokens); the winners are re-scored on the config's
held-out test windows. Prints forward tokens, wall time and the winners' PPL of both, and their ratios.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import torch

from ropelab.config import load_config
from ropelab.data.corpus import CorpusReader
from ropelab.eval.perplexity import truncated_windows
from ropelab.models import load_model
from ropelab.rope.adapter import rope_basics
from ropelab.search.evolution import EvolutionConfig, evolve
from ropelab.search.fitness import ModelScorer, batched_fitness
from ropelab.search.racing import RacingRule, WindowedFitness
from ropelab.search.space import SearchSpace, seed_vectors


def windows(tokenizer, corpus: Path, length: int, split: str, count: int, seed: int) -> torch.Tensor:
    purpose = "search" if split == "validation" else "evaluate"
    docs = [tokenizer.encode(d.text) for d in CorpusReader(corpus).documents(split, purpose)]
    return truncated_windows(docs, length, count, tokenizer.bos_token_id, torch.Generator().manual_seed(seed))


def newest_base(home: Path) -> Path:
    bases = sorted((home / "artifacts" / "models").glob("base-*"), key=lambda p: p.stat().st_mtime)
    if not bases:
        raise SystemExit("no pretrained base under artifacts/models: run `ropelab base --config tiny` first")
    return bases[-1]


def run_arm(model, space, valid, cfg: EvolutionConfig, s, rule: RacingRule | None) -> dict:
    scorer = ModelScorer(model, space, valid, tokens_per_batch=s.tokens_per_batch, attention_policy=s.attention_policy)
    per_generation = []

    def count(state) -> None:
        per_generation.append(scorer.forwarded * scorer.length - sum(per_generation))

    start = time.perf_counter()
    state = evolve(WindowedFitness(scorer, scorer.n, scorer.tokens, rule), space, cfg, np.random.default_rng(s.seed),
                   seeds=seed_vectors(space, s.seeds, s.yarn_beta_fast, s.yarn_beta_slow), on_generation=count)
    return {"state": state, "seconds": time.perf_counter() - start, "tokens": scorer.forwarded * scorer.length,
            "per_generation": per_generation, "eliminated": sum(not e.complete for e in state.history),
            "candidates": len(state.history)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--home", default=".")
    parser.add_argument("--model", default="")
    parser.add_argument("--config", default="configs/tiny.yaml")
    parser.add_argument("--scale", type=float, default=8.0)
    parser.add_argument("--spread", type=float, default=2.0)
    parser.add_argument("--first-windows", type=int, default=1)
    parser.add_argument("--set", action="append", default=[], help="config overrides, e.g. search.iterations=8")
    args = parser.parse_args()
    torch.set_num_threads(2)
    home = Path(args.home).resolve()
    run = load_config(args.config, [*args.set, f"search.scale={args.scale}"])
    s = run.search
    model, tokenizer = load_model(args.model or newest_base(home))
    b = rope_basics(model.config)
    space = SearchSpace(b.head_dim, b.base, s.scale, b.original_max_position_embeddings, bounds=s.bounds)
    corpus = home / run.data.name
    valid = windows(tokenizer, corpus, space.target_length, "validation", s.num_windows, s.seed)
    test = windows(tokenizer, corpus, space.target_length, "test", s.test_windows, s.seed)
    cfg = EvolutionConfig(s.population, s.iterations, s.mutations, s.crossovers, s.parents, s.mutation_probability,
                          s.evo_scale, early_stop_patience=s.early_stop_patience, halve_above=s.halve_above,
                          crossover=s.crossover, scale_rule=s.evo_scale_rule, mutation_retry=s.mutation_retry)
    counts = cfg.at_length(space.target_length).counts()
    rule = RacingRule(args.first_windows, args.spread)
    arms = {"full": run_arm(model, space, valid, cfg, s, None), "racing": run_arm(model, space, valid, cfg, s, rule)}
    winners = [arms[k]["state"].best.candidate for k in arms]
    held_out = batched_fitness(model, space, test, tokens_per_batch=s.tokens_per_batch,
                               attention_policy=s.attention_policy)(winners)
    print(f"search at s = {s.scale:g} (L' = {space.target_length}): population {counts['population']}, "
          f"{counts['mutations']} + {counts['crossovers']} children, {counts['parents']} parents, "
          f"{counts['iterations']} generations, seed {s.seed}; fitness on {s.num_windows} validation windows, "
          f"winners re-scored on {s.test_windows} test windows; racing: first {args.first_windows} window(s), "
          f"spread {args.spread:g}")
    print(f"{'arm':>7} {'fwd tokens':>11} {'seconds':>8} {'candidates':>10} {'eliminated':>10} "
          f"{'val PPL':>8} {'test PPL':>9}  tokens per generation")
    for (name, arm), ppl in zip(arms.items(), held_out, strict=True):
        arm["test"] = ppl
        print(f"{name:>7} {arm['tokens']:>11} {arm['seconds']:>8.1f} {arm['candidates']:>10} {arm['eliminated']:>10} "
              f"{arm['state'].best.fitness:>8.4f} {ppl:>9.4f}  {arm['per_generation']}")
    full, racing = arms["full"], arms["racing"]
    same = "the same" if winners[0] == winners[1] else "a different"
    print(f"tokens ratio (racing / full): {racing['tokens'] / full['tokens']:.3f}; wall-time ratio: "
          f"{racing['seconds'] / full['seconds']:.3f}; held-out PPL racing / full: {racing['test'] / full['test']:.4f} "
          f"({100 * (racing['test'] / full['test'] - 1):+.2f} %); {same} winner")
    if not math.isfinite(racing["test"]):
        raise SystemExit("racing winner's PPL is not finite")


if __name__ == "__main__":
    main()
