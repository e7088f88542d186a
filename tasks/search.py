"""Search tasks: one Prefect task per generation, a persisted fitness cache, the honest held-out report.

Each generation's state (population, history, RNG state) is written to a JSON file; a generation task's cache
key is the previous state's hash + the search config + the model and data identities + the code, so a killed
search resumes from its last completed generation through cache hits and ends exactly as an uninterrupted run.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ropelab import identity
from ropelab.artifacts import DataArtifact, ModelArtifact, SearchArtifact, Series
from ropelab.atomic import write_text_atomic
from ropelab.checked import checked_line, read_checked_lines
from ropelab.config import SearchConfig
from ropelab.data.corpus import CorpusReader
from ropelab.data.needles import build_needles
from ropelab.errors import RopelabError
from ropelab.eval.needle import answer_windows
from ropelab.eval.perplexity import truncated_windows
from ropelab.eval.plots import plot_search_curves
from ropelab.models import load_model
from ropelab.rope.adapter import rope_basics, specs_from_config
from ropelab.rope.export import export_hf
from ropelab.rope.factors_io import write_rescale_factors
from ropelab.search.critical import critical_dim_candidates
from ropelab.search.evolution import EvolutionConfig, SearchState, initial_state, next_generation
from ropelab.search.fitness import ModelScorer, batched_fitness
from ropelab.search.racing import RacingRule, Request, WindowedFitness
from ropelab.search.space import (
    CODE_START_TOKENS,
    PAPER_START_TOKENS,
    Candidate,
    SearchSpace,
    exact_seeds,
    seed_vectors,
)
from ropelab.search.v2 import V2Space, initial_state_v2, next_generation_v2, sweep_rng
from ropelab.tasks.caching import IDENTITY, code_version
from ropelab.tasks.devices import device_task
from ropelab.tasks.home import paths
from ropelab.tasks.progress import progress_bar
from ropelab.tasks.retries import out_of_memory_is_final, transient_only

OOM_HINT = "lower search.tokens_per_batch (one window per forward at most) or search.num_windows"
START_TOKENS = {"none": None, "paper": PAPER_START_TOKENS, "code": CODE_START_TOKENS}


@dataclass(frozen=True)
class Generation:
    """A saved generation: its state file (hashed: part of the next generation's key) and its statistics."""

    state_path: Path
    state_sha: str
    generation: int
    best: float
    median: float
    evaluated: int
    log_path: Path
    stopped_early: bool
    shortfall: int = 0  # children configured but not made (no new valid one in the retries)
    forward_tokens: int = 0  # tokens this generation's task ran through the model (cache misses × length)
    cache_hits: int = 0  # windows served from the fitness cache
    eliminated: int = 0  # new candidates racing eliminated before their last window
    windows_scored: int = 0  # windows the generation's candidates were scored on (cached or not)

    def exists(self) -> bool:
        """Both files there and the state still the one this generation wrote (its sha256 is the next key)."""
        return (self.state_path.exists() and self.log_path.exists()
                and identity.sha256_file(self.state_path) == self.state_sha)


@functools.lru_cache(maxsize=1)
def cached_model(path: Path):
    """One load per process for all generation tasks of a search."""
    return load_model(path)


def space_for(model, cfg: SearchConfig, critical_dim: int | None = None) -> SearchSpace | V2Space:
    """The search space on this model: stage 1 on a base model, stage 2 (product with the model's λ) on a
    fine-tuned longrope model, a recovery search of short factors, or (search.variant longrope2) LongRoPE2's
    space at one critical dim."""
    b = rope_basics(model.config)
    if cfg.variant == "longrope2":
        return v2_space_for(model, cfg, critical_dim)
    common = dict(head_dim=b.head_dim, base=b.base, scale=cfg.scale,
                  original_max_position_embeddings=b.original_max_position_embeddings, bounds=cfg.bounds,
                  start_token_choices=START_TOKENS[cfg.start_tokens], max_rescale=cfg.max_rescale or None,
                  attention_factor=cfg.attention_factor or None)
    long, _ = specs_from_config(model.config)
    if cfg.mode == "recovery":
        if cfg.attention_factor == 0 and long.method == "longrope":
            common["attention_factor"] = long.compute()[1]  # transformers applies the long set's to short inputs
        return SearchSpace(**common)
    if long.method != "longrope":
        return SearchSpace(**common)
    trained_length = model.config.max_position_embeddings
    return SearchSpace(**common, reference_length=trained_length, base_rescale=long.rescale_factors,
                       total_factor=cfg.scale * trained_length / b.original_max_position_embeddings)


def v2_space_for(model, cfg: SearchConfig, critical_dim: int | None) -> V2Space:
    """LongRoPE2's space: one search on the base model (mode extend, no n̂), at ``critical_dim``."""
    refuse_for_longrope2(model, cfg)
    if critical_dim is None:
        raise RopelabError("a longrope2 search runs at one critical dim (the flow sweeps search.critical_dims)")
    b = rope_basics(model.config)
    return V2Space(head_dim=b.head_dim, base=b.base, scale=cfg.scale,
                   original_max_position_embeddings=b.original_max_position_embeddings, critical_dim=critical_dim,
                   upper_ratio=cfg.upper_ratio, attention_factor=cfg.attention_factor or None)


def refuse_for_longrope2(model, cfg: SearchConfig) -> None:
    """One error line for settings LongRoPE2's search does not have."""
    if cfg.mode != "extend":
        raise RopelabError("search.variant longrope2 extends (search.mode extend); recovery searches are LongRoPE's")
    if cfg.start_tokens != "none":
        raise RopelabError("search.variant longrope2 searches no n̂: set search.start_tokens none")
    if specs_from_config(model.config)[0].method == "longrope":
        raise RopelabError("search.variant longrope2 searches once, on a model without longrope factors (LongRoPE2 "
                           "then fine-tunes with mixed context windows); this model already has them")


def critical_dims_for(model, cfg: SearchConfig) -> tuple[int, ...]:
    """The critical dims a longrope2 search sweeps on this model (search.critical_dims, else the paper's range)."""
    refuse_for_longrope2(model, cfg)
    b = rope_basics(model.config)
    dims = cfg.critical_dims or tuple(critical_dim_candidates(b.head_dim, b.base, b.original_max_position_embeddings,
                                                              cfg.critical_dim_stride))
    bad = [cd for cd in dims if not 0 < cd < b.head_dim // 2]
    if bad:
        raise RopelabError(f"search.critical_dims {bad} outside 1..{b.head_dim // 2 - 1} (rotary-pair indices of "
                           f"head_dim {b.head_dim})")
    return tuple(dims)


def evolution_config(cfg: SearchConfig) -> EvolutionConfig:
    return EvolutionConfig(cfg.population, cfg.iterations, cfg.mutations, cfg.crossovers, cfg.parents,
                           cfg.mutation_probability, cfg.evo_scale, early_stop_patience=cfg.early_stop_patience,
                           halve_above=cfg.halve_above, crossover=cfg.crossover, scale_rule=cfg.evo_scale_rule,
                           mutation_retry=cfg.mutation_retry, start_token_search=cfg.start_token_search)


def racing_rule(cfg: SearchConfig) -> RacingRule | None:
    return RacingRule(cfg.racing_first_windows, cfg.racing_spread) if cfg.racing else None


def planned_generations(cfg: SearchConfig) -> int:
    """Generations after the initial population: search.iterations, scaled under evo_scale_rule code."""
    return evolution_config(cfg).counts()["iterations"]


def seeds_for(space: SearchSpace, cfg: SearchConfig) -> dict[str, np.ndarray]:
    return seed_vectors(space, cfg.seeds, cfg.yarn_beta_fast, cfg.yarn_beta_slow)


def windows_for(tokenizer, corpus: Path, space: SearchSpace, split: str, count: int, seed: int) -> torch.Tensor:
    purpose = "search" if split == "validation" else "evaluate"
    docs = [tokenizer.encode(d.text) for d in CorpusReader(corpus).documents(split, purpose)]
    return truncated_windows(docs, space.target_length, count, tokenizer.bos_token_id, torch.Generator().manual_seed(seed))


def scored_windows(tokenizer, corpus: Path, space, cfg: SearchConfig, split: str, count: int
                   ) -> tuple[torch.Tensor, int]:
    """(windows, first scored position) of the search's fitness kind on one split: plain windows scored from
    position 1, or needle samples (built from that split's documents only) scored on their answers."""
    if cfg.fitness == "ppl":
        return windows_for(tokenizer, corpus, space, split, count, cfg.seed), 1
    purpose = "search" if split == "validation" else "evaluate"
    needles = build_needles(list(CorpusReader(corpus).documents(split, purpose)), split, tokenizer.encode,
                            length=space.target_length, count=count, seed=cfg.seed, bos=tokenizer.bos_token_id,
                            eos=tokenizer.eos_token_id)
    return answer_windows(needles)


def search_dir(model: ModelArtifact, cfg: SearchConfig, critical_dim: int | None = None) -> Path:
    key = identity.json_identity([model, cfg, critical_dim, code_version()])
    cd = f"-cd{critical_dim}" if critical_dim is not None else ""
    return paths().artifacts / "search" / f"s{cfg.scale:g}{cd}-{identity.short(key)}"


class FitnessCache:
    """Per-window fitness results persisted per (model, data, windows, code version), keyed by each candidate's
    full RoPE setting as the fitness installs it (method, factors, n̂, attention policy and factor as computed),
    so a search with another attention policy, mode or explicit factor never receives these values. Each
    window's NLL is appended as soon as its forward returns: a candidate racing stopped early, or a generation
    killed half-way, is completed later from where it stopped."""

    def __init__(self, path: Path, space: SearchSpace, attention_policy: str):
        self.path, self.space, self.policy = path, space, attention_policy
        path.parent.mkdir(parents=True, exist_ok=True)
        # only lines whose own sha256 holds: a line cut by a kill or a planted fitness is recomputed, not trusted
        self.values: dict[str, dict[int, float]] = {}
        for row in read_checked_lines(path):
            if "setting" in row and isinstance(row.get("window"), int) and isinstance(row.get("nll"), (int, float)):
                self.values.setdefault(row["setting"], {})[row["window"]] = row["nll"]

    def setting(self, c: Candidate) -> str:
        spec = self.space.spec(c, self.policy)
        return identity.json_identity({**spec.to_dict(), "computed_attention_factor": spec.compute()[1]})

    def wrap(self, scorer: ModelScorer) -> CachedScorer:
        return CachedScorer(self, scorer)


@dataclass
class CachedScorer:
    """A window scorer through the cache: only the (candidate, window) pairs it lacks are forwarded;
    ``hits`` counts the windows it served."""

    cache: FitnessCache
    scorer: ModelScorer
    hits: int = 0

    def __call__(self, requests: list[Request]) -> list[list[float]]:
        keys = [self.cache.setting(c) for c, _ in requests]
        missing = [(c, tuple(w for w in wanted if w not in self.cache.values.get(key, {})))
                   for key, (c, wanted) in zip(keys, requests, strict=True)]
        todo = [(j, request) for j, request in enumerate(missing) if request[1]]
        self.hits += sum(len(w) for _, w in requests) - sum(len(w) for _, w in missing)
        if todo:
            with open(self.cache.path, "a") as fh:
                def persist(k: int, window: int, value: float) -> None:
                    j, (c, _) = todo[k]
                    self.cache.values.setdefault(keys[j], {})[window] = value
                    fh.write(checked_line({"setting": keys[j], **c.to_dict(), "window": window, "nll": value}))
                    fh.flush()

                self.scorer([request for _, request in todo], on_value=persist)
        return [[self.cache.values[key][w] for w in wanted] for key, (_, wanted) in zip(keys, requests, strict=True)]


def _fitness(model: ModelArtifact, data: DataArtifact, cfg: SearchConfig, bar=None, racing: bool = True,
             critical_dim: int | None = None):
    """(space, the windowed fitness through the cache — racing per ``cfg`` unless ``racing`` is false —, the
    cached scorer whose counters the generation records)."""
    loaded, tokenizer = cached_model(model.path)
    space = space_for(loaded, cfg, critical_dim)
    windows, score_from = scored_windows(tokenizer, data.path, space, cfg, "validation", cfg.num_windows)
    scored = f"-from{score_from}" if score_from != 1 else ""  # needle windows: only the answers are scored
    name = (f"{model.fingerprint[:12]}-{data.fingerprint[:8]}-{identity.tensor_identity(windows)[:12]}{scored}-"
            f"{code_version()}")
    cache = FitnessCache(paths().artifacts / "fitness-cache" / f"{name}.jsonl", space, cfg.attention_policy)
    on_batch = (lambda rows: bar[0].update(bar[1], advance=rows)) if bar else None
    scorer = cache.wrap(ModelScorer(loaded, space, windows, tokens_per_batch=cfg.tokens_per_batch,
                                    attention_policy=cfg.attention_policy, on_batch=on_batch, score_from=score_from))
    inner = scorer.scorer
    return space, WindowedFitness(scorer, inner.n, inner.tokens, racing_rule(cfg) if racing else None), scorer


def _save_state(state: SearchState, directory: Path, scorer: CachedScorer) -> Generation:
    directory.mkdir(parents=True, exist_ok=True)
    text = state.to_json()
    path = write_text_atomic(directory / f"state-{state.generation:03d}.json", text)
    new = [e for e in state.history if e.generation == state.generation]
    log = write_text_atomic(directory / f"generation-{state.generation:03d}.jsonl", "".join(
        json.dumps({**e.candidate.to_dict(), "fitness": e.fitness, "origin": e.origin, "windows": len(e.windows),
                    "complete": e.complete}) + "\n" for e in new))
    fitness = [e.fitness for e in state.population]
    return Generation(path, identity.sha256_bytes(text.encode()), state.generation, min(fitness),
                      float(np.median(fitness)), len(new), log, state.stopped_early, state.shortfall[-1],
                      scorer.scorer.forwarded * scorer.scorer.length, scorer.hits,
                      sum(not e.complete for e in new), sum(len(e.windows) for e in new))


@device_task(name="search-init", cache_policy=IDENTITY, retries=2, retry_delay_seconds=[10, 60],
      retry_condition_fn=transient_only)
def search_init(model: ModelArtifact, data: DataArtifact, cfg: SearchConfig,
                critical_dim: int | None = None) -> Generation:
    """The seeded initial population, evaluated (generation 0); longrope2 at ``critical_dim``, with its own
    generator per critical dim (``sweep_rng``: a resumed sweep never depends on which dims already ran)."""
    where = f" (critical dim {critical_dim})" if critical_dim is not None else ""
    with progress_bar() as bar:
        job = bar.add_task(f"search{where}: initial population", total=None, status="")
        space, fitness, scorer = _fitness(model, data, cfg, (bar, job), critical_dim=critical_dim)
        with out_of_memory_is_final("search", space.target_length, OOM_HINT):
            if isinstance(space, V2Space):
                state = initial_state_v2(fitness, space, evolution_config(cfg), sweep_rng(cfg.seed, critical_dim))
            else:
                state = initial_state(fitness, space, evolution_config(cfg), np.random.default_rng(cfg.seed),
                                      seeds_for(space, cfg))
    return _save_state(state, search_dir(model, cfg, critical_dim), scorer)


@device_task(name="search-generation", cache_policy=IDENTITY, retries=2, retry_delay_seconds=[10, 60],
      retry_condition_fn=transient_only)
def search_generation(model: ModelArtifact, data: DataArtifact, cfg: SearchConfig, previous: Generation,
                      critical_dim: int | None = None) -> Generation:
    """One generation from the previous state file (its hash is part of the cache key)."""
    state = SearchState.from_json(previous.state_path.read_text())
    where = f" (critical dim {critical_dim})" if critical_dim is not None else ""
    with progress_bar() as bar:
        job = bar.add_task(f"search{where}: generation {state.generation + 1}", total=None, status="")
        space, fitness, scorer = _fitness(model, data, cfg, (bar, job), critical_dim=critical_dim)
        step = next_generation_v2 if isinstance(space, V2Space) else next_generation
        with out_of_memory_is_final("search", space.target_length, OOM_HINT):
            state = step(state, fitness, space, evolution_config(cfg))
    return _save_state(state, search_dir(model, cfg, critical_dim), scorer)


@device_task(name="search-sweep-plan", cache_policy=IDENTITY)
def sweep_plan(model: ModelArtifact, cfg: SearchConfig) -> tuple[int, ...]:
    """The critical dims a longrope2 search runs at on this model; (no dims) for LongRoPE's search."""
    if cfg.variant != "longrope2":
        return ()
    return critical_dims_for(cached_model(model.path)[0], cfg)


def generation_series(generations: list[Generation]) -> tuple[Series, ...]:
    names = {"best": "search/best_fitness", "median": "search/median_fitness", "evaluated": "search/evaluated_in_generation",
             "shortfall": "search/children_missing", "forward_tokens": "search/forward_tokens",
             "cache_hits": "search/cache_hits", "eliminated": "search/eliminated", "windows_scored": "search/windows_scored"}
    return tuple(Series(metric, tuple((g.generation, float(getattr(g, field))) for g in generations))
                 for field, metric in names.items())


def search_cost(generations: list[Generation], cfg: SearchConfig, target_length: int) -> dict[str, float]:
    """What the search cost, over all its generations (the report states it; MLflow metrics search/…)."""
    return {"forward_tokens_total": float(sum(g.forward_tokens for g in generations)),
            "cache_hits_total": float(sum(g.cache_hits for g in generations)),
            "eliminated_total": float(sum(g.eliminated for g in generations)),
            "windows_scored_total": float(sum(g.windows_scored for g in generations)),
            "racing": float(cfg.racing), "stopped_early": float(generations[-1].stopped_early),
            "generations": float(generations[-1].generation),
            "halved": float(evolution_config(cfg).at_length(target_length) != evolution_config(cfg))}


def exact_seed_report(model: ModelArtifact, data: DataArtifact, cfg: SearchConfig, space: SearchSpace,
                      snapped: dict[str, Candidate], score_test) -> dict[str, dict[str, float]]:
    """The search scores its seeds snapped onto the 0.01 grid; here the exact seeds (where snapping changed
    them) are scored too, on the validation and the test windows, with the largest change snapping made."""
    exact = exact_seeds(space, seeds_for(space, cfg), snapped)
    if not exact:
        return {}
    _, validate, _ = _fitness(model, data, cfg, racing=False)
    names = list(exact)
    rows = zip(names, validate([exact[k] for k in names]), score_test([exact[k] for k in names]), strict=True)
    return {f"seed:{k}": {"validation_ppl": v, "test_ppl": t, "max_snap": float(np.max(np.abs(
        np.subtract(exact[k].rescale_factors, snapped[k].rescale_factors))))} for k, v, t in rows}


@device_task(name="search-report", cache_policy=IDENTITY)
def search_report(model: ModelArtifact, data: DataArtifact, cfg: SearchConfig, generations: list[Generation],
                  critical_dim: int | None = None, sweep: dict[int, float] | None = None,
                  swept: list[list[Generation]] | None = None) -> SearchArtifact:
    """Winner and seeds re-evaluated on held-out test windows (needle samples under search.fitness needle); λ as
    JSON + CSV; HF export; λ-curve plot. longrope2: ``generations`` are the winning critical dim's, ``sweep`` every
    critical dim's best validation fitness, ``swept`` every critical dim's generations (the cost totals are the
    whole sweep's)."""
    loaded, tokenizer = cached_model(model.path)
    space = space_for(loaded, cfg, critical_dim)
    state = SearchState.from_json(generations[-1].state_path.read_text())
    out = search_dir(model, cfg, critical_dim) / "result"
    seeds = {e.origin.removeprefix("seed:"): e for e in state.history if e.origin.startswith("seed:")}
    test, score_from = scored_windows(tokenizer, data.path, space, cfg, "test", cfg.test_windows)
    contenders = {"winner": state.best.candidate, **{f"seed:{k}": e.candidate for k, e in seeds.items()}}
    score_test = batched_fitness(loaded, space, test, tokens_per_batch=cfg.tokens_per_batch,
                                 attention_policy=cfg.attention_policy, score_from=score_from)
    test_ppl = dict(zip(contenders, score_test(list(contenders.values())), strict=True))
    winner = state.best.candidate
    spec = space.spec(winner, cfg.attention_policy)
    meta = {"factor": space.total_factor or space.scale, "search_scale": space.scale, "mode": cfg.mode,
            "start_tokens": winner.start_tokens, "original_max_position_embeddings": space.original_max_position_embeddings,
            "validation_ppl": state.best.fitness, "test_ppl": test_ppl["winner"], "attention_policy": cfg.attention_policy,
            "attention_factor": spec.compute()[1], "variant": cfg.variant, "fitness": cfg.fitness}
    if critical_dim is not None:
        meta |= {"critical_dim": critical_dim, "critical_dim_indexing": "rotary pair (position in the λ vector)"}
    lam = write_rescale_factors(out / "rescale_factors.json", space.stored_factors(winner), **meta,
                                searched=list(winner.rescale_factors))
    write_rescale_factors(out / "rescale_factors.csv", space.stored_factors(winner))
    best_curves = [SearchState.from_json(g.state_path.read_text()).best.candidate.rescale_factors for g in generations]
    plot_search_curves({k: e.candidate.rescale_factors for k, e in seeds.items()}, best_curves,
                       out / "lambda_curves.png", f"searched λ at s = {space.scale:g} (L' = {test.shape[1]})")
    export = export_hf(loaded, out / "hf_export", spec, tokenizer=tokenizer,
                       provenance={"search": str(out.parent), "data_version": data.fingerprint})
    validation = {"winner": state.best.fitness, **{f"seed:{k}": e.fitness for k, e in seeds.items()}}
    exact = ({} if isinstance(space, V2Space) else  # longrope2's seeds are built on the grid: nothing snapped
             exact_seed_report(model, data, cfg, space, {k: e.candidate for k, e in seeds.items()}, score_test))
    cost = search_cost(generations, cfg, space.target_length)
    if swept:
        every = [g for run in swept for g in run]
        cost |= {k: v for k, v in search_cost(every, cfg, space.target_length).items() if k.endswith("_total")}
        cost["sweep_evaluated_total"] = float(sum(g.evaluated for g in every))
    sweep = {int(k): float(v) for k, v in (sweep or {}).items()}
    write_text_atomic(out / "report.json", json.dumps({"test_ppl": test_ppl, "validation_ppl": validation,
                                                       "evaluated": len(state.history), "exact_seeds": exact,
                                                       "shortfall": state.shortfall, "cost": cost,
                                                       "variant": cfg.variant, "fitness": cfg.fitness,
                                                       "critical_dim": critical_dim, "sweep": sweep}, indent=2))
    return SearchArtifact(out, identity.sha256_file(lam)[:16], data.fingerprint, lam=lam, export=export.path,
                          mode=cfg.mode, test_ppl=test_ppl, validation_ppl=validation, evaluated=len(state.history),
                          cost=cost,
                          generations=generation_series(generations),
                          generation_logs=tuple(g.log_path for g in generations), lossy=tuple(export.lossy),
                          variant=cfg.variant, fitness=cfg.fitness, sweep=sweep, critical_dim=critical_dim or 0)

