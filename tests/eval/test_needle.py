"""Needle PPL: samples from one held-out split, seeded; only the answer's labels count; a model that retrieves does
worse when the needle in the prompt holds a shuffled answer; the batched needle fitness equals one-at-a-time."""

from __future__ import annotations

import math

import pytest
import torch

from ropelab.data.needles import NEEDLE, QUESTION, NeedleSet, build_needles
from ropelab.data.sources import Document
from ropelab.data.tokenizer import ByteTokenizer
from ropelab.errors import RopelabError
from ropelab.eval.needle import answer_nll, needle_nll, needle_perplexity, needle_tensors

TOK = ByteTokenizer()
DOCS = [Document(f"doc{i}", "test", " ".join(f"word{(i * 7 + k) % 53}" for k in range(400))) for i in range(3)]


def needles(length=400, count=4, seed=0, **kw) -> NeedleSet:
    return build_needles(DOCS, "validation", TOK.encode, length=length, count=count, seed=seed,
                         bos=TOK.bos_token_id, eos=TOK.eos_token_id, **kw)


def test_samples_are_seeded_exact_length_and_end_with_the_asked_answer():
    a, b, c = needles(), needles(), needles(seed=1)
    assert a == b and a.digest() == b.digest() and a != c
    assert NeedleSet.from_json(a.to_json()) == a
    for s in a.samples:
        assert len(s.input_ids) == 400 and s.answer_end == 400
        assert TOK.decode(s.input_ids[s.answer_start:]) == s.key
        text = TOK.decode(s.input_ids)
        assert text.endswith(QUESTION + s.key)
        assert NEEDLE[0] + s.key + NEEDLE[1] in text
        assert s.needle_at <= 0.1 * 400 + 1  # near the start
    shuffled = needles(shuffle_answer=True)
    for s, t in zip(a.samples, shuffled.samples, strict=True):
        assert s.written == s.key and t.written != t.key and sorted(t.written) == sorted(t.key)


def test_needles_never_come_from_the_training_split():
    with pytest.raises(RopelabError, match="held-out"):
        build_needles(DOCS, "train", TOK.encode, length=400, count=1, seed=0, bos=None, eos=None)
    with pytest.raises(RopelabError, match="haystack"):
        needles(length=10 ** 6, count=1)


def test_labels_outside_the_answer_never_contribute(tiny_llama):
    ids, mask = needle_tensors(needles())
    logits = torch.randn(ids.shape[0], ids.shape[1], 260, generator=torch.Generator().manual_seed(0))
    base = answer_nll(logits, ids, mask)
    predicting = mask.roll(-1, dims=1)  # the logits that predict an answer token
    noisy = logits + 50 * torch.randn(logits.shape, generator=torch.Generator().manual_seed(1)) * ~predicting[..., None]
    torch.testing.assert_close(answer_nll(noisy, ids, mask), base)
    poked = logits.clone()
    poked[predicting] += 5 * torch.randn(poked[predicting].shape, generator=torch.Generator().manual_seed(2))
    assert not torch.allclose(answer_nll(poked, ids, mask), base)
    # equal to transformers' own loss with every other label at -100
    model = tiny_llama(max_position_embeddings=512)
    small = ids % 97
    labels = small.masked_fill(~mask, -100)
    with torch.no_grad():
        hf = model(input_ids=small, labels=labels).loss.item()
    assert math.isclose(needle_nll(model, small, mask).sum().item() / int(mask.sum()), hf, rel_tol=1e-5)


class Retriever(torch.nn.Module):
    """A constructed model that retrieves: it predicts the token that followed the longest earlier match (≥ 8
    tokens) of the current suffix, with logit 12, else nothing in particular (induction, done by lookup)."""

    def __init__(self, vocab=260, min_match=8):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.vocab, self.min_match = vocab, min_match

    def forward(self, input_ids, use_cache=False):
        out = torch.zeros(*input_ids.shape, self.vocab)
        for r, row in enumerate(input_ids.tolist()):
            for t in range(len(row)):
                for j in range(t - 1, self.min_match - 2, -1):
                    if row[j - self.min_match + 1: j + 1] == row[t - self.min_match + 1: t + 1]:
                        out[r, t, row[j + 1]] = 12.0
                        break
        return type("Out", (), {"logits": out})()


def test_shuffling_the_needles_answer_in_the_prompt_raises_needle_ppl():
    model = Retriever()
    honest = needle_perplexity(model, needles(count=3))
    shuffled = needle_perplexity(model, needles(count=3, shuffle_answer=True))
    assert honest.ppl < 1.01 < 10 < shuffled.ppl
    assert honest.tokens == shuffled.tokens == 15 and honest.split == "validation"


def test_needle_fitness_scores_only_the_answers_and_equals_needle_ppl_with_the_candidate_installed(tiny_llama):
    """The search's needle fitness (``ModelScorer`` from the answer's first position, several candidates per
    forward, each row its own RoPE) equals needle PPL of each candidate installed alone."""
    from ropelab.eval.needle import answer_windows
    from ropelab.rope.modules import install_rope, uninstall_rope
    from ropelab.search.fitness import batched_fitness
    from ropelab.search.v2 import V2Space, ntk_cd_seeds

    model = tiny_llama(max_position_embeddings=64)
    samples = needles(count=3)
    ids, answer_start = answer_windows(samples)
    assert answer_start == 395 and ids.shape == (3, 400)
    ids = ids % 97  # the tiny model's vocabulary; the answer positions are unchanged
    small = NeedleSet(samples.split, samples.length, samples.seed, samples.depth, tuple(
        type(s)(tuple(int(t) for t in row), s.answer_start, s.answer_end, s.needle_at, s.key, s.written)
        for s, row in zip(samples.samples, ids.tolist(), strict=True)))
    space = V2Space(head_dim=16, base=10000.0, scale=8.0, original_max_position_embeddings=64, critical_dim=3)
    candidates = list(ntk_cd_seeds(space).values())[:3]
    batched = batched_fitness(model, space, ids, tokens_per_batch=800, score_from=answer_start)(candidates)
    alone = []
    for c in candidates:
        install_rope(model, space.spec(c))
        alone.append(needle_perplexity(model, small).ppl)
        uninstall_rope(model)
    assert batched == pytest.approx(alone, rel=1e-5)
    assert len(set(round(v, 6) for v in batched)) == 3  # the candidates differ: the comparison can fail
    full = batched_fitness(model, space, ids, tokens_per_batch=800)(candidates[:1])[0]
    assert full != pytest.approx(batched[0], rel=1e-3)  # scoring every token is another number


def test_needle_fitness_refuses_answers_of_different_lengths():
    from ropelab.eval.needle import answer_windows

    samples = needles(count=2)
    first = samples.samples[0]
    uneven = type(samples)(samples.split, samples.length, samples.seed, samples.depth,
                           (first, type(first)(first.input_ids, first.answer_start - 1, first.answer_end,
                                               first.needle_at, first.key, first.written)))
    with pytest.raises(RopelabError, match="one answer length"):
        answer_windows(uneven)
