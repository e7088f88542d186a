"""The dry-run plan: parameter counts against a real model, every stage listed, nothing loaded."""

from __future__ import annotations

from pathlib import Path

import pytest

from ropelab.config import load_config
from ropelab.errors import RopelabError
from ropelab.plan import (
    parameter_count,
    pipeline_plan,
    search_candidates,
    search_counts,
    stage_search_config,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_parameter_count_matches_a_real_untied_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = load_config(CONFIGS / "tiny.yaml")
    m = cfg.model
    real = LlamaForCausalLM(LlamaConfig(vocab_size=m.vocab_size, hidden_size=m.hidden_size,
                                        intermediate_size=m.intermediate_size, num_hidden_layers=m.num_hidden_layers,
                                        num_attention_heads=m.num_attention_heads, tie_word_embeddings=False))
    actual = sum(p.numel() for p in real.parameters())
    assert abs(parameter_count(cfg) - actual) / actual < 0.01  # norms are the only difference


def test_plan_lists_every_stage_at_the_papers_lengths(capsys):
    from ropelab.flows.cli import main

    cfg = load_config(CONFIGS / "llama2-7b.yaml")
    assert search_candidates(cfg.search) == 64 + 40 * 32
    assert main(["pipeline", "--config", str(CONFIGS / "llama2-7b.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    for needle in ("search 32× (base)", "131,072", "262,144", "fine-tune 64×", "2,097,152", "recovery 1×", "6.7"):
        assert needle in out, needle
    assert out.splitlines() == pipeline_plan(cfg)


def test_plan_prices_each_search_stage_with_its_own_settings():
    cfg = load_config(CONFIGS / "tiny.yaml")  # stage 2: its own generations, population and windows
    stage1, stage2, recovery = (stage_search_config(cfg, s) for s in ("search1", "search2", "recovery"))
    assert (stage2.iterations, stage2.evo_scale, stage2.num_windows, stage2.test_windows) == (
        cfg.pipeline.final_search_iterations, cfg.pipeline.final_search_evo_scale, cfg.pipeline.final_search_windows,
        cfg.pipeline.final_search_test_windows)
    assert recovery.iterations == cfg.pipeline.recovery_iterations and stage1 == cfg.search
    lines = pipeline_plan(cfg)
    final = next(line for line in lines if "(fine-tuned)" in line)
    assert f"{search_candidates(stage2)} candidates × {stage2.num_windows} windows" in final
    assert search_candidates(stage2) != search_candidates(stage1)
    assert all(f"{search_candidates(recovery)} candidates" in line for line in lines if line.startswith("recovery"))


@pytest.mark.parametrize("rule,candidates", [("round", 19 + 40 * (5 + 5)), ("code", 19 + 12 * (4 + 4))])
def test_plan_counts_candidates_as_the_search_runs_them(rule, candidates):
    """evo_scale 0.3: round keeps 40 generations of round(4.8) = 5 mutations and crossovers; the released code's
    int() gives 4 of each over int(12.0) = 12 generations. The plan uses the run's own counts."""
    from ropelab.tasks.search import evolution_config

    cfg = load_config(CONFIGS / "llama2-7b.yaml", ["search.evo_scale=0.3", f"search.evo_scale_rule={rule}"])
    assert search_counts(cfg.search) == evolution_config(cfg.search).counts()
    assert search_candidates(cfg.search) == candidates


@pytest.mark.parametrize("override,message", [
    ("pipeline.ratios=[4.0]", "pipeline.ratios must be two stage-1 ratios r1, r2 > 1, got [4.0]"),
    ("pipeline.ratios=[2, 4, 8]", "pipeline.ratios must be two stage-1 ratios r1, r2 > 1, got [2.0, 4.0, 8.0]"),
    ("pipeline.ratios=[0.5, 8.0]", "pipeline.ratios must be two stage-1 ratios r1, r2 > 1, got [0.5, 8.0]"),
    ("pipeline.final_ratio=1.0", "pipeline.final_ratio must be > 1, got 1.0"),
    ("pipeline.recovery_ratios=[]", "pipeline.recovery_ratios must have at least 1 item(s), got []"),
    ("pipeline.recovery_ratios=[1, 0.5]", "pipeline.recovery_ratios must be ≥ 1, got 0.5"),
    ("pipeline.recovery_max_rescale=0.5", "pipeline.recovery_max_rescale must be ≥ 1, got 0.5"),
    ("pipeline.first_finetune_steps=0", "pipeline.first_finetune_steps must be ≥ 1, got 0"),
    ("pipeline.second_finetune_steps=0", "pipeline.second_finetune_steps must be ≥ 1, got 0"),
    ("pipeline.final_search_iterations=-1", "pipeline.final_search_iterations must be ≥ 0, got -1"),
    ("pipeline.final_search_evo_scale=-0.5", "pipeline.final_search_evo_scale must be ≥ 0"),
    ("pipeline.final_search_windows=-2", "pipeline.final_search_windows must be ≥ 0, got -2"),
    ("pipeline.final_search_test_windows=-2", "pipeline.final_search_test_windows must be ≥ 0, got -2"),
    ("pipeline.recovery_iterations=-1", "pipeline.recovery_iterations must be ≥ 0, got -1"),
])
def test_a_recipe_that_cannot_run_is_rejected_when_the_config_loads(override, message):
    """The recipe's rules are the config's own types: loading refuses the recipe before any stage (or plan) runs."""
    pipeline_plan(load_config(CONFIGS / "tiny.yaml"))  # the presets pass
    with pytest.raises(RopelabError) as caught:
        load_config(CONFIGS / "tiny.yaml", [override])
    assert str(caught.value).startswith(f"{CONFIGS / 'tiny.yaml'}: ") and message in str(caught.value)
    assert len(str(caught.value).splitlines()) == 1


def test_the_longrope2_plan_spends_the_progressive_fine_tuning_tokens_at_the_final_length():
    from ropelab.plan import longrope2_steps, progressive_finetune_tokens

    cfg = load_config(CONFIGS / "tiny-longrope2.yaml")
    assert progressive_finetune_tokens(cfg) == 4 * (50 * 1024 + 32 * 2048)
    assert longrope2_steps(cfg) == round(466944 / (4 * 8192)) == 14
    lines = [line for line in pipeline_plan(cfg) if line.startswith("longrope2")]
    assert len(lines) == 2
    assert "24 candidates × 3 windows" in lines[0]  # the initial 2 × 8, then 2 generations of 2 + 2
    assert "(7, 10, 13)" in lines[0] and "14 steps" in lines[1]
    assert not any(line.startswith("longrope2") for line in pipeline_plan(load_config(CONFIGS / "tiny.yaml")))
