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


def fitness_cache_rows(searched) -> list[tuple]:
    folder = Path(searched["dir"]).parents[2] / "fitness-cache"
    rows = []
    for path in folder.glob(f"{searched['model']['fingerprint'][:12]}-*.jsonl"):
        rows += [(path.name, tuple(json.loads(line)["key"]), json.loads(line)["start_tokens"])
                 for line in path.read_text().splitlines()]
    return rows


def test_rerun_is_all_cache_hits_with_the_same_result(searched):
    from flows.search import search_flow

    before = fitness_cache_rows(searched)
    again = search_flow(to_dict(load_config(CONFIGS / "smoke.yaml")), model=searched["model"])
    assert again["lambda"] == searched["lambda"] and again["test_ppl"] == searched["test_ppl"]
    after = fitness_cache_rows(searched)
    assert after == before and len(after) >= searched["evaluated"]  # the rerun evaluated nothing
    assert len(set(after)) == len(after)  # no candidate was ever evaluated twice


def test_zero_or_negative_search_windows_is_a_clear_error():
    from ropelab.errors import RopelabError
    from tasks.search import windows_for

    for count in (0, -2):  # e.g. `ropelab search --set search.num_windows=0` used to run a search on no windows
        with pytest.raises(RopelabError, match="at least one validation window.*pipeline.final_search_windows"):
            windows_for(None, None, "validation", count, 0)
        with pytest.raises(RopelabError, match="at least one test window.*pipeline.final_search_test_windows"):
            windows_for(None, None, "test", count, 0)
