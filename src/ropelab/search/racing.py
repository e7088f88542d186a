"""Racing fitness: spend forward passes only on candidates that can still enter the elitist cut.

A generation's new candidates are scored on the first ``first_windows`` fitness windows; then, round by round,
each candidate still racing is compared with the cut (the ``keep``-th best fully scored member) on the windows
it has, paired window by window. The stated rule, with ``k`` of the ``n`` windows scored and ``D`` the mean
per-token NLL gap to the cut on those ``k`` windows: to still enter, the other ``n − k`` windows would have to
make up ``k·D``; their mean gap has standard deviation ``σ/√(n−k)``, ``σ`` the observed window-to-window spread
(the pooled standard deviation over windows of the per-window gap of every fully scored member to the cut). So

    leave   when D >  spread · σ · √(n−k) / k     (it would need a swing of more than ``spread`` σ)
    finish  when D < −spread · σ · √(n−k) / k     (it enters: score the rest at once)
    else    one more window.

Finalists are always scored on every window, so every fitness a parent carries is exact; an infinite spread
never eliminates and reproduces the full search exactly. No randomness: the outcome is a function of the
scores, so it is deterministic, and with a per-window cache a killed generation resumes to the same result.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ropelab.errors import RopelabError
from ropelab.search.space import Candidate

Request = tuple[Candidate, tuple[int, ...]]  # a candidate and the windows (indices) to score it on
# requests → per request, the summed NLL of each requested window (in the requested order)
WindowScorer = Callable[[list[Request]], list[list[float]]]


@dataclass(frozen=True)
class RacingRule:
    """``first_windows`` every new candidate is scored on; ``spread``: how many σ the remaining windows may
    swing before a candidate leaves (``inf``: never)."""

    first_windows: int = 1
    spread: float = 2.0

    def __post_init__(self) -> None:
        if self.first_windows < 1 or not self.spread > 0:
            raise RopelabError(f"racing needs first_windows ≥ 1 and spread > 0, got {self.first_windows}, "
                               f"{self.spread}")


def margin(rule: RacingRule, sigma: float, k: int, n: int) -> float:
    """The gap (mean per-token NLL over the k windows scored) beyond which the outcome counts as decided."""
    if math.isinf(rule.spread) or math.isinf(sigma):
        return math.inf
    return rule.spread * sigma * math.sqrt(n - k) / k


def spread_to(cut: np.ndarray, exact: Sequence[np.ndarray]) -> float:
    """σ: pooled standard deviation over windows of each other fully scored member's per-window gap to the cut
    (per-token NLL); inf when there is no other member (nothing observed: never eliminate)."""
    gaps = [member - cut for member in exact if member is not cut]
    if not gaps or len(cut) < 2:
        return math.inf
    return float(np.sqrt(np.mean([np.var(g, ddof=1) for g in gaps])))


@dataclass
class Race:
    """One generation's race; ``scored[i]``: candidate i's per-window NLL sums so far, ``out[i]``: eliminated."""

    candidates: list[Candidate]
    incumbents: list[np.ndarray]  # fully scored members (per-window NLL sums), in ranking order
    keep: int
    n: int
    tokens: int  # scored tokens per window
    scorer: WindowScorer
    rule: RacingRule

    def __post_init__(self) -> None:
        self.scored: list[list[float]] = [[] for _ in self.candidates]
        self.out = [False] * len(self.candidates)

    def extend(self, wanted: dict[int, int]) -> None:
        """Score candidate i up to wanted[i] windows, in one scorer call (batched across candidates)."""
        order = [i for i in sorted(wanted) if wanted[i] > len(self.scored[i])]
        requests = [(self.candidates[i], tuple(range(len(self.scored[i]), wanted[i]))) for i in order]
        if requests:
            for i, values in zip(order, self.scorer(requests), strict=True):
                self.scored[i].extend(values)

    def per_token(self, sums: Sequence[float]) -> np.ndarray:
        return np.asarray(sums, dtype=np.float64) / self.tokens

    def active(self) -> list[int]:
        return [i for i, s in enumerate(self.scored) if not self.out[i] and len(s) < self.n]

    def exact(self) -> list[np.ndarray]:
        done = [self.per_token(s) for i, s in enumerate(self.scored) if len(s) == self.n]
        return [self.per_token(m) for m in self.incumbents] + done

    def step(self) -> bool:
        """One round: decide or extend every candidate still racing; False when none is left."""
        active = self.active()
        if not active:
            return False
        exact = self.exact()
        if len(exact) < self.keep:  # no cut yet (the initial population): finish the most promising first
            ranked = sorted(active, key=lambda i: (float(np.mean(self.scored[i])), i))
            self.extend({i: self.n for i in ranked[: self.keep - len(exact)]})
            return True
        # stable ranking by full mean; the cut is the keep-th best fully scored member
        cut = sorted(exact, key=lambda m: float(np.mean(m)))[self.keep - 1]
        sigma = spread_to(cut, exact)
        wanted = {}
        for i in active:
            k = len(self.scored[i])
            gap = float(np.mean(self.per_token(self.scored[i]) - cut[:k]))
            limit = margin(self.rule, sigma, k, self.n)
            if gap > limit:
                self.out[i] = True
            else:
                wanted[i] = self.n if gap < -limit else k + 1
        self.extend(wanted)
        return True


def race(candidates: list[Candidate], incumbents: list[Sequence[float]], keep: int, n: int, tokens: int,
         scorer: WindowScorer, rule: RacingRule) -> list[list[float]]:
    """Per candidate, the per-window NLL sums it was scored on (all ``n`` for those that stayed in)."""
    state = Race(candidates, [np.asarray(m, dtype=np.float64) for m in incumbents], keep, n, tokens, scorer, rule)
    state.extend({i: min(rule.first_windows, n) for i in range(len(candidates))})
    while state.step():
        pass
    return state.scored


def ppl(sums: Sequence[float], tokens: int) -> float:
    """PPL over the windows scored: exp(summed NLL / scored tokens), summed in window order."""
    return math.exp(sum(sums) / (len(sums) * tokens))


@dataclass(frozen=True)
class Scored:
    fitness: float  # PPL on the windows scored (exact when complete)
    windows: tuple[float, ...]  # per-window NLL sums, in window order
    complete: bool


@dataclass
class WindowedFitness:
    """A fitness the search can race: ``scorer`` scores (candidate, windows) requests; ``rule`` None scores
    every candidate on all ``n`` windows in one call (the full search); called plainly it is the full fitness."""

    scorer: WindowScorer
    n: int
    tokens: int
    rule: RacingRule | None = None

    def __call__(self, candidates: Sequence[Candidate]) -> list[float]:
        return [s.fitness for s in self.full(list(candidates))]

    def full(self, candidates: list[Candidate]) -> list[Scored]:
        every = tuple(range(self.n))
        values = self.scorer([(c, every) for c in candidates]) if candidates else []
        return [Scored(ppl(v, self.tokens), tuple(v), True) for v in values]

    def evaluate(self, candidates: list[Candidate], incumbents: list[Sequence[float]], keep: int) -> list[Scored]:
        """Full scores, or with a rule the race against ``incumbents`` (fully scored, per-window sums)."""
        if self.rule is None or not candidates:
            return self.full(candidates)
        if any(len(m) != self.n for m in incumbents):
            raise RopelabError("racing needs every incumbent's per-window scores; resume this search without racing")
        scored = race(candidates, list(incumbents), keep, self.n, self.tokens, self.scorer, self.rule)
        return [Scored(ppl(v, self.tokens), tuple(v), len(v) == self.n) for v in scored]
