"""The search flow on the smoke preset: every λ set tracked, held-out report, cache-hit rerun, export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoConfig

from ropelab.config import derive, load_config
from ropelab.tasks.home import resolve_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke():
    return load_config(resolve_config("smoke"))


@pytest.fixture(scope="module")
def upstream(smoke):
    from ropelab.flows.base import upstream

    return upstream(smoke, None, None, None)


@pytest.fixture(scope="module")
def searched(smoke, upstream):
    from ropelab.flows.search import search_flow

    return search_flow(smoke, model=upstream[0], data=upstream[1])


def test_mlflow_run_holds_every_evaluated_lambda_set(searched):
    from ropelab.tasks import tracking

    client, run_id = tracking.client(), searched.run_id
    logs = [a.path for a in client.list_artifacts(run_id, "generations")]
    assert len(logs) == 4  # initial population + 3 generations
    rows = []
    for path in logs:
        local = client.download_artifacts(run_id, path)
        rows += [json.loads(line) for line in Path(local).read_text().splitlines()]
    assert len(rows) == searched.evaluated
    assert len({(tuple(r["rescale_factors"]), r["start_tokens"]) for r in rows}) == len(rows)
    best = client.get_metric_history(run_id, "search/best_fitness")
    assert [m.step for m in best] == [0, 1, 2, 3]
    assert all(b.value <= a.value for a, b in zip(best, best[1:], strict=False))


def test_report_is_honest_and_the_lambda_valid(searched):
    report = json.loads((searched.path / "report.json").read_text())
    assert set(report["test_ppl"]) == {"winner", "seed:pi", "seed:ntk", "seed:yarn"}
    assert report["validation_ppl"]["winner"] <= min(v for k, v in report["validation_ppl"].items() if k != "winner")
    lam = np.array(json.loads(searched.lam.read_text())["rescale_factors"])
    assert np.all(np.diff(lam) >= 0) and lam.min() >= 1.0 and lam.max() <= 1.25 * 4.0
    config = AutoConfig.from_pretrained(searched.export)
    assert config.rope_parameters["rope_type"] == "longrope"
    assert config.rope_parameters["long_factor"] == pytest.approx(lam.tolist())


def fitness_rows(model_fingerprint: str) -> list[tuple]:
    from ropelab.tasks.home import paths

    rows = []
    for path in (paths().artifacts / "fitness-cache").glob(f"{model_fingerprint[:12]}-*.jsonl"):
        rows += [(path.name, row["setting"], row["window"], row["nll"])
                 for row in map(json.loads, path.read_text().splitlines())]
    return rows


def test_rerun_is_all_cache_hits_with_the_same_result(smoke, searched, upstream):
    from ropelab.flows.search import search_flow

    before = fitness_rows(upstream[0].fingerprint)
    again = search_flow(smoke, model=upstream[0], data=upstream[1])
    assert again.lam == searched.lam and again.test_ppl == searched.test_ppl
    after = fitness_rows(upstream[0].fingerprint)
    assert after == before  # the rerun forwarded nothing
    assert len({row[:2] for row in after}) >= searched.evaluated  # one line per (candidate, window) scored
    assert len({row[:3] for row in after}) == len(after)  # no window of a candidate was ever scored twice


def test_searches_differing_only_in_attention_policy_get_their_own_fitness(smoke, searched, upstream):
    """The fitness cache is keyed by the full RoPE setting: an attention policy is not a cache hit of another."""
    from ropelab.flows.search import search_flow

    other = search_flow(derive(smoke, search={"attention_policy": "none"}), model=upstream[0], data=upstream[1])
    ours, theirs = searched.validation_ppl, other.validation_ppl
    shared = set(ours) & set(theirs) - {"winner"}  # the seeds: the same λ in both searches
    assert shared and all(ours[k] != pytest.approx(theirs[k], rel=1e-6) for k in shared)
