"""Mixed context window training (LongRoPE2 §3.3): packed short rows score every document as if alone, labels
stay inside documents, the mixture sampler is seeded and resumable, training runs and resumes through the shared
loop, and the trained model exports as stock longrope with short_factor = 1.0."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from ropelab.chunked_loss import chunked_mean_loss
from ropelab.config import TrainConfig
from ropelab.errors import RopelabError
from ropelab.rope.adapter import base_spec
from ropelab.rope.export import export_hf
from ropelab.train.data import IGNORE_INDEX, pack_documents
from ropelab.train.finetune import install_for_mixed, mixed_finetune
from ropelab.train.loop import CHECKPOINT, train_causal_lm
from ropelab.train.mixed import (
    PADDING,
    MixedBatches,
    block_causal_mask,
    long_fraction_for_tokens,
    pack_short_rows,
    short_batch,
)
from tests.rope.test_export import LONG, L, logits, longrope, same

BOS, EOS, PAD = 1, 2, 0


def documents(lengths, seed=0) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 97, (n,), generator=g).tolist() for n in lengths]


def short_rows(lengths=(10, 20, 5, 30, 40, 3, 12, 25), row_len=L, seed=0):
    return pack_short_rows(documents(lengths, seed), row_len, L, BOS, EOS, PAD)


def long_blocks(n_tokens=2000, length=2 * L, seed=1):
    return pack_documents(documents([n_tokens], seed), length, BOS, EOS)


def framed(doc: list[int]) -> list[int]:
    return [BOS, *doc, EOS][:L]


def token_nll(model, ids, labels, **kwargs) -> torch.Tensor:
    """(rows, seq - 1) NLL of labels[:, 1:] from the full logits; 0 where ignored."""
    with torch.no_grad():
        out = model(input_ids=ids, **kwargs).logits[:, :-1].float()
    return F.cross_entropy(out.transpose(1, 2), labels[:, 1:], reduction="none")


def alone_losses(model, docs) -> list[torch.Tensor]:
    """Each document scored in its own forward (plain positions, plain causal attention)."""
    return [token_nll(model, torch.tensor([framed(d)]), torch.tensor([framed(d)]))[0] for d in docs]


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_a_packed_row_scores_every_document_as_if_alone(tiny_llama, attention):
    """The acceptance criterion: per-document losses in a packed row equal the documents' own losses."""
    model = tiny_llama(max_position_embeddings=L)
    model.set_attn_implementation(attention)
    install_for_mixed(model, longrope(LONG))
    docs = documents([10, 20, 5, 21])  # 12 + 22 + 7 + 23 = 64 tokens framed: one full row
    rows = pack_short_rows(docs, L, L, BOS, EOS, PAD)
    assert rows.input_ids.shape == (1, L)
    batch = short_batch(rows, torch.tensor([0]))
    packed = token_nll(model, batch.input_ids, batch.labels, **batch.model_kwargs())[0]
    targets = rows.doc_ids[0, 1:]
    for index, alone in enumerate(alone_losses(model, docs)):
        mine = packed[(targets == index) & (batch.labels[0, 1:] != IGNORE_INDEX)]
        torch.testing.assert_close(mine, alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk_tokens", [0, 16])
def test_the_training_loss_of_packed_rows_is_the_mean_over_the_documents_alone(tiny_llama, chunk_tokens):
    """chunked_mean_loss with labels (chunked and full paths): the token mean of the documents scored alone,
    padding and each document's first token excluded."""
    model = tiny_llama(max_position_embeddings=L)
    install_for_mixed(model, longrope(LONG))
    lengths = (10, 20, 5, 30, 40, 3)
    rows = short_rows(lengths)
    assert (rows.doc_ids == PADDING).any()  # padding present
    batch = short_batch(rows, torch.arange(rows.input_ids.shape[0]))
    with torch.no_grad():
        loss = chunked_mean_loss(model, batch.input_ids, chunk_tokens, labels=batch.labels, **batch.model_kwargs())
    expected = torch.cat(alone_losses(model, documents(lengths))).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def test_labels_never_cross_documents_and_positions_restart():
    rows = short_rows()
    ids, labels, pos, doc = rows.input_ids, rows.labels, rows.position_ids, rows.doc_ids
    labelled = labels != IGNORE_INDEX
    assert torch.equal(labels[labelled], ids[labelled])
    previous_same_doc = torch.zeros_like(labelled)
    previous_same_doc[:, 1:] = (doc[:, 1:] == doc[:, :-1]) & (doc[:, 1:] != PADDING)
    assert torch.equal(labelled, previous_same_doc)  # exactly the tokens following a token of their own document
    starts = (doc != PADDING) & (pos == 0)
    assert (ids[starts] == BOS).all() and not labelled[starts].any()
    assert not labelled[doc == PADDING].any() and (ids[doc == PADDING] == PAD).all()
    assert rows.max_position < L and (pos[doc == PADDING] == 0).all()


def test_positions_restart_per_document_so_long_rows_stay_on_the_original_rope(tiny_llama):
    """Rows longer than L (the reference packs short documents into rows as long as the long segments) still
    take the short path: each document counts its positions from 0."""
    rows = short_rows(row_len=3 * L)
    for row in range(rows.input_ids.shape[0]):
        for index in rows.doc_ids[row].unique().tolist():
            if index != PADDING:
                positions = rows.position_ids[row][rows.doc_ids[row] == index]
                assert positions.tolist() == list(range(len(positions)))
    module = install_for_mixed(tiny_llama(max_position_embeddings=L), longrope(LONG))
    assert rows.max_position < L and module.select(rows.max_position + 1).method == "default"


def test_documents_are_cut_to_the_original_context_and_never_split_over_rows():
    rows = pack_short_rows([[5] * 10, [6] * 100, [7] * 3], 64, 64, BOS, EOS, PAD)
    assert rows.input_ids.shape == (3, 64)  # 12 tokens; 64 (cut, no EOS) opens row 2; 5 tokens open row 3
    assert rows.input_ids[1].tolist() == [BOS] + [6] * 63
    assert rows.input_ids[2, :5].tolist() == [BOS, 7, 7, 7, EOS] and (rows.doc_ids[2, 5:] == PADDING).all()
    with pytest.raises(RopelabError, match="max_doc_len <= row_len"):
        pack_short_rows([[5]], 8, 16, BOS, EOS, PAD)


def test_the_mask_is_block_diagonal_causal_and_never_masks_a_whole_row():
    doc = torch.tensor([[0, 0, 1, 1, 1, PADDING]])
    allowed = block_causal_mask(doc)[0, 0] == 0
    expected = torch.tensor([[1, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0], [0, 0, 1, 1, 0, 0],
                             [0, 0, 1, 1, 1, 0], [0, 0, 0, 0, 0, 1]], dtype=torch.bool)
    assert torch.equal(allowed, expected)
    assert block_causal_mask(doc, torch.bfloat16).dtype == torch.bfloat16


def draws(source, generator, n):
    return [source(generator) for _ in range(n)]


def same_batches(a, b) -> bool:
    return all(torch.equal(x.input_ids, y.input_ids) and (x.labels is None) == (y.labels is None)
               for x, y in zip(a, b, strict=True))


def test_the_sampler_is_seeded_resumes_exactly_and_keeps_its_share():
    source = MixedBatches(short_rows(), long_blocks(), 0.25, 2, 3)
    first, again = (draws(source, torch.Generator().manual_seed(5), 30) for _ in range(2))
    assert same_batches(first, again)
    assert not same_batches(first, draws(source, torch.Generator().manual_seed(6), 30))
    g = torch.Generator().manual_seed(5)
    draws(source, g, 12)
    resumed = torch.Generator().manual_seed(99)
    resumed.set_state(g.get_state())
    assert same_batches(draws(source, resumed, 18), first[12:])
    kinds = [b.labels is None for b in draws(source, torch.Generator().manual_seed(0), 400)]
    assert 0.18 < sum(kinds) / 400 < 0.32
    assert {b.input_ids.shape for b in first} == {(2, 2 * L), (3, L)}  # long rows vs short rows
    only_short = MixedBatches(short_rows(), long_blocks(), 0.0, 2, 3)
    assert all(b.labels is not None for b in draws(only_short, torch.Generator().manual_seed(0), 50))


def test_a_token_share_converts_to_a_micro_batch_share():
    p = long_fraction_for_tokens(0.5, long_tokens=4 * 64, short_tokens=64)
    assert p == pytest.approx(0.2)  # 0.2·256 = 0.8·64
    assert long_fraction_for_tokens(1.0, 256, 64) == 1.0 and long_fraction_for_tokens(0.0, 256, 64) == 0.0
    with pytest.raises(RopelabError, match="long_fraction"):
        MixedBatches(short_rows(), long_blocks(), 1.5, 1, 1)


class Recording:
    """A batch source that remembers the kinds it served (a test probe around the real sampler)."""

    def __init__(self, source):
        self.source, self.kinds = source, []

    def __call__(self, generator):
        batch = self.source(generator)
        self.kinds.append("long" if batch.labels is None else "short")
        return batch


CFG = TrainConfig(steps=8, batch_size=2, lr=5e-3, warmup_steps=1, seq_len=2 * L, checkpoint_every=2, seed=1)


def test_mixed_training_in_the_shared_loop_resumes_exactly(tiny_llama, tmp_path):
    def run(checkpoint_dir=None, on_step=None):
        model = tiny_llama(max_position_embeddings=L)
        install_for_mixed(model, longrope(LONG))
        source = Recording(MixedBatches(short_rows(), long_blocks(), 0.5, 2, 4))
        history = train_causal_lm(model, None, CFG, batch_source=source, on_step=on_step,
                                  checkpoint_dir=checkpoint_dir)
        return model, history, source.kinds

    initial = tiny_llama(max_position_embeddings=L).state_dict()
    straight, straight_history, kinds = run()
    # the first record is the loss of the first micro-batch drawn from the seeded generator (labels, positions
    # and mask reach the model), and counts its real tokens
    first = MixedBatches(short_rows(), long_blocks(), 0.5, 2, 4)(torch.Generator().manual_seed(CFG.seed))
    assert first.labels is not None and first.token_count() < first.input_ids.numel()  # short, with padding
    fresh = tiny_llama(max_position_embeddings=L)
    install_for_mixed(fresh, longrope(LONG))
    with torch.no_grad():
        expected = chunked_mean_loss(fresh, first.input_ids, labels=first.labels, **first.model_kwargs())
    assert straight_history[0].loss == pytest.approx(float(expected), rel=1e-5)
    assert straight_history[0].tokens == first.token_count()
    assert {"long", "short"} <= set(kinds)
    assert any(not torch.equal(a, b) for a, b in zip(initial.values(), straight.state_dict().values(), strict=True))

    def crash(rec):
        if rec.step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, crash)
    assert torch.load(tmp_path / CHECKPOINT, weights_only=True)["step"] == 4
    resumed, history, _ = run(tmp_path)
    assert [h.tokens for h in history] == [h.tokens for h in straight_history]
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_the_loop_takes_exactly_one_batch_source(tiny_llama):
    with pytest.raises(RopelabError, match="exactly one of blocks or batch_source"):
        train_causal_lm(tiny_llama(), None, CFG)
    only_short = MixedBatches(short_rows(), long_blocks(), 0.0, 2, 2)
    with pytest.raises(RopelabError, match="custom position_ids cannot be combined"):
        train_causal_lm(tiny_llama(), None, CFG, batch_source=only_short,
                        position_ids=lambda step, n, g: torch.arange(n)[None])


