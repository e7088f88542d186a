"""The search flow on the smoke preset: every λ set tracked, held-out report, cache-hit rerun, export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoConfig

from ropelab.config import load_config, to_dict

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def searched():
    from flows.search import search_flow

    return search_flow(to_dict(load_config(CONFIGS / "smoke.yaml")))


def test_mlflow_run_holds_every_evaluated_lambda_set(searched):
    from tasks import tracking

    client, run_id = tracking.client(), searched["run_id"]
    logs = [a.path for a in client.list_artifacts(run_id, "generations")]
    assert len(logs) == 4  # initial population + 3 generations
    rows = []
    for path in logs:
        local = client.download_artifacts(run_id, path)
        rows += [json.loads(line) for line in Path(local).read_text().splitlines()]
    assert len(rows) == searched["evaluated"]
    assert len({(tuple(r["rescale_factors"]), r["start_tokens"]) for r in rows}) == len(rows)
    best = client.get_metric_history(run_id, "search/best_fitness")
    assert [m.step for m in best] == [0, 1, 2, 3]
    assert all(b.value <= a.value for a, b in zip(best, best[1:], strict=False))


def test_report_is_honest_and_the_lambda_valid(searched):
    report = json.loads((Path(searched["dir"]) / "report.json").read_text())
    assert set(report["test_ppl"]) == {"winner", "seed:pi", "seed:ntk", "seed:yarn"}
    assert report["validation_ppl"]["winner"] <= min(v for k, v in report["validation_ppl"].items() if k != "winner")
    lam = np.array(json.loads(Path(searched["lambda"]).read_text())["rescale_factors"])
    assert np.all(np.diff(lam) >= 0) and lam.min() >= 1.0 and lam.max() <= 1.25 * 4.0
    config = AutoConfig.from_pretrained(searched["export"])
    assert config.rope_parameters["rope_type"] == "longrope"
    assert config.rope_parameters["long_factor"] == pytest.approx(lam.tolist())


def test_rerun_is_all_cache_hits_with_the_same_result(searched):
    from flows.search import search_flow

    again = search_flow(to_dict(load_config(CONFIGS / "smoke.yaml")), model=searched["model"])
    assert again["lambda"] == searched["lambda"] and again["test_ppl"] == searched["test_ppl"]
    fitness_cache = list((Path(searched["dir"]).parents[2] / "fitness-cache").glob("*.jsonl"))
    lines = sum(len(p.read_text().splitlines()) for p in fitness_cache)
    assert lines == searched["evaluated"]  # nothing was evaluated twice across both runs
