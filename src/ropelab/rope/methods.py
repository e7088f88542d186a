"""One pure function per RoPE scaling method (the formulas of transformers' modeling_rope_utils and the papers).

Every function takes explicit numbers and returns ``(inv_freq, attention_factor)``:
``inv_freq`` is a float32 tensor of shape ``(head_dim // 2,)`` (index 0 = highest frequency) and
``attention_factor`` a float that multiplies cos and sin (so attention logits scale by its square).
Notation: d = head_dim, θ_i = base^(-2i/d), L = original_max_position_embeddings, s = factor.

The arithmetic mirrors transformers' ``modeling_rope_utils`` operation by operation, so that fp32 results
agree to rounding; tests compare against it (``ours_*`` vs ``theirs_*``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ropelab.errors import RopelabError

ATTENTION_POLICIES = ("su", "yarn", "none")


def _exponents(head_dim: int) -> torch.Tensor:
    """2i/d for i = 0..d/2-1, shape (d/2,), float32."""
    return torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim


def rope_frequencies(head_dim: int, base: float) -> torch.Tensor:
    """θ_i = base^(-2i/d): the unscaled inverse frequencies, shape (d/2,)."""
    return 1.0 / (base ** _exponents(head_dim))


def default(*, head_dim: int, base: float) -> tuple[torch.Tensor, float]:
    """Plain RoPE (Su et al. 2021): inv_freq = θ."""
    return rope_frequencies(head_dim, base), 1.0


def linear(*, head_dim: int, base: float, factor: float) -> tuple[torch.Tensor, float]:
    """Position interpolation (Chen et al. 2023): inv_freq = θ / s."""
    return rope_frequencies(head_dim, base) / factor, 1.0


def ntk(*, head_dim: int, base: float, factor: float) -> tuple[torch.Tensor, float]:
    """Static NTK-aware scaling: base' = base · s^(d/(d-2)), i.e. λ_i = s^(2i/(d-2))."""
    return rope_frequencies(head_dim, base * factor ** (head_dim / (head_dim - 2))), 1.0


def dynamic_scale(factor: float, seq_len: int, original_max_position_embeddings: int) -> float:
    """s_eff = max(1, s·l/L − (s − 1)) with l = max(seq_len, L), as transformers' `dynamic` type."""
    length = max(seq_len, original_max_position_embeddings)
    return (factor * length / original_max_position_embeddings) - (factor - 1)


def dynamic(
    *, head_dim: int, base: float, factor: float, original_max_position_embeddings: int, seq_len: int | None = None
) -> tuple[torch.Tensor, float]:
    """Dynamic NTK: static NTK with the effective scale recomputed from the current length.

    ``seq_len=None`` means "at most L" (no scaling), as transformers does at initialisation.
    """
    length = original_max_position_embeddings if seq_len is None else seq_len
    scale = dynamic_scale(factor, length, original_max_position_embeddings)
    return rope_frequencies(head_dim, base * scale ** (head_dim / (head_dim - 2))), 1.0


def yarn_attention_factor(factor: float, mscale: float | None = None, mscale_all_dim: float | None = None) -> float:
    """0.1·ln(s) + 1 (or the DeepSeek mscale ratio when both mscales are given); 1 for s ≤ 1."""

    def get_mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    if mscale and mscale_all_dim:
        return float(get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim))
    return get_mscale(factor)


