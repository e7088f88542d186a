"""The search's reference variants against small ports of microsoft/LongRoPE's code (issue 14, items 1, 3, 4).

Ports, each cited where it is defined: the released crossover and mutation loop (main @ c9e56aa,
evolution/algorithms/dim_mono.py), the research code's n̂ crossover gene and trial (branch longrope @ 5d6e10a,
evolution/dim_mono_n/dim_mono_n.py, evolution/GeneticAlgorithm.py). Each port draws from a numpy Generator where
the reference calls np.random.rand / randint, so ours and the port are compared under identical draws.
"""

from __future__ import annotations

import numpy as np
import pytest

from ropelab.search.evolution import (
    Evaluated,
    EvolutionConfig,
    SearchShortfallWarning,
    SearchState,
    evolve,
    initial_state,
    next_generation,
    try_start_tokens,
)
from ropelab.search.operators import code_crossover, crossover_pair, mutate, uniform_crossover
from ropelab.search.space import CODE_START_TOKENS, PAPER_START_TOKENS, Candidate, SearchSpace, seed_vectors
from tests.search.resume import state_when_killed

PLAIN = SearchSpace(head_dim=32, base=10000.0, scale=8.0, original_max_position_embeddings=256)
WITH_N = SearchSpace(head_dim=32, base=10000.0, scale=8.0, original_max_position_embeddings=256,
                     start_token_choices=PAPER_START_TOKENS)
CODE_N = SearchSpace(head_dim=32, base=10000.0, scale=8.0, original_max_position_embeddings=256,
                     start_token_choices=CODE_START_TOKENS)
# the research code's trial values (GeneticAlgorithm.py try_start_token: evo_list_curr)
RESEARCH_TRIAL_VALUES = (1, 2, 4, 8, 12, 16, 20, 24, 28, 32, 48, 64)


def toy(batch):
    hidden = PLAIN.snap(np.linspace(1.0, 7.0, 16) ** 1.1)
    return [float(np.abs(np.array(c.rescale_factors) - hidden).mean() + 0.001 * c.start_tokens) for c in batch]


def population(space: SearchSpace, seed: int = 0) -> list[Candidate]:
    """A varied ranked population: the initial population of a toy search."""
    state = initial_state(toy, space, EvolutionConfig(scale=0.5), np.random.default_rng(seed), seed_vectors(space))
    return [e.candidate for e in state.population]


def genes(c: Candidate, with_n: bool) -> np.ndarray:
    return np.array(([c.start_tokens] if with_n else []) + list(c.rescale_factors), dtype=np.float64)


# ------------------------------------------------------------------------------------------ ports


def in_history(vector: np.ndarray, history: np.ndarray) -> bool:
    """``Individual(vector) in history``: Individual.__eq__ is np.allclose (one row of ``history`` per entry)."""
    return bool(np.any(np.all(np.isclose(history, vector), axis=1)))


def reference_crossover(par_1: np.ndarray, par_2: np.ndarray, history: np.ndarray, rng: np.random.Generator,
                        max_crossover_try: int = 20, mono_from: int = 0) -> np.ndarray | None:
    """dim_mono.py DimMonoGeneticAlgorithm.crossover @ c9e56aa (``mono_from=1``: dim_mono_n.py
    crossover_valid_alpha @ 5d6e10a, whose gene 0 is n̂ and whose monotone check skips it)."""
    if np.allclose(par_1, par_2):
        return None
    new = par_1.copy()
    for _ in range(max_crossover_try):
        for i in range(new.shape[0]):
            if rng.random() < 0.3:
                new = new.copy()
                if rng.random() < 0.5:
                    new[i] = par_2[i]
                if in_history(new, history) or not np.all(np.diff(new[mono_from:]) >= 0):
                    continue
                return new
    return None


