"""LongRoPE2's search (Shang et al. 2025, arXiv 2502.20082 §3.2; microsoft/LongRoPE branch longrope2, the first
author's fork J-shang/LongRoPE ``evolution/``): only the rotary pairs from the critical dim up are searched.

Genome: λ ∈ R^{d/2}. Pairs i ≥ cd are on the 0.01 grid within [s, upper_ratio·s] (the code's per-dim
``[target/orig, length_scale]``; scripts pass length_scale = 2s), STRICTLY increasing, the last one at most
``last_headroom`` (4) above its neighbour; pairs i < cd follow ``ntk_left`` (λ_i = λ_cd^(i/cd)), re-derived after
every mutation and crossover, so they are never searched on their own. Indices are rotary-pair indices
(``ropelab.search.critical`` records the convention). No n̂.

Population: an initial 2 × population (eight NTK-cd seeds with anchors s·(1 + i/8), i = 0..7, then chained
mutations: candidate k mutates candidate k − 8), then the v1 loop: elitist parents, mutations, crossovers of
the code style (better parent first, genes copied one at a time). The state is v1's ``SearchState`` (rng inside),
so resume is exact. The outer sweep runs one search per critical dim and keeps the best.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from ropelab.errors import RopelabError
from ropelab.rope.registry import RopeSpec
from ropelab.search.critical import ntk_left
from ropelab.search.evolution import (
    Evaluated,
    EvolutionConfig,
    Fitness,
    SearchState,
    _evaluate,
    _ranked,
    _report_shortfall,
)
from ropelab.search.operators import COPY_PROBABILITY, crossover_pair
from ropelab.search.space import Candidate

NTK_CD_SEEDS = 8  # the code's ``if i < 8: ntk_init(...)``
INITIAL_MULTIPLIER = 2  # the code's ``range(self.population_size * 2)``
SEED_INCREMENT = 0.1  # the code's ntk_init: searched pairs start at anchor + 0.1·k


@dataclass(frozen=True)
class V2Space:
    """The LongRoPE2 search space for one critical dim. ``spec`` makes it usable by ``batched_fitness``."""

    head_dim: int
    base: float
    scale: float  # s = L' / L
    original_max_position_embeddings: int
    critical_dim: int  # pair index of the first searched pair (the NTK anchor)
    upper_ratio: float = 2.0  # searched pairs within [s, upper_ratio·s]
    last_headroom: float = 4.0  # the last pair at most this much above its neighbour
    step: float = 0.01
    attention_factor: float | None = None

    def __post_init__(self) -> None:
        if self.scale <= 1:
            raise RopelabError(f"longrope2 search needs scale > 1, got {self.scale}")
        if not 0 < self.critical_dim < self.dims:
            raise RopelabError(f"critical dim must be in 1..{self.dims - 1} (pair index), got {self.critical_dim}")
        if self.upper_ratio < 1:
            raise RopelabError(f"longrope2 upper_ratio must be ≥ 1, got {self.upper_ratio}")
        room = self.upper_units - self.lower_units
        if room < self.searched - 1:
            raise RopelabError(f"longrope2 space [{self.scale:g}, {self.upper_ratio:g}·{self.scale:g}] on a "
                               f"{self.step:g} grid cannot hold {self.searched} strictly increasing values from "
                               f"critical dim {self.critical_dim}; raise upper_ratio or the critical dim")

    @property
    def dims(self) -> int:
        return self.head_dim // 2

    @property
    def searched(self) -> int:
        return self.dims - self.critical_dim

    @property
    def total_factor(self) -> None:
        """Always searched on a base model: the stored factor is ``scale`` (``SearchSpace``'s contract)."""
        return None

    @property
    def target_length(self) -> int:
        return int(round(self.original_max_position_embeddings * self.scale))

    @property
    def lower_units(self) -> int:
        return math.ceil(self.scale / self.step - 1e-9)

    @property
    def upper_units(self) -> int:
        return math.floor(self.upper_ratio * self.scale / self.step + 1e-9)

    @property
    def headroom_units(self) -> int:
        return max(1, math.floor(self.last_headroom / self.step + 1e-9))

    # -- genome <-> candidate

    def units(self, candidate: Candidate) -> list[int]:
        """The searched pairs of a candidate in grid units."""
        return [int(round(v / self.step)) for v in candidate.rescale_factors[self.critical_dim:]]

    def from_units(self, units: Iterable[int]) -> Candidate:
        """Searched pairs (grid units) → the whole λ, the pairs below cd on the NTK curve through λ_cd."""
        lam = np.ones(self.dims)
        lam[self.critical_dim:] = [round(u * self.step, 6) for u in units]
        return Candidate(tuple(float(v) for v in ntk_left(lam, self.critical_dim)))

    def unit_bounds(self, units: list[int], i: int) -> tuple[int, int]:
        """Allowed grid range of searched pair i (0 = the critical dim) given its neighbours: strictly between
        them, within [s, upper]; the last pair at most last_headroom above its neighbour."""
        low = self.lower_units if i == 0 else units[i - 1] + 1
        if i + 1 < len(units):
            high = units[i + 1] - 1
        else:
            high = self.upper_units if i == 0 else min(self.upper_units, units[i - 1] + self.headroom_units)
        return max(low, self.lower_units), min(high, self.upper_units)

    def is_valid(self, candidate: Candidate) -> bool:
        lam = np.asarray(candidate.rescale_factors, dtype=np.float64)
        if lam.shape != (self.dims,):
            return False
        units = self.units(candidate)
        on_grid = np.allclose(lam[self.critical_dim:], np.asarray(units) * self.step, rtol=0, atol=1e-6)
        in_bounds = self.lower_units <= units[0] and units[-1] <= self.upper_units
        last_ok = len(units) < 2 or units[-1] - units[-2] <= self.headroom_units
        strict = bool(np.all(np.diff(lam) > 0)) and all(b > a for a, b in zip(units, units[1:], strict=False))
        curve = np.allclose(lam, ntk_left(lam, self.critical_dim), rtol=1e-12, atol=0)
        return bool(on_grid and in_bounds and last_ok and strict and curve)

    def key(self, candidate: Candidate) -> tuple:
        return tuple(self.units(candidate))

    def spec(self, candidate: Candidate, attention_policy: str = "su") -> RopeSpec:
        """The longrope setting a candidate stands for (the same contract as ``SearchSpace.spec``)."""
        return RopeSpec("longrope", self.head_dim, self.base, factor=self.scale,
                        original_max_position_embeddings=self.original_max_position_embeddings,
                        rescale_factors=candidate.rescale_factors, attention_policy=attention_policy,
                        attention_factor=self.attention_factor)

    def stored_factors(self, candidate: Candidate) -> tuple[float, ...]:
        return candidate.rescale_factors


# ----------------------------------------------------------------------------------------- seeds, operators


def ntk_cd_seeds(space: V2Space, count: int = NTK_CD_SEEDS) -> dict[str, Candidate]:
    """The code's ``ntk_init``: anchor a = s·(1 + i/8) (snapped onto the grid), searched pairs a + 0.1·k, the
    pairs below on the NTK curve. Squeezed into the bounds where 0.1 steps would overflow them (then the step
    shrinks, at least one grid unit, and the anchor moves down just enough to stay strictly increasing)."""
    n = space.searched
    seeds: dict[str, Candidate] = {}
    for i in range(count):
        anchor = max(space.lower_units, math.ceil(space.scale * (1 + i / count) / space.step - 1e-9))
        anchor = min(anchor, space.upper_units - (n - 1))
        inc = SEED_INCREMENT / space.step
        if n > 1:
            inc = max(1, min(int(round(inc)), (space.upper_units - anchor) // (n - 1), space.headroom_units))
        candidate = space.from_units(anchor + int(inc) * k for k in range(n))
        if space.key(candidate) not in {space.key(c) for c in seeds.values()}:
            seeds[f"ntk-cd-{i}"] = candidate
    return seeds


def mutate_v2(parent: Candidate, space: V2Space, p: float, rng: np.random.Generator, seen: set,
              max_retries: int = 100) -> Candidate | None:
    """Each searched pair with probability p resampled on the grid strictly between its current neighbours
    (the bounds at the ends); the pairs below re-derived. A new valid child in ``max_retries`` attempts (every
    attempt from the parent), else None."""
    for _ in range(max_retries):
        units = space.units(parent)
        for i in range(len(units)):
            if rng.random() < p:
                low, high = space.unit_bounds(units, i)
                if low <= high:
                    units[i] = int(rng.integers(low, high + 1))
        child = space.from_units(units)
        if space.key(child) not in seen and space.is_valid(child):
            return child
    return None


def crossover_v2(a: Candidate, b: Candidate, space: V2Space, p: float, rng: np.random.Generator, seen: set,
                 passes: int = 20) -> Candidate | None:
    """The code's crossover on the searched pairs: from A (the better parent), up to ``passes`` passes; a pair
    picked with probability p takes B's value with probability 0.5; the first new valid state (pairs below
    re-derived) is the child. Parents equal on the grid, or nothing new and valid: None."""
    genes, genes_b = space.units(a), space.units(b)
    if genes == genes_b:
        return None
    for _ in range(passes):
        for i in range(len(genes)):
            if rng.random() < p:
                if rng.random() < COPY_PROBABILITY:
                    genes[i] = genes_b[i]
                child = space.from_units(genes)
                if space.key(child) not in seen and space.is_valid(child):
                    return child
    return None


# ----------------------------------------------------------------------------------------- the loop


def initial_state_v2(fitness: Fitness, space: V2Space, cfg: EvolutionConfig, rng: np.random.Generator,
                     seeds: Mapping[str, Candidate] | None = None) -> SearchState:
    """Seeds, then chained mutations (candidate k mutates candidate k − #seeds) up to INITIAL_MULTIPLIER ×
    population; evaluated in one batch."""
    size = INITIAL_MULTIPLIER * cfg.counts()["population"]
    seeds = dict(seeds) if seeds is not None else ntk_cd_seeds(space)
    seen: set = set()
    batch: list[tuple[Candidate, str]] = []
    for name, candidate in seeds.items():
        if not space.is_valid(candidate):
            raise RopelabError(f"longrope2 seed {name} is outside the search space")
        if space.key(candidate) not in seen:
            seen.add(space.key(candidate))
            batch.append((candidate, f"seed:{name}"))
    n_seeds = len(batch)
    for _ in range(size * cfg.max_retries):
        if len(batch) >= size:
            break
        child = mutate_v2(batch[len(batch) - n_seeds][0], space, cfg.mutation_probability, rng, seen,
                          cfg.max_retries)
        if child is None:
            break  # the chain is stuck: report the shortfall rather than loop
        seen.add(space.key(child))
        batch.append((child, "mutation"))
    shortfall = _report_shortfall(0, size, len(batch), cfg)
    evaluated = _evaluate(batch, fitness, 0)
    ranked = _ranked(evaluated)
    return SearchState(0, ranked, evaluated, rng.bit_generator.state, [ranked[0].fitness], shortfall=[shortfall])


def next_generation_v2(state: SearchState, fitness: Fitness, space: V2Space, cfg: EvolutionConfig) -> SearchState:
    """One generation: elitist parents; mutations of random parents; code-style crossovers of random pairs,
    the better first (a failed crossover mutates A, as the code); only never-seen children evaluated."""
    rng = np.random.default_rng()
    rng.bit_generator.state = state.rng_state
    counts = cfg.counts()
    parents = _ranked(state.population)[: counts["parents"]]
    seen = {space.key(e.candidate) for e in state.history}
    children: list[tuple[Candidate, str]] = []

    def add(child: Candidate | None, origin: str) -> None:
        if child is not None:
            seen.add(space.key(child))
            children.append((child, origin))

    p = cfg.mutation_probability
    for _ in range(counts["mutations"]):
        add(mutate_v2(parents[rng.integers(len(parents))].candidate, space, p, rng, seen, cfg.max_retries),
            "mutation")
    for _ in range(counts["crossovers"]):
        i, j = crossover_pair(len(parents), rng, best_first=True)
        a, b = parents[i].candidate, parents[j].candidate
        child = crossover_v2(a, b, space, p, rng, seen, counts["crossover_passes"])
        add(child if child is not None else mutate_v2(a, space, p, rng, seen, cfg.max_retries), "crossover")
    generation = state.generation + 1
    shortfall = _report_shortfall(generation, counts["mutations"] + counts["crossovers"], len(children), cfg)
    evaluated = _evaluate(children, fitness, generation)
    population = _ranked(parents + evaluated)
    best = population[0].fitness
    history_best = state.best_per_generation + [best]
    patience = cfg.early_stop_patience
    stalled = patience > 0 and len(history_best) > patience and best >= history_best[-patience - 1]
    return SearchState(generation, population, state.history + evaluated, rng.bit_generator.state, history_best,
                       stalled, state.shortfall + [shortfall])


def evolve_v2(fitness: Fitness, space: V2Space, cfg: EvolutionConfig, rng: np.random.Generator, *,
              seeds: Mapping[str, Candidate] | None = None,
              on_generation: Callable[[SearchState], None] | None = None,
              state: SearchState | None = None) -> SearchState:
    """Run (or resume, given ``state``) one LongRoPE2 search at one critical dim."""
    if state is None:
        state = initial_state_v2(fitness, space, cfg, rng, seeds)
        if on_generation is not None:
            on_generation(state)
    while state.generation < cfg.counts()["iterations"] and not state.stopped_early:
        state = next_generation_v2(state, fitness, space, cfg)
        if on_generation is not None:
            on_generation(state)
    return state


# ----------------------------------------------------------------------------------------- the d_rcd sweep


@dataclass
class SweepResult:
    states: dict[int, SearchState]  # one finished search per critical dim, in sweep order

    @property
    def best_dim(self) -> int:
        # the first of equal bests in sweep order (lowest cd first): deterministic
        return min(self.states, key=lambda cd: (self.states[cd].best.fitness, list(self.states).index(cd)))

    @property
    def best(self) -> Evaluated:
        return self.states[self.best_dim].best


def sweep_rng(seed: int, critical_dim: int) -> np.random.Generator:
    """Each critical dim's own generator: a resumed sweep never depends on which dims already ran."""
    return np.random.default_rng([seed, critical_dim])


def sweep_critical_dims(fitness: Fitness, space_for: Callable[[int], V2Space], critical_dims: Iterable[int],
                        cfg: EvolutionConfig, seed: int, *,
                        states: Mapping[int, SearchState] | None = None,
                        on_generation: Callable[[int, SearchState], None] | None = None) -> SweepResult:
    """The outer d_rcd search: one v2 search per critical dim (resumed from ``states`` where given), the
    winner the one with the lowest fitness. ``fitness`` scores whole λ vectors, so it is shared by all dims."""
    done: dict[int, SearchState] = {}
    for cd in critical_dims:
        def report(state: SearchState, cd: int = cd) -> None:
            if on_generation is not None:
                on_generation(cd, state)

        done[cd] = evolve_v2(fitness, space_for(cd), cfg, sweep_rng(seed, cd), on_generation=report,
                             state=(states or {}).get(cd))
    if not done:
        raise RopelabError("the critical-dim sweep needs at least one critical dim")
    return SweepResult(done)
