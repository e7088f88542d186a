"""LongRoPE2's critical dimension (Shang et al. 2025, arXiv 2502.20082 §3).

Rotary pair i turns at θ_i = base^(-2i/d), period 2π/θ_i = 2π·base^(2i/d) positions. Pairs whose period does
not fit in the pretrained window L never saw a full turn in training: they are the under-trained ones that
LongRoPE2 searches; the pairs below follow an NTK-style curve anchored at the critical one.

**Indexing convention (ropelab).** Every index here is a rotary PAIR index i = 0..d/2−1, the position in a
λ/long_factor vector (i = 0 is the highest frequency). The critical dim ``cd`` is the first searched pair and the
anchor of the curve below it: λ_i = λ_cd^(i/cd) for i < cd (the reference code's ``ntk_left``:
ext = f[cd]^(total/cd), f_i = ext^(i/total), the same thing). The released LLaMA3-8B factors are geometric from
index 0 to index 33 inclusive, so their cd is 33 in this convention (the search script passes
``--critical-dim 33``); the paper quotes d_rcd = 30 for that model, which no indexing of the released vector
reproduces. The theoretical d_tcd in the paper's units is 2⌈(d/2)·log_base(L/2π)⌉ full dimensions, i.e. pair
⌈(d/2)·log_base(L/2π)⌉ (LLaMA3-8B: 70 dims, pair 35, the first pair whose period exceeds 8192); the released
code's default ``ceil(...) − 1`` (34) is the last pair that completes a period.
"""

from __future__ import annotations

import math

import numpy as np

from ropelab.errors import RopelabError

PERIODS_AT_LOW_END = 10  # the sweep starts at the last pair that completes 10 periods inside L (paper §3.2)


def periods(head_dim: int, base: float) -> np.ndarray:
    """The period 2π/θ_i of every rotary pair, in positions."""
    i = np.arange(head_dim // 2, dtype=np.float64)
    return 2 * math.pi * base ** (2 * i / head_dim)


def theoretical_critical_dim(head_dim: int, base: float, original_length: int) -> int:
    """d_tcd = 2⌈(d/2)·log_base(L/2π)⌉, in full dimensions (the paper's unit)."""
    return 2 * math.ceil(head_dim / 2 * math.log(original_length / (2 * math.pi), base))


def theoretical_critical_pair(head_dim: int, base: float, original_length: int) -> int:
    """d_tcd as a pair index: the first pair whose period does not fit in L (clamped to the last pair)."""
    return min(head_dim // 2 - 1, theoretical_critical_dim(head_dim, base, original_length) // 2)


def critical_dim_candidates(head_dim: int, base: float, original_length: int, stride: int = 1) -> list[int]:
    """The d_rcd sweep: from the last pair with ≥ 10 periods inside L up to d_tcd (pair indices, every
    ``stride``-th, d_tcd always included)."""
    if stride < 1:
        raise RopelabError(f"critical-dim sweep stride must be ≥ 1, got {stride}")
    high = theoretical_critical_pair(head_dim, base, original_length)
    low = int(np.sum(original_length / periods(head_dim, base) >= PERIODS_AT_LOW_END)) - 1
    low = min(max(1, low), high)  # cd = 0 leaves no curve to anchor
    picks = list(range(low, high + 1, stride))
    return picks if picks[-1] == high else picks + [high]


def ntk_left(factors, critical_dim: int) -> np.ndarray:
    """λ with the pairs below ``critical_dim`` re-derived on the NTK curve through λ_cd: λ_i = λ_cd^(i/cd)."""
    lam = np.array(factors, dtype=np.float64)
    if not 0 < critical_dim < lam.shape[0]:
        raise RopelabError(f"critical dim must be in 1..{lam.shape[0] - 1}, got {critical_dim}")
    anchor = lam[critical_dim]
    if anchor <= 0:
        raise RopelabError(f"the anchor λ_{critical_dim} must be positive, got {anchor}")
    lam[:critical_dim] = anchor ** (np.arange(critical_dim) / critical_dim)
    return lam


def geometric_prefix_end(factors, rtol: float = 1e-6) -> int:
    """The largest index k such that factors[0..k] lie on λ_i = λ_k^(i/k) to ``rtol`` (0 if none): the cd a
    released vector was searched with, in ropelab's indexing."""
    lam = np.asarray(factors, dtype=np.float64)
    for k in range(lam.shape[0] - 1, 0, -1):
        if np.allclose(ntk_left(lam, k)[:k], lam[:k], rtol=rtol, atol=0):
            return k
    return 0
