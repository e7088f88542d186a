"""CLEX against the reference code (DAMO-NLP-SG/CLEX@023709d9): log-scaling, the optimiser, gapped positions in
the training loop, and cached generation across a change of t."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from ropelab.clex.io import export_clex, load_clex
from ropelab.clex.rotary import ClexRotaryEmbedding
from ropelab.clex.train import ClexPositions, install_clex, train_clex
from ropelab.config import ClexConfig, TrainConfig
from ropelab.errors import RopelabError
from ropelab.rope.generation import greedy_generate
from ropelab.train.loop import CHECKPOINT, learning_rate, train_causal_lm
from tests.clex.test_clex_model import L, ids, sharp, trained_looking

# ------------------------------------------------------------------ log-scaling


def reference_log_scaled(model, n: int) -> None:
    """The reference's log-scaling, ported: LlamaFlashAttention2 multiplies the queries (after RoPE) by
    log(kv_seq_len) / log(max_position_embeddings), unclamped; here through each attention layer's logit scale,
    which is the same product q·k."""
    for layer in model.model.layers:
        layer.self_attn.scaling *= math.log(n) / math.log(L)


@torch.no_grad()
@pytest.mark.parametrize("n", [L // 2, 3 * L])  # below L the reference's factor is < 1: it is not clamped
def test_log_scaling_gives_the_reference_logits(tiny_llama, n):
    model = sharp(tiny_llama(max_position_embeddings=L, seed=3))
    module = trained_looking(install_clex(model, ClexConfig(max_t=4, log_scale=True)))
    x = ids(n, seed=4)
    scaled = model(x).logits
    module.log_scale = False
    unscaled = model(x).logits
    assert (scaled - unscaled).abs().max() > 1e-3  # 100× the tolerance below: a missing factor would show
    reference_log_scaled(model, n)
    torch.testing.assert_close(scaled, model(x).logits, rtol=0, atol=1e-5)


@torch.no_grad()
def test_clamped_rule_leaves_inputs_up_to_L_alone(tiny_llama):
    model = tiny_llama(max_position_embeddings=L, seed=3)
    module = trained_looking(install_clex(model, ClexConfig(max_t=4, log_scale=True, log_scale_rule="clamped")))
    short, long = ids(L // 2, seed=4), ids(3 * L, seed=4)
    clamped = model(short).logits, model(long).logits
    module.log_scale = False
    torch.testing.assert_close(clamped[0], model(short).logits, rtol=0, atol=0)
    reference_log_scaled(model, 3 * L)
    torch.testing.assert_close(clamped[1], model(long).logits, rtol=0, atol=1e-5)


def test_log_scaling_in_training_counts_tokens_not_the_span_of_their_positions():
    """The reference's n is kv_seq_len: a training sequence of seq_len tokens whose positions span t·L gets
    log(seq_len)/log(L), so 1 when training at L; the clamped rule uses the span (t·L)."""
    def cos(seq_len, **kw):
        module = ClexRotaryEmbedding(16, 1e4, L, max_t=4, generator=torch.Generator().manual_seed(0), **kw).train()
        positions = ClexPositions(L, 4).positions(3, seq_len, torch.Generator().manual_seed(1))[None]
        return module(torch.zeros(1, seq_len, 16), positions)[0]

    torch.testing.assert_close(cos(L, log_scale=True), cos(L), rtol=0, atol=0)
    torch.testing.assert_close(cos(2 * L, log_scale=True), cos(2 * L) * math.sqrt(math.log(2 * L) / math.log(L)))
    torch.testing.assert_close(cos(L, log_scale=True, log_scale_rule="clamped"),
                               cos(L) * math.sqrt(math.log(3 * L) / math.log(L)))
    with pytest.raises(RopelabError, match="log_scale_rule"):
        ClexRotaryEmbedding(16, 1e4, L, max_t=4, log_scale_rule="sometimes")


@torch.no_grad()
def test_log_scaled_generation_equals_full_recompute(tiny_llama):
    """With the reference rule the factor changes with every token: greedy_generate re-prefills each time."""
    model = sharp(tiny_llama(max_position_embeddings=L, seed=3))
    trained_looking(install_clex(model, ClexConfig(max_t=8, log_scale=True)))
    prompt, logits = ids(L - 3, seed=4), []  # from below L (factor < 1) to beyond it
    tokens = greedy_generate(model, prompt, 6, step_logits=logits)
    sequence = torch.cat([prompt, torch.tensor([tokens])], dim=1)
    full = [model(sequence[:, :n]).logits[0, -1] for n in range(prompt.shape[1], sequence.shape[1])]
    torch.testing.assert_close(torch.stack(logits), torch.stack(full), rtol=0, atol=1e-5)


# ------------------------------------------------------------------ optimiser


@pytest.mark.parametrize("choice,betas,decay,final_lr", [("reference", (0.9, 0.999), 0.0, 0.0),
                                                          ("ropelab", (0.9, 0.95), 0.1, 0.1)])
def test_clex_trains_with_the_chosen_optimizer(tiny_llama, tmp_path, choice, betas, decay, final_lr):
    """reference: the released train script's AdamW (β 0.9/0.999, weight decay 0, cosine to 0); ropelab: the
    shared loop's. Read back from the loop's checkpoint; the ODE's matrices are in the decaying group."""
    cfg = ClexConfig(max_t=4, optimizer=choice, train=TrainConfig(steps=4, batch_size=2, seq_len=L, lr=1e-3,
                                                                   warmup_steps=1, checkpoint_every=4))
    model = tiny_llama(max_position_embeddings=L, layers=1)
    module, _ = train_clex(model, torch.randint(0, 97, (8, L), generator=torch.Generator().manual_seed(9)), cfg,
                           checkpoint_dir=tmp_path)
    groups = torch.load(tmp_path / CHECKPOINT, weights_only=True)["optimizer"]["param_groups"]
    assert [tuple(g["betas"]) for g in groups] == [betas, betas] and [g["weight_decay"] for g in groups] == [decay, 0]
    matrices = [p for p in model.parameters() if p.dim() >= 2]
    assert len(groups[0]["params"]) == len(matrices) and module.dynamics.down.dim() == 2
    cosine = 0.5 * (1 + math.cos(math.pi * 2 / 3))  # step 3 of 4 after one warm-up step
    linear = 1 - 2 / 3
    expected = 1e-3 * (final_lr + (1 - final_lr) * (cosine if choice == "reference" else linear))
    assert groups[0]["lr"] == pytest.approx(expected)
    assert learning_rate(3, cfg.train) == pytest.approx(1e-3 * (0.1 + 0.9 * linear))  # the loop's own default


