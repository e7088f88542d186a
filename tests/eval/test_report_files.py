"""The evaluation report's files name their protocol, carry passkey intervals and the control."""

from __future__ import annotations

import csv
import io
import json

import torch

from ropelab.config import EvalConfig, ModelConfig
from ropelab.data.tokenizer import ByteTokenizer
from ropelab.eval import zoo
from ropelab.eval.passkey import min_prompt_length
from ropelab.eval.perplexity import truncated_windows
from ropelab.models import build_tiny_llama
from ropelab.rope.adapter import rope_basics


def test_report_names_the_protocol_and_shows_passkey_with_intervals_and_control(tmp_path):
    from ropelab.tasks.evaluate import write_report

    model = build_tiny_llama(ModelConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=64, context_length=64), 0).eval()
    tok, basics = ByteTokenizer(), rope_basics(model.config)
    cfg = EvalConfig(num_windows=2, length_multipliers=(1, 4), methods=("none", "pi"), passkey_depths=(0.5,))
    docs = [torch.randint(0, 256, (600,), generator=torch.Generator().manual_seed(0)).tolist()]
    windows = {n: truncated_windows(docs, n, 2, tok.bos_token_id, torch.Generator().manual_seed(0)) for n in (64, 256)}
    methods = {m: zoo.baseline(m) for m in cfg.methods}
    cells = zoo.evaluate_ppl_grid(model, basics, methods, windows)
    length = min_prompt_length(tok)
    passkey = zoo.evaluate_passkey_grid(model, tok, basics, methods, [length], [0.5], 5, torch.Generator().manual_seed(0))
    write_report(tmp_path, cells, zoo.ppl_table(cells), passkey, cfg, basics, "abcdef0123", "fine-tuned")
    md = (tmp_path / "zoo.md").read_text()
    assert "truncated windows, BOS on every window" in md and "2 held-out test windows per length" in md
    assert "| method | " + str(length) + " | control |" in md and "Wilson 95%" in md and "/5 |" in md
    rows = list(csv.DictReader(io.StringIO((tmp_path / "zoo.csv").read_text())))
    assert {r["bos"] for r in rows} == {"every_window"} and {r["protocol"] for r in rows} == {"truncated"}
    report = json.loads((tmp_path / "passkey.json").read_text())
    assert report["control"]["pi"]["depth"] == 1.0 and report["control"]["pi"]["trials"] == 5
    assert len(report["cells"]["none"][0]["ci95"]) == 2 and len(report["trials"]["none"]) == 10
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["passkey_none.png", "passkey_pi.png", "ppl_vs_length.png"]


def test_the_summary_pools_every_stage_passkey_by_length_with_trials_and_plots_it(tmp_path):
    from ropelab.artifacts import EvalArtifact
    from ropelab.eval.report import retrieval_markdown, retrieval_rows

    def report(name: str, cells: dict) -> EvalArtifact:
        (tmp_path / name).mkdir()
        (tmp_path / name / "passkey.json").write_text(json.dumps({"cells": cells}))
        return EvalArtifact(tmp_path / name, "m", "d")

    cell = lambda n, d, hit, trials: {"length": n, "depth": d, "correct": hit, "trials": trials}  # noqa: E731
    reports = {"base": report("base", {"none": [cell(256, 0.1, 10, 10), cell(256, 0.9, 9, 10), cell(512, 0.1, 0, 10)],
                                       "pi": [cell(256, 0.1, 4, 10)]}),
               "clex": report("clex", {"native": [cell(1024, 0.5, 3, 10)]}),
               "no-passkey": EvalArtifact(tmp_path / "none", "m", "d")}
    rows = retrieval_rows(reports)
    assert list(rows) == ["base:none", "base:pi", "clex"]
    assert (rows["base:none"][256].correct, rows["base:none"][256].trials) == (19, 20)
    md = retrieval_markdown(rows, "caption")
    assert "| base:none | 95% [76%, 99%] 19/20 | 0% [0%, 28%] 0/10 | – |" in md
    assert "| clex | – | – | 30% [11%, 60%] 3/10 |" in md
    from ropelab.eval.plots import plot_retrieval_by_stage
    assert plot_retrieval_by_stage(rows, tmp_path / "p.png", "t").stat().st_size > 1000
