"""The dry-run plan: parameter counts against a real model, every stage listed, nothing loaded."""

from __future__ import annotations

from pathlib import Path

from ropelab.config import load_config
from ropelab.plan import parameter_count, pipeline_plan, search_candidates

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
    from flows.cli import main

    cfg = load_config(CONFIGS / "llama2-7b.yaml")
    assert search_candidates(cfg.search) == 64 + 40 * 32
    assert main(["pipeline", "--config", str(CONFIGS / "llama2-7b.yaml"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    for needle in ("search 32× (base)", "131,072", "262,144", "fine-tune 64×", "2,097,152", "recovery 1×", "6.7"):
        assert needle in out, needle
    assert out.splitlines() == pipeline_plan(cfg)