def test_each_half_must_land_on_its_side_of_the_switch(tiny_llama):
    model = tiny_llama(max_position_embeddings=L)
    with pytest.raises(RopelabError, match="do not exceed the original context"):
        mixed_finetune(model, short_rows(), long_blocks(length=L), longrope(LONG), CFG, long_fraction=0.5)
    too_long = pack_short_rows(documents([100]), 2 * L, 2 * L, BOS, EOS, PAD)
    with pytest.raises(RopelabError, match="beyond the original context"):
        mixed_finetune(model, too_long, long_blocks(), longrope(LONG), CFG, long_fraction=0.5)


@pytest.mark.parametrize("length", [L // 2, L, L + 1, 4 * L])
def test_mixed_training_exports_as_stock_longrope_with_short_factor_one(tiny_llama, tmp_path, length):
    model = tiny_llama(max_position_embeddings=L)
    long = longrope(LONG)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = TrainConfig(steps=4, batch_size=2, lr=5e-3, warmup_steps=1)
    history = mixed_finetune(model, short_rows(), long_blocks(), long, cfg, long_fraction=0.5, short_batch_size=4)
    assert len(history) == 4
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    report = export_hf(model, tmp_path / "export", long, base_spec(model.config))
    assert report.rope_parameters["rope_type"] == "longrope"
    assert report.rope_parameters["short_factor"] == [1.0] * len(LONG) and not report.lossy
    reloaded = AutoModelForCausalLM.from_pretrained(report.path, attn_implementation="sdpa").eval()
    assert same(logits(reloaded, length), logits(model, length))
