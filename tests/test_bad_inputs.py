"""The bad-input battery (issue 19, item 6): each kind of mistake a user can make is one clear line naming the
problem and the fix, exit code 2, no traceback, and nothing started (no MLflow run of this module's experiment).

The cases run the real `ropelab` entry point (``main``, in process: the same code the console script runs; two
cases also run the console script itself). All fail at config load or in the pre-flight checks, before any stage,
so the module costs seconds. Files are made once per module in one temporary directory.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ropelab.config import load_config
from ropelab.flows.cli import main

EXPERIMENT = "bad-inputs-battery"
SMOKE = load_config(Path(__file__).resolve().parents[1] / "configs" / "smoke.yaml")
PAIRS = SMOKE.model.hidden_size // SMOKE.model.num_attention_heads // 2  # λ values the smoke model takes


def llama_config(**changes) -> dict:
    config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 97, "hidden_size": 32,
              "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2,
              "head_dim": 16, "max_position_embeddings": 64,
              "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}}
    return {**config, **changes}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad-inputs")

    def model(name: str, config: dict | None) -> Path:
        directory = root / name
        directory.mkdir()
        if config is not None:
            (directory / "config.json").write_text(json.dumps(config))
        return directory

    def text(name: str, content: str) -> Path:
        (root / name).write_text(content)
        return root / name

    rising = [1.0 + i / PAIRS for i in range(PAIRS)]
    return {
        "no_config": model("no-config", None),
        "custom_code": model("custom-code", llama_config(auto_map={"AutoModelForCausalLM": "modeling_x.XForCausalLM"})),
        "not_rope": model("not-rope", {"model_type": "gpt2", "n_embd": 32, "n_head": 2, "n_layer": 1}),
        "partial": model("partial", llama_config(rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                                                  "partial_rotary_factor": 0.1})),
        "l64": model("l64", llama_config()),
        "gguf": text("broken.gguf", "this is not a gguf file"),
        "empty_corpus": text("empty.txt", ""),
        "lam_short": text("short.json", json.dumps({"rescale_factors": rising[:3], "factor": 2})),
        "lam_falling": text("falling.json", json.dumps({"rescale_factors": rising[::-1], "factor": 2})),
        "lam_nan": text("nan.txt", "\n".join(["1.0"] * (PAIRS - 1) + ["nan"])),
        "lam_below": text("below.txt", "\n".join(["0.5"] + ["1.0"] * (PAIRS - 1))),
        "lam_word": text("word.txt", "1.0\nabc\n"),
        "lam_empty": text("empty-lambda.txt", ""),
        "lam_json": text("broken.json", '{"rescale_factors": [1.0, 1.1'),
        "yaml": text("broken.yaml", "pretrain: [steps: 3\n"),
    }


def ft(key: str) -> list[str]:
    return ["finetune", "--config", "smoke", "--set", "finetune.method=longrope",
            "--set", f"finetune.rescale_factors_file={{{key}}}"]


def ev(key: str) -> list[str]:
    return ["evaluate", "--config", "smoke", "--set", f"eval.rescale_factor_files=[{{{key}}}]"]


def model_source(key: str, *extra: str) -> list[str]:
    return ["base", "--config", "smoke", "--set", f"model.source={{{key}}}", *extra]


# kind -> (argv with {file} placeholders, words the line must hold: the problem and the fix)
CASES = {
    "unknown config key": (["base", "--set", "pretrain.stepz=3"], ["stepz", "valid keys: steps"]),
    "wrong type": (["base", "--set", "pretrain.steps=abc"], ["pretrain.steps", "integer"]),
    "negative steps": (["base", "--set", "pretrain.steps=-5"], ["pretrain.steps", "≥ 1"]),
    "ratio not above 1": (["search", "--set", "search.scale=0.5"], ["search.scale", "≥ 1"]),
    "zero windows": (["evaluate", "--set", "eval.num_windows=0"], ["eval.num_windows", "≥ 1"]),
    "misspelled choice": (["evaluate", "--set", "eval.protocol=slidng"], ["eval.protocol", "'slidng'", "sliding"]),
    "config file not YAML": (["base", "--config", "{yaml}"], ["broken.yaml", "not valid YAML"]),
    "preset name escaping the home": (["pipeline", "--set", "preset=x/../../escape"], ["preset", "plain name"]),
    "experiment name escaping the home": (["data", "--set", "experiment=../../tmp/x"], ["experiment", "plain name"]),
    "data name escaping the home": (["data", "--set", "data.name=/etc"], ["data.name", "plain name"]),
    "λ file missing": (["finetune", "--config", "smoke", "--set", "finetune.rescale_factors_file=/no/l.json"],
                       ["/no/l.json", "no such file"]),
    "λ file of the wrong length": (ft("lam_short"), ["short.json", f"{PAIRS} rotary pairs"]),
    "λ file non-monotone": (ft("lam_falling"), ["falling.json", "non-decreasing"]),
    "λ file with NaN": (ft("lam_nan"), ["nan.txt", "NaN"]),
    "λ file below 1": (ft("lam_below"), ["below.txt", "≥ 1"]),
    "λ file not numbers": (ft("lam_word"), ["word.txt", "not a list of numbers"]),
    "λ file empty": (ft("lam_empty"), ["empty-lambda.txt", "no rescale factors"]),
    "λ file broken JSON": (ev("lam_json"), ["broken.json", "broken JSON"]),
    "model directory missing": (["base", "--config", "smoke", "--set", "model.source=/no/model"],
                                ["/no/model", "does not exist", "local model directory"]),
    "model directory without config": (model_source("no_config"), ["no-config", "no config.json"]),
    "model that is not RoPE": (model_source("not_rope"), ["rope_theta"]),
    "model with impossible partial rotary": (model_source("partial"), ["partial_rotary_factor", "even rotated width"]),
    "model that needs remote code": (model_source("custom_code"), ["custom-code", "auto_map",
                                                                  "model.trust_remote_code=true"]),
    "corrupted GGUF": (model_source("gguf"), ["broken.gguf", "not a GGUF file"]),
    "preset context length contradicting its model": (model_source("l64", "--set", "model.context_length=256"),
                                                       ["model.context_length 256", "L = 64"]),
    "corpus missing": (["data", "--config", "smoke", "--set", "data.sources=[/no/corpus.txt]"],
                       ["/no/corpus.txt", "does not exist"]),
    "corpus empty": (["data", "--config", "smoke", "--set", "data.sources=[{empty_corpus}]"],
                     ["empty.txt", "is empty"]),
    "validation and test documents overlapping": (
        ["data", "--config", "smoke", "--set", "data.validation_docs=[hamlet]", "--set", "data.test_docs=[hamlet]"],
        ["hamlet", "validation_docs", "test_docs"]),
    "unknown --rerun-from stage": (["pipeline", "--config", "smoke", "--rerun-from", "serach1"],
                                   ["serach1", "stages: base"]),
    "home that is not a project": (["data", "--config", "smoke", "--home", "/proc/self"], ["ropelab init"]),
    "--set without a value": (["evaluate", "--set", "eval"], ["key.path=value"]),
}


def fill(argv: list[str], files: dict[str, Path]) -> list[str]:
    return [a.format(**{k: str(v) for k, v in files.items()}) for a in argv]


def experiment_argv(argv: list[str]) -> list[str]:
    flow = argv[0] in {"data", "base", "search", "finetune", "clex", "pipeline", "evaluate"}
    return argv + (["--set", f"experiment={EXPERIMENT}"] if flow and "experiment=" not in " ".join(argv) else [])


def test_the_battery_covers_at_least_25_kinds():
    assert len(CASES) >= 25


@pytest.mark.parametrize("kind", list(CASES))
def test_a_bad_input_is_one_clear_line_exit_2_and_nothing_starts(kind, files, capsys):
    argv, words = CASES[kind]
    code = main(experiment_argv(fill(argv, files)))
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2, (kind, err)
    assert len(lines) == 1 and lines[0].startswith("ropelab: error: "), (kind, err)
    assert "Traceback" not in err and out == ""
    missing = [w for w in words if w not in lines[0]]
    assert not missing, (kind, lines[0], missing)


def test_a_port_in_use_is_one_line(capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code = main(["ui", "--port", str(port)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and str(port) in err


def test_a_read_only_home_is_one_line_at_start(tmp_path, capsys):
    """A project home on a read-only file system (a tmpfs remounted read-only; needs root, as CI runs)."""
    from ropelab.tasks.home import init_home

    home = init_home(tmp_path / "ro")
    if subprocess.run(["mount", "--bind", str(home), str(home)], capture_output=True).returncode != 0:
        pytest.skip("cannot bind-mount here (not root)")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(home)], check=True, capture_output=True)
        code = main(["data", "--config", "smoke", "--home", str(home)])
    finally:
        subprocess.run(["umount", str(home)], check=True)
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "project home" in err and str(home) in err


@pytest.mark.parametrize("kind", ["model that needs remote code", "λ file broken JSON"])
def test_the_console_script_gives_the_same_line_and_no_traceback(kind, files):
    argv, words = CASES[kind]
    done = subprocess.run([str(Path(sys.executable).parent / "ropelab"), *experiment_argv(fill(argv, files))],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and all(w in done.stderr for w in words)


def test_no_case_started_a_run():
    """Runs after the cases (file order): the battery's experiment has no MLflow run at all."""
    from ropelab.tasks import tracking

    found = tracking.client().get_experiment_by_name(EXPERIMENT)
    assert found is None or not tracking.client().search_runs([found.experiment_id])


def test_preflight_knows_every_packaged_corpus():
    from ropelab.preflight import BUILTIN_SOURCES
    from ropelab.tasks.data import PACKAGE_SOURCES

    assert set(BUILTIN_SOURCES) == set(PACKAGE_SOURCES)
