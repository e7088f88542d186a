"""Presets consistent with their model: model.context_length is the L ropelab reads from the model's config,
checked when the model is loaded (the base stage), one error line otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import LlamaConfig, MistralConfig

from ropelab.config import load_config
from ropelab.errors import RopelabError
from ropelab.models import check_context_length

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# the released config.json of each preset's model (sizes and RoPE; no weights)
MISTRAL_7B_V01 = MistralConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                               num_key_value_heads=8, max_position_embeddings=32768, sliding_window=4096,
                               rope_theta=10000.0, vocab_size=32000)
LLAMA2_7B = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                        max_position_embeddings=4096, rope_theta=10000.0, vocab_size=32000)


@pytest.mark.parametrize("preset,model", [("mistral-7b", MISTRAL_7B_V01), ("llama2-7b", LLAMA2_7B)])
def test_each_gpu_preset_matches_its_models_config(preset, model):
    cfg = load_config(CONFIGS / f"{preset}.yaml")
    check_context_length(model, cfg.model.context_length, cfg.model.source)
    assert (cfg.model.hidden_size, cfg.model.num_attention_heads) == (model.hidden_size, model.num_attention_heads)
    assert cfg.model.rope_theta == model.rope_parameters["rope_theta"]


def test_mistral_preset_uses_the_references_yarn_in_search_and_evaluation():
    cfg = load_config(CONFIGS / "mistral-7b.yaml")
    assert (cfg.search.yarn_beta_fast, cfg.search.yarn_beta_slow) == (128.0, 2.0)
    assert (cfg.eval.yarn_beta_fast, cfg.eval.yarn_beta_slow) == (128.0, 2.0)


def test_a_preset_whose_length_differs_from_the_model_is_one_clear_error():
    with pytest.raises(RopelabError) as caught:
        check_context_length(MISTRAL_7B_V01, 8192, "models/Mistral-7B-v0.1")
    message = str(caught.value)
    assert message == ("model.context_length 8192 does not match the model: models/Mistral-7B-v0.1 has L = 4096 (from "
                       "its config's sliding_window (every layer attends within it, as the reference reads L)); set "
                       "model.context_length: 4096 in the preset (or --set model.context_length=4096)")


def test_the_base_stage_checks_the_users_model(tiny_llama, tmp_path):
    """describe_model (the base stage for a user's model) refuses a mismatch before any other stage runs."""
    from ropelab.artifacts import DataArtifact
    from ropelab.data.tokenizer import ByteTokenizer
    from ropelab.tasks.model import describe_model

    tiny_llama(max_position_embeddings=64).save_pretrained(tmp_path / "m")
    ByteTokenizer().save(tmp_path / "m")
    data = DataArtifact(tmp_path, "d" * 16, "d" * 16)
    assert describe_model.fn(str(tmp_path / "m"), False, data, "sig", 64).original_length == 64
    with pytest.raises(RopelabError, match=r"model.context_length 256 does not match the model: .* has L = 64 \(from "
                                           r"its config's max_position_embeddings\)"):
        describe_model.fn(str(tmp_path / "m"), False, data, "sig", 256)
