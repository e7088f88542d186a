"""The evolutionary search, tested by behaviour on a toy objective (no model): determinism, constraints,
no repeated evaluation, improvement, exact resume."""

from __future__ import annotations

import numpy as np
import pytest

from ropelab.errors import RopelabError
from ropelab.search.evolution import (
    EvolutionConfig,
    crossover,
    evolve,
    initial_state,
    mutate,
    next_generation,
)
from ropelab.search.space import PAPER_START_TOKENS, Candidate, SearchSpace, seed_vectors
from tests.search.resume import state_when_killed

SPACE = SearchSpace(head_dim=32, base=10000.0, scale=8.0, original_max_position_embeddings=256,
                    start_token_choices=PAPER_START_TOKENS)
HIDDEN = SPACE.snap(np.linspace(1.0, 7.0, 16) ** 1.1)  # a monotone λ the search must approach
CFG = EvolutionConfig(iterations=12, scale=0.5)


class Toy:
    """Distance to the hidden λ; records every evaluated candidate."""

    def __init__(self):
        self.calls: list[Candidate] = []

    def __call__(self, batch):
        self.calls.extend(batch)
        return [float(np.abs(np.array(c.rescale_factors) - HIDDEN).mean() + 0.001 * c.start_tokens) for c in batch]


def run(seed=0, cfg=CFG, **kwargs):
    toy = Toy()
    state = evolve(toy, SPACE, cfg, np.random.default_rng(seed), seeds=seed_vectors(SPACE), **kwargs)
    return state, toy


def test_same_seed_same_history_other_seed_other_history():
    a, _ = run(0)
    b, _ = run(0)
    c, _ = run(1)
    assert a.to_json() == b.to_json()
    assert [e.candidate for e in a.history] != [e.candidate for e in c.history]


def test_every_candidate_monotone_in_bounds_on_grid_with_n_hat_from_its_set():
    state, toy = run(0)
    for candidate in toy.calls:
        lam = np.array(candidate.rescale_factors)
        assert np.all(np.diff(lam) >= 0) and lam.min() >= 1.0 and lam.max() <= 1.25 * 8.0
        assert np.allclose(lam / 0.01, np.round(lam / 0.01), atol=1e-6)
        assert candidate.start_tokens in PAPER_START_TOKENS


def test_no_candidate_is_evaluated_twice():
    _, toy = run(0)
    keys = [c.key(SPACE.step) for c in toy.calls]
    assert len(keys) == len(set(keys)) and len(keys) > 100


def test_best_fitness_improves_steadily_on_a_toy_objective():
    state, _ = run(0, cfg=EvolutionConfig(iterations=30, scale=0.5))
    best = state.best_per_generation
    assert all(b2 <= b1 for b1, b2 in zip(best, best[1:], strict=False))  # elitism: never worse
    thirds = [best[0], best[10], best[20], best[30]]
    assert all(later < earlier for earlier, later in zip(thirds, thirds[1:], strict=False))  # progress in each third
    assert best[-1] < 0.3 * best[0]
    seeds = [e.fitness for e in state.history if e.origin.startswith("seed:")]
    assert state.best.fitness < min(seeds)


def test_kill_and_resume_equals_uninterrupted():
    straight, _ = run(0)
    saved = state_when_killed(lambda **kw: run(0, **kw), 5)
    resumed, toy = run(seed=999, state=saved)  # the rng comes from the state
    assert resumed.to_json() == straight.to_json()
    assert all(c.key(SPACE.step) not in {e.candidate.key(SPACE.step) for e in saved.history} for c in toy.calls)


def test_mutation_and_crossover_respect_the_constraint():
    rng = np.random.default_rng(0)
    parent = SPACE.candidate(seed_vectors(SPACE)["yarn"])
    other = SPACE.candidate(seed_vectors(SPACE)["ntk"])
    seen = {parent.key(SPACE.step), other.key(SPACE.step)}
    for _ in range(200):
        for child in (mutate(parent, SPACE, 0.3, rng, seen), crossover(parent, other, SPACE, 0.3, rng, seen)):
            assert child is not None and SPACE.is_valid(child) and child.key(SPACE.step) not in seen
            seen.add(child.key(SPACE.step))


def test_crossover_of_identical_parents_falls_back_to_mutation():
    rng = np.random.default_rng(0)
    parent = SPACE.candidate(seed_vectors(SPACE)["pi"])
    child = crossover(parent, parent, SPACE, 0.3, rng, {parent.key(SPACE.step)})
    assert child is not None and child != parent and SPACE.is_valid(child)


def test_seeds_are_pi_ntk_yarn_and_the_code_variant():
    seeds = seed_vectors(SPACE)
    assert set(seeds) == {"pi", "ntk", "yarn"}
    assert np.allclose(seeds["pi"], 8.0) and seeds["ntk"][0] == pytest.approx(1.0) and seeds["ntk"][-1] == pytest.approx(8.0)
    code = seed_vectors(SPACE, "code")["yarn-factor"]
    assert code[0] == pytest.approx(1.0) and code[-1] == pytest.approx(8.0) and np.all(np.diff(code) >= 0)
    assert not np.allclose(code, seeds["yarn"])  # factor blend ≠ inverse-frequency blend inside the ramp


def test_space_bounds_and_errors():
    assert SPACE.upper == 10.0 and SearchSpace(32, 1e4, 8.0, 256, bounds="code").upper == 9.0
    assert SearchSpace(32, 1e4, 8.0, 256, max_rescale=2.0).upper == 2.0
    with pytest.raises(RopelabError, match="bounds"):
        SearchSpace(32, 1e4, 8.0, 256, bounds="wide")


def test_early_stop_and_halving():
    flat = lambda batch: [1.0] * len(batch)  # noqa: E731  (nothing ever improves)
    cfg = EvolutionConfig(iterations=30, scale=0.25, early_stop_patience=3)
    state = evolve(flat, SPACE, cfg, np.random.default_rng(0), seeds=seed_vectors(SPACE))
    assert state.stopped_early and state.generation == 3
    half = EvolutionConfig().halved()
    assert (half.population, half.mutations, half.crossovers) == (32, 8, 8)


def test_fitness_must_answer_every_candidate():
    with pytest.raises(RopelabError, match="fitness returned"):
        initial_state(lambda b: [1.0], SPACE, CFG, np.random.default_rng(0), seed_vectors(SPACE))
    state = initial_state(Toy(), SPACE, CFG, np.random.default_rng(0), seed_vectors(SPACE))
    assert next_generation(state, Toy(), SPACE, CFG).generation == 1
