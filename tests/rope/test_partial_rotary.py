"""Partial rotary embeddings (partial_rotary_factor < 1): RoPE rotates the first d = int(head_dim · p) dims of
each head. Checked against stock transformers' own partial-rotary path (Phi-3 / Phi-4-mini, GPT-NeoX, Phi-2)
on tiny random models built from config classes, below and above longrope's short/long switch: the adapter,
export, search space, per-row fitness, CLEX and the evaluation baselines."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, GPTNeoXConfig, Phi3Config, PhiConfig

from ropelab.clex.io import export_clex, load_clex
from ropelab.clex.train import install_clex
from ropelab.config import ClexConfig
from ropelab.eval.zoo import BASELINES
from ropelab.models import check_rope_model
from ropelab.rope import RopeSpec
from ropelab.rope.adapter import rope_basics, specs_from_config
from ropelab.rope.export import export_hf
from ropelab.rope.modules import install_rope, uninstall_rope
from ropelab.search.fitness import batched_fitness, reference_fitness
from ropelab.search.space import SearchSpace, seed_vectors

L, BASE = 32, 10000.0
HEAD, PARTIAL, ROTARY = 32, 0.75, 24  # Phi-4-mini's ratio: 96 of 128 dims, here 24 of 32 (12 rotary pairs)
PAIRS = ROTARY // 2
LONG = [1.0, 1.0, 1.1, 1.3, 1.6, 2.0, 2.6, 3.2, 4.0, 5.0, 6.5, 8.0]
SHORT = [1.0, 1.0, 1.0, 1.0, 1.05, 1.1, 1.15, 1.2, 1.3, 1.4, 1.5, 1.6]
LENGTHS = [L // 2, L, L + 1, 3 * L]  # below, at and above the switch (original_max_position_embeddings)
SIZES = dict(vocab_size=97, pad_token_id=0, bos_token_id=1, eos_token_id=1, hidden_size=64, intermediate_size=64,
             num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2)
STOCK_LONGROPE = {"rope_type": "longrope", "rope_theta": BASE, "long_factor": LONG, "short_factor": SHORT}


def phi3(rope_parameters=None, max_positions=4 * L, seed=0):
    """A tiny random Phi-3 with Phi-4-mini's partial_rotary_factor."""
    config = Phi3Config(**SIZES, partial_rotary_factor=PARTIAL, max_position_embeddings=max_positions,
                        original_max_position_embeddings=L, attn_implementation="sdpa",
                        rope_parameters=rope_parameters or {"rope_type": "default", "rope_theta": BASE})
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).eval()


