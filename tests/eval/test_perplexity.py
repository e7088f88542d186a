"""Perplexity: windows, the two protocols, the fast path against the reference evaluator."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ropelab.config import ModelConfig
from ropelab.errors import RopelabError
from ropelab.eval.perplexity import (
    choose_documents,
    perplexity,
    reference_nll,
    sliding_perplexity,
    sliding_plan,
    sliding_set,
    truncated_windows,
    window_nll,
)
from ropelab.models import build_tiny_llama

DOCS = [list(range(i, i + 100)) for i in (0, 1000)]


@pytest.fixture(scope="module")
def model():
    return build_tiny_llama(ModelConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                        intermediate_size=64), 0).eval()


def test_windows_are_bos_plus_disjoint_segments_chosen_by_seed():
    w = truncated_windows(DOCS, 10, 5, 7, torch.Generator().manual_seed(0))
    assert w.shape == (5, 10) and torch.all(w[:, 0] == 7)
    assert len({tuple(row[1:3].tolist()) for row in w}) == 5
    assert torch.equal(w, truncated_windows(DOCS, 10, 5, 7, torch.Generator().manual_seed(0)))
    assert not torch.equal(w, truncated_windows(DOCS, 10, 5, 7, torch.Generator().manual_seed(1)))


def test_too_few_windows_is_a_clear_error():
    with pytest.raises(RopelabError, match="has 2 windows of 100 tokens; 3 were asked"):
        truncated_windows(DOCS, 100, 3, 7, torch.Generator())


def test_perplexity_equals_manual_token_weighted_nll(model):
    windows = torch.randint(0, 256, (3, 20), generator=torch.Generator().manual_seed(0))
    result = perplexity(model, windows, batch_size=2)
    with torch.no_grad():
        logits = model(windows).logits[:, :-1]
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1))
    assert result.ppl == pytest.approx(math.exp(nll.item()), rel=1e-5)
    assert result.tokens == 3 * 19 and 100 < result.ppl < 1000  # an untrained model is near uniform (260)


def test_fast_batched_path_equals_reference_evaluator(model):
    windows = torch.randint(0, 256, (6, 48), generator=torch.Generator().manual_seed(1))
    fast_total, fast_count = window_nll(model, windows)
    ref_total, ref_count = reference_nll(model, windows)
    assert fast_count == ref_count
    assert abs(fast_total / fast_count - ref_total / ref_count) / (ref_total / ref_count) <= 1e-4


def test_windows_without_bos_are_plain_segments_scored_from_their_second_token(model):
    w = truncated_windows([list(range(100)), list(range(150, 250))], 10, 5, None, torch.Generator().manual_seed(0))
    assert w.shape == (5, 10) and all(row.tolist() == list(range(row[0], row[0] + 10)) for row in w)
    result = perplexity(model, w, bos="none")
    assert result.tokens == 5 * 9 and result.bos == "none" and "no BOS" in result.describe()


def test_sliding_first_window_bos_with_stride_equal_to_window_is_truncated_on_the_same_windows(model):
    docs = torch.randint(0, 256, (2, 95), generator=torch.Generator().manual_seed(2)).tolist()
    sliding = sliding_perplexity(model, sliding_set(docs, 32, 32, 7, "first_window"))
    rows = torch.tensor([[7, *d] for d in docs]).reshape(-1, 32)
    truncated = perplexity(model, rows)
    assert sliding.tokens == truncated.tokens == 6 * 31 and sliding.num_windows == 6 and sliding.documents == 2
    assert sliding.nll == pytest.approx(truncated.nll, rel=1e-6)


def hf_guide_sliding_nll(model, ids: torch.Tensor, length: int, stride: int) -> tuple[float, int]:
    """The loop of the transformers perplexity guide, with labels = -100 for context tokens."""
    total, count, prev_end = 0.0, 0, 0
    for begin in range(0, ids.shape[1], stride):
        end = min(begin + length, ids.shape[1])
        target_len = end - prev_end
        inputs = ids[:, begin:end]
        labels = inputs.clone()
        labels[:, :-target_len] = -100
        with torch.no_grad():
            loss = model(input_ids=inputs, labels=labels).loss.item()
        scored = int((labels[:, 1:] != -100).sum())
        total, count, prev_end = total + loss * scored, count + scored, end
        if end == ids.shape[1]:
            break
    return total, count


def yarn_sliding_nll(model, encoded_texts, bos: int | None, max_length: int, sliding_window: int):
    """jquesnelle/yarn eval/perplexity.py @ 995db5b, ``compute_perplexity`` (add_start_token = the tokenizer has
    BOS), keeping each window's scored-token count beside its mean loss so the total can be token-weighted."""
    add_start_token = bos is not None
    max_tokenized_len = max_length - 1 if add_start_token else max_length
    total, count, windows = 0.0, 0, 0
    for encoding_index in range(0, len(encoded_texts)):
        labels = torch.tensor(encoded_texts[encoding_index:encoding_index + 1])
        seq_len = labels.size(1)
        prev_end_loc = 0
        for begin_loc in range(0, seq_len, sliding_window):
            end_loc = min(begin_loc + max_tokenized_len, seq_len)
            trg_len = end_loc - prev_end_loc
            input_ids = labels[:, begin_loc:end_loc]
            if add_start_token:
                input_ids = torch.cat([torch.tensor([[bos]] * input_ids.size(dim=0)), input_ids], dim=1)
            target_ids = input_ids.clone()
            target_ids[:, :-trg_len] = -100
            with torch.no_grad():
                neg_log_likelihood = model(input_ids, labels=target_ids).loss.item()
            scored = int((target_ids[:, 1:] != -100).sum())
            total, count, windows = total + neg_log_likelihood * scored, count + scored, windows + 1
            prev_end_loc = end_loc
            if end_loc == seq_len:
                break
    return total, count, windows


