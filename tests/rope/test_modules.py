"""Rotary modules and their installation: n̂ start tokens, the short/long switch, install/uninstall, and the
clear errors for models or specs that do not fit."""

from __future__ import annotations

import pytest
import torch

from ropelab.errors import RopelabError
from ropelab.rope import RopeSpec
from ropelab.rope.methods import rope_frequencies
from ropelab.rope.modules import RopelabRotaryEmbedding, install_rope, rotary_module, uninstall_rope

L, HEAD_DIM, BASE = 64, 16, 10000.0
LONG = [1.0, 1.0, 1.2, 1.5, 2.0, 3.0, 4.0, 6.0]
SHORT = [1.0, 1.0, 1.0, 1.05, 1.1, 1.2, 1.3, 1.4]


def logits(model, length: int, seed: int = 3) -> torch.Tensor:
    ids = torch.randint(0, model.config.vocab_size, (2, length), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return model(ids).logits


def test_installed_rope_changes_logits_and_uninstall_restores(tiny_llama):
    model = tiny_llama(max_position_embeddings=L)
    before = logits(model, 2 * L)
    install_rope(model, RopeSpec("linear", HEAD_DIM, BASE, factor=4.0))
    assert (logits(model, 2 * L) - before).abs().max() > 1e-3
    uninstall_rope(model)
    torch.testing.assert_close(logits(model, 2 * L), before)


def test_start_tokens_rows_equal_original_cos_sin():
    n_hat = 5
    spec = RopeSpec("longrope", HEAD_DIM, BASE, factor=4.0, original_max_position_embeddings=L,
                    rescale_factors=LONG, start_tokens=n_hat)
    module = RopelabRotaryEmbedding(spec)
    positions = torch.arange(3 * L)[None]
    cos, sin = module(torch.zeros(1, dtype=torch.float32), positions)
    angles = positions[0, :, None].float() * rope_frequencies(HEAD_DIM, BASE)
    original_cos, original_sin = torch.cat([angles, angles], -1).cos(), torch.cat([angles, angles], -1).sin()
    torch.testing.assert_close(cos[0, :n_hat], original_cos[:n_hat])
    torch.testing.assert_close(sin[0, :n_hat], original_sin[:n_hat])
    inv, attention = spec.compute()
    scaled = positions[0, :, None].float() * inv
    torch.testing.assert_close(cos[0, n_hat:], (torch.cat([scaled, scaled], -1).cos() * attention)[n_hat:])


def test_start_tokens_change_model_output_only_through_first_positions(tiny_llama):
    model = tiny_llama(max_position_embeddings=L)
    common = {"factor": 4.0, "original_max_position_embeddings": L, "rescale_factors": LONG}
    install_rope(model, RopeSpec("longrope", HEAD_DIM, BASE, **common))
    without = logits(model, 2 * L)
    install_rope(model, RopeSpec("longrope", HEAD_DIM, BASE, start_tokens=4, **common))
    with_n_hat = logits(model, 2 * L)
    assert (with_n_hat - without).abs().max() > 1e-4  # n̂ matters to every later token via attention


def test_short_long_switch_at_the_original_length():
    long = RopeSpec("longrope", HEAD_DIM, BASE, factor=4.0, original_max_position_embeddings=L, rescale_factors=LONG)
    short = long.replace(rescale_factors=tuple(SHORT))
    module = RopelabRotaryEmbedding(long, short, switch_length=L)
    assert module.select(L) is short and module.select(L + 1) is long
    inv_at_l, att_short = module.frequencies(L)
    inv_beyond, att_long = module.frequencies(L + 1)
    torch.testing.assert_close(inv_at_l, short.compute()[0])
    torch.testing.assert_close(inv_beyond, long.compute()[0])
    assert att_short == att_long == long.compute()[1]  # transformers' rule: one attention factor for both sets


def test_non_rope_model_is_rejected_clearly():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=50, n_positions=64))
    with pytest.raises(RopelabError, match="GPT2Config has no rope_parameters.rope_theta"):
        install_rope(model, RopeSpec("default", 16, BASE))


def test_mismatched_head_dim_is_rejected(tiny_llama):
    with pytest.raises(RopelabError, match="head_dim"):
        install_rope(tiny_llama(), RopeSpec("linear", 32, BASE, factor=2.0))


def test_install_replaces_the_rotary_module_once_and_uninstall_puts_back_the_original(tiny_llama):
    model = tiny_llama(max_position_embeddings=L)
    original = rotary_module(model)
    install_rope(model, RopeSpec("linear", HEAD_DIM, BASE, factor=2.0))
    installed = install_rope(model, RopeSpec("linear", HEAD_DIM, BASE, factor=4.0))
    assert rotary_module(model) is installed and installed.replaced is original  # no chain of replacements
    uninstall_rope(model)
    assert rotary_module(model) is original