def yarn_correction_range(
    head_dim: int, base: float, original_max_position_embeddings: int, beta_fast: float, beta_slow: float,
    truncate: bool = True,
) -> tuple[float, float]:
    """Dimension indices (low, high) where the ramp starts and ends, from the rotation counts β_fast, β_slow."""

    def correction_dim(rotations: float) -> float:
        return (head_dim * math.log(original_max_position_embeddings / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    return max(low, 0), min(high, head_dim - 1)


def yarn_ramp(low: float, high: float, size: int) -> torch.Tensor:
    """r_i: 0 at and below `low`, 1 at and above `high`, linear in the dimension index in between."""
    if low == high:
        high += 0.001  # as the reference code: avoid a division by zero
    return torch.clamp((torch.arange(size, dtype=torch.float32) - low) / (high - low), 0, 1)


def yarn(
    *, head_dim: int, base: float, factor: float, original_max_position_embeddings: int,
    beta_fast: float = 32.0, beta_slow: float = 1.0, attention_factor: float | None = None,
    mscale: float | None = None, mscale_all_dim: float | None = None, truncate: bool = True,
) -> tuple[torch.Tensor, float]:
    """YaRN (Peng et al. 2023), the reference-code form: blend θ/s and θ in inverse-frequency space.

    inv_freq_i = (θ_i/s)·r_i + θ_i·(1 − r_i), with the ramp r over dimension indices between the correction
    dims of β_fast and β_slow. The paper's formula differs and is measurably worse (algorithms.md §1).
    """
    low, high = yarn_correction_range(head_dim, base, original_max_position_embeddings, beta_fast, beta_slow, truncate)
    pos_freqs = base ** _exponents(head_dim)
    extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (factor * pos_freqs)
    keep = 1 - yarn_ramp(low, high, head_dim // 2)  # 1 where frequencies stay as pretrained
    inv_freq = interpolation * (1 - keep) + extrapolation * keep
    if attention_factor is None:
        attention_factor = yarn_attention_factor(factor, mscale, mscale_all_dim)
    return inv_freq, float(attention_factor)


def llama3(
    *, head_dim: int, base: float, factor: float, original_max_position_embeddings: int,
    low_freq_factor: float = 1.0, high_freq_factor: float = 4.0,
) -> tuple[torch.Tensor, float]:
    """Llama 3.1 wavelength-banded scaling: short wavelengths kept, long ones divided by s, smooth in between."""
    inv_freq = rope_frequencies(head_dim, base)
    low_freq_wavelen = original_max_position_embeddings / low_freq_factor
    high_freq_wavelen = original_max_position_embeddings / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (original_max_position_embeddings / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled), 1.0


def longrope_attention_factor(policy: str, factor: float, original_max_position_embeddings: int) -> float:
    """"su": sqrt(1 + ln s / ln L) (LongRoPE/Phi-3 default); "yarn": 0.1·ln s + 1; "none": 1. 1 for s ≤ 1."""
    if policy not in ATTENTION_POLICIES:
        raise RopelabError(f"unknown attention_policy {policy!r}; choose one of {', '.join(ATTENTION_POLICIES)}")
    if policy == "none" or factor <= 1.0:
        return 1.0
    if policy == "su":
        return math.sqrt(1 + math.log(factor) / math.log(original_max_position_embeddings))
    return 0.1 * math.log(factor) + 1.0


def longrope(
    *, head_dim: int, base: float, rescale_factors: Sequence[float], factor: float,
    original_max_position_embeddings: int, attention_policy: str = "su", attention_factor: float | None = None,
) -> tuple[torch.Tensor, float]:
    """LongRoPE (Ding et al. 2024): inv_freq_i = θ_i / λ_i with a searched λ of length d/2.

    `factor` is the extension ratio s = L'/L, used only for the attention factor. The n̂ un-interpolated start
    tokens are applied when cos/sin are built (see ``rotary.rotary_cos_sin``), not here.
    """
    inv_freq = _inv_freq_of(rescale_factors, head_dim, base)
    if attention_factor is None:
        attention_factor = longrope_attention_factor(attention_policy, factor, original_max_position_embeddings)
    return inv_freq, float(attention_factor)


def _inv_freq_of(rescale_factors: Sequence[float], head_dim: int, base: float) -> torch.Tensor:
    """θ_i / λ_i with transformers' longrope arithmetic (fp32 λ times fp32 base powers), shape (d/2,)."""
    lam = torch.tensor([float(v) for v in rescale_factors], dtype=torch.float32)
    return 1.0 / (lam * base ** _exponents(head_dim))


# ---------------------------------------------------------------- LongRoPE2's critical-dimension baselines
#
# LongRoPE2 (Shang et al. 2025, arXiv 2502.20082) reports NTK and YaRN with its real critical dimension d_rcd
# applied (LLaMA3-8B, RULER-128k: YaRN 49.4 -> 71.5, NTK 73.2 -> 77.3). Its released search code
# (microsoft/LongRoPE evolution/algorithms/dim_mono.py @ 5e669a5, the critical-dim version; J-shang/LongRoPE
# dev/nishang/omni @ 61de922 evolution/algorithms/genetic_base.py and evolution/search.py) has no function for
# these two baselines. It fixes their shape: pairs from cd on are scaled by at least s (search space
# [target/orig, length_scale]), pairs below cd follow ``ntk_left`` (λ_i = λ_cd^(i/cd)), and its seeds
# (``ntk_init``) are that curve anchored at λ_cd = scale, plus 0.1·k above cd to make them strictly increasing.
# ropelab follows that shape: NTK-cd is the seed without the 0.1·k offsets. YaRN-cd moves YaRN's β_slow
# boundary down to cd. For β_slow = 1 that boundary is the theoretical critical pair, since
# correction_dim(1) = (d/2)·log_base(L/2π).
#
# Indexing: ``critical_dim`` is a rotary PAIR index (the position in λ / long_factor), the first pair scaled by
# the full s. The released LLaMA3-8B factors are geometric up to pair 33 (the search script's --critical-dim 33);
# the paper's d_rcd = 30 for that model is not an index of that vector (see ropelab.search.critical).


def check_critical_pair(head_dim: int, critical_dim) -> int:
    """The critical pair as an int in 1..d/2-1 (cd = 0 leaves no curve to anchor), or one clear error."""
    pairs = head_dim // 2
    if isinstance(critical_dim, bool) or not isinstance(critical_dim, int) or not 0 < critical_dim < pairs:
        raise RopelabError(f"critical_dim must be a rotary-pair index in 1..{pairs - 1} (head_dim {head_dim}), "
                           f"got {critical_dim!r}")
    return critical_dim


def ntk_cd_factors(*, head_dim: int, factor: float, critical_dim: int) -> tuple[float, ...]:
    """NTK-cd λ: s^(i/cd) below the critical pair, s from it on (λ_cd = s: the search space's lower bound).

    Below cd this is NTK with base·s^(d/(2·cd)) (plain NTK is base·s^(d/(d-2)), i.e. cd = d/2-1: NTK-cd with the
    last pair as cd IS plain NTK). Shape (d/2,), non-decreasing, within [1, s].
    """
    cd = check_critical_pair(head_dim, critical_dim)
    return tuple(float(factor) ** (min(i, cd) / cd) for i in range(head_dim // 2))


def ntk_cd(*, head_dim: int, base: float, factor: float, critical_dim: int) -> tuple[torch.Tensor, float]:
    """NTK-cd as (inv_freq, attention_factor): θ/λ of ``ntk_cd_factors``; no attention factor, as NTK."""
    lam = ntk_cd_factors(head_dim=head_dim, factor=factor, critical_dim=critical_dim)
    return _inv_freq_of(lam, head_dim, base), 1.0


def yarn_cd_ramp(head_dim: int, low: int, critical_dim: int) -> list[float]:
    """r_i: 0 up to YaRN's β_fast pair ``low``, linear in the pair index, 1 from the critical pair on. A critical
    pair at or below ``low`` makes it a step at cd (YaRN's own ramp would leave pair cd un-interpolated there)."""
    cd = check_critical_pair(head_dim, critical_dim)
    if low >= cd:
        return [float(i >= cd) for i in range(head_dim // 2)]
    return [min(1.0, max(0.0, (i - low) / (cd - low))) for i in range(head_dim // 2)]


def yarn_cd_factors(
    *, head_dim: int, base: float, factor: float, original_max_position_embeddings: int, critical_dim: int,
    beta_fast: float = 32.0,
) -> tuple[float, ...]:
    """YaRN-cd λ: YaRN with its ramp ending at the critical pair instead of at β_slow's pair (d_tcd for β_slow =
    1), in YaRN's inverse-frequency blend: θ_i/λ_i = (θ_i/s)·r_i + θ_i·(1-r_i), so λ_i = 1 / (r_i/s + 1 - r_i).

    The ramp starts at YaRN's β_fast pair, floor(d·ln(L/(β_fast·2π)) / (2·ln base)) clamped at 0 (transformers'
    truncated correction range). Shape (d/2,), non-decreasing, within [1, s], equal to s from cd on.
    """
    # only YaRN's β_fast end is kept: the slow end (β_slow's pair) is what cd replaces
    low, _ = yarn_correction_range(head_dim, base, original_max_position_embeddings, beta_fast, beta_fast)
    ramp = yarn_cd_ramp(head_dim, int(low), critical_dim)
    return tuple(1.0 / (r / factor + (1.0 - r)) for r in ramp)


def yarn_cd(
    *, head_dim: int, base: float, factor: float, original_max_position_embeddings: int, critical_dim: int,
    beta_fast: float = 32.0, attention_factor: float | None = None,
) -> tuple[torch.Tensor, float]:
    """YaRN-cd as (inv_freq, attention_factor): θ/λ of ``yarn_cd_factors``, YaRN's 0.1·ln(s) + 1 unless given."""
    lam = yarn_cd_factors(head_dim=head_dim, base=base, factor=factor, critical_dim=critical_dim,
                          original_max_position_embeddings=original_max_position_embeddings, beta_fast=beta_fast)
    if attention_factor is None:
        attention_factor = yarn_attention_factor(factor)
    return _inv_freq_of(lam, head_dim, base), float(attention_factor)
