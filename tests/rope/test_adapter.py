"""The transformers adapter: stock rope_parameters read as specs give transformers' own logits, every registry
method survives the stock round trip, and only the registry names methods and stock rope types."""

from __future__ import annotations

import ast
import dataclasses
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaConfig

import ropelab.rope
from ropelab.errors import RopelabError
from ropelab.rope import RopeSpec
from ropelab.rope import registry as registry_module
from ropelab.rope.adapter import (
    INERT_STOCK_KEYS,
    SHARED_STOCK_KEYS,
    RopeBasics,
    check_compatible,
    rope_basics,
    specs_from_config,
    stock_rope_parameters,
)
from ropelab.rope.modules import install_rope
from ropelab.rope.registry import ALIASES, REGISTRY, STOCK_READERS

L, HEAD_DIM, BASE = 64, 16, 10000.0
LONG = [1.0, 1.0, 1.2, 1.5, 2.0, 3.0, 4.0, 6.0]
SHORT = [1.0, 1.0, 1.0, 1.05, 1.1, 1.2, 1.3, 1.4]

STOCK = {
    "linear": ({"rope_type": "linear", "factor": 4.0}, L),
    "dynamic": ({"rope_type": "dynamic", "factor": 4.0}, L),
    "yarn": ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": L}, 4 * L),
    "yarn-untruncated": ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": L,
                          "truncate": False}, 4 * L),
    "llama3": ({"rope_type": "llama3", "factor": 4.0, "original_max_position_embeddings": L,
                "low_freq_factor": 1.0, "high_freq_factor": 4.0}, 4 * L),
    "longrope": ({"rope_type": "longrope", "factor": 4.0, "original_max_position_embeddings": L,
                  "long_factor": LONG, "short_factor": SHORT}, 4 * L),
}

# One setting per registry method, with non-default numbers where the method has them. A new method without
# an example here fails test_every_registry_method_survives_the_stock_round_trip: add one.
EXAMPLES = {
    "default": RopeSpec("default", HEAD_DIM, BASE),
    "linear": RopeSpec("linear", HEAD_DIM, BASE, factor=4.0),
    "ntk": RopeSpec("ntk", HEAD_DIM, BASE, factor=4.0),
    "dynamic": RopeSpec("dynamic", HEAD_DIM, BASE, factor=4.0, original_max_position_embeddings=L),
    "yarn": RopeSpec("yarn", HEAD_DIM, BASE, factor=8.0, original_max_position_embeddings=L, beta_fast=16.0,
                     beta_slow=2.0, mscale=0.9, mscale_all_dim=0.5),
    "llama3": RopeSpec("llama3", HEAD_DIM, BASE, factor=8.0, original_max_position_embeddings=L,
                       low_freq_factor=2.0, high_freq_factor=8.0),
    "longrope": RopeSpec("longrope", HEAD_DIM, BASE, factor=8.0, original_max_position_embeddings=L,
                         rescale_factors=LONG, attention_policy="yarn"),
    "ntk_cd": RopeSpec("ntk_cd", HEAD_DIM, BASE, factor=8.0, critical_dim=3),
    "yarn_cd": RopeSpec("yarn_cd", HEAD_DIM, BASE, factor=8.0, original_max_position_embeddings=L, critical_dim=3,
                        beta_fast=16.0),
}


