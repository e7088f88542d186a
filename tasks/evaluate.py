"""Evaluation tasks: the method-zoo report (PPL across lengths, passkey) for one model."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import torch

from ropelab.artifacts import DataArtifact, EvalArtifact, ModelArtifact
from ropelab.atomic import staged_directory
from ropelab.config import EvalConfig
from ropelab.data.corpus import CorpusReader
from ropelab.eval import zoo
from ropelab.eval.passkey import min_prompt_length
from ropelab.eval.perplexity import sliding_stretches, truncated_windows
from ropelab.eval.plots import plot_passkey_heatmap, plot_ppl_vs_length
from ropelab.models import load_model
from ropelab.rope.adapter import rope_basics
from ropelab.rope.factors_io import read_rescale_spec
from ropelab.rope.registry import RopeSpec
from ropelab.tasks.caching import IDENTITY
from ropelab.tasks.devices import device_task
from ropelab.tasks.home import paths
from ropelab.tasks.progress import progress_bar
from ropelab.tasks.retries import transient_only


def lambda_methods(files, basics, max_length: int) -> dict:
    """Zoo entries for λ files: longrope with the file's factor (else the largest evaluated ratio)."""
    return {f"lambda:{Path(name).parent.parent.name}-{Path(name).stem}": zoo.fixed(read_rescale_spec(
        name, head_dim=basics.head_dim, base=basics.base,
        original_max_position_embeddings=basics.original_max_position_embeddings,
        default_factor=max_length / basics.original_max_position_embeddings)) for name in files}


def held_out_windows(reader, tokenizer, cfg: EvalConfig, lengths) -> dict[int, torch.Tensor]:
    """Windows per length from the held-out split: truncated windows, or sliding stretches of twice the
    window (so every window after the first scores `stride` new tokens)."""
    docs = [tokenizer.encode(d.text) for d in reader.documents(cfg.split, "evaluate")]
    make, span = ((truncated_windows, 1) if cfg.protocol == "truncated" else (sliding_stretches, 2))
    return {n: make(docs, span * n, cfg.num_windows, tokenizer.bos_token_id, torch.Generator().manual_seed(cfg.seed))
            for n in lengths}


def zoo_methods(loaded, model: ModelArtifact, cfg: EvalConfig, basics, lengths, lambda_files, settings) -> dict:
    methods = {name: zoo.native(loaded, model.path) if name == "native" else zoo.baseline(name)
               for name in cfg.methods}
    methods.update(lambda_methods([path for path, _ in lambda_files], basics, max(lengths)))
    for name, pair in (settings or {}).items():
        short = RopeSpec.from_dict(pair["short"]) if pair.get("short") else None
        methods[name] = zoo.fixed(RopeSpec.from_dict(pair["long"]), short)
    return methods


@device_task(name="evaluate-zoo", cache_policy=IDENTITY, retries=1, retry_delay_seconds=10, retry_condition_fn=transient_only)
def evaluate_zoo(model: ModelArtifact, data: DataArtifact, cfg: EvalConfig,
                 lambda_files: tuple[tuple[Path, str], ...] = (), settings: dict | None = None,
                 title: str = "") -> EvalArtifact:
    """PPL grid + passkey grid for the baselines, λ files ((path, sha256) pairs: the content is in the key) and
    fixed ``settings`` ({name: {"long": spec dict, "short": spec dict | None}}, e.g. a pipeline's final sets)."""
    loaded, tokenizer = load_model(model.path)
    basics = rope_basics(loaded.config)
    if cfg.original_length:
        basics = dataclasses.replace(basics, original_max_position_embeddings=cfg.original_length)
    lengths = [basics.original_max_position_embeddings * m for m in cfg.length_multipliers]
    methods = zoo_methods(loaded, model, cfg, basics, lengths, lambda_files, settings)
    windows = held_out_windows(CorpusReader(data.path), tokenizer, cfg, lengths)
    start = time.monotonic()
    with progress_bar() as bar:
        job = bar.add_task("perplexity grid", total=len(methods) * len(lengths), status="")
        cells = zoo.evaluate_ppl_grid(loaded, basics, methods, windows, protocol=cfg.protocol, stride=cfg.stride,
                                      on_cell=lambda c: bar.update(job, advance=1, status=f"{c.method} @ "
                                                                   f"{c.result.length}: {c.result.ppl:.3f}"))
        passkey = passkey_grid(loaded, tokenizer, basics, methods, lengths, cfg, bar)
    table = zoo.ppl_table(cells)
    out = paths().artifacts / "eval" / f"zoo-{model.fingerprint[:8]}-{int(time.time())}"
    with staged_directory(out) as staging:  # an interrupted report never looks complete
        flat = write_report(staging, cells, table, passkey, cfg, basics, data.fingerprint, title or model.kind)
    return EvalArtifact(out, model.fingerprint, data.fingerprint, table=table, passkey=flat,
                        seconds=time.monotonic() - start)


def passkey_grid(loaded, tokenizer, basics, methods, lengths, cfg: EvalConfig, bar) -> dict:
    passkey_lengths = [n for n in lengths if n >= min_prompt_length(tokenizer)]  # shorter ones can't hold it
    if not cfg.passkey_trials or not passkey_lengths:
        return {}
    trials = len(methods) * len(passkey_lengths) * len(cfg.passkey_depths) * cfg.passkey_trials
    job = bar.add_task("passkey grid", total=trials, status="")
    return zoo.evaluate_passkey_grid(loaded, tokenizer, basics, methods, passkey_lengths, cfg.passkey_depths,
                                     cfg.passkey_trials, torch.Generator().manual_seed(cfg.seed),
                                     on_trial=lambda m, r: bar.update(job, advance=1, status=f"{m} @ {r.length}"))


def write_report(out: Path, cells, table, passkey, cfg: EvalConfig, basics, data_md5: str, title: str) -> dict:
    caption = (f"Perplexity on {cfg.num_windows} held-out {cfg.split} windows per length, protocol {cfg.protocol}"
               + (f" (stride {cfg.stride})" if cfg.protocol == "sliding" else "")
               + f"; L = {basics.original_max_position_embeddings}; data {data_md5[:8]}. Best per length in bold.")
    (out / "zoo.md").write_text(zoo.markdown_table(table, caption))
    (out / "zoo.csv").write_text(zoo.csv_rows(cells, {"data_version": data_md5, "split": cfg.split}))
    plot_ppl_vs_length(table, out / "ppl_vs_length.png", f"perplexity vs length ({title} model)",
                       basics.original_max_position_embeddings)
    accuracy = zoo.passkey_tables(passkey)
    for method, acc in accuracy.items():
        plot_passkey_heatmap(acc, out / f"passkey_{method.replace(':', '_')}.png", f"passkey retrieval: {method}")
    flat = {m: {str(n): {str(d): a for d, a in row.items()} for n, row in acc.items()} for m, acc in accuracy.items()}
    (out / "passkey.json").write_text(json.dumps(
        {"accuracy": flat, "trials": {m: [r.to_dict() for r in rs] for m, rs in passkey.items()}}, indent=2))
    return flat
