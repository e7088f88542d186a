"""End to end on the smoke preset: real Prefect flow runs, real DVC, real MLflow store (tests' own home)."""

from __future__ import annotations

import dataclasses
import math
import shutil
import subprocess

import pytest

from ropelab.config import derive, load_config
from ropelab.data.corpus import CorpusReader
from ropelab.tasks.home import resolve_config

pytestmark = pytest.mark.slow


def forget_data_version(home, name: str) -> None:
    """Undo a test-only data version in the session home (a clone of the repository, which later tests check is
    clean): its directory, its DVC pointer and the line `dvc add` wrote into .gitignore."""
    shutil.rmtree(home / name, ignore_errors=True)
    (home / f"{name}.dvc").unlink(missing_ok=True)
    subprocess.run(["git", "checkout", "--", ".gitignore"], cwd=home, check=True)


@pytest.fixture(scope="module")
def smoke():
    return load_config(resolve_config("smoke"))


@pytest.fixture(scope="module")
def first_base_run(smoke):
    from ropelab.flows.base import base_flow
    from ropelab.flows.data import data_flow

    data = data_flow(smoke)
    return data, base_flow(smoke, data=data)


def test_data_is_versioned_by_dvc_under_its_own_pointer_and_rebuilds_identically(first_base_run, smoke):
    from ropelab.flows.data import data_flow
    from ropelab.tasks import versioning
    from ropelab.tasks.data import build_corpus, source_fingerprint
    from ropelab.tasks.home import paths

    data, _ = first_base_run
    home = paths().home
    assert data.name == "data-smoke" and data.path == home / "data-smoke" / "corpus"
    assert data.fingerprint == versioning.data_version(home, "data-smoke") and versioning.is_clean(home, "data-smoke")
    assert versioning.data_version(home) != data.fingerprint  # the embedded default's data.dvc is another version
    # a rebuild from scratch (cache refreshed) writes the same bytes, hence the same DVC hash
    rebuilt = build_corpus.with_options(refresh_cache=True)(smoke.data, source_fingerprint(smoke.data))
    assert rebuilt.fingerprint == data.fingerprint
    changed = data_flow(derive(smoke, data={"validation_docs": ["macbeth"]}))
    assert changed.fingerprint != data.fingerprint
    assert data_flow(smoke).fingerprint == data.fingerprint  # back to the original inputs: the original version


def test_base_model_trained_saved_and_evaluated(first_base_run):
    _, base = first_base_run
    assert (base.path / "model.safetensors").exists() and (base.path / "config.json").exists()
    assert (base.path / "ropelab_tokenizer.json").exists()
    assert math.isfinite(base.metrics["test/ppl"]) and base.metrics["test/ppl"] < 200  # untrained ≈ 260


def test_second_invocation_is_a_cache_hit(first_base_run, smoke):
    from ropelab.flows.base import base_flow
    from ropelab.tasks import tracking

    data, base = first_base_run
    again = base_flow(smoke, data=data)
    assert again.path == base.path and again.fingerprint == base.fingerprint
    assert tracking.client().get_run(again.run_id).data.tags["ropelab.cache"] == "hit"


def test_an_eval_setting_does_not_retrain_the_base(first_base_run, smoke):
    """Pretraining depends on the data, the model and its optimisation, not on how the base is scored."""
    from ropelab.flows.base import base_flow

    data, base = first_base_run
    rescored = base_flow(derive(smoke, eval={"num_windows": 3}), data=data)
    assert rescored.path == base.path and rescored.metrics["test/ppl"] != base.metrics["test/ppl"]


def test_training_never_read_the_test_split(first_base_run):
    data, base = first_base_run
    manifest = CorpusReader(data.path).manifest()
    test = {d["sha256"] for d in manifest["splits"]["test"]}
    validation = {d["sha256"] for d in manifest["splits"]["validation"]}
    assert set(base.read_documents) == {d["sha256"] for d in manifest["splits"]["train"]}
    assert not set(base.read_documents) & (test | validation)


