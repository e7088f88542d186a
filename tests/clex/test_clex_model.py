"""CLEX installed into real (tiny) transformers models: equivalences, generation across t, training, export."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from ropelab.clex.io import export_clex, is_clex_export, load_clex
from ropelab.clex.rotary import ClexRotaryEmbedding
from ropelab.clex.train import ClexPositions, install_clex, train_clex
from ropelab.config import ClexConfig, TrainConfig
from ropelab.errors import RopelabError
from ropelab.rope.generation import greedy_generate
from ropelab.rope.modules import install_rope, uninstall_rope
from ropelab.rope.registry import RopeSpec
from ropelab.train.loop import NonFiniteLossError, train_causal_lm

L = 16


def ids(n, seed=0):
    return torch.randint(0, 97, (1, n), generator=torch.Generator().manual_seed(seed))


def trained_looking(module: ClexRotaryEmbedding, seed=1, std=0.5) -> ClexRotaryEmbedding:
    """A CLEX module whose ODE is not the identity-like untrained one (frequencies really depend on t)."""
    with torch.no_grad():
        module.dynamics.down.normal_(0, std, generator=torch.Generator().manual_seed(seed))
    module.train(False)
    return module


@torch.no_grad()
def test_untrained_clex_is_the_base_model_up_to_L_and_ntk_beyond(tiny_llama):
    model = tiny_llama(max_position_embeddings=L)
    x = ids(3 * L)
    plain = model(x[:, :L]).logits
    install_clex(model, ClexConfig(max_t=4))
    torch.testing.assert_close(model(x[:, :L]).logits, plain, rtol=0, atol=1e-5)
    clex = model(x).logits  # n = 3L → t = 3 → NTK with α = 2·3 − 1 = 5
    install_rope(model, RopeSpec("ntk", 16, 10000.0, factor=5.0))
    torch.testing.assert_close(clex, model(x).logits, rtol=0, atol=1e-5)


def test_scale_rule_and_cap():
    module = ClexRotaryEmbedding(16, 1e4, L, max_t=4)
    assert [module.scale_for_length(n) for n in (1, L, L + 1, 2 * L, 2 * L + 1, 100 * L)] == [1, 1, 2, 2, 3, 4]


def sharp(model, gain=4.0):
    """Sharper attention than random init gives, so stale keys would show in the logits."""
    for layer in model.model.layers:
        layer.self_attn.q_proj.weight.data.mul_(gain)
        layer.self_attn.k_proj.weight.data.mul_(gain)
    return model


@torch.no_grad()
def test_generation_across_a_t_boundary_equals_full_recompute(tiny_llama):
    model = sharp(tiny_llama(max_position_embeddings=L, seed=3))
    module = trained_looking(install_clex(model, ClexConfig(max_t=8)))
    prompt = ids(2 * L - 3, seed=4)  # prefill at t = 2; tokens 2L+1 … cross into t = 3
    cached_logits, recomputed_logits = [], []
    cached = greedy_generate(model, prompt, 8, step_logits=cached_logits)
    sequence, recomputed = prompt, []
    for _ in range(8):
        recomputed_logits.append(model(sequence).logits[0, -1])
        recomputed.append(int(recomputed_logits[-1].argmax()))
        sequence = torch.cat([sequence, torch.tensor([[recomputed[-1]]])], dim=1)
    assert cached == recomputed
    torch.testing.assert_close(torch.stack(cached_logits), torch.stack(recomputed_logits), rtol=0, atol=1e-5)
    assert module.scale_for_length(prompt.shape[1]) == 2 and module.scale_for_length(sequence.shape[1]) == 3
    # the rebuild is what makes it exact: a cache kept across the boundary gives different logits
    module.setting_for_length = lambda n: None
    stale = []
    greedy_generate(model, prompt, 8, step_logits=stale)
    assert (torch.stack(stale) - torch.stack(recomputed_logits)).abs().max() > 1e-3


def test_training_positions_span_t_times_L_and_recover_t():
    schedule = ClexPositions(L, max_t=8)
    generator = torch.Generator().manual_seed(0)
    seen = set()
    for step in range(40):
        positions = schedule(step, L, generator)[0]
        t = schedule.t
        seen.add(t)
        assert positions[0] == 0 and positions[-1] == t * L - 1 and len(positions) == L
        assert bool((positions.diff() > 0).all())
        module = ClexRotaryEmbedding(16, 1e4, L, max_t=8)
        assert module.scale_for_length(float(positions.max()) + 1) == t
    assert seen == set(range(1, 9))
    again = ClexPositions(L, max_t=8)
    assert torch.equal(again(0, L, torch.Generator().manual_seed(0)),
                       ClexPositions(L, max_t=8)(0, L, torch.Generator().manual_seed(0)))
    longer = schedule.positions(3, 4 * L, generator)  # training at 4L: positions scaled back by L / 4L
    assert longer[-1] == 3 * L - 1 and longer.max() < 3 * L
    for pieces in (2, 4):  # PoSE-style: dense inside pieces, skips between them, still spanning [0, t·L)
        chunked = ClexPositions(L, 8, "chunks", pieces).positions(5, L, generator)
        assert chunked[0] == 0 and chunked[-1] == 5 * L - 1 and bool((chunked.diff() >= 1).all())
        assert int((chunked.diff() > 1).sum()) <= pieces - 1 and int((chunked.diff() == 1).sum()) >= L - pieces
    uniform = ClexPositions(L, 4, "uniform").positions(2, L, generator)
    torch.testing.assert_close(uniform, torch.linspace(0, 2 * L - 1, L))
    with pytest.raises(RopelabError, match="position scheme"):
        ClexPositions(L, 4, "zigzag")


def small_training(steps=6, **clex):
    return ClexConfig(max_t=4, train=TrainConfig(steps=steps, batch_size=2, seq_len=L, lr=5e-3, warmup_steps=1,
                                                 checkpoint_every=2), **clex)


def blocks():
    return torch.randint(0, 97, (16, L), generator=torch.Generator().manual_seed(9))


def test_training_updates_the_ode_and_resumes_exactly(tiny_llama, tmp_path):
    straight = tiny_llama(max_position_embeddings=L, layers=1)
    module, history = train_clex(straight, blocks(), small_training())
    assert module.dynamics.down.abs().max() > 0 and len(history) == 6

    crashed = tiny_llama(max_position_embeddings=L, layers=1)

    scales = []

    def crash(record, t):
        scales.append(t)
        if record.step == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_clex(crashed, blocks(), small_training(), on_step=crash, checkpoint_dir=tmp_path)
    assert set(scales) <= {1, 2, 3, 4} and len(set(scales)) > 1
    resumed = tiny_llama(max_position_embeddings=L, layers=1)
    train_clex(resumed, blocks(), small_training(), checkpoint_dir=tmp_path)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)


def test_ode_only_training_leaves_the_model_untouched(tiny_llama):
    model = tiny_llama(max_position_embeddings=L, layers=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    module, _ = train_clex(model, blocks(), small_training(ode_only=True))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert module.dynamics.down.abs().max() > 0
    assert all(p.requires_grad for p in model.parameters())  # unfrozen again for whatever comes next


def test_non_finite_training_names_the_step_and_t(tiny_llama):
    model = tiny_llama(max_position_embeddings=L, layers=1)
    module = install_clex(model, ClexConfig(max_t=4))
    with torch.no_grad():
        module.dynamics.down.fill_(float("nan"))  # the ODE breaks for every t > 1; t = 1 bypasses it
    schedule = ClexPositions(L, 4)
    with pytest.raises(NonFiniteLossError, match=r"step \d+ \(t = [234]\)"):
        train_causal_lm(model, blocks(), small_training(steps=50).train, position_ids=schedule,
                        describe=schedule.describe)


@torch.no_grad()
def test_export_reloads_in_stock_transformers_and_in_ropelab(tiny_llama, tmp_path):
    model = tiny_llama(max_position_embeddings=L, seed=5)
    module = trained_looking(install_clex(model, ClexConfig(max_t=4)))
    x = ids(3 * L + 2)
    expected = model(x).logits
    export_clex(model, tmp_path / "clex", module, provenance={"test": True})
    assert is_clex_export(tmp_path / "clex")
    stock = AutoModelForCausalLM.from_pretrained(tmp_path / "clex").eval()  # loads: plain RoPE, warns nothing
    uninstall_rope(model)
    torch.testing.assert_close(stock(x).logits, model(x).logits, rtol=0, atol=1e-5)
    load_clex(tmp_path / "clex", stock)
    torch.testing.assert_close(stock(x).logits, expected, rtol=0, atol=1e-5)


def test_invalid_clex_settings_are_reported_together():
    """Validated when the config is loaded (ropelab.config), before any model is built."""
    from ropelab.config import load_config

    with pytest.raises(RopelabError, match="max_t.*time_dt|time_dt.*max_t"):
        load_config(None, ["clex.max_t=0", "clex.time_dt=0"])
