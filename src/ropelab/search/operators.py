"""LongRoPE's genetic operators on the 0.01 grid (Ding et al. 2024 §3.2, Alg. 1), with the reference variants.

Each variant is a search-config choice; ``code`` names the behaviour of microsoft/LongRoPE's released code
(main @ c9e56aa54007c328399677232a489feec446e4b8, ``evolution/algorithms/dim_mono.py`` and
``genetic_base.py``), ``trial`` that of its research branch (``longrope`` @
5d6e10ae05607306b644211779772facfb66f9b3, ``evolution/GeneticAlgorithm.py`` and ``dim_mono_n/dim_mono_n.py``).

- mutation retries: ``restart`` (ropelab: every attempt starts from the parent) or ``code`` (the released
  ``mutate``: the ``while`` loop keeps mutating the already mutated vector until it is new);
- crossover: ``uniform`` (ropelab: each gene from B with probability p at once) or ``code`` (the released
  ``crossover``: B's genes copied into A one at a time, the first new monotone state returned);
- n̂: ``walk`` (mutation moves n̂ to another member of the set) or ``trial`` (``try_start_token``: the same λ
  scored with other n̂, the best kept if it beats the λ as it is; mutation leaves n̂ alone, as dim_mono_n's).

All randomness comes from the ``np.random.Generator`` passed in. Every operator returns ``None`` when it cannot
make a child that is new (not in ``seen``) and valid; the loop counts and reports that shortfall.
"""

from __future__ import annotations

import numpy as np

from ropelab.search.space import Candidate, SearchSpace

MUTATION_RETRIES = ("restart", "code")
CROSSOVERS = ("uniform", "code")
START_TOKEN_SEARCHES = ("walk", "trial")
COPY_PROBABILITY = 0.5  # dim_mono.py crossover: a gene picked with probability p is B's with probability 0.5
# GeneticAlgorithm.py @ 5d6e10a: after the initial population, 5 of the top 10 try every n̂ (try_start_token);
# every mutated child tries 5 n̂ drawn without replacement (try_start_token_mutate)
TRIAL_TOP, TRIAL_PICKS, TRIAL_SAMPLE = 10, 5, 5


def _resample_between(low: float, high: float, step: float, rng: np.random.Generator) -> float:
    lo, hi = int(round(low / step)), int(round(high / step))
    return float(rng.integers(lo, hi + 1)) * step


def _mutate_genes(lam: list[float], space: SearchSpace, p: float, rng: np.random.Generator) -> None:
    """In place: each gene with probability p resampled on the grid between its current neighbours (the
    bounds at the ends), so λ stays monotone. Neighbours already resampled in this pass count as current."""
    upper = space.upper_on_grid()
    for i in range(len(lam)):
        if rng.random() < p:
            low = lam[i - 1] if i > 0 else 1.0
            high = lam[i + 1] if i + 1 < len(lam) else upper
            lam[i] = _resample_between(low, max(low, high), space.step, rng)


def mutate(parent: Candidate, space: SearchSpace, p: float, rng: np.random.Generator, seen: set,
           max_retries: int = 100, *, retry: str = "restart", walk_n_hat: bool = True) -> Candidate | None:
    """A new valid child of ``parent`` in at most ``max_retries`` attempts, else None.

    ``retry="restart"`` starts every attempt from the parent; ``"code"`` keeps mutating the previous attempt
    (dim_mono.py ``mutate``, whose loop is unbounded; here it stops at ``max_retries`` like the other). With
    ``walk_n_hat`` (and n̂ searched) n̂ moves to another member of its set with probability p per attempt."""
    lam, n_hat = list(parent.rescale_factors), parent.start_tokens
    for _ in range(max_retries):
        if retry == "restart":
            lam, n_hat = list(parent.rescale_factors), parent.start_tokens
        _mutate_genes(lam, space, p, rng)
        if walk_n_hat and space.start_token_choices and rng.random() < p:
            others = [n for n in space.start_token_choices if n != n_hat]
            n_hat = int(others[rng.integers(len(others))]) if others else n_hat
        child = Candidate(tuple(round(v, 6) for v in lam), n_hat)
        if child.key(space.step) not in seen and space.is_valid(child):
            return child
    return None


