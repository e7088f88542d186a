"""The `ropelab` command line: outputs equal transformers' references; user mistakes give one clear line."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from ropelab.flows.cli import main

TINY = str(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml")
SETTING = ["--head-dim", "64", "--base", "10000", "--factor", "8", "--original-max-position-embeddings", "256"]


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def theirs(rope_parameters: dict, seq_len=None):
    config = LlamaConfig(hidden_size=128, num_attention_heads=2, head_dim=64, max_position_embeddings=2048,
                         rope_parameters={"rope_theta": 10000.0, **rope_parameters})
    return ROPE_INIT_FUNCTIONS[rope_parameters["rope_type"]](config, seq_len=seq_len)


LAMBDA = [1.0 + 7.0 * i / 31 for i in range(32)]
CASES = {
    "yarn": ([], {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 256}, None),
    "linear": ([], {"rope_type": "linear", "factor": 8.0}, None),
    "llama3": ([], {"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 256,
                    "low_freq_factor": 1.0, "high_freq_factor": 4.0}, None),
    "dynamic": (["--seq-len", "1500"], {"rope_type": "dynamic", "factor": 8.0}, 1500),
    "longrope": (["--rescale-factors", "LAMBDA"], {"rope_type": "longrope", "factor": 8.0,
                 "original_max_position_embeddings": 256, "long_factor": LAMBDA, "short_factor": LAMBDA}, None),
}


@pytest.mark.parametrize("method", list(CASES))
def test_show_json_equals_transformers(capsys, tmp_path, method):
    extra, params, seq_len = CASES[method]
    lam_file = tmp_path / "lambda.txt"
    lam_file.write_text("\n".join(map(str, LAMBDA)))
    extra = [str(lam_file) if a == "LAMBDA" else a for a in extra]
    setting = [a for a in SETTING] if method != "dynamic" else SETTING
    if method == "dynamic":  # transformers' dynamic scales from max_position_embeddings
        setting = [*SETTING[:6], "--original-max-position-embeddings", "2048"]
    code, out, _ = run_cli(capsys, "rope", "show", "--method", method, *setting, *extra, "--json")
    assert code == 0
    got = json.loads(out)
    inv, attention = theirs(params, seq_len)
    assert torch.allclose(torch.tensor(got["inv_freq"]), inv, rtol=0, atol=1e-6)
    assert got["attention_factor"] == pytest.approx(attention, abs=1e-6)


def test_lambda_file_accepts_json_list(capsys, tmp_path):
    path = tmp_path / "lambda.json"
    path.write_text(json.dumps(LAMBDA))
    code, out, _ = run_cli(capsys, "rope", "show", "--method", "longrope", *SETTING, "--rescale-factors", str(path),
                           "--start-tokens", "4", "--json")
    assert code == 0 and json.loads(out)["start_tokens"] == 4


@pytest.mark.parametrize("method", ["ntk_cd", "yarn_cd"])
def test_show_critical_dim_baselines_equal_transformers_longrope_of_their_factors(capsys, method):
    from ropelab.rope import RopeSpec

    code, out, _ = run_cli(capsys, "rope", "show", "--method", method, *SETTING, "--critical-dim", "10", "--json")
    spec = RopeSpec(method, 64, 10000.0, factor=8.0, original_max_position_embeddings=256, critical_dim=10)
    lam = list(spec.exact_factors())
    inv, _ = theirs({"rope_type": "longrope", "factor": 8.0, "original_max_position_embeddings": 256,
                     "long_factor": lam, "short_factor": lam})
    got = json.loads(out)
    assert code == 0 and torch.equal(torch.tensor(got["inv_freq"]), inv)
    assert got["attention_factor"] == spec.compute()[1]


@pytest.mark.parametrize("argv,message", [
    (["rope", "show", "--method", "magic"], "known methods: default, dynamic"),
    (["rope", "show", "--method", "ntk_cd", "--factor", "4"], "needs critical_dim"),
    (["rope", "show", "--method", "ntk_cd", "--factor", "4", "--critical-dim", "32"],
     "critical_dim must be a rotary-pair index in 1..31"),
    (["rope", "show", "--method", "longrope", *SETTING, "--rescale-factors", "/nonexistent/l.txt"], "cannot read"),
    (["rope", "show", "--method", "linear", "--factor", "0.5"], "factor must be >= 1"),
    (["rope", "show", "--method", "yarn", "--factor", "4"], "needs original_max_position_embeddings"),
    (["clex", "--set", "clex.max_t=0", "--set", "clex.positions=zigzag"],
     "clex.max_t must be ≥ 1, got 0; clex.positions: 'zigzag' is not one of random, uniform, chunks"),
    (["pipeline", "--set", "clex.time_dt=0"], "clex.time_dt must be > 0"),
])
def test_user_mistakes_give_one_line_and_exit_2(capsys, argv, message):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2 and message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_bad_lambda_file_content(capsys, tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("1.0\nabc\n")
    code, _, err = run_cli(capsys, "rope", "show", "--method", "longrope", *SETTING, "--rescale-factors", str(path))
    assert code == 2 and "not a list of numbers" in err


def test_compare_prints_table_and_saves_plot(capsys, tmp_path):
    lam = tmp_path / "searched.txt"
    lam.write_text("\n".join(map(str, LAMBDA)))
    plot = tmp_path / "zoo.png"
    code, out, _ = run_cli(capsys, "rope", "compare", *SETTING, "--rescale-factors", str(lam), "--out", str(plot),
                           "--json")
    assert code == 0
    result = json.loads(out)
    assert set(result["scale"]) == {"none", "PI", "NTK", "dynamic NTK", "YaRN", "Llama-3", "λ searched"}
    assert result["scale"]["PI"] == pytest.approx([8.0] * 32)
    assert result["scale"]["λ searched"] == pytest.approx(LAMBDA, rel=1e-6)
    assert plot.stat().st_size > 10_000 and plot.read_bytes()[:4] == b"\x89PNG"


def test_console_script_is_installed_and_runs():
    script = Path(sys.executable).parent / "ropelab"
    assert script.exists(), "the ropelab console script is missing from the virtualenv"
    done = subprocess.run([str(script), "rope", "methods"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "longrope" in done.stdout and "yarn" in done.stdout


@pytest.mark.parametrize("argv,message", [
    (["data", "--config", "/nonexistent/preset.yaml"], "is neither a file nor a preset; presets: llama2-7b"),
    (["pipeline", "--set", "preset=x/../../escape"], "preset: 'x/../../escape' must be a plain name"),
    (["base", "--set", "pretrain.stepz=3"], "unknown key(s) stepz; valid keys: steps"),
    (["search", "--set", "search.scale=fast"], "expected a number"),
    (["evaluate", "--set", "eval"], "key.path=value"),
    (["pipeline", "--config", TINY, "--set", "pipeline.final_search_test_windows=-1"],
     "pipeline.final_search_test_windows must be ≥ 0"),
    (["pipeline", "--config", TINY, "--set", "pipeline.ratios=[8]", "--dry-run"],
     "pipeline.ratios must be two stage-1 ratios"),
])
def test_flow_commands_reject_bad_configs_in_one_line(capsys, argv, message):
    code, _, err = run_cli(capsys, *argv)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_config_command_prints_resolved_yaml_and_explains(capsys):
    code, out, _ = run_cli(capsys, "config", "--set", "search.scale=16")
    assert code == 0 and "scale: 16.0" in out and "preset: tiny" in out
    code, out, _ = run_cli(capsys, "config", "--explain")
    assert code == 0 and "search.evo_scale = 1.0:" in out


@pytest.mark.parametrize("key", sorted(__import__("tests.test_config_choices", fromlist=["CHOICES"]).CHOICES))
def test_a_misspelled_choice_stops_the_pipeline_command_before_any_stage(capsys, tmp_path, monkeypatch, key):
    """No project home, no Prefect, no model: the config is rejected first, in one line, exit 2."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ROPELAB_HOME", raising=False)
    value = "[bogus]" if key == "eval.methods" else "bogus"
    code, out, err = run_cli(capsys, "pipeline", "--config", "smoke", "--set", f"{key}={value}")
    assert code == 2 and key in err and "'bogus'" in err and len(err.strip().splitlines()) == 1 and out == ""


