"""RoPE methods: closed-form properties and equivalence with transformers' own implementations."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from ropelab.errors import RopelabError, UnknownMethodError
from ropelab.rope import RopeSpec, as_longrope, get_method, known_methods, rescale_factors_of
from ropelab.rope.methods import rope_frequencies, yarn_correction_range

D, BASE, L, S = 64, 10000.0, 256, 8.0
THETA = rope_frequencies(D, BASE)


def theirs(rope_parameters: dict, max_position_embeddings: int, seq_len: int | None = None, head_dim: int = D):
    config = LlamaConfig(hidden_size=head_dim * 2, num_attention_heads=2, head_dim=head_dim,
                         max_position_embeddings=max_position_embeddings,
                         rope_parameters={"rope_theta": BASE, **rope_parameters})
    return ROPE_INIT_FUNCTIONS[rope_parameters["rope_type"]](config, seq_len=seq_len)


def ours(method: str, seq_len: int | None = None, **numbers):
    return RopeSpec(method, D, BASE, **numbers).compute(seq_len)


def assert_same(a: tuple, b: tuple):
    torch.testing.assert_close(a[0], b[0], rtol=1e-6, atol=1e-6)
    assert a[1] == pytest.approx(b[1], abs=1e-6)


# ----- equivalence with transformers ------------------------------------------------------------


@pytest.mark.parametrize("factor", [2.0, 8.0, 32.0])
def test_linear_equals_transformers(factor):
    assert_same(ours("linear", factor=factor), theirs({"rope_type": "linear", "factor": factor}, L))


@pytest.mark.parametrize("seq_len", [None, 100, 256, 257, 1024, 8192])
def test_dynamic_equals_transformers(seq_len):
    got = ours("dynamic", seq_len, factor=S, original_max_position_embeddings=L)
    assert_same(got, theirs({"rope_type": "dynamic", "factor": S}, L, seq_len))


@pytest.mark.parametrize("factor", [2.0, 8.0, 64.0])
@pytest.mark.parametrize("betas", [(32.0, 1.0), (128.0, 2.0)])
def test_yarn_equals_transformers(factor, betas):
    beta_fast, beta_slow = betas
    params = {"rope_type": "yarn", "factor": factor, "original_max_position_embeddings": L,
              "beta_fast": beta_fast, "beta_slow": beta_slow}
    got = ours("yarn", factor=factor, original_max_position_embeddings=L, beta_fast=beta_fast, beta_slow=beta_slow)
    assert_same(got, theirs(params, int(L * factor)))


def test_yarn_mscale_attention_equals_transformers():
    params = {"rope_type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096, "mscale": 1.0,
              "mscale_all_dim": 0.707}
    got = ours("yarn", factor=40.0, original_max_position_embeddings=4096, mscale=1.0, mscale_all_dim=0.707)
    assert_same(got, theirs(params, 4096 * 40))


@pytest.mark.parametrize("factor,low,high", [(8.0, 1.0, 4.0), (32.0, 1.0, 4.0), (4.0, 2.0, 8.0)])
def test_llama3_equals_transformers(factor, low, high):
    params = {"rope_type": "llama3", "factor": factor, "original_max_position_embeddings": L,
              "low_freq_factor": low, "high_freq_factor": high}
    got = ours("llama3", factor=factor, original_max_position_embeddings=L, low_freq_factor=low, high_freq_factor=high)
    assert_same(got, theirs(params, int(L * factor)))


@pytest.mark.parametrize("seq_len", [None, 256, 257, 4096])
def test_longrope_equals_transformers_for_both_factor_sets(seq_len):
    gen = torch.Generator().manual_seed(1)
    long = sorted((1 + 10 * torch.rand(D // 2, generator=gen)).tolist())
    short = sorted((1 + 0.5 * torch.rand(D // 2, generator=gen)).tolist())
    params = {"rope_type": "longrope", "long_factor": long, "short_factor": short,
              "original_max_position_embeddings": L, "factor": 16.0}
    expected = long if seq_len and seq_len > L else short
    got = ours("longrope", rescale_factors=expected, factor=16.0, original_max_position_embeddings=L)
    assert_same(got, theirs(params, L * 16, seq_len))


def test_default_equals_transformers_default():
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    config = LlamaConfig(hidden_size=2 * D, num_attention_heads=2, head_dim=D, rope_parameters={"rope_theta": BASE})
    assert_same(ours("default"), LlamaRotaryEmbedding.compute_default_rope_parameters(config))


# ----- closed forms ------------------------------------------------------------------------------


def test_default_is_base_power():
    expected = torch.tensor([BASE ** (-2 * i / D) for i in range(D // 2)], dtype=torch.float32)
    torch.testing.assert_close(ours("default")[0], expected, rtol=1e-6, atol=0)


def test_pi_is_theta_over_s():
    torch.testing.assert_close(ours("linear", factor=S)[0], THETA / S)


def test_ntk_base_identity():
    """NTK = default RoPE with base' = base · s^(d/(d-2)); its λ_i = s^(2i/(d-2)); λ_last = s exactly."""
    inv, _ = ours("ntk", factor=S)
    torch.testing.assert_close(inv, rope_frequencies(D, BASE * S ** (D / (D - 2))))
    lam = THETA / inv
    expected = torch.tensor([S ** (2 * i / (D - 2)) for i in range(D // 2)], dtype=torch.float32)
    torch.testing.assert_close(lam, expected, rtol=1e-5, atol=0)
    assert lam[-1].item() == pytest.approx(S, rel=1e-5)


def test_yarn_is_bounded_between_pi_and_original():
    inv, attention = ours("yarn", factor=S, original_max_position_embeddings=L)
    assert torch.all(inv <= THETA * (1 + 1e-6)) and torch.all(inv >= THETA / S * (1 - 1e-6))
    low, high = yarn_correction_range(D, BASE, L, 32, 1)
    assert torch.allclose(inv[: int(low) + 1], THETA[: int(low) + 1])  # fast dims kept
    assert torch.allclose(inv[int(high):], THETA[int(high):] / S)  # slow dims interpolated
    assert attention == pytest.approx(0.1 * math.log(S) + 1)


def test_longrope_is_theta_over_lambda_and_su_attention():
    lam = torch.linspace(1.0, S, D // 2)
    inv, attention = ours("longrope", rescale_factors=lam.tolist(), factor=S, original_max_position_embeddings=L)
    torch.testing.assert_close(inv, THETA / lam)
    assert attention == pytest.approx(math.sqrt(1 + math.log(S) / math.log(L)))


@pytest.mark.parametrize("policy,expected", [("su", math.sqrt(1 + math.log(S) / math.log(L))),
                                             ("yarn", 0.1 * math.log(S) + 1), ("none", 1.0)])
def test_longrope_attention_policies(policy, expected):
    _, attention = ours("longrope", rescale_factors=[1.0] * (D // 2), factor=S, original_max_position_embeddings=L,
                        attention_policy=policy)
    assert attention == pytest.approx(expected)


def test_dynamic_is_identity_up_to_original_length_and_ntk_scale_beyond():
    for seq_len in (1, L // 2, L):
        torch.testing.assert_close(ours("dynamic", seq_len, factor=S, original_max_position_embeddings=L)[0], THETA)
    # at l = 2L with a = s: s_eff = 2s - (s - 1) = s + 1
    torch.testing.assert_close(ours("dynamic", 2 * L, factor=S, original_max_position_embeddings=L)[0],
                               ours("ntk", factor=S + 1)[0])


@pytest.mark.parametrize("method", ["linear", "ntk", "yarn", "llama3"])
def test_as_longrope_reproduces_inv_freq(method):
    spec = RopeSpec(method, D, BASE, factor=S, **({} if method in ("linear", "ntk") else
                                                 {"original_max_position_embeddings": L}))
    converted = as_longrope(spec, original_max_position_embeddings=L)
    torch.testing.assert_close(converted.compute()[0], spec.compute()[0], rtol=1e-6, atol=0)
    assert converted.compute()[1] == pytest.approx(spec.compute()[1])
    assert all(b >= a for a, b in zip(converted.rescale_factors, converted.rescale_factors[1:], strict=False))


def test_rescale_factors_of_pi_is_constant():
    lam = rescale_factors_of(RopeSpec("linear", D, BASE, factor=S))
    torch.testing.assert_close(lam, torch.full((D // 2,), S))


# ----- errors ------------------------------------------------------------------------------------


def test_unknown_method_lists_known_ones():
    with pytest.raises(UnknownMethodError) as err:
        get_method("rope-magic")
    assert all(name in str(err.value) for name in known_methods())


def test_aliases_resolve():
    assert get_method("pi").name == "linear" and get_method("none").name == "default"


@pytest.mark.parametrize("kwargs,message", [
    ({"method": "longrope", "rescale_factors": [1.0] * 5, "factor": 2.0, "original_max_position_embeddings": L},
     "head_dim/2 = 32"),
    ({"method": "longrope", "rescale_factors": [0.5] + [1.0] * 31, "factor": 2.0,
      "original_max_position_embeddings": L}, "must be >= 1"),
    ({"method": "longrope", "rescale_factors": [float("nan")] * 32, "factor": 2.0,
      "original_max_position_embeddings": L}, "NaN"),
    ({"method": "linear", "factor": 0.5}, "factor must be >= 1"),
    ({"method": "linear", "factor": float("nan")}, "finite"),
    ({"method": "linear"}, "needs factor"),
    ({"method": "yarn", "factor": 2.0}, "original_max_position_embeddings"),
    ({"method": "linear", "factor": 2.0, "beta_fast": 3.0}, "does not use beta_fast"),
    ({"method": "linear", "factor": 2.0, "start_tokens": 4}, "longrope method only"),
    ({"method": "longrope", "rescale_factors": [1.0] * 32, "factor": 2.0, "original_max_position_embeddings": L,
      "attention_policy": "magic"}, "attention_policy"),
])
def test_invalid_arguments_give_clear_errors(kwargs, message):
    method = kwargs.pop("method")
    with pytest.raises(RopelabError, match=message):
        RopeSpec(method, D, BASE, **kwargs).compute()


def test_odd_head_dim_rejected():
    with pytest.raises(RopelabError, match="even integer"):
        RopeSpec("default", 63, BASE)


def test_spec_roundtrips_through_dict():
    spec = RopeSpec("longrope", D, BASE, factor=S, original_max_position_embeddings=L,
                    rescale_factors=[1.0] * 32, start_tokens=4)
    assert RopeSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(RopelabError, match="unknown RoPE spec keys"):
        RopeSpec.from_dict({**spec.to_dict(), "facter": 2})


def test_lambda_file_with_metadata_becomes_the_recorded_setting(tmp_path):
    from ropelab.rope.factors_io import read_rescale_spec, write_rescale_factors

    lam = [1.0 + i / 10 for i in range(D // 2)]
    path = write_rescale_factors(tmp_path / "l.json", lam, factor=16.0, start_tokens=4, attention_factor=1.3)
    spec = read_rescale_spec(path, head_dim=D, base=BASE, original_max_position_embeddings=L, default_factor=2.0)
    assert (spec.factor, spec.start_tokens, spec.compute()[1]) == (16.0, 4, 1.3)
    assert spec.rescale_factors == pytest.approx(lam)
    plain = write_rescale_factors(tmp_path / "l.txt", lam)
    spec = read_rescale_spec(plain, head_dim=D, base=BASE, original_max_position_embeddings=L, default_factor=2.0)
    assert spec.factor == 2.0 and spec.start_tokens == 0
    assert spec.compute()[1] == pytest.approx(math.sqrt(1 + math.log(2.0) / math.log(L)))


def test_a_failed_lambda_write_keeps_the_previous_file_whole(tmp_path, monkeypatch):
    from ropelab import atomic
    from ropelab.rope.factors_io import read_rescale_factors, write_rescale_factors

    path = write_rescale_factors(tmp_path / "l.txt", [1.0] * 4)

    def disk_full(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(atomic.os, "replace", disk_full)
    with pytest.raises(OSError, match="disk full"):
        write_rescale_factors(path, [2.0] * 32)
    assert read_rescale_factors(path) == (1.0,) * 4
    assert [p.name for p in tmp_path.iterdir()] == ["l.txt"]
