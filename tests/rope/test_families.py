"""Model families: the ones ropelab takes reproduce stock transformers' logits with the swapped rotary module;
the ones it does not take are refused with one line saying why (docs/model-families.md lists both)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, Phi3Config

from ropelab.errors import RopelabError
from ropelab.models import check_rope_model
from ropelab.rope import RopeSpec
from ropelab.rope.adapter import rope_basics, specs_from_config
from ropelab.rope.export import export_hf
from ropelab.rope.modules import install_rope

L, BASE = 32, 10000.0
SIZES = dict(vocab_size=97, pad_token_id=0, bos_token_id=1, eos_token_id=1, hidden_size=64, intermediate_size=64,
             num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4 * L,
             attn_implementation="sdpa")
def stock(rope_type: str, pairs: int) -> dict:
    """A stock yarn or longrope setting for a model with this many rotary pairs."""
    if rope_type == "yarn":
        return {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": L}
    return {"rope_type": "longrope", "factor": 4.0, "original_max_position_embeddings": L,
            "long_factor": [1.0 + 8.0 * i / pairs for i in range(pairs)],
            "short_factor": [1.0 + 0.5 * i / pairs for i in range(pairs)]}


def build(family: str, rope_parameters: dict | None = None, **extra):
    config = AutoConfig.for_model(family, **{**SIZES, **extra})
    if rope_parameters is not None:
        config = AutoConfig.for_model(family, **{**SIZES, **extra},
                                      rope_parameters={**config.rope_parameters, **rope_parameters})
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


def logits(model, length: int) -> torch.Tensor:
    ids = torch.randint(0, 97, (1, length), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("family", ["gemma", "qwen3", "stablelm", "falcon", "olmo2", "glm"])
@pytest.mark.parametrize("rope_type", ["yarn", "longrope"])
def test_taken_families_reproduce_transformers_logits(family, rope_type):
    ours = build(family)
    check_rope_model(ours)
    reference = build(family, stock(rope_type, rope_basics(ours.config).rotary_pairs))
    ours.load_state_dict(reference.state_dict())
    install_rope(ours, *specs_from_config(reference.config))
    for length in (L, 3 * L):
        torch.testing.assert_close(logits(ours, length), logits(reference, length), rtol=0, atol=1e-5)


REFUSED = {  # family -> what the one line says
    "gemma3_text": "Gemma3TextConfig keeps one RoPE per attention layer type (full_attention, sliding_attention",
    "olmo3": "Olmo3Config keeps one RoPE per attention layer type",
    "cohere": "CohereForCausalLM's rotary module lays out or scales cos/sin differently",
    "cohere2": "Cohere2ForCausalLM's rotary module lays out or scales cos/sin differently",
    "gptj": "GPTJConfig has no rope_parameters.rope_theta",
    "gpt2": "GPT2Config has no rope_parameters.rope_theta",
}


@pytest.mark.parametrize("family", sorted(REFUSED))
def test_families_ropelab_does_not_take_are_refused_in_one_line(family):
    with pytest.raises(RopelabError) as caught:
        check_rope_model(build(family, attn_implementation="eager"))  # GPT-J has no sdpa
    assert str(caught.value).startswith(REFUSED[family]) and len(str(caught.value).splitlines()) == 1
    assert "docs/model-families.md" in str(caught.value)


def test_an_alibi_model_is_refused_although_it_has_a_rotary_module():
    with pytest.raises(RopelabError, match=r"^FalconConfig has alibi: true, so its attention uses ALiBi and ignores"):
        check_rope_model(build("falcon", alibi=True, attn_implementation="eager"))


def test_a_family_that_ignores_partial_rotary_factor_is_refused():
    """Llama's rotary module rotates the whole head whatever partial_rotary_factor says: installing ropelab's
    (narrower) module would change the model, so the mismatch is refused."""
    model = build("llama", {"partial_rotary_factor": 0.5})
    with pytest.raises(RopelabError, match=r"LlamaForCausalLM's rotary module rotates 32 dims but its config says "
                                           r"16 of head_dim 32 \(partial_rotary_factor 0.5, 8 rotary pairs\)"):
        install_rope(model, RopeSpec("linear", 16, BASE, factor=2.0))


def test_phi3_takes_only_default_and_longrope_and_dynamic_ntk_is_one_clear_error(tmp_path):
    model = build("phi3", original_max_position_embeddings=L)
    assert isinstance(model.config, Phi3Config)
    dynamic = RopeSpec("dynamic", 32, BASE, factor=4.0, original_max_position_embeddings=L)
    with pytest.raises(RopelabError, match=r"^Phi3Config does not accept rope_type 'dynamic' \(.*must be one of "
                                           r"\['longrope'\], got dynamic\), and dynamic NTK depends on the length"):
        export_hf(model, tmp_path / "dynamic", dynamic)
    assert not (tmp_path / "dynamic").exists()
    yarn = RopeSpec("yarn", 32, BASE, factor=4.0, original_max_position_embeddings=L)
    install_rope(model, yarn)
    report = export_hf(model, tmp_path / "yarn", yarn)
    assert report.rope_parameters["rope_type"] == "longrope" and "written as longrope factor sets" in report.notes[0]
    stock = AutoModelForCausalLM.from_pretrained(report.path, attn_implementation="sdpa").eval()
    for length in (L, 3 * L):
        torch.testing.assert_close(logits(model, length), logits(stock, length), rtol=0, atol=2e-5)


def test_original_length_of_sliding_window_models():
    """Every layer sliding within a window shorter than max_position_embeddings (Mistral-7B-v0.1: 4096 of 32768):
    L is the window, as the reference reads it (microsoft/LongRoPE @ c9e56aa, evolution/search.py)."""
    mistral = AutoConfig.for_model("mistral", **{**SIZES, "max_position_embeddings": 8 * L}, sliding_window=L)
    basics = rope_basics(mistral)
    assert basics.original_max_position_embeddings == L and basics.original_from.startswith("sliding_window")
    no_window = AutoConfig.for_model("mistral", **{**SIZES, "max_position_embeddings": 8 * L}, sliding_window=None)
    qwen2 = AutoConfig.for_model("qwen2", **{**SIZES, "max_position_embeddings": 8 * L}, sliding_window=L)
    gemma2 = AutoConfig.for_model("gemma2", **{**SIZES, "max_position_embeddings": 8 * L}, sliding_window=L)
    # no window; Qwen2 without use_sliding_window; Gemma 2 alternates sliding and full layers
    assert {rope_basics(c).original_max_position_embeddings for c in (no_window, qwen2, gemma2)} == {8 * L}