def test_flow_commands_outside_a_project_say_how_to_make_one(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ROPELAB_HOME", raising=False)
    code, _, err = run_cli(capsys, "data", "--config", "smoke")
    assert code == 2 and "ropelab init" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_a_user_error_inside_a_stage_is_one_line_not_retried_and_marks_the_run_failed():
    """finetune.method=longrope without a λ file is only known inside the fine-tuning task."""
    from ropelab.tasks import tracking
    from ropelab.tasks.home import paths

    started = time.monotonic()
    done = subprocess.run([str(Path(sys.executable).parent / "ropelab"), "finetune", "--config", "smoke",
                           "--set", "finetune.method=longrope", "--set", "experiment=user-error"],
                          capture_output=True, text=True, timeout=600, cwd=paths().home)
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [ln for ln in done.stderr.strip().splitlines() if "it/s]" not in ln and "%|" not in ln]  # progress bars
    assert lines == ["ropelab: error: finetune.method longrope needs finetune.rescale_factors_file (a search's λ file)"]
    client = tracking.client()
    experiment = client.get_experiment_by_name("user-error")
    runs = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    failed = runs["finetune-1024"]
    assert failed.info.status == "FAILED" and "rescale_factors_file" in failed.data.tags["ropelab.error"]
    # the standalone command is one top-level run with its stages (data, base, the fine-tune) nested under it
    parent = client.get_run(failed.data.tags["mlflow.parentRunId"])
    assert parent.info.run_name.startswith("finetune-smoke-") and parent.info.status == "FAILED"
    assert {"data", "base"} <= {r.info.run_name for r in runs.values()
                                if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert time.monotonic() - started < 10 + 120  # no retry: the first retry waits 10 s, the second 60 s


@pytest.mark.slow
def test_refresh_recomputes_a_cached_stage():
    from ropelab.tasks import tracking
    from ropelab.tasks.home import paths

    def data_run(*extra) -> str:
        done = subprocess.run([str(Path(sys.executable).parent / "ropelab"), "data", "--config", "smoke",
                               "--set", "experiment=refresh-test", *extra],
                              capture_output=True, text=True, timeout=600, cwd=paths().home)
        assert done.returncode == 0, done.stderr[-2000:]
        client = tracking.client()
        experiment = client.get_experiment_by_name("refresh-test")
        latest = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)
        return latest[0].data.tags["ropelab.cache"]

    data_run()
    assert data_run() == "hit"
    assert data_run("--refresh") == "miss"


def test_runs_lists_recent_pipelines_with_state_headline_and_error(capsys):
    from ropelab.tasks import tracking

    client = tracking.client()
    experiment = tracking.experiment_id("runs-view-test")
    done = client.create_run(experiment, tags={"ropelab.stage": "pipeline", "ropelab.preset": "tiny"}).info.run_id
    client.log_metric(done, "headline/final_length_ppl_over_base_at_L", 1.04)
    client.log_metric(done, "headline/change_at_L", 0.001)
    client.set_terminated(done)
    time.sleep(0.01)  # newest first: distinct start times
    failed = client.create_run(experiment, tags={"ropelab.stage": "pipeline", "ropelab.preset": "smoke",
                                                 "ropelab.error": "RopelabError: disk full"}).info.run_id
    client.set_terminated(failed, "FAILED")
    code, out, _ = run_cli(capsys, "runs", "-n", "2")
    lines = out.strip().splitlines()
    assert code == 0 and len(lines) == 3 and lines[0].startswith("started")
    assert "smoke" in lines[1] and "FAILED" in lines[1] and "disk full" in lines[1]  # newest first
    assert "tiny" in lines[2] and "FINISHED" in lines[2] and "1.040×" in lines[2] and "+0.1%" in lines[2]


def test_a_projects_edited_preset_copy_is_the_one_a_preset_name_loads(capsys, tmp_path, monkeypatch):
    from ropelab.tasks.home import init_home

    home = init_home(tmp_path / "project")
    copy = home / "configs" / "smoke.yaml"
    copy.write_text(copy.read_text().replace("experiment: ropelab-smoke", "experiment: my-edited-smoke"))
    monkeypatch.delenv("ROPELAB_HOME", raising=False)
    monkeypatch.chdir(home)
    code, out, _ = run_cli(capsys, "config", "--config", "smoke")
    assert code == 0 and "experiment: my-edited-smoke" in out
    monkeypatch.chdir(tmp_path)  # outside the project: the packaged preset
    code, out, _ = run_cli(capsys, "config", "--config", "smoke")
    assert code == 0 and "experiment: ropelab-smoke" in out


def test_a_missing_finetune_lambda_file_is_one_line(capsys):
    code, _, err = run_cli(capsys, "finetune", "--config", "smoke", "--set", "finetune.rescale_factors_file=/no/l.json")
    assert code == 2 and err.strip().splitlines() == ["ropelab: error: finetune.rescale_factors_file: no such file /no/l.json"]