def reference_mutate(factors: np.ndarray, in_history, rng: np.random.Generator, upper: float,
                     step: float = 0.01) -> np.ndarray:
    """The loop of dim_mono.py DimMonoGeneticAlgorithm.mutate @ c9e56aa: ``while`` the vector is in the history
    (the parent always is), mutate it again, never restarting from the parent. The gene operator is ropelab's
    (resample on the grid between the neighbours, both included; the code's arange excludes the upper
    neighbour of gene 0): this port checks the retry structure, the operator is the same on both sides."""
    new = factors.copy()
    while in_history(new) or not np.all(np.diff(new) >= 0):
        for dim in range(new.shape[0]):
            if rng.random() < 0.3:
                low = new[dim - 1] if dim > 0 else 1.0
                high = new[dim + 1] if dim + 1 < new.shape[0] else upper
                new = new.copy()
                new[dim] = float(rng.integers(int(round(low / step)), int(round(max(low, high) / step)) + 1)) * step
    return new


def reference_try_start_token(new_alpha: np.ndarray, ppl: float, eval_ppl) -> list:
    """GeneticAlgorithm.try_start_token @ 5d6e10a (branch longrope): gene 0 is n̂; every value tried on the λ."""
    ppl_start_token_list = {}
    for value in RESEARCH_TRIAL_VALUES:
        new_alpha_start_token = new_alpha.copy()
        new_alpha_start_token[0] = value
        ppl_start_token_list[new_alpha_start_token[0]] = eval_ppl(new_alpha_start_token)
    min_ppl = min(ppl_start_token_list.values())
    if min_ppl < ppl:
        new_alpha_start_token[0] = min(ppl_start_token_list, key=ppl_start_token_list.get)
        new_alpha = new_alpha_start_token.copy()
    return [new_alpha, min_ppl]


class RejectFirst(set):
    """A history that calls the first ``n`` vectors it is asked about already evaluated (forces retries)."""

    def __init__(self, items, n: int):
        super().__init__(items)
        self.left = n

    def __contains__(self, key) -> bool:
        if self.left > 0:
            self.left -= 1
            return True
        return super().__contains__(key)


# ------------------------------------------------------------------------------------------ item 1: crossover


@pytest.mark.parametrize("space", [PLAIN, WITH_N], ids=["dim_mono", "dim_mono_n"])
def test_code_crossover_equals_the_reference_under_identical_draws(space):
    ranked = population(space)
    with_n = space.start_token_choices is not None
    seen = {c.key(space.step) for c in ranked}
    history = np.array([genes(c, with_n) for c in ranked])
    pairs = np.random.default_rng(1)
    outcomes = []
    for trial in range(150):
        i, j = sorted(pairs.choice(len(ranked), size=2, replace=False))
        ours = code_crossover(ranked[i], ranked[j], space, 0.3, np.random.default_rng(trial), seen)
        theirs = reference_crossover(genes(ranked[i], with_n), genes(ranked[j], with_n), history,
                                     np.random.default_rng(trial), mono_from=int(with_n))
        assert (ours is None) == (theirs is None)
        if ours is not None:
            np.testing.assert_allclose(genes(ours, with_n), theirs, atol=1e-12)
        outcomes.append(ours is None)
    assert 0.2 < np.mean(outcomes) < 0.8  # both: children, and pairs the code gives up on (then mutates A)
    same = ranked[0]
    assert code_crossover(same, same, space, 0.3, np.random.default_rng(0), seen) is None  # the caller mutates A


def test_code_crossover_changes_a_median_of_one_gene_the_uniform_one_several():
    a = PLAIN.candidate(np.linspace(1.0, 9.0, 16))
    b = Candidate(tuple(round(v + 0.2, 6) for v in a.rescale_factors))  # differs in every gene; any copy monotone
    seen = {a.key(PLAIN.step), b.key(PLAIN.step)}

    def changed(cross, seed):
        child = cross(a, b, PLAIN, 0.3, np.random.default_rng(seed), seen)
        return int(np.sum(~np.isclose(child.rescale_factors, a.rescale_factors)))

    assert np.median([changed(code_crossover, s) for s in range(300)]) == 1
    assert np.median([changed(uniform_crossover, s) for s in range(300)]) >= 4