# ------------------------------------------------------------------ gapped positions in the training loop


def test_the_training_loop_attends_across_gapped_clex_positions(tiny_llama):
    """transformers 5.23 reads gapped position ids without an attention mask as packed sequences (each gap
    starts a new one, attention cut there) whenever no cache is built: training with use_cache=False (the
    reference sets it; gradient checkpointing forces it). The loop passes an all-ones mask: its loss is the loss
    with full causal attention over the gapped positions, not the packed one."""
    model = tiny_llama(max_position_embeddings=L, layers=1)
    model.config.use_cache = False
    before = copy.deepcopy(model)
    block, schedule, seen = ids(L, seed=6), ClexPositions(L, max_t=4), []

    def positions(step, seq_len, generator):  # CLEX's positions at t = 3: gaps between them
        seen.append(schedule.positions(3, seq_len, generator)[None])
        return seen[-1]

    history = train_causal_lm(model, block, TrainConfig(steps=1, batch_size=1, seq_len=L, warmup_steps=0),
                              position_ids=positions)
    with torch.no_grad():
        before.train()
        full = before(block, labels=block, position_ids=seen[0], attention_mask=torch.ones_like(block)).loss
        packed = before(block, labels=block, position_ids=seen[0]).loss
    assert abs(float(full) - float(packed)) > 1e-2  # without the mask the loss would be visibly different
    assert history[0].loss == pytest.approx(float(full), abs=1e-6)


# ------------------------------------------------------------------ transformers' generate


@torch.no_grad()
def test_generate_refuses_a_cache_across_a_t_change_and_is_exact_otherwise(tiny_llama):
    model = sharp(tiny_llama(max_position_embeddings=L, seed=3))
    trained_looking(install_clex(model, ClexConfig(max_t=8)))
    prompt = ids(2 * L - 3, seed=4)  # t = 2; the 5th new token makes 2L + 1 tokens: t = 3
    exact = greedy_generate(model, prompt, 8)

    def generate(new, **kw):
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new, do_sample=False,
                             pad_token_id=0, **kw)
        return out[0, prompt.shape[1]:].tolist()

    with pytest.raises(RopelabError, match=r"changes the CLEX setting \(t, attention factor\) \(2, 1.0\) -> "
                                           r"\(3, 1.0\).*greedy_generate.*use_cache=False"):
        generate(8)
    assert generate(4) == exact[:4]  # within one t the cache is exact
    assert generate(8, use_cache=False) == exact  # no cache: every step a full recompute


@torch.no_grad()
def test_a_loaded_clex_export_refuses_too(tiny_llama, tmp_path):
    from transformers import AutoModelForCausalLM

    model = tiny_llama(max_position_embeddings=L, seed=5)
    export_clex(model, tmp_path / "clex", trained_looking(install_clex(model, ClexConfig(max_t=4))))
    stock = AutoModelForCausalLM.from_pretrained(tmp_path / "clex").eval()
    prompt = ids(2 * L - 1, seed=4)
    stock.generate(prompt, max_new_tokens=3, do_sample=False, pad_token_id=0)  # stock RoPE: nothing to refuse
    load_clex(tmp_path / "clex", stock)
    with pytest.raises(RopelabError, match="greedy_generate"):
        stock.generate(prompt, max_new_tokens=3, do_sample=False, pad_token_id=0)
