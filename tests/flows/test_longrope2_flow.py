"""The longrope2 flow on the smoke preset: the critical-dim sweep with needle fitness (every candidate inside
LongRoPE2's space, the sweep in MLflow, a cache-hit rerun), mixed context window fine-tuning on the progressive
recipe's token budget, a stock longrope model with short_factor 1.0, its evaluation with needle PPL."""

from __future__ import annotations

import json

import numpy as np
import pytest
from transformers import AutoConfig

from ropelab import recipe
from ropelab.config import derive, load_config
from ropelab.errors import RopelabError
from ropelab.plan import progressive_finetune_tokens
from ropelab.search.critical import ntk_left
from ropelab.tasks.home import resolve_config

pytestmark = pytest.mark.slow

DIMS = (3, 5)  # smoke: head_dim 32 (16 pairs), L = 64; d_tcd is pair 5
SCALE = 8.0  # the smoke pipeline's final length: 64 · 4 · 2 = 512


@pytest.fixture(scope="module")
def v2():
    smoke = load_config(resolve_config("smoke"))
    return derive(smoke, search={"critical_dims": list(DIMS)}, eval={"needle_samples": 2})


@pytest.fixture(scope="module")
def upstream(v2):
    from ropelab.flows.base import upstream

    return upstream(v2, None, None, None)


@pytest.fixture(scope="module")
def outcome(v2, upstream):
    from ropelab.flows.longrope2 import longrope2_flow

    return longrope2_flow(v2, model=upstream[0], data=upstream[1])


@pytest.fixture(scope="module")
def searched(outcome):
    return outcome.search


def test_the_sweep_runs_one_search_per_critical_dim_and_keeps_the_best(searched):
    assert set(searched.sweep) == set(DIMS) and searched.critical_dim in DIMS
    assert searched.sweep[searched.critical_dim] == min(searched.sweep.values())
    assert searched.validation_ppl["winner"] == pytest.approx(searched.sweep[searched.critical_dim])
    report = json.loads((searched.path / "report.json").read_text())
    assert report["variant"] == "longrope2" and report["fitness"] == "needle"
    assert {k for k in report["test_ppl"] if k != "winner"} <= {f"seed:ntk-cd-{i}" for i in range(8)}


def test_every_candidate_is_inside_the_longrope2_space(searched):
    scale, cd = SCALE, searched.critical_dim
    rows = [json.loads(line) for log in searched.generation_logs for line in log.read_text().splitlines()]
    assert len(rows) == searched.evaluated and searched.evaluated > 8
    for row in rows:
        lam = np.array(row["rescale_factors"])
        assert row["start_tokens"] == 0
        assert np.all(np.diff(lam) > 0)  # strictly increasing
        assert scale - 1e-9 <= lam[cd] and lam[-1] <= 2 * scale + 1e-9
        assert np.allclose(lam, ntk_left(lam, cd), rtol=1e-12, atol=0)  # the pairs below cd on the NTK curve


def test_mlflow_holds_the_sweep_and_the_export_is_stock_longrope(searched):
    from ropelab.tasks import tracking

    client = tracking.client()
    run = client.get_run(searched.run_id)
    assert run.data.tags["search.variant"] == "longrope2" and run.data.tags["search.fitness"] == "needle"
    sweep = client.get_metric_history(searched.run_id, "search/critical_dim_sweep")
    assert {m.step: m.value for m in sweep} == pytest.approx(searched.sweep)
    lam = json.loads(searched.lam.read_text())
    assert lam["critical_dim"] == searched.critical_dim and lam["variant"] == "longrope2"
    config = AutoConfig.from_pretrained(searched.export)
    assert config.rope_parameters["rope_type"] == "longrope"
    assert config.rope_parameters["long_factor"] == pytest.approx(lam["rescale_factors"])


def test_needle_fitness_is_cached_apart_and_a_rerun_forwards_nothing(v2, searched, upstream):
    from ropelab.flows.search import search_flow
    from ropelab.tasks.home import paths

    caches = sorted((paths().artifacts / "fitness-cache").glob(f"{upstream[0].fingerprint[:12]}-*-from*.jsonl"))
    assert caches  # the needle fitness (answers only) never shares a file with plain-PPL fitness
    before = [p.read_text() for p in caches]
    again = search_flow(recipe.longrope2_search(v2), model=upstream[0], data=upstream[1])
    assert again.lam == searched.lam and again.sweep == searched.sweep
    assert [p.read_text() for p in caches] == before


def test_mixed_training_spends_the_progressive_budget_and_exports_stock_longrope(v2, outcome):
    tuned = recipe.longrope2_finetune(v2, outcome.search.lam).finetune
    assert tuned.windows == "mixed" and tuned.train.seq_len == 512
    budget = progressive_finetune_tokens(v2)  # 2 rows × (4 steps × 128 + 4 steps × 256)
    assert budget == 3072 and outcome.tokens == tuned.train.steps * 2 * 512 == 3072
    m = outcome.model.metrics
    assert 0 < m["finetune/tokens"] <= outcome.tokens  # real tokens: short-row padding excluded
    # the corpus cut into pieces of ≤ L = 64 tokens ([BOS] 62 tokens [EOS]), 8 per 512-token row
    assert m["finetune/short_pieces"] / 8 <= m["finetune/short_rows"] <= m["finetune/short_pieces"]
    assert m["finetune/long_blocks"] >= 1
    config = AutoConfig.from_pretrained(outcome.model.path)
    rope = config.rope_parameters
    assert rope["rope_type"] == "longrope" and rope["short_factor"] == [1.0] * 16
    lam = json.loads(outcome.search.lam.read_text())["rescale_factors"]
    assert rope["long_factor"] == pytest.approx(lam)
    assert config.max_position_embeddings == 512 and rope["original_max_position_embeddings"] == 64


def test_the_evaluation_scores_ppl_and_needle_ppl_at_every_length(outcome):
    report = outcome.report
    assert set(report.table) == {"native"} and set(report.needle) == {"native"}
    assert sorted(report.table["native"]) == [64, 128, 256, 512, 1024]
    assert set(report.needle["native"]) <= set(report.table["native"]) and 512 in report.needle["native"]
    assert all(np.isfinite(v) and v > 1 for v in report.needle["native"].values())
    assert "Needle PPL" in (report.path / "zoo.md").read_text()
    needle = json.loads((report.path / "needle.json").read_text())
    assert needle["native"]["512"] == pytest.approx(report.needle["native"][512])


def test_longrope2_refuses_a_model_that_already_has_longrope_factors(v2, outcome, upstream):
    from ropelab.flows.search import search_flow

    with pytest.raises(RopelabError, match="already has them"):
        search_flow(recipe.longrope2_search(v2), model=outcome.model, data=upstream[1])


def test_critical_dim_baselines_run_on_the_base_model_at_the_searched_dim(outcome):
    table = outcome.baselines.table
    assert {"none", "ntk", "yarn", "ntk_cd", "yarn_cd"} <= set(table)
    assert any(row.startswith("lambda:") for row in table)  # the searched factors without fine-tuning
    assert table["ntk_cd"][512] != pytest.approx(table["ntk"][512], rel=1e-6)  # the critical dim changes NTK
