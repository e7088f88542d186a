"""Passkey: the reference prompt, exact token counts, keys, intervals, the scorer check and the controls."""

from __future__ import annotations

import math

import pytest
import torch

from ropelab.data.tokenizer import ByteTokenizer
from ropelab.errors import RopelabError
from ropelab.eval import zoo
from ropelab.eval.passkey import (
    FILLER,
    NEEDLE,
    QUESTION,
    TASK,
    PasskeyResult,
    accuracy_table,
    build_prompt,
    cells,
    check_scorer,
    control_cell,
    first_integer,
    min_prompt_length,
    passkey_trial,
    random_key,
    wilson_interval,
)
from ropelab.rope.adapter import rope_basics
from ropelab.rope.methods import rope_frequencies
from tests.eval.local_tokenizers import qwen2_style_tokenizer, word_level_tokenizer


def reference_prompt(n_prefix: int, n_suffix: int, pass_key: int) -> str:
    """microsoft/LongRoPE evaluation/passkey.py @ c9e56aa, ``generate_prompt``, with the random draws of the
    prefix length and the key passed in (character counts = byte counts for this ASCII text)."""
    task_description = ("There is an important info hidden inside a lot of irrelevant text. Find it and memorize "
                        "them. I will quiz you about the important information there.")
    garbage_inf = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
    while len(garbage_inf) < n_prefix + n_suffix:
        garbage_inf = " ".join([garbage_inf] * 2)
    garbage_prefix = garbage_inf[:n_prefix]
    garbage_suffix = garbage_inf[:n_suffix]
    information_line = f"The pass key is {pass_key}. Remember it. {pass_key} is the pass key."
    final_question = "What is the pass key? The pass key is"
    return "\n".join([task_description, garbage_prefix, information_line, garbage_suffix, final_question])


@pytest.mark.parametrize("length", [min_prompt_length(ByteTokenizer()), 300, 1000])
@pytest.mark.parametrize("depth", [0.0, 0.37, 1.0])
@pytest.mark.parametrize("key", [1, 777, 48213, 50000])
def test_a_byte_level_prompt_is_the_reference_text_byte_for_byte(length, depth, key):
    tok = ByteTokenizer()
    prompt = build_prompt(tok, length, depth, key)
    text = bytes(prompt.ids[1:]).decode()
    budget = length - 1 - len(reference_prompt(0, 0, key))
    before = round(depth * budget)
    assert len(prompt.ids) == length and prompt.ids[0] == tok.bos_token_id
    assert text == reference_prompt(before, budget - before, key)
    assert text.startswith(TASK + "\n") and text.endswith("\n" + QUESTION)


@pytest.mark.parametrize("length", [120, 1000])
@pytest.mark.parametrize("depth", [0.0, 0.37, 1.0])
def test_an_hf_prompt_has_exact_length_and_the_needle_line_where_asked(length, depth):
    tok = word_level_tokenizer()
    prompt = build_prompt(tok, length, depth, 48213)
    assert len(prompt.ids) == length and prompt.ids[0] == tok.bos_token_id
    needle = prompt.ids[prompt.needle_start: prompt.needle_start + prompt.needle_length]
    assert needle == tok.encode("\n" + NEEDLE.format(key=48213) + "\n")
    assert prompt.ids[-len(tok.encode("\n" + QUESTION)):] == tok.encode("\n" + QUESTION)
    head = 1 + len(tok.encode(TASK + "\n"))
    filler = length - head - prompt.needle_length - len(tok.encode("\n" + QUESTION))
    assert prompt.needle_start - head == round(depth * filler)
    following = tok.encode(FILLER)[:5] if depth else needle[:5]  # the filler, or the needle, after the task line
    assert prompt.ids[head: head + 5] == following


def test_too_short_and_bad_depth_are_clear_errors():
    tok = ByteTokenizer()
    shortest = min_prompt_length(tok)
    with pytest.raises(RopelabError, match="shorter than the task line, needle and question"):
        build_prompt(tok, shortest - 1, 0.5, 50000)
    assert all(len(build_prompt(tok, shortest, 0.5, k).ids) == shortest for k in (1, 12345, 50000))
    with pytest.raises(RopelabError, match="depth"):
        build_prompt(tok, 500, 1.5, 12345)


