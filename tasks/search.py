"""Search tasks: one Prefect task per generation, a persisted fitness cache, the honest held-out report.

Each generation's state (population, history, RNG state) is written to a JSON file; a generation task's cache
key is the previous state's hash + the search config + the model and data versions + the code, so a killed
search resumes from its last completed generation through cache hits and ends exactly as an uninterrupted run.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from prefect import task

from ropelab.config import SearchConfig
from ropelab.data.corpus import CorpusReader
from ropelab.errors import RopelabError
from ropelab.eval.perplexity import truncated_windows
from ropelab.eval.plots import plot_search_curves
from ropelab.models import load_model
from ropelab.rope.factors_io import write_rescale_factors
from ropelab.rope.hf import export_hf, rope_basics, specs_from_config
from ropelab.search.evolution import EvolutionConfig, SearchState, initial_state, next_generation
from ropelab.search.fitness import batched_fitness
from ropelab.search.space import CODE_START_TOKENS, PAPER_START_TOKENS, Candidate, SearchSpace, seed_vectors
from tasks.caching import cached_on
from tasks.model import progress_bar
from tasks.retries import out_of_memory_is_final, transient_only
from tasks.settings import paths

POLICY = cached_on("run_id")
OOM_HINT = "lower search.tokens_per_batch (one window per forward at most) or search.num_windows"


@functools.lru_cache(maxsize=1)
def cached_model(path: str):
    """One load per process for all generation tasks of a search."""
    return load_model(path)


def space_for(model, cfg: SearchConfig) -> SearchSpace:
    """The search space on this model: stage 1 on a base model, stage 2 (product with the model's λ) on a
    fine-tuned longrope model, or a recovery search of short factors."""
    b = rope_basics(model.config)
    choices = {"none": None, "paper": PAPER_START_TOKENS, "code": CODE_START_TOKENS}[cfg.start_tokens]
    common = dict(head_dim=b.head_dim, base=b.base, scale=cfg.scale,
                  original_max_position_embeddings=b.original_max_position_embeddings, bounds=cfg.bounds,
                  start_token_choices=choices, max_rescale=cfg.max_rescale or None,
                  attention_factor=cfg.attention_factor or None)
    long, _ = specs_from_config(model.config)
    if cfg.mode == "recovery":
        if cfg.attention_factor == 0 and long.method == "longrope":
            common["attention_factor"] = long.compute()[1]  # transformers applies the long set's to short inputs
        return SearchSpace(**common)
    if cfg.mode != "extend":
        raise RopelabError(f"search.mode must be extend or recovery, got {cfg.mode!r}")
    if long.method != "longrope":
        return SearchSpace(**common)
    trained_length = model.config.max_position_embeddings
    return SearchSpace(**common, reference_length=trained_length, base_rescale=long.rescale_factors,
                       total_factor=cfg.scale * trained_length / b.original_max_position_embeddings)


def evolution_config(cfg: SearchConfig) -> EvolutionConfig:
    return EvolutionConfig(cfg.population, cfg.iterations, cfg.mutations, cfg.crossovers, cfg.parents,
                           cfg.mutation_probability, cfg.evo_scale, early_stop_patience=cfg.early_stop_patience)


def windows_for(tokenizer, space: SearchSpace, split: str, count: int, seed: int) -> torch.Tensor:
    if count < 1:
        knobs = ("search.num_windows, pipeline.final_search_windows" if split == "validation"
                 else "search.test_windows, pipeline.final_search_test_windows")
        raise RopelabError(f"a search needs at least one {split} window, got {count} ({knobs})")
    purpose = "search" if split == "validation" else "evaluate"
    docs = [tokenizer.encode(d.text) for d in CorpusReader(paths().corpus).documents(split, purpose)]
    return truncated_windows(docs, space.target_length, count, tokenizer.bos_token_id, torch.Generator().manual_seed(seed))


def search_dir(model_fp: str, data_md5: str, cfg: SearchConfig) -> Path:
    key = hashlib.sha256(json.dumps([model_fp, data_md5, repr(cfg)]).encode()).hexdigest()[:12]
    return paths().artifacts / "search" / f"s{cfg.scale:g}-{key}"


class FitnessCache:
    """Fitness values persisted per (model, data version, windows, length): a repeat never pays twice."""

    def __init__(self, path: Path, step: float):
        self.path, self.step = path, step
        path.parent.mkdir(parents=True, exist_ok=True)
        self.values = {}
        if path.exists():
            for line in path.read_text().splitlines():
                row = json.loads(line)
                self.values[(tuple(row["key"]), row["start_tokens"])] = row["fitness"]

    def wrap(self, fitness):
        def cached(candidates):
            missing = [c for c in candidates if self._key(c) not in self.values]
            if missing:
                with open(self.path, "a") as fh:
                    for c, value in zip(missing, fitness(missing), strict=True):
                        self.values[self._key(c)] = value
                        fh.write(json.dumps({"key": list(self._key(c)[0]), "start_tokens": c.start_tokens,
                                             "fitness": value}) + "\n")
            return [self.values[self._key(c)] for c in candidates]

        return cached

    def _key(self, c: Candidate):
        return (tuple(int(round(v / self.step)) for v in c.rescale_factors), c.start_tokens)


def _fitness(model_path: str, model_fp: str, data_md5: str, cfg: SearchConfig, bar=None):
    model, tokenizer = cached_model(model_path)
    space = space_for(model, cfg)
    windows = windows_for(tokenizer, space, "validation", cfg.num_windows, cfg.seed)
    windows_sha = hashlib.sha256(windows.numpy().tobytes()).hexdigest()[:12]
    cache = FitnessCache(paths().artifacts / "fitness-cache" / f"{model_fp[:12]}-{data_md5[:8]}-{windows_sha}.jsonl",
                         space.step)
    on_batch = (lambda rows: bar[0].update(bar[1], advance=rows)) if bar else None
    fn = batched_fitness(model, space, windows, tokens_per_batch=cfg.tokens_per_batch,
                         attention_policy=cfg.attention_policy, on_batch=on_batch)
    return space, cache.wrap(fn)


def _save_state(state: SearchState, directory: Path) -> dict:
    directory.mkdir(parents=True, exist_ok=True)
    text = state.to_json()
    path = directory / f"state-{state.generation:03d}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)  # a kill mid-write never leaves a truncated state
    new = [e for e in state.history if e.generation == state.generation]
    log = directory / f"generation-{state.generation:03d}.jsonl"
    log.write_text("".join(json.dumps({**e.candidate.to_dict(), "fitness": e.fitness, "origin": e.origin}) + "\n"
                           for e in new))
    fitness = [e.fitness for e in state.population]
    return {"state_path": str(path), "state_sha": hashlib.sha256(text.encode()).hexdigest(),
            "generation": state.generation, "best": min(fitness), "median": float(np.median(fitness)),
            "evaluated": len(new), "log_path": str(log), "stopped_early": state.stopped_early,
            "best_rescale_factors": list(state.best.candidate.rescale_factors)}


@task(name="search-init", cache_policy=POLICY, retries=2, retry_delay_seconds=[10, 60],
      retry_condition_fn=transient_only)
def search_init(model_path: str, model_fp: str, data_md5: str, cfg: SearchConfig) -> dict:
    """The seeded initial population, evaluated (generation 0)."""
    with progress_bar() as bar:
        job = bar.add_task("search: initial population", total=None, status="")
        space, fitness = _fitness(model_path, model_fp, data_md5, cfg, (bar, job))
        rng = np.random.default_rng(cfg.seed)
        with out_of_memory_is_final("search", space.target_length, OOM_HINT):
            state = initial_state(fitness, space, evolution_config(cfg), rng, seed_vectors(space, cfg.seeds))
    return _save_state(state, search_dir(model_fp, data_md5, cfg))


@task(name="search-generation", cache_policy=POLICY, retries=2, retry_delay_seconds=[10, 60],
      retry_condition_fn=transient_only)
def search_generation(model_path: str, model_fp: str, data_md5: str, cfg: SearchConfig, previous: dict) -> dict:
    """One generation from the previous state file (its hash is part of the cache key)."""
    state = SearchState.from_json(Path(previous["state_path"]).read_text())
    with progress_bar() as bar:
        job = bar.add_task(f"search: generation {state.generation + 1}", total=None, status="")
        space, fitness = _fitness(model_path, model_fp, data_md5, cfg, (bar, job))
        with out_of_memory_is_final("search", space.target_length, OOM_HINT):
            state = next_generation(state, fitness, space, evolution_config(cfg))
    return _save_state(state, search_dir(model_fp, data_md5, cfg))


@task(name="search-report", cache_policy=POLICY)
def search_report(model_path: str, model_fp: str, data_md5: str, cfg: SearchConfig, final: dict) -> dict:
    """Winner and seeds re-evaluated on held-out test windows; λ as JSON + CSV; HF export; λ-curve plot."""
    model, tokenizer = cached_model(model_path)
    space = space_for(model, cfg)
    state = SearchState.from_json(Path(final["state_path"]).read_text())
    out = search_dir(model_fp, data_md5, cfg) / "result"
    seeds = {e.origin.removeprefix("seed:"): e for e in state.history if e.origin.startswith("seed:")}
    test = windows_for(tokenizer, space, "test", cfg.test_windows, cfg.seed)
    contenders = {"winner": state.best.candidate, **{f"seed:{k}": e.candidate for k, e in seeds.items()}}
    test_ppl = dict(zip(contenders, batched_fitness(model, space, test, tokens_per_batch=cfg.tokens_per_batch,
                                                    attention_policy=cfg.attention_policy)(list(contenders.values())),
                        strict=True))
    winner = state.best.candidate
    stored = space.stored_factors(winner)
    meta = {"factor": space.total_factor or space.scale, "search_scale": space.scale, "mode": cfg.mode, "start_tokens": winner.start_tokens,
            "original_max_position_embeddings": space.original_max_position_embeddings,
            "validation_ppl": state.best.fitness, "test_ppl": test_ppl["winner"], "attention_policy": cfg.attention_policy,
            "attention_factor": space.spec(winner, cfg.attention_policy).compute()[1]}
    lam_json = write_rescale_factors(out / "rescale_factors.json", stored, **meta, searched=list(winner.rescale_factors))
    write_rescale_factors(out / "rescale_factors.csv", stored)
    generations = sorted(Path(final["state_path"]).parent.glob("state-*.json"))
    best_curves = [SearchState.from_json(p.read_text()).best.candidate.rescale_factors for p in generations]
    plot_search_curves({k: e.candidate.rescale_factors for k, e in seeds.items()}, best_curves,
                       out / "lambda_curves.png", f"searched λ at s = {space.scale:g} (L' = {test.shape[1]})")
    export = export_hf(model, out / "hf_export", space.spec(winner, cfg.attention_policy),
                       tokenizer=tokenizer, provenance={"search": str(out.parent), "data_version": data_md5})
    validation = {"winner": state.best.fitness, **{f"seed:{k}": e.fitness for k, e in seeds.items()}}
    (out / "report.json").write_text(json.dumps({"test_ppl": test_ppl, "validation_ppl": validation,
                                                  "evaluated": len(state.history)}, indent=2))
    return {"dir": str(out), "lambda": str(lam_json), "test_ppl": test_ppl, "validation_ppl": validation,
            "export": str(export.path), "lossy": export.lossy, "evaluated": len(state.history)}
