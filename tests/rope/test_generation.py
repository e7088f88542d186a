"""Cached greedy generation across L with a LongRoPE short/long pair equals a full recompute at every step."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from ropelab.rope import RopeSpec
from ropelab.rope.export import export_hf
from ropelab.rope.generation import greedy_generate, length_setting
from ropelab.rope.modules import install_rope

L, HEAD_DIM, BASE = 64, 16, 10000.0
LONG = (1.0, 1.5, 2.5, 4.0, 6.0, 9.0, 12.0, 16.0)
SHORT = (1.0, 1.0, 1.0, 1.05, 1.1, 1.15, 1.2, 1.25)
PROMPT, NEW = L - 3, 7
CROSSING = L + 1 - PROMPT  # the first step whose logits come from a sequence of L + 1 tokens (the long set)


def longrope(factors) -> RopeSpec:
    return RopeSpec("longrope", HEAD_DIM, BASE, factor=16.0, original_max_position_embeddings=L,
                    rescale_factors=factors)


def prompt(vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (1, PROMPT), generator=torch.Generator().manual_seed(3))


@torch.no_grad()
def recomputed(model, ids: torch.Tensor, tokens: list[int]) -> list[torch.Tensor]:
    """Each step's next-token logits from a forward over the whole sequence so far, no cache."""
    out, sequence = [], ids
    for token in tokens:
        out.append(model(input_ids=sequence, use_cache=False).logits[0, -1])
        sequence = torch.cat([sequence, torch.tensor([[token]])], dim=1)
    return out


def worst(a: list[torch.Tensor], b: list[torch.Tensor]) -> list[float]:
    return [(x - y).abs().max().item() for x, y in zip(a, b, strict=True)]


@pytest.fixture
def paired(tiny_llama):
    model = tiny_llama(max_position_embeddings=L)
    install_rope(model, longrope(LONG), longrope(SHORT))
    return model


def test_the_pair_switches_sets_at_L(paired):
    setting = length_setting(paired)
    assert setting(L) and not setting(L + 1)  # the short set up to L tokens, the long set beyond


def test_generation_across_L_equals_a_full_recompute(paired):
    ids, logits = prompt(paired.config.vocab_size), []
    tokens = greedy_generate(paired, ids, NEW, step_logits=logits)
    reference = recomputed(paired, ids, tokens)
    assert torch.equal(logits[CROSSING], reference[CROSSING])  # re-prefilled with the long set: the same forward
    assert max(worst(logits, reference)) < 1e-6  # cached steps: float rounding only (~6e-8)


def test_mixing_cached_short_keys_with_long_ones_is_what_the_recompute_catches(paired):
    """Breaking the switch detection (decode as stock transformers does) is caught by the same comparison."""
    ids, stale = prompt(paired.config.vocab_size), []
    paired.model.rotary_emb.setting_for_length = lambda n: None  # never re-prefill
    tokens = greedy_generate(paired, ids, NEW, step_logits=stale)
    diffs = worst(stale, recomputed(paired, ids, tokens))
    assert max(diffs[:CROSSING]) < 1e-6 and min(diffs[CROSSING:]) > 1e-4


def test_stock_transformers_generate_keeps_short_rotated_keys_after_L(paired, tmp_path):
    """The stock behaviour greedy_generate corrects: transformers' cached decoding of the exported pair drifts
    from a full recompute once the sequence passes L (the cached keys keep the short set's rotation)."""
    report = export_hf(paired, tmp_path / "export", longrope(LONG), longrope(SHORT))
    stock = AutoModelForCausalLM.from_pretrained(report.path, attn_implementation="sdpa").eval()
    ids = prompt(stock.config.vocab_size)
    out = stock.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW, do_sample=False,
                         output_logits=True, return_dict_in_generate=True, pad_token_id=0)
    tokens = out.sequences[0, PROMPT:].tolist()
    diffs = worst([s[0] for s in out.logits], recomputed(stock, ids, tokens))
    assert max(diffs[:CROSSING]) < 1e-6 and min(diffs[CROSSING:]) > 1e-4


def test_passkey_decoding_of_a_pair_is_the_full_recompute_greedy(paired):
    from ropelab.eval.passkey import greedy_continuation

    ids, expected = prompt(paired.config.vocab_size), []
    sequence = ids
    with torch.no_grad():
        for _ in range(NEW):
            expected.append(int(paired(input_ids=sequence, use_cache=False).logits[0, -1].argmax()))
            sequence = torch.cat([sequence, torch.tensor([[expected[-1]]])], dim=1)
    assert greedy_continuation(paired, ids[0].tolist(), NEW) == expected