def test_mlflow_runs_carry_lineage(first_base_run):
    from ropelab.tasks import tracking

    data, base = first_base_run
    client = tracking.client()
    run = client.get_run(base.run_id)
    tags = run.data.tags
    assert tags["data.version"] == data.fingerprint
    assert tags["ropelab.consumed.data"] == data.run_id
    assert tags["prefect.flow_run_id"] not in ("", "none") and tags["git.commit"]
    assert tags["model.fingerprint"] == base.fingerprint and len(tags["ropelab.code_version"]) == 16
    assert "test/ppl" in run.data.metrics and run.data.params["pretrain.steps"] == "20"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "model"} <= artifacts
    loss = client.get_metric_history(run.info.run_id, "train/loss")
    assert len(loss) >= 2 and loss[-1].value < loss[0].value
    data_run = client.get_run(data.run_id)
    assert data_run.inputs.dataset_inputs[0].dataset.digest == data.fingerprint


def test_evaluate_flow_writes_the_zoo_report(first_base_run, smoke):
    from ropelab.flows.evaluate import evaluate_flow
    from ropelab.tasks import tracking

    data, base = first_base_run
    config = derive(smoke, eval={"length_multipliers": [1, 2, 4], "methods": ["none", "pi", "yarn"],
                                 "passkey_trials": 1, "passkey_depths": [0.5]})
    report = evaluate_flow(config, model=base, data=data)
    for name in ("zoo.md", "zoo.csv", "ppl_vs_length.png", "passkey.json", "passkey_pi.png"):
        assert (report.path / name).exists(), name
    assert set(report.table) == {"none", "pi", "yarn"} and set(report.table["pi"]) == {64, 128, 256}
    assert report.table["pi"][64] == pytest.approx(report.table["none"][64], rel=1e-6)
    run = tracking.client().get_run(report.run_id)
    assert run.data.metrics["ppl/yarn/256"] == pytest.approx(report.table["yarn"][256])
    assert [m.step for m in tracking.client().get_metric_history(report.run_id, "ppl/yarn")] == [64, 128, 256]
    assert run.data.tags["ropelab.consumed.model"] == base.run_id
    assert "256" in report.passkey["none"] and "128" not in report.passkey["none"]  # 128 can't hold the task line, needle and question
    assert dataclasses.is_dataclass(report)


def test_retrieval_documents_reach_pretraining_and_the_base_is_checked_for_retrieval_at_L(smoke, capsys, request):
    """Data with retrieval documents (its own DVC pointer), a base at L = 256 (a passkey prompt fits): the train
    split holds the synthetic documents, the manifest records them, and the base stage scores passkey at L with
    and without the needle (this untrained-in-effect base retrieves nothing; without the needle is chance)."""
    from ropelab.flows.base import base_flow
    from ropelab.flows.data import data_flow
    from ropelab.tasks.home import paths

    home = paths().home
    request.addfinalizer(lambda: forget_data_version(home, "data-retrieval"))
    cfg = derive(smoke, data={"name": "data-retrieval", "retrieval_share": 0.3},
                 model={"context_length": 256}, pretrain={"seq_len": 256, "steps": 4})
    data = data_flow(cfg)
    reader = CorpusReader(data.path)
    synthetic = [d for d in reader.documents("train", "inspect") if d.source == "synthetic-retrieval"]
    assert synthetic and reader.manifest()["retrieval"]["documents"] == len(synthetic)
    base = base_flow(cfg, data=data)
    m = base.metrics
    assert m["passkey/at_L_trials"] == 100 and m["passkey/at_L_no_needle"] == 0.0
    assert 0.0 <= m["passkey/at_L_ci_low"] <= m["passkey/at_L"] <= m["passkey/at_L_ci_high"] <= 1.0
    assert "passkey at 256: " in capsys.readouterr().out