def logits(model, length: int) -> torch.Tensor:
    ids = torch.randint(0, 97, (2, length), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        return model(ids).logits


def same_weights(reference, other):
    other.load_state_dict(reference.state_dict())
    return other


def test_basics_count_rotary_pairs_not_half_the_head():
    basics = rope_basics(phi3().config)
    assert (basics.head_dim, basics.rotary_pairs, basics.attention_head_dim, basics.partial_rotary_factor) == (
        ROTARY, PAIRS, HEAD, PARTIAL)
    phi4_mini = Phi3Config(hidden_size=3072, num_attention_heads=24, num_key_value_heads=8, partial_rotary_factor=0.75,
                           max_position_embeddings=131072, original_max_position_embeddings=4096)
    assert (rope_basics(phi4_mini).head_dim, rope_basics(phi4_mini).rotary_pairs) == (96, 48)


@pytest.mark.parametrize("length", LENGTHS)
def test_stock_partial_longrope_config_installed_gives_transformers_logits(length):
    reference = phi3(STOCK_LONGROPE)
    ours = same_weights(reference, phi3())
    long, short = specs_from_config(reference.config)
    assert len(long.rescale_factors) == len(short.rescale_factors) == PAIRS
    install_rope(ours, long, short)
    torch.testing.assert_close(logits(ours, length), logits(reference, length), rtol=0, atol=1e-5)


@pytest.mark.parametrize("length", LENGTHS)
def test_partial_export_reloads_in_stock_transformers_with_equal_logits_both_sides(tmp_path, length):
    """ropelab's installed module and stock transformers loading the exported config agree below and above L."""
    model = phi3()
    long = RopeSpec("longrope", ROTARY, BASE, factor=4.0, original_max_position_embeddings=L, rescale_factors=LONG)
    short = long.replace(rescale_factors=tuple(SHORT))
    install_rope(model, long, short)
    report = export_hf(model, tmp_path / "export", long, short)
    stock = AutoModelForCausalLM.from_pretrained(report.path, attn_implementation="sdpa").eval()
    params = stock.config.rope_parameters
    assert params["partial_rotary_factor"] == PARTIAL and len(params["long_factor"]) == PAIRS
    torch.testing.assert_close(logits(model, length), logits(stock, length), rtol=0, atol=1e-5)


def neox(rope_parameters, max_positions, rotary_pct=0.25):
    config = GPTNeoXConfig(vocab_size=97, hidden_size=64, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, max_position_embeddings=max_positions, rotary_pct=rotary_pct,
                           attn_implementation="sdpa", rope_parameters={"rope_theta": BASE, **rope_parameters})
    return AutoModelForCausalLM.from_config(config).eval()


def phi2(rope_parameters, max_positions):
    config = PhiConfig(vocab_size=97, hidden_size=64, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                       max_position_embeddings=max_positions, partial_rotary_factor=0.5,
                       attn_implementation="sdpa", rope_parameters={"rope_theta": BASE, **rope_parameters})
    return AutoModelForCausalLM.from_config(config).eval()


FAMILY_STOCK = {  # rotated width 8 (GPT-NeoX: 0.25 of 32) and 16 (Phi-2: 0.5 of 32)
    "linear": {"rope_type": "linear", "factor": 4.0},
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": L, "truncate": False},
    "longrope": {"rope_type": "longrope", "factor": 4.0, "original_max_position_embeddings": L},
}


@pytest.mark.parametrize("build,width", [(neox, 8), (phi2, 16)])
@pytest.mark.parametrize("rope_type", list(FAMILY_STOCK))
def test_gpt_neox_and_phi2_partial_rotary_match_transformers(build, width, rope_type):
    params = dict(FAMILY_STOCK[rope_type])
    if rope_type == "longrope":
        params.update(long_factor=[1.0 + i for i in range(width // 2)], short_factor=[1.0] * (width // 2))
    torch.manual_seed(0)
    reference = build(params, 4 * L)
    ours = same_weights(reference, build({"rope_type": "default"}, 4 * L))
    assert rope_basics(ours.config).head_dim == width
    install_rope(ours, *specs_from_config(reference.config))
    for length in (L, 3 * L):
        torch.testing.assert_close(logits(ours, length), logits(reference, length), rtol=0, atol=1e-5)


def test_gpt_neox_export_keeps_its_stated_factor(tmp_path):
    """GPTNeoXConfig defaults a missing partial_rotary_factor to 0.25: the export writes the model's own (0.5)."""
    model = neox({"rope_type": "default"}, 4 * L, rotary_pct=0.5)
    lam = [1.0 + 0.5 * i for i in range(8)]
    long = RopeSpec("longrope", 16, BASE, factor=4.0, original_max_position_embeddings=4 * L, rescale_factors=lam)
    install_rope(model, long)
    stock = AutoModelForCausalLM.from_pretrained(export_hf(model, tmp_path / "neox", long).path).eval()
    assert rope_basics(stock.config).head_dim == 16
    torch.testing.assert_close(logits(model, 2 * L), logits(stock, 2 * L), rtol=0, atol=1e-5)


def test_search_space_and_batched_fitness_on_a_partial_model():
    """The search's dimension count is the rotary pairs, and per-row candidates equal one-at-a-time installs."""
    model = phi3()
    b = rope_basics(model.config)
    space = SearchSpace(head_dim=b.head_dim, base=b.base, scale=4.0,
                        original_max_position_embeddings=b.original_max_position_embeddings)
    seeds = {name: space.candidate(values) for name, values in seed_vectors(space).items()}
    assert space.dims == PAIRS and all(len(c.rescale_factors) == PAIRS for c in seeds.values())
    windows = torch.randint(0, 97, (2, 2 * L), generator=torch.Generator().manual_seed(1))
    candidates = list(seeds.values())
    batched = batched_fitness(model, space, windows)(candidates)
    one_by_one = reference_fitness(model, space, windows)(candidates)
    assert batched == pytest.approx(one_by_one, rel=1e-5)
    assert len(set(batched)) == len(batched)  # the seeds really differ on this model


def test_clex_on_a_partial_model(tmp_path):
    """CLEX's ODE runs over the rotary pairs; at t = 1 it is the model's RoPE, and its export reloads exactly."""
    model = phi3()
    stock = logits(model, L)
    module = install_clex(model, ClexConfig(max_t=4), generator=torch.Generator().manual_seed(0))
    assert module.table().shape == (4, PAIRS)
    torch.testing.assert_close(logits(model, L), stock, rtol=0, atol=1e-5)  # n ≤ L: t = 1, the base frequencies
    beyond = logits(model, 3 * L)
    export_clex(model, tmp_path / "clex", module)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "clex", attn_implementation="sdpa").eval()
    load_clex(tmp_path / "clex", reloaded)
    torch.testing.assert_close(logits(reloaded, 3 * L), beyond, rtol=0, atol=1e-5)


@pytest.mark.parametrize("name", sorted(set(BASELINES) - {"dynamic"}))
def test_every_evaluation_baseline_exports_from_partial_phi3_and_reloads_equal(tmp_path, name):
    """Phi-3's config class takes only default and longrope: the other baselines are written as the equivalent
    longrope factor sets (noted in the report), and stock transformers reproduces ropelab's logits."""
    model = phi3()
    spec = BASELINES[name](3 * L, rope_basics(model.config))
    install_rope(model, spec)
    report = export_hf(model, tmp_path / name, spec)
    stock = AutoModelForCausalLM.from_pretrained(report.path, attn_implementation="sdpa").eval()
    assert stock.config.rope_parameters["partial_rotary_factor"] == PARTIAL
    assert bool(report.notes) == (name in {"pi", "yarn", "llama3"})  # none and ntk are plain RoPE for Phi-3
    torch.testing.assert_close(logits(model, 3 * L), logits(stock, 3 * L), rtol=0, atol=2e-5)
    uninstall_rope(model)
    check_rope_model(stock)  # and ropelab reads the export back