def crossover_children(variant: str) -> tuple[Candidate, Candidate, list[Candidate]]:
    """One generation of crossovers only, from two parents: A (the better) and B, differing in every gene."""
    a = PLAIN.candidate(np.linspace(1.0, 9.0, 16))
    b = Candidate(tuple(round(v + 0.2, 6) for v in a.rescale_factors))
    parents = [Evaluated(b, 2.0, 0, "seed:b"), Evaluated(a, 1.0, 0, "seed:a")]  # population order: worse first
    state = SearchState(0, parents, parents, np.random.default_rng(0).bit_generator.state, [1.0])
    cfg = EvolutionConfig(population=2, parents=2, mutations=0, crossovers=24, crossover=variant)
    children = [e.candidate for e in next_generation(state, toy, PLAIN, cfg).history if e.origin == "crossover"]
    return a, b, children


def test_code_crossover_starts_from_the_better_parent():
    def distance(x, y):
        return int(np.sum(~np.isclose(x.rescale_factors, y.rescale_factors)))

    a, b, children = crossover_children("code")
    assert len(children) == 24 and all(distance(c, a) < distance(c, b) for c in children)
    a, b, children = crossover_children("uniform")  # ropelab's: the pair in random order
    assert any(distance(c, b) < distance(c, a) for c in children)
    rng = np.random.default_rng(0)
    assert all(i < j for i, j in (crossover_pair(32, rng, best_first=True) for _ in range(200)))


# ------------------------------------------------------------------------------------------ item 3: n̂


def test_the_code_set_reaches_n_hat_zero():
    assert 0 in CODE_START_TOKENS and set(RESEARCH_TRIAL_VALUES) < set(CODE_START_TOKENS)
    lam = CODE_N.candidate(np.linspace(1.0, 8.0, 16))
    assert lam.start_tokens == 0 and CODE_N.is_valid(lam)  # the research code's λ all start at n̂ = 0
    rng = np.random.default_rng(0)
    parent = Candidate(lam.rescale_factors, 4)
    reached = {mutate(parent, CODE_N, 0.3, rng, {parent.key(0.01)}).start_tokens for _ in range(300)}
    assert 0 in reached


def test_trial_equals_the_research_try_start_token():
    """Every other n̂ tried on each base's λ; the best kept only if it beats the base (ties: the first value)."""
    preference = {8: -0.02, 16: -0.02, 64: 0.01}  # a tie between 8 and 16: the code keeps the first tried

    def fitness_of(lam: tuple, n_hat: int, offset: float) -> float:
        return float(np.mean(lam)) * 0.01 + offset + preference.get(n_hat, 0.0)

    ranked = population(CODE_N)
    for offset, label in ((0.0, "a trial wins"), (-1.0, "the base is better than every trial")):
        bases = [Evaluated(c, fitness_of(c.rescale_factors, c.start_tokens, offset if k % 2 else 0.0), 0, "x")
                 for k, c in enumerate(ranked[:6])]
        seen = {e.candidate.key(0.01) for e in bases}

        def fitness(batch):
            return [fitness_of(c.rescale_factors, c.start_tokens, 0.0) for c in batch]

        trials, winners = try_start_tokens(bases, CODE_N, seen, fitness, 1, np.random.default_rng(0), None)
        assert len(trials) == 12 * len(bases), label
        expected = []
        for base in bases:
            alpha = genes(base.candidate, True)
            out, _ = reference_try_start_token(alpha, base.fitness, lambda a: fitness_of(tuple(a[1:]), int(a[0]), 0.0))
            if not np.array_equal(out, alpha):
                expected.append(Candidate(tuple(out[1:]), int(out[0])))
        assert [w.candidate for w in winners] == expected, label
        assert all(w.candidate.start_tokens == 8 for w in winners)


