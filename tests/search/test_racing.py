"""Racing fitness on a toy windowed objective (no model): an infinite spread is the full search exactly,
racing is deterministic, eliminates, keeps parents exact, resumes mid-generation, and counts what it spent."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest

from ropelab.search.evolution import EvolutionConfig, SearchState, evolve, initial_state, next_generation
from ropelab.search.racing import RacingRule, WindowedFitness, race
from ropelab.search.space import SearchSpace, seed_vectors
from ropelab.tasks.search import CachedScorer, FitnessCache

SPACE = SearchSpace(head_dim=32, base=10000.0, scale=8.0, original_max_position_embeddings=256)
HIDDEN = SPACE.snap(np.linspace(1.0, 7.0, 16) ** 1.1)
CFG = EvolutionConfig(iterations=6, scale=0.5)  # population 32, 8 + 8 children, 16 parents
N, TOKENS = 8, 100


class ToyScorer:
    """Per-window NLL sums: a window difficulty shared by all candidates + the distance to the hidden λ + a
    small candidate-and-window term (so windows disagree a little, as real ones do). Counts forwarded rows."""

    n, tokens, length = N, TOKENS, TOKENS + 1

    def __init__(self, fail_after: int | None = None):
        self.forwarded, self.fail_after = 0, fail_after

    def value(self, c, w: int) -> float:
        distance = float(np.abs(np.array(c.rescale_factors) - HIDDEN).mean())
        wobble = (zlib.crc32(repr((c.key(SPACE.step), w)).encode()) % 1000) / 1000 - 0.5
        return TOKENS * (1.0 + 0.3 * w + distance + 0.05 * wobble)

    def __call__(self, requests, on_value=None):
        out = []
        for k, (c, wanted) in enumerate(requests):
            values = []
            for w in wanted:
                if self.fail_after is not None and self.forwarded >= self.fail_after:
                    raise KeyboardInterrupt  # killed half-way through a generation
                self.forwarded += 1
                values.append(self.value(c, w))
                if on_value is not None:
                    on_value(k, w, values[-1])
            out.append(values)
        return out


def search(fitness, state=None, on_generation=None):
    return evolve(fitness, SPACE, CFG, np.random.default_rng(0), seeds=seed_vectors(SPACE), state=state,
                  on_generation=on_generation)


def view(state: SearchState):
    """What the search decided: every evaluated candidate with its fitness, and the final population."""
    def row(e):
        return (e.candidate, e.fitness, e.generation, e.origin, e.windows, e.complete)

    return [row(e) for e in state.history], [row(e) for e in state.population], state.best_per_generation


def test_a_rule_that_never_eliminates_reproduces_the_full_search_exactly():
    full = search(WindowedFitness(ToyScorer(), N, TOKENS))
    never = search(WindowedFitness(ToyScorer(), N, TOKENS, RacingRule(1, math.inf)))
    assert view(never) == view(full)
    assert never.to_json() == full.to_json()
    plain = search(lambda batch: WindowedFitness(ToyScorer(), N, TOKENS)(batch))  # no windows kept: same search
    assert [(e.candidate, e.fitness) for e in plain.history] == [(e.candidate, e.fitness) for e in full.history]


def test_racing_is_deterministic_cheaper_and_keeps_every_parent_exact():
    a_scorer, b_scorer, full_scorer = ToyScorer(), ToyScorer(), ToyScorer()
    a = search(WindowedFitness(a_scorer, N, TOKENS, RacingRule()))
    b = search(WindowedFitness(b_scorer, N, TOKENS, RacingRule()))
    full = search(WindowedFitness(full_scorer, N, TOKENS))
    assert a.to_json() == b.to_json() and a_scorer.forwarded == b_scorer.forwarded
    out = [e for e in a.history if not e.complete]
    assert out and a_scorer.forwarded < 0.8 * full_scorer.forwarded
    assert a_scorer.forwarded == sum(len(e.windows) for e in a.history)
    assert all(e.complete and len(e.windows) == N for e in a.population)  # parents: exact fitness
    assert all(e.fitness == pytest.approx(math.exp(sum(e.windows) / (N * TOKENS)), rel=1e-12) for e in a.population)
    assert a.best.fitness <= full.best.fitness * 1.005  # same quality of winner on this objective


def test_eliminated_ones_were_behind_the_cut_on_every_window_they_had():
    scorer = ToyScorer()
    state = search(WindowedFitness(scorer, N, TOKENS, RacingRule()))
    for g in range(1, state.generation + 1):
        mine = [e for e in state.history if e.generation == g]
        for e in (e for e in mine if not e.complete):
            full = ToyScorer().value  # what it would have scored on every window
            assert math.exp(sum(full(e.candidate, w) for w in range(N)) / (N * TOKENS)) > min(
                p.fitness for p in state.population)


def test_kill_mid_generation_and_resume_through_the_cache_equals_uninterrupted(tmp_path):
    def cached(path, fail_after=None):
        scorer = ToyScorer(fail_after)
        return WindowedFitness(CachedScorer(FitnessCache(path, SPACE, "su"), scorer), N, TOKENS, RacingRule()), scorer

    straight = search(cached(tmp_path / "straight.jsonl")[0])
    saved = {}
    fitness, _ = cached(tmp_path / "killed.jsonl")
    state = initial_state(fitness, SPACE, CFG, np.random.default_rng(0), seed_vectors(SPACE))
    state = next_generation(state, fitness, SPACE, CFG)
    saved["json"] = state.to_json()
    before = sum(1 for _ in open(tmp_path / "killed.jsonl"))
    killer, scorer = cached(tmp_path / "killed.jsonl", fail_after=5)  # dies inside generation 2's race
    with pytest.raises(KeyboardInterrupt):
        next_generation(SearchState.from_json(saved["json"]), killer, SPACE, CFG)
    assert sum(1 for _ in open(tmp_path / "killed.jsonl")) == before + 5  # the partial race was persisted
    resumed_fitness, resumed_scorer = cached(tmp_path / "killed.jsonl")
    resumed = search(resumed_fitness, state=SearchState.from_json(saved["json"]))
    assert resumed.to_json() == straight.to_json()
    assert resumed_fitness.scorer.hits == 5  # the killed attempt's windows were not scored again


def test_accounting_on_a_small_race(tmp_path):
    scorer = ToyScorer()
    cached = CachedScorer(FitnessCache(tmp_path / "c.jsonl", SPACE, "su"), scorer)
    good = SPACE.candidate(HIDDEN)
    near = SPACE.candidate(np.minimum(HIDDEN + 0.02, SPACE.upper))
    bad = [SPACE.candidate(seed_vectors(SPACE)[k]) for k in ("pi", "ntk", "yarn")]
    incumbents = [[scorer.value(c, w) for w in range(N)] for c in (good, near)]
    scored = race(bad, incumbents, 2, N, TOKENS, cached, RacingRule())
    assert [len(s) for s in scored] == [1, 1, 1]  # far behind the cut after one window: out
    assert (scorer.forwarded, cached.hits) == (3, 0)
    assert race(bad, incumbents, 2, N, TOKENS, cached, RacingRule(2, math.inf)) == [
        [scorer.value(c, w) for w in range(N)] for c in bad]
    assert (scorer.forwarded, cached.hits) == (3 + 3 * (N - 1), 3)  # window 0 from the cache, the rest run
