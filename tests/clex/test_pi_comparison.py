"""The PI fine-tunes CLEX is compared with: at CLEX's training length (same tokens) and at its serving length
max_t·L (PI's own target length, as the paper's baselines), each named so the table says which is which."""

from __future__ import annotations

from pathlib import Path

import pytest

from ropelab import recipe
from ropelab.config import load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("preset,serving,batch", [("smoke", 256, 1), ("tiny", 2048, 1)])
def test_the_serving_length_pi_covers_clex_serving_range_on_about_as_many_tokens(preset, serving, batch):
    cfg = load_config(CONFIGS / f"{preset}.yaml")
    c = cfg.clex
    train, serve = recipe.pi_comparison(cfg, "train").finetune, recipe.pi_comparison(cfg, "serving").finetune
    assert (train.method, train.scale, train.train) == ("pi", c.compare_pi_scale, c.train)  # exactly like CLEX
    assert serve.method == "pi" and not serve.only_beyond_original and serve.scale == c.max_t
    assert serve.train.seq_len == serving == c.max_t * cfg.model.context_length
    assert serve.train.batch_size == batch and serve.train.batch_size * serving >= c.train.batch_size * c.train.seq_len
    assert (serve.train.steps, serve.train.lr, serve.train.seed) == (c.train.steps, c.train.lr, c.train.seed)


def test_each_pi_row_and_stage_is_named_by_its_length():
    from ropelab.flows.clex import caption, pi_name, stage_name

    cfg = load_config(CONFIGS / "smoke.yaml")  # L = 64, max_t 4, compare_pi_scale 4
    rows = [pi_name(cfg, n) for n in cfg.clex.compare_pi_lengths]
    assert rows == ["pi-4x fine-tuned at 64", "pi-4x fine-tuned at 256"]
    assert [stage_name(r) for r in ["clex", *rows]] == ["evaluate-clex", "evaluate-pi-4x-at-64", "evaluate-pi-4x-at-256"]
    text = caption(cfg)
    assert "at 64: CLEX's training length" in text and "at 256: CLEX's serving length" in text
    only = load_config(CONFIGS / "smoke.yaml", ["clex.compare_pi_lengths=[train]"])
    assert "serving" not in caption(only) and "training length" in caption(only)


def test_no_pi_comparison_when_switched_off():
    from ropelab.flows.clex import caption, pi_comparisons

    cfg = load_config(CONFIGS / "smoke.yaml", ["clex.compare_pi_scale=0"])
    assert pi_comparisons(cfg, None, None, None) == {}  # nothing trained: returns before any stage
    assert "PI at" not in caption(cfg)
    none = load_config(CONFIGS / "smoke.yaml", ["clex.compare_pi_lengths=[]"])
    assert pi_comparisons(none, None, None, None) == {}