def test_without_the_needle_the_key_is_nowhere_in_the_prompt():
    tok = ByteTokenizer()
    prompt = build_prompt(tok, 400, 0.5, 48213, needle=False)
    assert len(prompt.ids) == 400 and prompt.needle_length == 0 and "48213" not in tok.decode(prompt.ids)


def test_keys_are_drawn_from_the_reference_range_by_the_generator():
    keys = [random_key(g) for g in [torch.Generator().manual_seed(9)] for _ in range(20000)]
    again = [random_key(g) for g in [torch.Generator().manual_seed(9)] for _ in range(5)]
    assert keys[:5] == again and min(keys) >= 1 and max(keys) <= 50000
    assert min(keys) < 20 and max(keys) > 49980  # both ends of randint(1, 50000) are reached
    assert sum(k < 10000 for k in keys) / len(keys) == pytest.approx(0.2, abs=0.02)  # short keys too


def test_wilson_interval_matches_the_published_values_and_scipy():
    # Newcombe (1998), Statistics in Medicine 17:857, Table I, method 3 (Wilson score, no continuity correction)
    published = {(81, 263): (0.2553, 0.3662), (15, 148): (0.0624, 0.1605), (0, 20): (0.0, 0.1611),
                 (1, 29): (0.0061, 0.1718)}
    for (k, n), (low, high) in published.items():
        assert wilson_interval(k, n) == pytest.approx((low, high), abs=1e-4)
    stats = pytest.importorskip("scipy.stats")
    for k, n in [(0, 5), (3, 5), (5, 5), (7, 40)]:
        ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert wilson_interval(k, n) == pytest.approx((ci.low, ci.high), abs=1e-9)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_cells_tables_and_the_control_are_kept_apart():
    results = [PasskeyResult(256, 0.1, 5, 5, ""), PasskeyResult(256, 0.1, 6, 7, ""),
               PasskeyResult(512, 0.1, 1, 1, ""), PasskeyResult(256, 1.0, 3, 3, "", control=True)]
    assert accuracy_table(results) == {256: {0.1: 0.5}, 512: {0.1: 1.0}}
    grid = cells([r for r in results if not r.control])
    assert [(c.length, c.correct, c.trials) for c in grid] == [(256, 1, 2), (512, 1, 1)]
    assert grid[0].interval == wilson_interval(1, 2) and grid[0].to_dict()["ci95"] == list(wilson_interval(1, 2))
    control = control_cell(results)
    assert (control.length, control.depth, control.correct, control.trials) == (256, 1.0, 1, 1)
    assert first_integer(" 48213. Remember") == 48213 and first_integer("no digits") is None


def test_the_scorer_check_passes_real_tokenizers_and_stops_those_that_cannot_spell_keys():
    keys = [1, 777, 48213, 50000]
    check_scorer(ByteTokenizer(), keys)
    check_scorer(qwen2_style_tokenizer(), keys)
    with pytest.raises(RopelabError, match="cannot read key 777 back .* decodes to '7 7 7 . Remember it .'"):
        check_scorer(word_level_tokenizer(), keys)  # spaced digits: the first integer would be 7
    with pytest.raises(RopelabError, match="cannot read key 1 back"):
        check_scorer(word_level_tokenizer(digits=False), keys)


def copier(offset: int, vocab: int = 260, width: int = 64, base: float = 10000.0):
    """A real one-layer Llama whose weights are set by hand so that it copies the token ``offset`` positions
    back: a model that retrieves a passkey exactly when the key sits there (the positive control's needle does,
    at any length) and nowhere else. Tokens are embedded as random ±1 codes (near-orthogonal in ``width``
    dimensions) beside a constant dimension; query and key read the constant, the key pre-rotated by ``offset``
    positions, so q_m·k_n = Σ_i c² cos(θ_i (n − m + offset)) peaks at n = m − offset; the value carries the
    attended token's code into a second block that the LM head decodes."""
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.models.llama.modeling_llama import rotate_half

    cfg = LlamaConfig(vocab_size=vocab, hidden_size=2 * width + 2, intermediate_size=8, num_hidden_layers=1,
                      num_attention_heads=1, num_key_value_heads=1, head_dim=width, rope_theta=base,
                      max_position_embeddings=4096, tie_word_embeddings=False, attn_implementation="sdpa")
    model = LlamaForCausalLM(cfg).eval()
    codes = torch.randint(0, 2, (vocab, width), generator=torch.Generator().manual_seed(0)).float() * 2 - 1
    constant, attn, eye = 2 * width, model.model.layers[0].self_attn, torch.eye(width)
    angle = offset * rope_frequencies(width, base)
    q = torch.full((width,), 40.0)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        for norm in (model.model.layers[0].input_layernorm, model.model.layers[0].post_attention_layernorm,
                     model.model.norm):
            norm.weight.fill_(1.0)
        model.model.embed_tokens.weight[:, :width] = codes
        model.model.embed_tokens.weight[:, constant] = 1.0
        attn.q_proj.weight[:, constant] = q
        attn.k_proj.weight[:, constant] = q * torch.cat([angle.cos()] * 2) + rotate_half(q) * torch.cat([angle.sin()] * 2)
        attn.v_proj.weight[:, :width] = eye
        attn.o_proj.weight[width: 2 * width, :] = eye
        model.lm_head.weight[:, width: 2 * width] = codes
    return model


