"""LongRoPE's evolutionary search (Ding et al. 2024, Alg. 1; the released code's `dim_mono` search).

The algorithm knows nothing of models, files or tracking: ``fitness`` maps a batch of candidates to their
fitness (lower is better, e.g. perplexity). Randomness comes only from the ``np.random.Generator`` passed in,
and its state travels inside ``SearchState``, so a search stopped after any generation and resumed from its
saved state ends with exactly the result of an uninterrupted run. The operators and their reference variants
are in ``ropelab.search.operators``. A ``WindowedFitness`` with a racing rule scores a generation's new
candidates as a race against the parents (``ropelab.search.racing``): only those that stay in join the
population; the eliminated ones are in the history with their partial fitness (``complete`` false).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from ropelab.errors import RopelabError
from ropelab.search.operators import (
    CROSSOVERS,
    MUTATION_RETRIES,
    START_TOKEN_SEARCHES,
    TRIAL_PICKS,
    TRIAL_SAMPLE,
    TRIAL_TOP,
    crossover,
    crossover_pair,
    mutate,
    start_token_trials,
)
from ropelab.search.racing import WindowedFitness
from ropelab.search.space import Candidate, SearchSpace

Fitness = Callable[[list[Candidate]], Sequence[float]]
SCALE_RULES = ("round", "code")
SCALED = ("population", "iterations", "mutations", "crossovers", "crossover_passes", "parents")
__all__ = ["EvolutionConfig", "Evaluated", "SearchShortfallWarning", "SearchState", "crossover", "evolve",
           "initial_state", "mutate", "next_generation", "try_start_tokens"]  # crossover, mutate: from operators


class SearchShortfallWarning(UserWarning):
    """A generation scored fewer children than configured: some could not be made new and valid."""


@dataclass(frozen=True)
class EvolutionConfig:
    """Defaults are the reference hyper-parameters; ``scale`` multiplies the counts (the code's evo_scale).

    ``scale_rule``: round (ropelab: population, mutations, crossovers, parents rounded, at least 1) or code
    (genetic_base.py ``__init__``: ``int(evo_scale·n)`` of those and of iterations and crossover tries).
    ``crossover``, ``mutation_retry``, ``start_token_search``: see ``ropelab.search.operators``."""

    population: int = 64
    iterations: int = 40
    mutations: int = 16
    crossovers: int = 16
    parents: int = 32
    mutation_probability: float = 0.3
    scale: float = 1.0
    max_retries: int = 100  # attempts to produce one new, valid child
    crossover_passes: int = 20
    early_stop_patience: int = 0  # stop after this many generations without improvement (0: never)
    halve_above: int = 0  # target lengths above this use halved() (the paper: 512k; 0: never)
    crossover: str = "uniform"
    scale_rule: str = "round"
    mutation_retry: str = "restart"
    start_token_search: str = "walk"

    def __post_init__(self) -> None:
        for name, valid in (("crossover", CROSSOVERS), ("scale_rule", SCALE_RULES),
                            ("mutation_retry", MUTATION_RETRIES), ("start_token_search", START_TOKEN_SEARCHES)):
            if getattr(self, name) not in valid:
                raise RopelabError(f"search {name} must be one of {', '.join(valid)}, got {getattr(self, name)!r}")

    def counts(self) -> dict[str, int]:
        """The scaled counts: population, iterations, mutations, crossovers, crossover_passes, parents."""
        if self.scale_rule == "code":
            counts = {name: int(self.scale * getattr(self, name)) for name in SCALED}
            for name in ("population", "parents"):
                if counts[name] < 1:
                    raise RopelabError(f"search.evo_scale {self.scale:g} with evo_scale_rule code leaves {name} "
                                       f"int({self.scale:g}·{getattr(self, name)}) = 0; raise evo_scale")
            return counts

        def scaled(n: int) -> int:
            return max(1, int(round(n * self.scale)))

        return {"population": scaled(self.population), "iterations": self.iterations,
                "mutations": scaled(self.mutations), "crossovers": scaled(self.crossovers),
                "crossover_passes": self.crossover_passes, "parents": scaled(self.parents)}

    def halved(self) -> EvolutionConfig:
        """The paper's rule above 512k: half the population, mutations and crossovers."""
        return replace(self, population=max(2, self.population // 2), mutations=max(1, self.mutations // 2),
                       crossovers=max(1, self.crossovers // 2), parents=max(1, self.parents // 2))

    def at_length(self, target_length: int) -> EvolutionConfig:
        """The counts used at ``target_length``: halved above ``halve_above`` (the paper's rule)."""
        return self.halved() if self.halve_above and target_length > self.halve_above else self

    def operator_options(self) -> dict:
        """The mutation options every operator call shares (trial n̂ search: mutation leaves n̂ alone)."""
        return {"retry": self.mutation_retry, "walk_n_hat": self.start_token_search == "walk"}


@dataclass
class Evaluated:
    candidate: Candidate
    fitness: float
    generation: int
    origin: str  # "seed:<name>", "mutation", "crossover", "start-tokens" (a trial n̂ on a candidate's λ)
    windows: tuple[float, ...] = ()  # per-window NLL sums, when the fitness is windowed
    complete: bool = True  # false: eliminated by racing, fitness over ``windows`` only


@dataclass
class SearchState:
    generation: int  # generations completed; 0 = the initial population has been evaluated
    population: list[Evaluated]
    history: list[Evaluated]  # every candidate ever evaluated, in evaluation order
    rng_state: dict
    best_per_generation: list[float] = field(default_factory=list)
    stopped_early: bool = False
    shortfall: list[int] = field(default_factory=list)  # per generation: children configured but not made

    @property
    def best(self) -> Evaluated:
        return min(self.population, key=lambda e: e.fitness)

    def to_json(self) -> str:
        def enc(e: Evaluated) -> dict:
            return {**e.candidate.to_dict(), "fitness": e.fitness, "generation": e.generation, "origin": e.origin,
                    "windows": list(e.windows), "complete": e.complete}

        return json.dumps({"generation": self.generation, "population": [enc(e) for e in self.population],
                           "history": [enc(e) for e in self.history], "rng_state": self.rng_state,
                           "best_per_generation": self.best_per_generation, "stopped_early": self.stopped_early,
                           "shortfall": self.shortfall})

    @classmethod
    def from_json(cls, text: str) -> SearchState:
        data = json.loads(text)

        def dec(d: dict) -> Evaluated:
            return Evaluated(Candidate(tuple(d["rescale_factors"]), d["start_tokens"]), d["fitness"],
                             d["generation"], d["origin"], tuple(d.get("windows", ())), d.get("complete", True))

        return cls(data["generation"], [dec(d) for d in data["population"]], [dec(d) for d in data["history"]],
                   data["rng_state"], data["best_per_generation"], data["stopped_early"], data.get("shortfall", []))


# ----------------------------------------------------------------------------------------- the loop


def _evaluate(batch: list[tuple[Candidate, str]], fitness: Fitness, generation: int,
              incumbents: list[Evaluated] | None = None, keep: int = 0) -> list[Evaluated]:
    """Score ``batch``; a windowed fitness keeps per-window scores and, given ``incumbents`` (the parents;
    [] for the initial population), races the batch for the best ``keep`` places."""
    if not batch:
        return []
    if isinstance(fitness, WindowedFitness):
        candidates = [c for c, _ in batch]
        scored = (fitness.full(candidates) if incumbents is None else
                  fitness.evaluate(candidates, [e.windows for e in incumbents], keep))
        return [Evaluated(c, s.fitness, generation, origin, s.windows, s.complete)
                for (c, origin), s in zip(batch, scored, strict=True)]
    values = list(fitness([c for c, _ in batch]))
    if len(values) != len(batch):
        raise RopelabError(f"fitness returned {len(values)} values for {len(batch)} candidates")
    return [Evaluated(c, float(v), generation, origin) for (c, origin), v in zip(batch, values, strict=True)]


def _ranked(items: list[Evaluated]) -> list[Evaluated]:
    # stable sort: ties keep evaluation order, so the ranking is deterministic; NaN ranks last
    return sorted(items, key=lambda e: (not np.isfinite(e.fitness), e.fitness))


def _report_shortfall(generation: int, wanted: int, made: int, cfg: EvolutionConfig) -> int:
    """Children configured but not made (no new valid one in max_retries tries): warned about, and returned
    for the state to record, so a generation never silently scores fewer children than configured."""
    missing = max(0, wanted - made)
    if missing:
        warnings.warn(f"search generation {generation}: {missing} of {wanted} children could not be made new and "
                      f"valid in {cfg.max_retries} tries (recorded as search/children_missing)",
                      SearchShortfallWarning, stacklevel=3)
    return missing


def try_start_tokens(bases: list[Evaluated], space: SearchSpace, seen: set, fitness: Fitness, generation: int,
                     rng: np.random.Generator, sample: int | None) -> tuple[list[Evaluated], list[Evaluated]]:
    """The research code's n̂ trial (GeneticAlgorithm.py ``try_start_token``/``_mutate`` @ 5d6e10a), batched:
    each base's λ scored with other n̂; per base, the best trial joins the population only if it beats the
    base. Returns (every trial evaluated, for the history; the winners)."""
    batch, owners = [], []
    for k, base in enumerate(bases):
        for trial in start_token_trials(base.candidate, space, seen, rng, sample):
            seen.add(trial.key(space.step))
            batch.append((trial, "start-tokens"))
            owners.append(k)
    evaluated = _evaluate(batch, fitness, generation)
    winners = []
    for k, base in enumerate(bases):
        mine = _ranked([e for e, owner in zip(evaluated, owners, strict=True) if owner == k])
        if mine and mine[0].fitness < base.fitness:  # the first of equal bests, as min() over the code's dict
            winners.append(mine[0])
    return evaluated, winners


def _trial_bases(ranked: list[Evaluated], parents: int, rng: np.random.Generator) -> list[Evaluated]:
    """After the initial population: TRIAL_PICKS of the best min(TRIAL_TOP, parents), drawn without
    replacement (the research code: ``np.random.choice(range(min(10, parents)), size=int(that/2))``)."""
    top = min(TRIAL_TOP, parents, len(ranked))
    picks = rng.choice(top, size=min(TRIAL_PICKS, top // 2), replace=False)
    return [ranked[k] for k in picks]


def initial_state(fitness: Fitness, space: SearchSpace, cfg: EvolutionConfig, rng: np.random.Generator,
                  seeds: Mapping[str, np.ndarray]) -> SearchState:
    """Seeds (snapped onto the grid, into the space) plus mutations of random seeds up to the population size;
    evaluated (raced for the parents' places under racing). With the n̂ trial search, some of the best then
    try other n̂."""
    cfg = cfg.at_length(space.target_length)
    counts = cfg.counts()
    size = counts["population"]
    seen: set = set()
    batch: list[tuple[Candidate, str]] = []
    for name, values in seeds.items():
        candidate = space.candidate(values)
        if candidate.key(space.step) not in seen:
            seen.add(candidate.key(space.step))
            batch.append((candidate, f"seed:{name}"))
    seed_candidates = [c for c, _ in batch]
    for _ in range(size * cfg.max_retries):
        if len(batch) >= size:
            break
        parent = seed_candidates[rng.integers(len(seed_candidates))]
        child = mutate(parent, space, cfg.mutation_probability, rng, seen, cfg.max_retries, **cfg.operator_options())
        if child is not None:
            seen.add(child.key(space.step))
            batch.append((child, "mutation"))
    shortfall = _report_shortfall(0, size, len(batch), cfg)
    evaluated = _evaluate(batch, fitness, 0, [], counts["parents"])
    ranked = _ranked([e for e in evaluated if e.complete])
    if cfg.start_token_search == "trial" and space.start_token_choices:
        trials, winners = try_start_tokens(_trial_bases(ranked, counts["parents"], rng), space, seen, fitness, 0,
                                           rng, None)
        evaluated, ranked = evaluated + trials, _ranked(ranked + winners)
    return SearchState(0, ranked, evaluated, rng.bit_generator.state, [ranked[0].fitness], shortfall=[shortfall])


def _children(parents: list[Evaluated], space: SearchSpace, cfg: EvolutionConfig, counts: dict,
              rng: np.random.Generator, seen: set) -> list[tuple[Candidate, str]]:
    """This generation's new candidates: mutations of random parents, then crossovers of random pairs (the
    better parent first for the code crossover); the ones that could not be made are left out."""
    options = cfg.operator_options()
    children: list[tuple[Candidate, str]] = []

    def add(child: Candidate | None, origin: str) -> None:
        if child is not None:
            seen.add(child.key(space.step))
            children.append((child, origin))

    for _ in range(counts["mutations"]):
        add(mutate(parents[rng.integers(len(parents))].candidate, space, cfg.mutation_probability, rng, seen,
                   cfg.max_retries, **options), "mutation")
    for _ in range(counts["crossovers"]):
        i, j = crossover_pair(len(parents), rng, best_first=cfg.crossover == "code")
        add(crossover(parents[i].candidate, parents[j].candidate, space, cfg.mutation_probability, rng, seen,
                      counts["crossover_passes"], cfg.max_retries, variant=cfg.crossover, **options), "crossover")
    return children


def next_generation(state: SearchState, fitness: Fitness, space: SearchSpace, cfg: EvolutionConfig) -> SearchState:
    """One generation: elitist parents, mutations and crossovers of them, only never-seen children evaluated;
    with the n̂ trial search, every mutated child also tries TRIAL_SAMPLE other n̂."""
    rng = np.random.default_rng()
    rng.bit_generator.state = state.rng_state
    cfg = cfg.at_length(space.target_length)
    counts = cfg.counts()
    parents = _ranked(state.population)[: counts["parents"]]
    seen = {e.candidate.key(space.step) for e in state.history}
    children = _children(parents, space, cfg, counts, rng, seen)
    generation = state.generation + 1
    shortfall = _report_shortfall(generation, counts["mutations"] + counts["crossovers"], len(children), cfg)
    evaluated = _evaluate(children, fitness, generation, parents, counts["parents"])
    admitted = [e for e in evaluated if e.complete]
    if cfg.start_token_search == "trial" and space.start_token_choices:
        mutants = [e for e in admitted if e.origin == "mutation"]
        trials, winners = try_start_tokens(mutants, space, seen, fitness, generation, rng, TRIAL_SAMPLE)
        evaluated, admitted = evaluated + trials, admitted + winners
    population = _ranked(parents + admitted)
    best = population[0].fitness
    history_best = state.best_per_generation + [best]
    patience = cfg.early_stop_patience
    stalled = patience > 0 and len(history_best) > patience and best >= history_best[-patience - 1]
    return SearchState(generation, population, state.history + evaluated, rng.bit_generator.state, history_best,
                       stalled, state.shortfall + [shortfall])


def evolve(fitness: Fitness, space: SearchSpace, cfg: EvolutionConfig, rng: np.random.Generator, *,
           seeds: Mapping[str, np.ndarray], on_generation: Callable[[SearchState], None] | None = None,
           state: SearchState | None = None) -> SearchState:
    """Run (or resume, given ``state``) the search to the (scaled) iterations or an early stop."""
    if state is None:
        state = initial_state(fitness, space, cfg, rng, seeds)
        if on_generation is not None:
            on_generation(state)
    while state.generation < cfg.counts()["iterations"] and not state.stopped_early:
        state = next_generation(state, fitness, space, cfg)
        if on_generation is not None:
            on_generation(state)
    return state
