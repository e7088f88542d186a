"""model.attention_window: the sliding window a model runs with in every stage (the reference widens Mistral's
4096 to 131072: microsoft/LongRoPE @ c9e56aa, examples/mistral/search.sh and evaluate.sh,
``--attn-sliding-window 131072``), with L kept at the model's own window as the reference reads it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import MistralConfig, MistralForCausalLM

from ropelab.config import ModelConfig, flatten, load_config, to_dict
from ropelab.data.tokenizer import ByteTokenizer
from ropelab.errors import RopelabError
from ropelab.models import build_tiny_llama, load_model, set_attention_window
from ropelab.rope.adapter import rope_basics

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
OWN_WINDOW = 16  # the tiny Mistral's own window: its L (every layer slides within it)


def tiny_mistral_config(window: int = OWN_WINDOW) -> MistralConfig:
    return MistralConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=256,
                         sliding_window=window, rope_theta=10000.0, attn_implementation="sdpa")


@pytest.fixture(scope="module")
def tiny_mistral(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("mistral") / "m"
    torch.manual_seed(0)
    MistralForCausalLM(tiny_mistral_config()).save_pretrained(directory)
    ByteTokenizer().save(directory)
    return directory


def logits(model, length: int = 32) -> torch.Tensor:
    ids = torch.randint(0, 97, (1, length), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model(ids).logits[0]


def stock_with_window(directory: Path, window: int):
    """The reference: stock transformers building the same weights with ``sliding_window`` in its config."""
    config = MistralConfig.from_pretrained(directory)
    config.sliding_window = window
    return MistralForCausalLM.from_pretrained(directory, config=config, attn_implementation="sdpa").eval()


def test_the_window_changes_attention_beyond_it_exactly_as_stock_transformers(tiny_mistral):
    narrow, _ = load_model(tiny_mistral, attention_window=8)
    wide, _ = load_model(tiny_mistral, attention_window=64)
    assert (narrow.config.sliding_window, wide.config.sliding_window) == (8, 64)
    a, b = logits(narrow), logits(wide)
    torch.testing.assert_close(a[:8], b[:8], rtol=0, atol=0)  # both windows hold every earlier token
    assert (a[8:] - b[8:]).abs().amax(dim=-1).min() > 1e-4  # every later position lost context under 8
    torch.testing.assert_close(a, logits(stock_with_window(tiny_mistral, 8)), rtol=0, atol=0)
    torch.testing.assert_close(b, logits(stock_with_window(tiny_mistral, 64)), rtol=0, atol=0)
    own, _ = load_model(tiny_mistral)  # 0: the model's own window
    assert own.config.sliding_window == OWN_WINDOW
    assert not torch.equal(logits(own), b)


@pytest.mark.parametrize("window", [8, 64, 1024])
def test_l_stays_the_models_own_window_as_the_reference_reads_it(tiny_mistral, window):
    """The reference reads original_max_position_embeddings from config.sliding_window BEFORE widening it
    (rope/__init__.py load_model @ c9e56aa); a window beyond max_position_embeddings must not move L either."""
    model, _ = load_model(tiny_mistral, attention_window=window)
    assert rope_basics(model.config).original_max_position_embeddings == OWN_WINDOW


def test_the_mistral_preset_widens_as_the_reference_and_keeps_l():
    cfg = load_config(CONFIGS / "mistral-7b.yaml")
    assert cfg.model.attention_window == 131072
    assert flatten(to_dict(cfg))["model.attention_window"] == 131072  # the stage runner logs it as a param
    config = MistralConfig(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                           num_key_value_heads=8, max_position_embeddings=32768, sliding_window=4096)
    set_attention_window(config, cfg.model.attention_window)
    assert config.sliding_window == 131072
    assert rope_basics(config).original_max_position_embeddings == cfg.model.context_length == 4096


def test_a_window_on_a_model_without_one_is_one_clear_line(tiny_llama, tmp_path):
    tiny_llama().save_pretrained(tmp_path / "llama")
    ByteTokenizer().save(tmp_path / "llama")
    with pytest.raises(RopelabError) as caught:
        load_model(tmp_path / "llama", attention_window=8)
    assert str(caught.value) == ("model.attention_window 8 is set, but LlamaConfig has no sliding-window attention to "
                                 "change; set model.attention_window: 0")
    with pytest.raises(RopelabError, match="LlamaConfig has no sliding-window attention"):
        build_tiny_llama(ModelConfig(attention_window=8), seed=0)


def test_the_base_stage_hands_every_later_stage_the_window(tiny_mistral):
    """describe_model (the base stage for a user's model) returns a directory that loads with the window (every
    stage calls load_model(model.path)), without copying weights or touching the user's directory."""
    from ropelab.artifacts import DataArtifact
    from ropelab.tasks.model import describe_model

    data = DataArtifact(tiny_mistral, "d" * 16, "d" * 16)
    artifact = describe_model.fn(str(tiny_mistral), False, data, "sig", OWN_WINDOW, attention_window=64)
    own = describe_model.fn(str(tiny_mistral), False, data, "sig", OWN_WINDOW)
    assert own.path == tiny_mistral and artifact.path != tiny_mistral
    assert artifact.fingerprint != own.fingerprint  # the window is part of what later stages key their caches on
    assert (artifact.path / "model.safetensors").is_symlink()
    loaded, _ = load_model(artifact.path)
    assert loaded.config.sliding_window == 64 and artifact.original_length == OWN_WINDOW
    torch.testing.assert_close(logits(loaded), logits(stock_with_window(tiny_mistral, 64)), rtol=0, atol=0)
    assert MistralConfig.from_pretrained(tiny_mistral).sliding_window == OWN_WINDOW
