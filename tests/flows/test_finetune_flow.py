"""The finetune flow on the smoke preset: a stock HF result, the loss curve in MLflow, cache-hit rerun."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoModelForCausalLM

from ropelab.config import load_config
from ropelab.tasks.home import resolve_config

pytestmark = pytest.mark.slow
OVERRIDES = ["finetune.method=yarn", "finetune.scale=2", "finetune.train.seq_len=128", "finetune.train.steps=6",
             "finetune.train.batch_size=2", "finetune.train.checkpoint_every=2"]


@pytest.fixture(scope="module")
def tuned():
    from ropelab.flows.finetune import finetune_flow

    return finetune_flow(load_config(resolve_config("smoke"), OVERRIDES))


def test_result_is_a_stock_longrope_model_with_plain_short_factors(tuned):
    model = AutoModelForCausalLM.from_pretrained(tuned.path)
    rope = model.config.rope_parameters
    assert rope["rope_type"] == "longrope" and rope["short_factor"] == [1.0] * 16  # smoke: head_dim 32
    assert rope["long_factor"][0] == pytest.approx(1.0) and rope["long_factor"][-1] == pytest.approx(2.0, rel=1e-5)
    assert not (Path(tuned.path).parent / "checkpoint").exists()  # cleaned up once the model is exported


def test_loss_curve_in_mlflow_and_rerun_is_a_cache_hit(tuned):
    from ropelab.flows.finetune import finetune_flow
    from ropelab.tasks import tracking

    history = tracking.client().get_metric_history(tuned.run_id, "finetune/loss")
    assert [m.step for m in history] == list(range(6))
    again = finetune_flow(load_config(resolve_config("smoke"), OVERRIDES))
    assert again.path == tuned.path and again.fingerprint == tuned.fingerprint
    assert tracking.client().get_run(again.run_id).data.metrics == tracking.client().get_run(tuned.run_id).data.metrics
