"""LongRoPE2's critical-dimension baselines NTK-cd and YaRN-cd: closed forms, hand computations from the reference
formulas, the reductions to plain NTK / YaRN, monotonicity, errors, and the stock longrope export."""

from __future__ import annotations

import math

import pytest
import torch

from ropelab.errors import RopelabError
from ropelab.rope import RopeSpec, as_longrope, methods, rescale_factors_of
from ropelab.rope.adapter import RopeBasics, stock_rope_parameters
from ropelab.rope.modules import install_rope, uninstall_rope
from ropelab.search.critical import ntk_left, theoretical_critical_pair

# LLaMA3-8B -> 128k, the paper's headline setting: d = 128, θ = 500000, L = 8192, s = 16
D, BASE, L, S = 128, 500000.0, 8192, 16.0


def ntk_cd(cd: int, s: float = S, head_dim: int = D, base: float = BASE) -> RopeSpec:
    return RopeSpec("ntk_cd", head_dim, base, factor=s, critical_dim=cd)


def yarn_cd(cd: int, s: float = S, head_dim: int = D, base: float = BASE, original: int = L,
            beta_fast: float = 32.0) -> RopeSpec:
    return RopeSpec("yarn_cd", head_dim, base, factor=s, original_max_position_embeddings=original,
                    critical_dim=cd, beta_fast=beta_fast)


def lam(spec: RopeSpec) -> list[float]:
    return list(spec.exact_factors())


