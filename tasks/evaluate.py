"""Evaluation tasks: the method-zoo report (PPL across lengths, passkey) for one model."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch
from prefect import task

from ropelab.config import EvalConfig
from ropelab.data.corpus import CorpusReader
from ropelab.errors import RopelabError
from ropelab.eval import zoo
from ropelab.eval.passkey import min_prompt_length
from ropelab.eval.perplexity import sliding_stretches, truncated_windows
from ropelab.eval.plots import plot_passkey_heatmap, plot_ppl_vs_length
from ropelab.models import load_model
from ropelab.rope.factors_io import read_rescale_spec
from ropelab.rope.hf import rope_basics
from ropelab.rope.registry import RopeSpec
from tasks import tracking
from tasks.caching import cached_on
from tasks.model import progress_bar
from tasks.settings import paths


def lambda_methods(files, basics, max_length: int) -> dict:
    """Zoo entries for λ files: longrope with the file's factor (else the largest evaluated ratio)."""
    return {f"lambda:{Path(name).parent.parent.name}-{Path(name).stem}": zoo.fixed(read_rescale_spec(
        name, head_dim=basics.head_dim, base=basics.base,
        original_max_position_embeddings=basics.original_max_position_embeddings,
        default_factor=max_length / basics.original_max_position_embeddings)) for name in files}


def held_out_windows(reader, tokenizer, cfg: EvalConfig, lengths) -> dict[int, torch.Tensor]:
    """Windows per length from the held-out split: truncated windows, or sliding stretches of twice the
    window (so every window after the first scores `stride` new tokens)."""
    if cfg.protocol not in ("truncated", "sliding"):
        raise RopelabError(f"eval.protocol must be truncated or sliding, got {cfg.protocol!r}")
    docs = [tokenizer.encode(d.text) for d in reader.documents(cfg.split, "evaluate")]
    make, span = ((truncated_windows, 1) if cfg.protocol == "truncated" else (sliding_stretches, 2))
    return {n: make(docs, span * n, cfg.num_windows, tokenizer.bos_token_id, torch.Generator().manual_seed(cfg.seed))
            for n in lengths}


@task(name="evaluate-zoo", cache_policy=cached_on("run_id"), retries=1, retry_delay_seconds=10)
def evaluate_zoo(model_path: str, model_fingerprint: str, data_md5: str, cfg: EvalConfig, lambda_hashes: dict,
                 run_id: str, settings: dict | None = None) -> dict:
    """PPL grid + passkey grid for the baselines, λ files and fixed ``settings`` ({name: {"long": spec dict,
    "short": spec dict | None}}, e.g. a pipeline's final factor sets); report into artifacts/ and MLflow."""
    model, tokenizer = load_model(model_path)
    basics = rope_basics(model.config)
    if cfg.original_length < 0:
        raise RopelabError(f"eval.original_length must be ≥ 0 (0: from the model's config), got {cfg.original_length}")
    if cfg.original_length:
        basics = dataclasses.replace(basics, original_max_position_embeddings=cfg.original_length)
    lengths = [basics.original_max_position_embeddings * m for m in cfg.length_multipliers]
    methods = {name: zoo.native(model, model_path) if name == "native" else zoo.baseline(name)
               for name in cfg.methods}
    methods.update(lambda_methods(cfg.rescale_factor_files, basics, max(lengths)))
    for name, pair in (settings or {}).items():
        short = RopeSpec.from_dict(pair["short"]) if pair.get("short") else None
        methods[name] = zoo.fixed(RopeSpec.from_dict(pair["long"]), short)
    windows = held_out_windows(CorpusReader(paths().corpus), tokenizer, cfg, lengths)
    out = paths().artifacts / "eval" / f"zoo-{model_fingerprint[:8]}-{int(time.time())}"
    out.mkdir(parents=True)
    start = time.monotonic()
    with progress_bar() as bar:
        job = bar.add_task("perplexity grid", total=len(methods) * len(lengths), status="")

        def on_cell(cell):
            bar.update(job, advance=1, status=f"{cell.method} @ {cell.result.length}: {cell.result.ppl:.3f}")
            tracking.log_metrics(run_id, {f"ppl/{cell.method}/{cell.result.length}": cell.result.ppl})

        cells = zoo.evaluate_ppl_grid(model, basics, methods, windows, protocol=cfg.protocol, stride=cfg.stride,
                                      on_cell=on_cell)
        passkey = {}
        passkey_lengths = [n for n in lengths if n >= min_prompt_length(tokenizer)]  # shorter ones can't hold it
        if cfg.passkey_trials and passkey_lengths:
            trials = len(methods) * len(passkey_lengths) * len(cfg.passkey_depths) * cfg.passkey_trials
            pk_job = bar.add_task("passkey grid", total=trials, status="")
            passkey = zoo.evaluate_passkey_grid(
                model, tokenizer, basics, methods, passkey_lengths, cfg.passkey_depths, cfg.passkey_trials,
                torch.Generator().manual_seed(cfg.seed),
                on_trial=lambda m, r: bar.update(pk_job, advance=1, status=f"{m} @ {r.length}"))
    table = zoo.ppl_table(cells)
    report = write_report(out, cells, table, passkey, cfg, basics, data_md5)
    return {"dir": str(out), "table": {m: {str(n): v for n, v in row.items()} for m, row in table.items()},
            "passkey": report["passkey"], "seconds": time.monotonic() - start}


def write_report(out: Path, cells, table, passkey, cfg: EvalConfig, basics, data_md5: str) -> dict:
    caption = (f"Perplexity on {cfg.num_windows} held-out {cfg.split} windows per length, protocol {cfg.protocol}"
               + (f" (stride {cfg.stride})" if cfg.protocol == "sliding" else "")
               + f"; L = {basics.original_max_position_embeddings}; data {data_md5[:8]}. Best per length in bold.")
    (out / "zoo.md").write_text(zoo.markdown_table(table, caption))
    (out / "zoo.csv").write_text(zoo.csv_rows(cells, {"data_version": data_md5, "split": cfg.split}))
    plot_ppl_vs_length(table, out / "ppl_vs_length.png", "perplexity vs length (no fine-tuning)",
                       basics.original_max_position_embeddings)
    accuracy = zoo.passkey_tables(passkey)
    for method, acc in accuracy.items():
        plot_passkey_heatmap(acc, out / f"passkey_{method.replace(':', '_')}.png", f"passkey retrieval: {method}")
    flat = {m: {str(n): {str(d): a for d, a in row.items()} for n, row in acc.items()} for m, acc in accuracy.items()}
    (out / "passkey.json").write_text(json.dumps(
        {"accuracy": flat, "trials": {m: [r.to_dict() for r in rs] for m, rs in passkey.items()}}, indent=2))
    return {"passkey": flat}