@pytest.mark.parametrize("stride", [8, 16, 31])
@pytest.mark.parametrize("bos", [7, None])
def test_sliding_every_window_is_the_yarn_evaluator_on_whole_documents(model, stride, bos):
    docs = [torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(n)).tolist() for n in (80, 45, 20)]
    ours = sliding_perplexity(model, sliding_set(docs, 32, stride, bos, "every_window"))
    total, count, windows = yarn_sliding_nll(model, docs, bos, 32, stride)
    # with BOS every document token is scored (the first from BOS); without, all but each document's first
    assert ours.tokens == count == (145 if bos is not None else 142) and ours.num_windows == windows
    assert ours.nll == pytest.approx(total / count, rel=1e-5)
    assert ours.bos == ("every_window" if bos is not None else "none") and ours.documents == 3
    assert f"stride {stride}" in ours.describe() and "whole documents" in ours.describe()


@pytest.mark.parametrize("stride", [8, 16, 24])
def test_sliding_first_window_equals_the_transformers_guide_loop(model, stride):
    doc = torch.randint(0, 256, (79,), generator=torch.Generator().manual_seed(3)).tolist()
    ours = sliding_perplexity(model, sliding_set([doc], 32, stride, 7, "first_window"))
    total, count = hf_guide_sliding_nll(model, torch.tensor([[7, *doc]]), 32, stride)
    assert ours.tokens == count == 79  # every token after BOS scored exactly once
    assert ours.nll == pytest.approx(total / count, rel=1e-5)


def test_every_window_holds_bos_and_the_last_window_is_shorter():
    sset = sliding_set([list(range(100))], 32, 16, 7, "every_window")
    lengths = sset.forward_lengths()
    assert max(lengths) == 32 and min(lengths) < 32
    assert all(sset.rows(w)[:, 0].eq(7).all() for w in sset.groups().values())


def test_sliding_plan_has_no_window_cap_and_rejects_bad_strides():
    plan = sliding_plan(span=10_000, length=100, stride=10)
    assert len(plan) > 10 and plan[-1][1] == 10_000
    with pytest.raises(RopelabError, match="eval.stride must be in"):
        sliding_plan(100, 10, 0)
    with pytest.raises(RopelabError, match=r"eval.stride must be in \[1, 31\]"):
        sliding_set([list(range(100))], 32, 32, 7, "every_window")  # BOS takes one of the 32 places


def test_documents_are_chosen_whole_long_enough_and_by_seed():
    docs = [list(range(n)) for n in (50, 120, 300, 80, 500)]
    chosen = choose_documents(docs, 100, 2, torch.Generator().manual_seed(0))
    assert len(chosen) == 2 and all(len(d) >= 100 and d in docs for d in chosen)
    assert chosen == choose_documents(docs, 100, 2, torch.Generator().manual_seed(0))
    with pytest.raises(RopelabError, match="has 3 documents of at least 100 tokens; 4 were asked"):
        choose_documents(docs, 100, 4, torch.Generator())