def test_ntk_cd_is_s_from_the_critical_pair_and_the_ntk_left_curve_below():
    factors = lam(ntk_cd(33))
    assert factors[33:] == [S] * (D // 2 - 33)  # the search space's lower bound s, exactly
    assert factors[:33] == pytest.approx([S ** (i / 33) for i in range(33)], rel=1e-15, abs=0)
    assert factors == pytest.approx(ntk_left(factors, 33).tolist(), rel=1e-12, abs=0)  # v2's re-derivation
    # below cd it is NTK with base·s^(d/(2·cd)), the base change that reaches s at pair cd
    rebased = methods.rope_frequencies(D, BASE * S ** (D / (2 * 33)))
    torch.testing.assert_close(ntk_cd(33).compute()[0][:34], rebased[:34], rtol=2e-6, atol=0)
    assert ntk_cd(33).compute()[1] == 1.0  # no attention factor, as NTK


def reference_ntk_init(total_dim: int, cd_dim: int, scale: float) -> list[float]:
    """A port of the v2 code's seed (J-shang/LongRoPE dev/nishang/omni @ 61de922,
    evolution/algorithms/genetic_base.py, ``run_genetic_algorithm``)."""
    ext = scale ** (total_dim / cd_dim)
    return [ext ** (i / total_dim) for i in range(cd_dim)] + [scale + 0.1 * i for i in range(total_dim - cd_dim)]


@pytest.mark.parametrize("cd", [20, 33, 35, 50])
def test_ntk_cd_is_the_reference_ntk_init_seed_without_its_strict_increase_offsets(cd):
    reference = reference_ntk_init(D // 2, cd, S)
    ours = lam(ntk_cd(cd))
    assert ours[:cd] == pytest.approx(reference[:cd], rel=1e-12, abs=0)
    assert ours[cd:] == pytest.approx([v - 0.1 * k for k, v in enumerate(reference[cd:])], rel=1e-12, abs=0)


def test_ntk_cd_with_the_last_pair_as_critical_is_plain_ntk():
    """Plain NTK reaches s exactly at the last pair (λ_i = s^(2i/(d-2))): nothing is cut."""
    for head_dim, s in ((D, S), (16, 4.0), (64, 32.0)):
        plain = RopeSpec("ntk", head_dim, BASE, factor=s)
        cd = ntk_cd(head_dim // 2 - 1, s, head_dim)
        torch.testing.assert_close(cd.compute()[0], plain.compute()[0], rtol=2e-6, atol=0)
        assert lam(cd) == pytest.approx(rescale_factors_of(plain).tolist(), rel=2e-6)
    assert lam(ntk_cd(33)) != pytest.approx(rescale_factors_of(RopeSpec("ntk", D, BASE, factor=S)).tolist(),
                                            rel=1e-3)  # a real critical dim does change it


def test_yarn_cd_against_a_hand_computation_from_the_reference_formulas():
    """YaRN's β_fast pair: floor(d·ln(L/(β_fast·2π)) / (2·ln θ)) = floor(64·ln(8192/(64π)) / ln 500000) = 18;
    the ramp runs 18 -> cd = 33 over 15 pairs; θ/λ = (θ/s)·r + θ·(1-r)."""
    assert math.floor(64 * math.log(8192 / (64 * math.pi)) / math.log(500000)) == 18
    factors = lam(yarn_cd(33))
    assert factors[:19] == [1.0] * 19  # r = 0 up to and including the β_fast pair
    assert factors[33:] == pytest.approx([S] * 31, rel=1e-15)  # fully interpolated from cd on
    for i in range(19, 33):
        r = (i - 18) / 15
        assert factors[i] == pytest.approx(1 / (r / S + 1 - r), rel=1e-15)
    assert yarn_cd(33).compute()[1] == pytest.approx(0.1 * math.log(S) + 1)  # YaRN's attention factor
    low = math.floor(64 * math.log(8192 / (256 * math.pi)) / math.log(500000))  # β_fast = 128 (Mistral's)
    r = (16 - low) / (33 - low)
    assert low == 11 and lam(yarn_cd(33, beta_fast=128.0))[16] == pytest.approx(1 / (r / S + 1 - r), rel=1e-15)


@pytest.mark.parametrize("head_dim,base,original,s", [(D, BASE, L, S), (16, 10000.0, 32, 4.0), (64, 10000.0, 256, 8.0)])
def test_yarn_cd_at_yarns_slow_pair_is_plain_yarn(head_dim, base, original, s):
    """β_slow = 1 puts YaRN's ramp end at the theoretical critical pair: yarn_cd there is YaRN."""
    cd = theoretical_critical_pair(head_dim, base, original)
    _, high = methods.yarn_correction_range(head_dim, base, original, 32.0, 1.0)
    assert cd == high < head_dim // 2 - 1
    plain = RopeSpec("yarn", head_dim, base, factor=s, original_max_position_embeddings=original)
    ours = yarn_cd(cd, s, head_dim, base, original)
    torch.testing.assert_close(ours.compute()[0], plain.compute()[0], rtol=2e-6, atol=0)
    assert ours.compute()[1] == plain.compute()[1]
    if cd > 1:
        assert lam(yarn_cd(cd - 1, s, head_dim, base, original)) != pytest.approx(lam(ours), rel=1e-3)


def test_yarn_cd_below_the_fast_pair_is_a_step_at_the_critical_pair():
    factors = lam(yarn_cd(10))  # β_fast's pair is 18 > 10: no room for a ramp
    assert factors == pytest.approx([1.0] * 10 + [S] * 54, rel=1e-15, abs=0)


@pytest.mark.parametrize("make", [ntk_cd, yarn_cd])
def test_factors_are_monotone_bounded_and_a_lower_critical_dim_never_scales_less(make):
    previous = None
    for cd in range(63, 0, -1):
        factors = torch.tensor(lam(make(cd)), dtype=torch.float64)
        assert bool(torch.all(factors.diff() >= 0)) and factors[0] == 1.0 and factors[cd] == pytest.approx(S)
        assert bool(torch.all((factors >= 1) & (factors <= S * (1 + 1e-15))))
        if previous is not None:
            assert bool(torch.all(factors >= previous))  # moving cd down interpolates more pairs, more
        previous = factors
    assert lam(make(33, 1.0)) == [1.0] * 64  # s = 1: the unscaled RoPE


@pytest.mark.parametrize("cd", [0, 64, -3, 2.0, True, None])
def test_a_critical_dim_outside_the_pairs_is_one_clear_error(cd):
    with pytest.raises(RopelabError) as caught:
        ntk_cd(cd)
    message = str(caught.value)
    assert len(message.splitlines()) == 1
    assert ("needs critical_dim" if cd is None else "critical_dim must be a rotary-pair index in 1..63") in message
    with pytest.raises(RopelabError, match="does not use critical_dim"):
        RopeSpec("ntk", D, BASE, factor=S, critical_dim=33)
    with pytest.raises(RopelabError, match="does not use beta_slow"):  # its slow end is the critical pair
        RopeSpec("yarn_cd", D, BASE, factor=S, original_max_position_embeddings=L, critical_dim=33, beta_slow=1.0)


@pytest.mark.parametrize("make", [ntk_cd, yarn_cd])
def test_the_longrope_form_carries_the_exact_factors(make):
    spec = make(33)
    converted = as_longrope(spec, original_max_position_embeddings=L)
    assert converted.rescale_factors == spec.exact_factors()  # not θ/inv_freq recovered in fp32
    assert converted.compute()[1] == spec.compute()[1]
    torch.testing.assert_close(converted.compute()[0], spec.compute()[0], rtol=0, atol=0)


@pytest.mark.parametrize("make", [ntk_cd, yarn_cd])
def test_export_is_a_stock_longrope_config_and_transformers_gives_the_same_logits(tiny_llama, make):
    head_dim, base, original = 16, 10000.0, 64
    spec = make(3, 4.0, head_dim, base) if make is ntk_cd else make(3, 4.0, head_dim, base, original)
    params, max_positions = stock_rope_parameters(spec, None, RopeBasics(head_dim, base, original))
    assert params["rope_type"] == "longrope" and params["long_factor"] == list(spec.exact_factors())
    assert params["short_factor"] == params["long_factor"] and params["attention_factor"] == spec.compute()[1]
    stock = tiny_llama(dict(params), max_positions)
    ours = tiny_llama({"rope_type": "default", "rope_theta": base}, max_positions)
    ours.load_state_dict(stock.state_dict())
    install_rope(ours, spec)
    ids = torch.randint(0, ours.config.vocab_size, (1, 3 * original), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, stock(ids).logits, rtol=0, atol=0)
    uninstall_rope(ours)