def uniform_crossover(a: Candidate, b: Candidate, space: SearchSpace, p: float, rng: np.random.Generator,
                      seen: set, passes: int = 20) -> Candidate | None:
    """ropelab's crossover: start from A; each gene (and n̂) from B with probability p, all at once; retried
    ``passes`` times until new and monotone."""
    for _ in range(passes):
        take = rng.random(len(a.rescale_factors)) < p
        lam = tuple(bv if t else av for av, bv, t in zip(a.rescale_factors, b.rescale_factors, take, strict=True))
        n_hat = b.start_tokens if space.start_token_choices and rng.random() < p else a.start_tokens
        child = Candidate(lam, n_hat)
        if child.key(space.step) not in seen and space.is_valid(child):
            return child
    return None


def code_crossover(a: Candidate, b: Candidate, space: SearchSpace, p: float, rng: np.random.Generator,
                   seen: set, passes: int = 20) -> Candidate | None:
    """The released code's crossover (dim_mono.py ``crossover``; n̂ as gene 0 when searched, as dim_mono_n.py's
    ``crossover_valid_alpha``). A is the better parent. Starting from A, up to ``passes`` passes over the genes:
    a gene picked with probability p takes B's value with probability 0.5, and the first state that is new
    and monotone is the child, so it usually differs from A in one gene. Copies that leave the vector seen or
    non-monotone stay and accumulate. Parents equal on the grid: None (the caller mutates A, as the code)."""
    if a.key(space.step) == b.key(space.step):
        return None
    with_n = space.start_token_choices is not None
    genes_b = ([b.start_tokens] if with_n else []) + list(b.rescale_factors)
    genes = ([a.start_tokens] if with_n else []) + list(a.rescale_factors)
    for _ in range(passes):
        for i in range(len(genes)):
            if rng.random() < p:
                if rng.random() < COPY_PROBABILITY:
                    genes[i] = genes_b[i]
                child = Candidate(tuple(genes[1:]), int(genes[0])) if with_n else Candidate(tuple(genes))
                if child.key(space.step) not in seen and space.is_valid(child):
                    return child
    return None


CROSSOVER_FUNCTIONS = {"uniform": uniform_crossover, "code": code_crossover}


def crossover(a: Candidate, b: Candidate, space: SearchSpace, p: float, rng: np.random.Generator, seen: set,
              passes: int = 20, max_retries: int = 100, *, variant: str = "uniform", retry: str = "restart",
              walk_n_hat: bool = True) -> Candidate | None:
    """A crossover child of A and B (``variant`` uniform or code); when none is new and valid, a mutation of A
    (both references fall back to mutating the first parent)."""
    child = CROSSOVER_FUNCTIONS[variant](a, b, space, p, rng, seen, passes)
    if child is None:
        child = mutate(a, space, p, rng, seen, max_retries, retry=retry, walk_n_hat=walk_n_hat)
    return child


def crossover_pair(count: int, rng: np.random.Generator, best_first: bool) -> tuple[int, int]:
    """Two distinct parent indices (one parent: itself twice). ``best_first`` sorts them, so on ranked parents
    A is the better one (genetic_base.py: ``idx1, idx2 = sorted([idx1, idx2])``)."""
    i, j = rng.choice(count, size=2, replace=count < 2)
    return (min(i, j), max(i, j)) if best_first else (i, j)


def start_token_trials(candidate: Candidate, space: SearchSpace, seen: set, rng: np.random.Generator | None = None,
                       sample: int | None = None) -> list[Candidate]:
    """``candidate``'s λ with each other n̂ of the set (``try_start_token``), or with ``sample`` of them drawn
    without replacement (``try_start_token_mutate``); only the never-evaluated ones. The research code's set
    never held the n̂ = 0 every λ started with, so 'other' = every member but the candidate's own."""
    others = [n for n in space.start_token_choices or () if n != candidate.start_tokens]
    if sample is not None and others:
        others = [others[k] for k in rng.choice(len(others), size=min(sample, len(others)), replace=False)]
    trials = [Candidate(candidate.rescale_factors, int(n)) for n in others]
    return [c for c in trials if c.key(space.step) not in seen]