def logits(model, length: int, seed: int = 3) -> torch.Tensor:
    ids = torch.randint(0, model.config.vocab_size, (2, length), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("rope_type", list(STOCK))
@pytest.mark.parametrize("length", [L // 2, L, L + 1, 3 * L])
def test_installed_specs_match_transformers_logits(tiny_llama, rope_type, length):
    params, max_positions = STOCK[rope_type]
    reference = tiny_llama({"rope_theta": BASE, **params}, max_positions)
    ours = tiny_llama({"rope_type": "default", "rope_theta": BASE}, max_positions)
    ours.load_state_dict(reference.state_dict())
    long, short = specs_from_config(reference.config)
    install_rope(ours, long, short)
    torch.testing.assert_close(logits(ours, length), logits(reference, length), rtol=0, atol=0)  # same math: equal, not close


@pytest.mark.parametrize("family,rope_type", [("mistral", "yarn"), ("qwen2", "yarn"), ("phi3", "longrope")])
def test_other_llama_family_models(family, rope_type):
    from transformers import AutoConfig, AutoModelForCausalLM

    rope = {"rope_theta": BASE, **STOCK[rope_type][0]}
    kwargs = dict(vocab_size=97, pad_token_id=0, eos_token_id=1, bos_token_id=1, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                  num_key_value_heads=2, max_position_embeddings=4 * L, attn_implementation="sdpa")
    torch.manual_seed(0)
    reference = AutoModelForCausalLM.from_config(AutoConfig.for_model(family, rope_parameters=rope, **kwargs)).eval()
    ours = AutoModelForCausalLM.from_config(AutoConfig.for_model(family, **kwargs)).eval()
    ours.load_state_dict(reference.state_dict())
    install_rope(ours, *specs_from_config(reference.config))
    torch.testing.assert_close(logits(ours, 2 * L), logits(reference, 2 * L), rtol=0, atol=0)


def test_rope_basics_reads_config(tiny_llama):
    basics = rope_basics(tiny_llama(max_position_embeddings=L).config)
    assert (basics.head_dim, basics.base, basics.original_max_position_embeddings) == (HEAD_DIM, BASE, L)


def test_dynamic_reads_the_original_length_from_max_position_embeddings():
    config = LlamaConfig(hidden_size=32, num_attention_heads=2, head_dim=HEAD_DIM, max_position_embeddings=4 * L,
                         rope_parameters={"rope_type": "dynamic", "rope_theta": BASE, "factor": 4.0})
    assert rope_basics(config).original_max_position_embeddings == 4 * L  # transformers' dynamic scales from it
    dynamic = EXAMPLES["dynamic"]
    assert stock_rope_parameters(dynamic, None, RopeBasics(HEAD_DIM, BASE, 2 * L))[1] == L


def round_trip(spec: RopeSpec) -> tuple[RopeSpec, RopeSpec | None]:
    """spec -> to_stock (through the export's writer) -> a stock config -> from_stock (through the reader)."""
    params, max_positions = stock_rope_parameters(spec, None, RopeBasics(HEAD_DIM, BASE, L))
    config = LlamaConfig(hidden_size=32, num_attention_heads=2, head_dim=HEAD_DIM,
                         max_position_embeddings=max_positions, rope_parameters=dict(params))
    return specs_from_config(config)


@pytest.mark.parametrize("method", sorted(REGISTRY))
def test_every_registry_method_survives_the_stock_round_trip(method):
    spec = EXAMPLES[method]
    long, short = round_trip(spec)
    # NTK is written as a new base, a method defined by its λ (NTK-cd, YaRN-cd) as longrope factor sets
    expected = spec.method if spec.info.stock_types else "longrope" if spec.info.factors else registry_module.PLAIN
    assert long.method == expected
    for seq_len in (L // 2, L, 3 * L):  # dynamic's inv_freq depends on the length
        for back in (long, short) if short is not None else (long,):
            inv_freq, attention = back.compute(seq_len)
            want_inv_freq, want_attention = spec.compute(seq_len)
            torch.testing.assert_close(inv_freq, want_inv_freq, rtol=0, atol=0)
            assert attention == want_attention


def test_round_trip_keeps_every_number_a_method_reads_back():
    for method in ("default", "linear", "dynamic", "llama3"):
        assert round_trip(EXAMPLES[method]) == (EXAMPLES[method], None)
    yarn, _ = round_trip(EXAMPLES["yarn"])
    assert (yarn.beta_fast, yarn.beta_slow, yarn.attention_factor) == (16.0, 2.0, EXAMPLES["yarn"].compute()[1])


def test_unknown_rope_type_is_one_clear_error():
    config = SimpleNamespace(rope_parameters={"rope_type": "su", "rope_theta": BASE}, head_dim=HEAD_DIM,
                             max_position_embeddings=L)
    with pytest.raises(RopelabError, match=r"rope_type 'su' in the config has no ropelab equivalent yet; "
                                           r"ropelab reads rope_type default, dynamic, linear, llama3, longrope"):
        specs_from_config(config)


def test_two_methods_claiming_one_stock_type_are_rejected(monkeypatch):
    monkeypatch.setitem(REGISTRY, "copy", dataclasses.replace(REGISTRY["yarn"], name="copy"))
    with pytest.raises(RopelabError, match="rope_type 'yarn' is read by both yarn and copy"):
        registry_module._stock_index()


def test_only_a_rebasing_method_may_differ_from_the_model_base():
    other_base = RopeBasics(HEAD_DIM, 2 * BASE, L)
    check_compatible(EXAMPLES["ntk"], other_base)  # a model reloaded from an NTK export carries the new base
    with pytest.raises(RopelabError, match="spec base"):
        check_compatible(EXAMPLES["linear"], other_base)


STOCK_NAMES = set(REGISTRY) | set(STOCK_READERS) | set(ALIASES)
NAME_COMPARISON = re.compile(r"\b(?:method|rope_type)[\"'\])]*\s*(?:==|!=)|\.method\s+(?:not\s+)?in\b")


def method_name_offences(source: str) -> list[str]:
    """String literals naming a method or stock rope_type, and comparisons on a method or rope_type."""
    literals = {node.value for node in ast.walk(ast.parse(source))
                if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in STOCK_NAMES}
    return sorted(literals) + NAME_COMPARISON.findall(source)


@pytest.mark.parametrize("module", ["adapter.py", "export.py", "modules.py", "generation.py"])
def test_only_the_registry_names_methods_and_stock_types(module):
    source = (Path(ropelab.rope.__file__).parent / module).read_text()
    assert method_name_offences(source) == []


def test_the_name_check_catches_an_if_chain():
    chain = 'def f(p, spec):\n    if p["rope_type"] == "yarn" or spec.method in ("ntk",):\n        return 1\n'
    assert method_name_offences(chain) == ["ntk", "yarn", 'rope_type"] ==', ".method in"]


def test_yarn_truncate_false_is_read_kept_and_written_back():
    """transformers' _compute_yarn_parameters honours truncate: false (no floor/ceil of the correction range)."""
    params, max_positions = STOCK["yarn-untruncated"]
    config = LlamaConfig(hidden_size=32, num_attention_heads=2, head_dim=HEAD_DIM, max_position_embeddings=max_positions,
                         rope_parameters={"rope_theta": BASE, **params})
    untruncated, _ = specs_from_config(config)
    assert untruncated.truncate is False
    truncated = untruncated.replace(truncate=None)
    assert not torch.equal(untruncated.compute()[0], truncated.compute()[0])  # a different RoPE if it were dropped
    written, _ = stock_rope_parameters(untruncated, None, rope_basics(config))
    back, _ = round_trip(untruncated)
    assert written["truncate"] is False and back.truncate is False
    torch.testing.assert_close(back.compute()[0], untruncated.compute()[0], rtol=0, atol=0)
    assert "truncate" not in stock_rope_parameters(truncated, None, rope_basics(config))[0]


def llama_with(rope_parameters: dict) -> LlamaConfig:
    return LlamaConfig(hidden_size=32, num_attention_heads=2, head_dim=HEAD_DIM, max_position_embeddings=4 * L,
                       rope_parameters={"rope_theta": BASE, **rope_parameters})


@pytest.mark.parametrize("rope_type", ["default", "linear", "yarn", "longrope"])
def test_a_rope_parameters_key_ropelab_does_not_understand_is_an_error(rope_type):
    params = {**(STOCK[rope_type][0] if rope_type in STOCK else {"rope_type": rope_type}), "mrope_section": [2, 2]}
    config = llama_with(params)
    for read in (rope_basics, specs_from_config):
        with pytest.raises(RopelabError, match=rf"LlamaConfig.rope_parameters has mrope_section for rope_type "
                                               rf"'{rope_type}', which ropelab does not understand"):
            read(config)


def test_keys_no_stock_code_reads_are_accepted():
    config = llama_with({**STOCK["yarn"][0], "finetuned": True})  # the YaRN authors' released configs
    assert "finetuned" in INERT_STOCK_KEYS and specs_from_config(config)[0].method == "yarn"


@pytest.mark.parametrize("rope_type", sorted(STOCK_READERS))
def test_ropelab_reads_every_key_transformers_accepts_for_each_rope_type(rope_type, monkeypatch):
    """transformers' own validator names the keys each type uses (required ∪ optional): all are understood."""
    accepted: set[str] = set()

    def capture(self, rope_type, received, required, optional_keys=None, ignore_keys=None):
        accepted.update(required, optional_keys or ())

    monkeypatch.setattr(LlamaConfig, "_check_received_keys", capture)
    example = {"rope_type": rope_type, "factor": 2.0, "original_max_position_embeddings": L, "long_factor": LONG,
               "short_factor": SHORT, "low_freq_factor": 1.0, "high_freq_factor": 4.0}
    getattr(LlamaConfig(), f"_validate_{rope_type}_rope_parameters")(example)
    assert accepted and accepted - SHARED_STOCK_KEYS - STOCK_READERS[rope_type].stock_keys == set()