@pytest.fixture(scope="module")
def retriever():
    """The copier aimed at the key of a control prompt (the needle right before the question)."""
    tok = ByteTokenizer()
    prompt = build_prompt(tok, min_prompt_length(tok), 1.0, 12345)
    first_digit = prompt.needle_start + len("\nThe pass key is ")
    return copier(len(prompt.ids) - 1 - first_digit), tok


def test_the_positive_control_tells_a_failing_extension_from_a_broken_scorer(retriever):
    """A model that retrieves passes the control at every length, so the zeros of far needles read as what they
    are; with the needle removed the same model and scorer score zero (the scorer can fail)."""
    model, tok = retriever
    basics = rope_basics(model.config)
    shortest = min_prompt_length(tok)
    results = zoo.evaluate_passkey_grid(model, tok, basics, {"none": zoo.baseline("none")}, [shortest + 100],
                                        [0.0], 5, torch.Generator().manual_seed(0))
    control = control_cell(results["none"])
    assert (control.length, control.depth, control.trials) == (shortest + 100, 1.0, 5)
    assert control.correct == 5 and control.interval[0] > 0.5
    assert accuracy_table(results["none"]) == {shortest + 100: {0.0: 0.0}}
    keys = torch.Generator().manual_seed(1)
    absent = [passkey_trial(model, tok, shortest + 100, 1.0, random_key(keys), needle=False) for _ in range(5)]
    assert sum(r.correct for r in absent) == 0
    md = zoo.passkey_markdown(results, "caption")
    assert "| control |" in md and "100% [57%, 100%] 5/5 |" in md and "0% [0%, 43%] 0/5" in md


def test_a_broken_scorer_fails_before_any_model_runs(retriever):
    model, _ = retriever
    forwards = []
    hook = model.register_forward_pre_hook(lambda *_: forwards.append(1))
    try:
        with pytest.raises(RopelabError, match="cannot read key"):
            zoo.evaluate_passkey_grid(model, word_level_tokenizer(digits=False), rope_basics(model.config),
                                      {"none": zoo.baseline("none")}, [200], [0.5], 5, torch.Generator())
    finally:
        hook.remove()
    assert not forwards


def test_grid_prompts_do_not_change_when_the_control_is_added():
    with_control = zoo.passkey_keys([256, 512], [0.1, 0.9], 5, torch.Generator().manual_seed(3))
    without = zoo.passkey_keys([256, 512], [0.1, 0.9], 5, torch.Generator().manual_seed(3), control=False)
    assert {k: v for k, v in with_control.items() if not k[3]} == without
    assert {k[:2] for k in with_control if k[3]} == {(256, 1.0)} and len(with_control) == len(without) + 5
    assert math.isclose(sum(k[3] for k in with_control), 5)


def test_the_base_retrieval_check_scores_a_retriever_high_and_the_same_prompts_without_needle_at_zero(retriever):
    from ropelab.eval.passkey import retrieval_check

    model, tok = retriever  # it copies from the control's needle position: depth 1 at the shortest length
    hit, blind = retrieval_check(model, tok, min_prompt_length(tok), 4, torch.Generator().manual_seed(2), depths=(1.0,))
    assert (hit.correct, hit.trials) == (4, 4) and (blind.correct, blind.trials) == (0, 4)
    far, _ = retrieval_check(model, tok, min_prompt_length(tok) + 100, 4, torch.Generator().manual_seed(2),
                             depths=(0.0,))
    assert far.correct == 0  # the needle 100 tokens further away than the copier looks
