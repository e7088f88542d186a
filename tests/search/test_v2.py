"""LongRoPE2's search: the critical-dimension helpers against the released LLaMA3-8B factors, and the v2 search by
behaviour on a toy objective (bounds, strict monotonicity, the NTK curve below cd, determinism, exact resume)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from ropelab.errors import RopelabError
from ropelab.search.critical import (
    critical_dim_candidates,
    geometric_prefix_end,
    ntk_left,
    periods,
    theoretical_critical_dim,
    theoretical_critical_pair,
)
from ropelab.search.evolution import EvolutionConfig, SearchState
from ropelab.search.v2 import (
    V2Space,
    crossover_v2,
    evolve_v2,
    mutate_v2,
    ntk_cd_seeds,
    sweep_critical_dims,
)
from tests.search.resume import state_when_killed

RELEASED = Path(__file__).resolve().parents[3] / "shared" / "reference" / "llama3-8b-longrope2.json"  # ../shared
# the released LLaMA3-8B long_factor (microsoft/nnscaler examples/longrope2/llama3_8b_longrope2_config.json):
# indices 0..33 as published there, to check the shared file is that release
LOWER_33 = [1, 1.097906416, 1.205398499, 1.323414747, 1.452985542, 1.595242149, 1.751426591, 1.922902493,
            2.111166985, 2.317863779, 2.544797515, 2.79394952, 3.067495105, 3.367822558, 3.697553996, 4.059568257,
            4.457026037, 4.893397485, 5.372492496, 5.898493984, 6.475994392, 7.110035795, 7.806153921, 8.570426477,
            9.40952622, 10.33077921, 11.34222878, 12.45270576, 13.67190555, 15.01047283, 16.48009443, 18.09360142,
            19.8650811, 21.81]


def released_long_factor() -> list[float]:
    released = json.loads(RELEASED.read_text())["long_factor"]
    np.testing.assert_allclose(released[:34], LOWER_33, rtol=1e-9)
    return released


def test_ntk_left_reproduces_the_released_geometric_part_from_the_anchor():
    lam = np.array(released_long_factor())
    assert lam.shape == (64,)
    rebuilt = ntk_left(lam, 33)  # ropelab's indexing: cd = the anchor's index in long_factor
    np.testing.assert_allclose(rebuilt[:34], lam[:34], rtol=1e-6, atol=0)
    np.testing.assert_array_equal(rebuilt[33:], lam[33:])  # the anchor and the searched part are untouched
    assert geometric_prefix_end(lam) == 33


def test_critical_dims_of_llama3_8b():
    d, base, L = 128, 500000.0, 8192
    assert theoretical_critical_dim(d, base, L) == 70  # full dims: pair 35
    pair = theoretical_critical_pair(d, base, L)
    assert pair == 35
    p = periods(d, base)
    assert p[pair - 1] <= L < p[pair]  # the first pair whose period does not fit in L
    cands = critical_dim_candidates(d, base, L)
    assert cands[-1] == 35 and 33 in cands
    assert L / p[cands[0]] >= 10 > L / p[cands[0] + 1]  # from the last pair with 10 periods in L
    assert critical_dim_candidates(d, base, L, stride=5)[-1] == 35
    with pytest.raises(RopelabError):
        ntk_left(np.ones(4), 0)


SPACE = V2Space(head_dim=32, base=10000.0, scale=8.0, original_max_position_embeddings=256, critical_dim=8)
HIDDEN = SPACE.from_units(np.linspace(1000, 1420, 8).round().astype(int))  # a valid λ the search must approach
CFG = EvolutionConfig(iterations=10, scale=0.5, crossover="code")


class Toy:
    def __init__(self):
        self.calls = []

    def __call__(self, batch):
        self.calls.extend(batch)
        return [float(np.abs(np.array(c.rescale_factors) - np.array(HIDDEN.rescale_factors)).mean()) for c in batch]


def run(seed=0, space=SPACE, **kwargs):
    toy = Toy()
    return evolve_v2(toy, space, CFG, np.random.default_rng(seed), **kwargs), toy


def test_seeds_are_eight_ntk_cd_vectors_at_s_times_one_plus_i_over_8():
    seeds = ntk_cd_seeds(SPACE)
    assert len(seeds) == 8
    anchors = [c.rescale_factors[8] for c in seeds.values()]
    np.testing.assert_allclose(anchors, [8.0 * (1 + i / 8) for i in range(8)], atol=0.011)
    for c in seeds.values():
        assert SPACE.is_valid(c)


def test_every_candidate_in_bounds_strictly_increasing_on_the_ntk_curve_and_the_search_improves():
    state, toy = run(0)
    assert len(toy.calls) > 64  # the 2 × population initial batch plus the generations
    for c in toy.calls:
        lam = np.array(c.rescale_factors)
        assert np.all(np.diff(lam) > 0)
        assert 8.0 - 1e-9 <= lam[8:].min() and lam[8:].max() <= 16.0 + 1e-9
        assert lam[-1] - lam[-2] <= 4.0 + 1e-9
        np.testing.assert_allclose(lam[:8], lam[8] ** (np.arange(8) / 8), rtol=1e-12)
        assert np.allclose(lam[8:] / 0.01, np.round(lam[8:] / 0.01), atol=1e-6)
    keys = [SPACE.key(c) for c in toy.calls]
    assert len(keys) == len(set(keys))  # never evaluated twice
    curve = state.best_per_generation
    assert all(b <= a for a, b in zip(curve, curve[1:], strict=False))
    assert curve[-1] < 0.6 * curve[0]


def test_initial_population_is_twice_the_population_of_chained_mutations():
    state, toy = run(0)
    initial = [e for e in state.history if e.generation == 0]
    assert len(initial) == 2 * CFG.counts()["population"]
    assert [e.origin for e in initial[:8]] == [f"seed:ntk-cd-{i}" for i in range(8)]


def test_same_seed_same_history_and_kill_resume_equals_uninterrupted():
    a, _ = run(0)
    b, _ = run(0)
    c, _ = run(1)
    assert a.to_json() == b.to_json()
    assert [e.candidate for e in a.history] != [e.candidate for e in c.history]
    saved = state_when_killed(lambda **kw: run(0, **kw), 4)
    resumed, _ = run(seed=999, state=SearchState.from_json(saved.to_json()))
    assert resumed.to_json() == a.to_json()


def test_operators_only_touch_the_searched_pairs_and_rederive_the_curve():
    rng = np.random.default_rng(3)
    seeds = list(ntk_cd_seeds(SPACE).values())
    for _ in range(50):
        child = mutate_v2(seeds[2], SPACE, 0.3, rng, {SPACE.key(seeds[2])})
        assert SPACE.is_valid(child) and child != seeds[2]
        x = crossover_v2(seeds[1], seeds[6], SPACE, 0.3, rng, set())
        assert x is None or SPACE.is_valid(x)
    assert crossover_v2(seeds[1], seeds[1], SPACE, 0.3, rng, set()) is None
    with pytest.raises(RopelabError, match="strictly increasing"):
        V2Space(head_dim=32, base=10000.0, scale=2.0, original_max_position_embeddings=256, critical_dim=2,
                upper_ratio=1.05)  # [2, 2.1] holds 11 grid values, 14 searched pairs need 14


def test_sweep_picks_the_best_critical_dim_and_resumes_exactly():
    def space_for(cd):
        return V2Space(head_dim=32, base=10000.0, scale=8.0, original_max_position_embeddings=256, critical_dim=cd)

    def go(**kw):
        return sweep_critical_dims(Toy(), space_for, [6, 8, 10], CFG, seed=5, **kw)

    full = go()
    assert full.best_dim == 8  # the hidden λ was built with cd = 8
    killed: dict = {}

    def kill(cd, state):
        killed[cd] = SearchState.from_json(state.to_json())
        if cd == 8 and state.generation == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        go(on_generation=kill)
    resumed = go(states=killed)
    assert {cd: s.to_json() for cd, s in resumed.states.items()} == {cd: s.to_json() for cd, s in full.states.items()}
    assert math.isclose(resumed.best.fitness, full.best.fitness)
