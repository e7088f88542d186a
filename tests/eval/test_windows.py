"""Validation windows disjoint from the searches' fitness windows (the short-set choice's windows)."""

from __future__ import annotations

import pytest
import torch

from ropelab.errors import RopelabError
from ropelab.eval.perplexity import truncated_windows
from ropelab.eval.windows import disjoint_windows, window_spans

BOS = 100_000
DOCS = [list(range(0, 3000)), list(range(3000, 4100)), list(range(4100, 4150))]  # every token names its place


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("bos", [BOS, None])
def test_spans_are_the_ones_truncated_windows_cuts(bos):
    windows = truncated_windows(DOCS, 64, 10, bos, gen(3))
    spans = window_spans(DOCS, 64, 10, bos, gen(3))
    head = [] if bos is None else [bos]
    assert [head + DOCS[d][s:e] for d, s, e in spans] == windows.tolist()


def fitness_tokens(plans, bos) -> set[int]:
    return {t for length, count, seed in plans
            for t in truncated_windows(DOCS, length, count, bos, gen(seed))[:, 1:].flatten().tolist()}


def test_choice_windows_share_no_token_with_any_fitness_window():
    plans = [(64, 8, 0), (128, 6, 0), (256, 4, 0)]  # recovery at L, two searches at longer lengths, one seed
    taken = [span for length, count, seed in plans for span in window_spans(DOCS, length, count, BOS, gen(seed))]
    chosen = disjoint_windows(DOCS, 64, 8, BOS, gen(0), taken)
    assert chosen.shape == (8, 64) and (chosen[:, 0] == BOS).all()
    assert not set(chosen[:, 1:].flatten().tolist()) & fitness_tokens(plans, BOS)
    # what the choice scored before (the same length, count and seed as recovery's fitness): fitted-on text only
    assert set(truncated_windows(DOCS, 64, 8, BOS, gen(0))[:, 1:].flatten().tolist()) <= fitness_tokens(plans, BOS)


def test_the_same_seed_gives_the_same_windows_and_nothing_taken_leaves_all_free():
    taken = window_spans(DOCS, 64, 8, None, gen(1))
    assert torch.equal(disjoint_windows(DOCS, 64, 5, None, gen(2), taken),
                       disjoint_windows(DOCS, 64, 5, None, gen(2), taken))
    assert torch.equal(disjoint_windows(DOCS, 64, 5, None, gen(2), []), truncated_windows(DOCS, 64, 5, None, gen(2)))


def test_too_little_free_text_is_one_clear_error():
    taken = [(0, 0, 3000), (1, 0, 1100)]  # only the 50-token document is left: no 64-token window fits
    with pytest.raises(RopelabError, match="0 windows of 64 tokens that share no token.*search.num_windows"):
        disjoint_windows(DOCS, 64, 1, BOS, gen(0), taken)
