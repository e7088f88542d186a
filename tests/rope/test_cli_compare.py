"""`ropelab rope compare` with λ files, and what a λ file must record: every input kept and labelled by its
stage, the plot written only where asked, a λ file without a factor refused in one line."""

from __future__ import annotations

import json

import pytest

from ropelab.errors import RopelabError
from ropelab.flows.cli import main
from ropelab.rope.factors_io import lambda_labels, read_rescale_spec, recorded_factor, write_rescale_factors

SETTING = ["--head-dim", "16", "--base", "10000", "--factor", "4", "--original-max-position-embeddings", "64"]
LAMBDA = [1.0 + i / 4 for i in range(8)]


def search_result(root, run: str, factor: float, mode: str = "extend", search_scale: float | None = None,
                  values=LAMBDA):
    """A λ file where a search writes it: <run>/result/rescale_factors.json, with the search's metadata."""
    return write_rescale_factors(root / run / "result" / "rescale_factors.json", values, factor=factor, mode=mode,
                                 search_scale=search_scale or factor)


def compare(capsys, *argv) -> tuple[int, dict, str]:
    code = main(["rope", "compare", *SETTING, *argv, "--json"])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else {}), err


def test_two_searches_files_of_the_same_name_are_both_kept_and_labelled_by_stage(capsys, tmp_path):
    first = search_result(tmp_path, "a1b2c3d4", 2.0, values=[v * 1.1 for v in LAMBDA])
    second = search_result(tmp_path, "e5f6a7b8", 4.0)
    code, result, _ = compare(capsys, "--rescale-factors", str(first), "--rescale-factors", str(second))
    assert code == 0
    assert {"λ extend-2x", "λ extend-4x"} <= set(result["scale"])
    assert result["scale"]["λ extend-4x"] == pytest.approx(LAMBDA)
    assert result["scale"]["λ extend-2x"] == pytest.approx([v * 1.1 for v in LAMBDA])


def test_files_of_the_same_stage_are_told_apart_by_their_directories(tmp_path):
    runs = [search_result(tmp_path / "pipeline-a", "0f3e", 4.0), search_result(tmp_path / "pipeline-b", "0f3e", 4.0)]
    assert lambda_labels(runs) == ["extend-4x pipeline-a", "extend-4x pipeline-b"]
    plain = [tmp_path / d / "lambda.txt" for d in ("x", "y")]
    for path in plain:
        path.parent.mkdir()
        path.write_text("1.0\n2.0\n")
    assert lambda_labels([*plain, plain[0]]) == ["lambda x", "lambda y", "lambda x input-3"]  # none ever dropped
    second_stage = search_result(tmp_path, "s2", 8.0, search_scale=2.0)
    assert lambda_labels([second_stage]) == ["extend-8x-searched-2x"]


def test_the_plot_is_written_where_the_user_says_and_nowhere_else(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, result, _ = compare(capsys)
    assert code == 0 and result["plot"] is None and not list(tmp_path.iterdir())
    target = tmp_path / "plots" / "zoo.png"
    code, result, _ = compare(capsys, "--output", str(target))
    assert code == 0 and result["plot"] == str(target) and target.read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plots"]


def test_a_lambda_file_without_a_factor_is_one_line_naming_the_file_and_the_fix(tmp_path):
    plain = tmp_path / "lambda.txt"
    plain.write_text("\n".join(map(str, LAMBDA)))
    with pytest.raises(RopelabError) as caught:
        read_rescale_spec(plain, head_dim=16, base=10000.0, original_max_position_embeddings=64)
    message = str(caught.value)
    assert len(message.splitlines()) == 1 and str(plain) in message and '"factor": 8' in message
    assert "records no factor" in message
    recorded = write_rescale_factors(tmp_path / "with.json", LAMBDA, factor=4.0)
    assert recorded_factor(recorded) == 4.0
    assert read_rescale_spec(recorded, head_dim=16, base=10000.0, original_max_position_embeddings=64).factor == 4.0
    # a caller with its own configured scale (a fine-tune) may still pass one explicitly
    assert read_rescale_spec(plain, head_dim=16, base=10000.0, original_max_position_embeddings=64,
                             default_factor=2.0).factor == 2.0


def test_the_evaluation_refuses_a_lambda_file_without_a_factor(tmp_path):
    """It used to take the factor from the largest evaluated length, silently."""
    from ropelab.flows.evaluate import lambda_files
    from ropelab.rope.adapter import RopeBasics
    from ropelab.tasks.evaluate import lambda_methods

    plain = tmp_path / "lambda.txt"
    plain.write_text("\n".join(map(str, LAMBDA)))
    with pytest.raises(RopelabError, match=f"{plain}: the λ file records no factor"):
        lambda_files([str(plain)])  # before any stage starts
    with pytest.raises(RopelabError, match="records no factor"):
        lambda_methods([plain], RopeBasics(16, 10000.0, 64))
    good = search_result(tmp_path, "run", 4.0)
    methods = lambda_methods([good, search_result(tmp_path, "other", 2.0)], RopeBasics(16, 10000.0, 64))
    assert set(methods) == {"lambda:extend-4x", "lambda:extend-2x"}
    assert methods["lambda:extend-4x"](256, RopeBasics(16, 10000.0, 64))[0].factor == 4.0
