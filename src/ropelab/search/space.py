"""The LongRoPE search space (Ding et al. 2024, arXiv 2402.13753 §3; microsoft/LongRoPE's dim_mono search):
genome, bounds, grid, constraint, seeds.

Genome: λ ∈ R^{d/2} on a grid of ``step`` (0.01), monotone non-decreasing (high-frequency dimensions
interpolate least), within [1, upper] where upper = 1.25·s (paper) or 1 + s (released code); optionally n̂ from
a fixed candidate set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ropelab.errors import RopelabError
from ropelab.rope.methods import rope_frequencies
from ropelab.rope.registry import RopeSpec

PAPER_START_TOKENS = (0, 1, 2, 4, 8, 12, 16, 20, 24, 28, 32, 64, 128, 256)
# the research code (branch longrope @ 5d6e10a, GeneticAlgorithm.py try_start_token) tries these n̂ on λ vectors
# that all start with n̂ = 0 (dim_mono_n prepends 0.0), and keeps a trial only if it is better: so 0 is a member
CODE_START_TOKENS = (0, 1, 2, 4, 8, 12, 16, 20, 24, 28, 32, 48, 64)
BOUNDS = ("paper", "code")


@dataclass(frozen=True)
class Candidate:
    """One genome. ``rescale_factors`` are grid values; equality is on the grid (the dedup key)."""

    rescale_factors: tuple[float, ...]
    start_tokens: int = 0

    def key(self, step: float) -> tuple:
        return (tuple(int(round(v / step)) for v in self.rescale_factors), self.start_tokens)

    def to_dict(self) -> dict:
        return {"rescale_factors": list(self.rescale_factors), "start_tokens": self.start_tokens}


@dataclass(frozen=True)
class SearchSpace:
    head_dim: int  # the rotated width d (RopeBasics.head_dim): partial-rotary models search their rotary pairs
    base: float
    scale: float  # s = L' / L
    original_max_position_embeddings: int
    bounds: str = "paper"
    step: float = 0.01
    start_token_choices: tuple[int, ...] | None = None  # None: n̂ is not searched (kept 0)
    max_rescale: float | None = None  # recovery search: a reduced maximum λ
    # Second-stage search on a fine-tuned model: the scale is relative to reference_length (the fine-tuned
    # length), every candidate multiplies the model's own λ (base_rescale), and the attention factor follows
    # the total ratio to the original length (total_factor).
    reference_length: int | None = None
    base_rescale: tuple[float, ...] | None = None
    total_factor: float | None = None
    attention_factor: float | None = None  # explicit (recovery: the final model's, shared with the long set)

    def __post_init__(self) -> None:
        if self.bounds not in BOUNDS:
            raise RopelabError(f"search bounds must be one of {BOUNDS}, got {self.bounds!r}")
        if self.scale < 1:
            raise RopelabError(f"search scale must be >= 1, got {self.scale}")

    @property
    def target_length(self) -> int:
        return int(round((self.reference_length or self.original_max_position_embeddings) * self.scale))

    @property
    def dims(self) -> int:
        """Genes: one λ per rotary pair, d/2 (48 for Phi-4-mini's 96 rotated of 128 head dims)."""
        return self.head_dim // 2

    @property
    def upper(self) -> float:
        bound = 1.25 * self.scale if self.bounds == "paper" else 1.0 + self.scale
        return min(bound, self.max_rescale) if self.max_rescale else bound

    def snap(self, values, grid: bool = True) -> np.ndarray:
        """Onto the grid, into the bounds, made monotone (running maximum). ``grid=False``: into the bounds
        and monotone only (a seed as it is, e.g. to score what snapping it onto the grid cost)."""
        values = np.asarray(values, dtype=np.float64)
        if grid:
            values = np.round(values / self.step) * self.step
        return np.maximum.accumulate(np.clip(values, 1.0, self.upper_on_grid() if grid else self.upper))

    def upper_on_grid(self) -> float:
        return math.floor(self.upper / self.step + 1e-9) * self.step

    def is_valid(self, candidate: Candidate) -> bool:
        lam = np.asarray(candidate.rescale_factors)
        in_set = self.start_token_choices is None and candidate.start_tokens == 0 or (
            self.start_token_choices is not None and candidate.start_tokens in self.start_token_choices)
        return (lam.shape == (self.dims,) and bool(np.all(np.diff(lam) >= -1e-9)) and lam.min() >= 1.0 - 1e-9
                and lam.max() <= self.upper + 1e-9 and in_set)

    def candidate(self, values, start_tokens: int | None = None) -> Candidate:
        n_hat = start_tokens if start_tokens is not None else (min(self.start_token_choices)
                                                               if self.start_token_choices else 0)
        return Candidate(tuple(float(round(v, 6)) for v in self.snap(values)), n_hat)

    def stored_factors(self, candidate: Candidate) -> tuple[float, ...]:
        """The factors a model uses: the candidate, times the fine-tuned model's λ in a second stage."""
        if self.base_rescale is None:
            return candidate.rescale_factors
        return tuple(a * b for a, b in zip(candidate.rescale_factors, self.base_rescale, strict=True))

    def spec(self, candidate: Candidate, attention_policy: str = "su") -> RopeSpec:
        """The longrope setting a candidate stands for."""
        return RopeSpec("longrope", self.head_dim, self.base, factor=self.total_factor or self.scale,
                        original_max_position_embeddings=self.original_max_position_embeddings,
                        rescale_factors=self.stored_factors(candidate), start_tokens=candidate.start_tokens,
                        attention_policy=attention_policy, attention_factor=self.attention_factor)


def _as_lambda(spec: RopeSpec) -> np.ndarray:
    inv_freq, _ = spec.compute()
    return (rope_frequencies(spec.head_dim, spec.base) / inv_freq).double().numpy()


def seed_vectors(space: SearchSpace, variant: str = "paper", beta_fast: float = 32.0,
                 beta_slow: float = 1.0) -> dict[str, np.ndarray]:
    """Initial λ vectors: paper = PI, NTK and YaRN (inverse-frequency blend); code = the released code's single
    seed, YaRN with the FACTOR blended linearly, λ_i = s·(1 − m_i) + m_i (m = 1 where frequencies are kept).
    YaRN's ramp uses β_fast/β_slow (evolution/search.py @ c9e56aa: 32/1, and 128/2 for Mistral). The vectors are
    exact; the search snaps them onto its grid (``SearchSpace.candidate``) before scoring."""
    s, d = space.scale, space.head_dim
    L = space.reference_length or space.original_max_position_embeddings  # YaRN's ramp is relative to it
    common = {"head_dim": d, "base": space.base}
    yarn = RopeSpec("yarn", factor=s, original_max_position_embeddings=L, beta_fast=beta_fast, beta_slow=beta_slow,
                    **common)
    if variant == "code":
        from ropelab.rope.methods import yarn_correction_range, yarn_ramp

        low, high = yarn_correction_range(d, space.base, L, beta_fast, beta_slow)
        keep = (1 - yarn_ramp(low, high, d // 2)).double().numpy()
        return {"yarn-factor": s * (1 - keep) + keep}
    if variant != "paper":
        raise RopelabError(f"seed variant must be paper or code, got {variant!r}")
    return {"pi": np.full(space.dims, s), "ntk": _as_lambda(RopeSpec("ntk", factor=s, **common)), "yarn": _as_lambda(yarn)}


def exact_seeds(space: SearchSpace, seeds: dict[str, np.ndarray], snapped: dict[str, Candidate]) -> dict[str, Candidate]:
    """The seeds as computed, into the bounds and monotone but not onto the grid, wherever snapping changed them
    (the search scores the snapped ones, ``snapped`` by seed name; the report scores these too)."""
    out = {}
    for name, values in seeds.items():
        if name in snapped:
            exact = space.snap(values, grid=False)
            if np.max(np.abs(exact - np.asarray(snapped[name].rescale_factors))) > 1e-9:
                out[name] = Candidate(tuple(float(v) for v in exact), snapped[name].start_tokens)
    return out
