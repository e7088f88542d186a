"""LongRoPE's evolutionary search (Ding et al. 2024, Alg. 1; the released code's `dim_mono` operators).

The algorithm knows nothing of models, files or tracking: ``fitness`` maps a batch of candidates to their
fitness (lower is better, e.g. perplexity). Randomness comes only from the ``np.random.Generator`` passed in,
and its state travels inside ``SearchState``, so a search stopped after any generation and resumed from its
saved state ends with exactly the result of an uninterrupted run.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from ropelab.errors import RopelabError
from ropelab.search.space import Candidate, SearchSpace

Fitness = Callable[[list[Candidate]], Sequence[float]]


@dataclass(frozen=True)
class EvolutionConfig:
    """Defaults are the reference hyper-parameters; ``scale`` multiplies the counts (the code's evo_scale)."""

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

    def counts(self) -> dict[str, int]:
        def scaled(n: int) -> int:
            return max(1, int(round(n * self.scale)))

        return {"population": scaled(self.population), "mutations": scaled(self.mutations),
                "crossovers": scaled(self.crossovers), "parents": scaled(self.parents)}

    def halved(self) -> EvolutionConfig:
        """The paper's rule above 512k: half the population, mutations and crossovers."""
        return replace(self, population=max(2, self.population // 2), mutations=max(1, self.mutations // 2),
                       crossovers=max(1, self.crossovers // 2), parents=max(1, self.parents // 2))


@dataclass
class Evaluated:
    candidate: Candidate
    fitness: float
    generation: int
    origin: str  # seed name, "mutation", "crossover"


@dataclass
class SearchState:
    generation: int  # generations completed; 0 = the initial population has been evaluated
    population: list[Evaluated]
    history: list[Evaluated]  # every candidate ever evaluated, in evaluation order
    rng_state: dict
    best_per_generation: list[float] = field(default_factory=list)
    stopped_early: bool = False

    @property
    def best(self) -> Evaluated:
        return min(self.population, key=lambda e: e.fitness)

    def to_json(self) -> str:
        def enc(e: Evaluated) -> dict:
            return {**e.candidate.to_dict(), "fitness": e.fitness, "generation": e.generation, "origin": e.origin}

        return json.dumps({"generation": self.generation, "population": [enc(e) for e in self.population],
                           "history": [enc(e) for e in self.history], "rng_state": self.rng_state,
                           "best_per_generation": self.best_per_generation, "stopped_early": self.stopped_early})

    @classmethod
    def from_json(cls, text: str) -> SearchState:
        data = json.loads(text)

        def dec(d: dict) -> Evaluated:
            return Evaluated(Candidate(tuple(d["rescale_factors"]), d["start_tokens"]), d["fitness"],
                             d["generation"], d["origin"])

        return cls(data["generation"], [dec(d) for d in data["population"]], [dec(d) for d in data["history"]],
                   data["rng_state"], data["best_per_generation"], data["stopped_early"])


# ----------------------------------------------------------------------------------------- operators


def _resample_between(low: float, high: float, step: float, rng: np.random.Generator) -> float:
    lo, hi = int(round(low / step)), int(round(high / step))
    return float(rng.integers(lo, hi + 1)) * step


def mutate(parent: Candidate, space: SearchSpace, p: float, rng: np.random.Generator,
           seen: set, max_retries: int = 100) -> Candidate | None:
    """Each gene with probability p resampled on the grid between its (current) neighbours: stays monotone.
    n̂, when searched, moves to another member of its set with probability p. Retried until new."""
    upper = space.upper_on_grid()
    for _ in range(max_retries):
        lam = list(parent.rescale_factors)
        for i in range(len(lam)):
            if rng.random() < p:
                low = lam[i - 1] if i > 0 else 1.0
                high = lam[i + 1] if i + 1 < len(lam) else upper
                lam[i] = _resample_between(low, max(low, high), space.step, rng)
        n_hat = parent.start_tokens
        if space.start_token_choices and rng.random() < p:
            others = [n for n in space.start_token_choices if n != n_hat]
            n_hat = int(others[rng.integers(len(others))]) if others else n_hat
        child = Candidate(tuple(round(v, 6) for v in lam), n_hat)
        if child.key(space.step) not in seen and space.is_valid(child):
            return child
    return None


def crossover(a: Candidate, b: Candidate, space: SearchSpace, p: float, rng: np.random.Generator, seen: set,
              passes: int = 20, max_retries: int = 100) -> Candidate | None:
    """Start from A; each gene with probability p from B; retry until new and monotone; else mutate A."""
    for _ in range(passes):
        take = rng.random(len(a.rescale_factors)) < p
        lam = tuple(bv if t else av for av, bv, t in zip(a.rescale_factors, b.rescale_factors, take, strict=True))
        n_hat = b.start_tokens if space.start_token_choices and rng.random() < p else a.start_tokens
        child = Candidate(lam, n_hat)
        if child.key(space.step) not in seen and space.is_valid(child):
            return child
    return mutate(a, space, p, rng, seen, max_retries)


# ----------------------------------------------------------------------------------------- the loop


def _evaluate(batch: list[tuple[Candidate, str]], fitness: Fitness, generation: int) -> list[Evaluated]:
    if not batch:
        return []
    values = list(fitness([c for c, _ in batch]))
    if len(values) != len(batch):
        raise RopelabError(f"fitness returned {len(values)} values for {len(batch)} candidates")
    return [Evaluated(c, float(v), generation, origin) for (c, origin), v in zip(batch, values, strict=True)]


def _ranked(items: list[Evaluated]) -> list[Evaluated]:
    # stable sort: ties keep evaluation order, so the ranking is deterministic; NaN ranks last
    return sorted(items, key=lambda e: (not np.isfinite(e.fitness), e.fitness))


def initial_state(fitness: Fitness, space: SearchSpace, cfg: EvolutionConfig, rng: np.random.Generator,
                  seeds: Mapping[str, np.ndarray]) -> SearchState:
    """Seeds (snapped into the space) plus mutations of random seeds up to the population size; evaluated."""
    size = cfg.counts()["population"]
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
        child = mutate(parent, space, cfg.mutation_probability, rng, seen, cfg.max_retries)
        if child is not None:
            seen.add(child.key(space.step))
            batch.append((child, "mutation"))
    evaluated = _evaluate(batch, fitness, 0)
    ranked = _ranked(evaluated)
    return SearchState(0, ranked, evaluated, rng.bit_generator.state, [ranked[0].fitness])


def next_generation(state: SearchState, fitness: Fitness, space: SearchSpace, cfg: EvolutionConfig) -> SearchState:
    """One generation: elitist parents, mutations and crossovers of them, only never-seen children evaluated."""
    rng = np.random.default_rng()
    rng.bit_generator.state = state.rng_state
    counts = cfg.counts()
    parents = _ranked(state.population)[: counts["parents"]]
    seen = {e.candidate.key(space.step) for e in state.history}
    children: list[tuple[Candidate, str]] = []

    def add(child: Candidate | None, origin: str) -> None:
        if child is not None:
            seen.add(child.key(space.step))
            children.append((child, origin))

    for _ in range(counts["mutations"]):
        add(mutate(parents[rng.integers(len(parents))].candidate, space, cfg.mutation_probability, rng, seen,
                   cfg.max_retries), "mutation")
    for _ in range(counts["crossovers"]):
        i, j = rng.choice(len(parents), size=2, replace=len(parents) < 2)
        add(crossover(parents[i].candidate, parents[j].candidate, space, cfg.mutation_probability, rng, seen,
                      cfg.crossover_passes, cfg.max_retries), "crossover")
    generation = state.generation + 1
    evaluated = _evaluate(children, fitness, generation)
    population = _ranked(parents + evaluated)
    best = population[0].fitness
    history_best = state.best_per_generation + [best]
    patience = cfg.early_stop_patience
    stalled = patience > 0 and len(history_best) > patience and best >= history_best[-patience - 1]
    return SearchState(generation, population, state.history + evaluated, rng.bit_generator.state, history_best,
                       stalled)


def evolve(fitness: Fitness, space: SearchSpace, cfg: EvolutionConfig, rng: np.random.Generator, *,
           seeds: Mapping[str, np.ndarray], on_generation: Callable[[SearchState], None] | None = None,
           state: SearchState | None = None) -> SearchState:
    """Run (or resume, given ``state``) the search to cfg.iterations generations or an early stop."""
    if state is None:
        state = initial_state(fitness, space, cfg, rng, seeds)
        if on_generation is not None:
            on_generation(state)
    while state.generation < cfg.iterations and not state.stopped_early:
        state = next_generation(state, fitness, space, cfg)
        if on_generation is not None:
            on_generation(state)
    return state