def test_trial_search_tries_every_n_hat_on_the_initial_best_and_a_sample_on_every_mutant():
    cfg = EvolutionConfig(scale=0.25, iterations=2, start_token_search="trial")
    state = evolve(toy, CODE_N, cfg, np.random.default_rng(0), seeds=seed_vectors(CODE_N))
    initial = [e for e in state.history if e.generation == 0]
    assert all(e.candidate.start_tokens == 0 for e in initial if e.origin == "mutation")  # mutation leaves n̂
    top = {e.candidate.rescale_factors for e in sorted((e for e in initial if e.origin != "start-tokens"),
                                                       key=lambda e: e.fitness)[:8]}
    tried = [e for e in initial if e.origin == "start-tokens"]
    assert len(tried) == 4 * 12 and {e.candidate.rescale_factors for e in tried} < top  # 4 of the top 8 × 12 n̂
    for generation in (1, 2):
        mutants = {e.candidate.rescale_factors: e for e in state.history
                   if e.generation == generation and e.origin == "mutation"}
        trials = [e for e in state.history if e.generation == generation and e.origin == "start-tokens"]
        assert trials and all(e.candidate.rescale_factors in mutants for e in trials)
        for lam, mutant in mutants.items():
            mine = [e.candidate.start_tokens for e in trials if e.candidate.rescale_factors == lam]
            assert len(mine) <= 5 and len(set(mine)) == len(mine) and mutant.candidate.start_tokens not in mine
    walk = initial_state(toy, CODE_N, EvolutionConfig(scale=0.25), np.random.default_rng(0), seed_vectors(CODE_N))
    assert any(e.candidate.start_tokens != 0 for e in walk.history)  # the walk does move n̂


# ------------------------------------------------------------------------------------------ item 4: retries


@pytest.mark.parametrize("forced", [0, 1, 3, 10])
def test_code_retry_keeps_mutating_the_mutated_vector_as_the_reference(forced):
    parent = PLAIN.candidate(seed_vectors(PLAIN)["ntk"])
    seen = {parent.key(0.01)}
    upper = PLAIN.upper_on_grid()
    for seed in range(20):
        ours = mutate(parent, PLAIN, 0.3, np.random.default_rng(seed), RejectFirst(seen, forced), retry="code")
        history = RejectFirst(seen, forced + 1)  # the reference's loop first asks about the parent itself
        theirs = reference_mutate(np.array(parent.rescale_factors), lambda v, h=history: PLAIN.candidate(v).key(0.01) in h,
                                  np.random.default_rng(seed), upper)
        np.testing.assert_allclose(ours.rescale_factors, theirs, atol=1e-9)


def test_restart_retry_stays_near_the_parent_code_retry_walks_away():
    parent = PLAIN.candidate(seed_vectors(PLAIN)["ntk"])
    seen = {parent.key(0.01)}

    def changed(retry, seed):
        child = mutate(parent, PLAIN, 0.3, np.random.default_rng(seed), RejectFirst(seen, 10), retry=retry)
        return int(np.sum(~np.isclose(child.rescale_factors, parent.rescale_factors)))

    assert np.median([changed("restart", s) for s in range(50)]) <= 6
    assert np.median([changed("code", s) for s in range(50)]) >= 12


def test_children_that_cannot_be_made_are_warned_about_and_recorded():
    """p = 0: no mutation or crossover can make anything new; today's code scored fewer children silently."""
    cfg = EvolutionConfig(scale=0.25, iterations=1, mutation_probability=0.0, max_retries=5)
    with pytest.warns(SearchShortfallWarning, match="13 of 16 children"):
        state = initial_state(toy, WITH_N, cfg, np.random.default_rng(0), seed_vectors(WITH_N))
    with pytest.warns(SearchShortfallWarning, match="generation 1: 8 of 8 children"):
        state = next_generation(state, toy, WITH_N, cfg)
    assert state.shortfall == [13, 8]
    assert SearchState.from_json(state.to_json()).shortfall == [13, 8]
    normal = evolve(toy, WITH_N, EvolutionConfig(scale=0.25, iterations=3), np.random.default_rng(0),
                    seeds=seed_vectors(WITH_N))
    assert normal.shortfall == [0, 0, 0, 0]


# ------------------------------------------------------------------------------------------ all together


def test_the_reference_variants_are_deterministic_and_resume_exactly():
    cfg = EvolutionConfig(iterations=24, scale=0.25, crossover="code", scale_rule="code", mutation_retry="code",
                          start_token_search="trial")

    def run(seed, **kwargs):
        return evolve(toy, CODE_N, cfg, np.random.default_rng(seed), seeds=seed_vectors(CODE_N, "code"), **kwargs)

    straight = run(0)
    assert straight.generation == 6 and straight.to_json() == run(0).to_json() != run(1).to_json()
    saved = state_when_killed(lambda **kw: run(0, **kw), 3)
    assert run(999, state=saved).to_json() == straight.to_json()
    keys = [e.candidate.key(0.01) for e in straight.history]
    assert len(keys) == len(set(keys))
