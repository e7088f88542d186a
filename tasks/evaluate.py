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
from ropelab.data.needles import build_needles, min_needle_length
from ropelab.eval import zoo
from ropelab.eval.needle import evaluate_needle_grid
from ropelab.eval.passkey import cells as passkey_cells
from ropelab.eval.passkey import control_cell, min_prompt_length
from ropelab.eval.perplexity import bos_placement, choose_documents, sliding_set, truncated_windows
from ropelab.eval.plots import display_name, plot_passkey_heatmap, plot_ppl_vs_length
from ropelab.models import load_model
from ropelab.rope.adapter import rope_basics
from ropelab.rope.factors_io import lambda_labels, read_rescale_spec
from ropelab.rope.modules import rotary_for
from ropelab.rope.registry import RopeSpec
from ropelab.tasks.caching import IDENTITY
from ropelab.tasks.devices import device_task
from ropelab.tasks.home import paths
from ropelab.tasks.progress import progress_bar
from ropelab.tasks.retries import transient_only


def lambda_methods(files, basics) -> dict:
    """Zoo entries for λ files: longrope with the factor each file records (a file without one is an error),
    named by the stage the file records (``lambda_labels``: never by a hash, never two files under one name)."""
    specs = [read_rescale_spec(name, head_dim=basics.head_dim, base=basics.base,
                               original_max_position_embeddings=basics.original_max_position_embeddings)
             for name in files]
    return {f"lambda:{label}": zoo.fixed(spec) for label, spec in zip(lambda_labels(files), specs, strict=True)}


def held_out_windows(reader, tokenizer, cfg: EvalConfig, lengths) -> dict:
    """Per length, from the held-out split: truncated windows, or (sliding) the same whole documents of at
    least the longest length, each prepared for windows of that length."""
    docs = [tokenizer.encode(d.text) for d in reader.documents(cfg.split, "evaluate")]
    bos = tokenizer.bos_token_id
    if cfg.protocol == "truncated":
        return {n: truncated_windows(docs, n, cfg.num_windows, bos, torch.Generator().manual_seed(cfg.seed))
                for n in lengths}
    chosen = choose_documents(docs, max(lengths), cfg.num_windows, torch.Generator().manual_seed(cfg.seed))
    return {n: sliding_set(chosen, n, cfg.stride, bos, cfg.sliding_bos) for n in lengths}


def zoo_methods(loaded, model: ModelArtifact, cfg: EvalConfig, basics, lengths, lambda_files, settings) -> dict:
    betas = (cfg.yarn_beta_fast, cfg.yarn_beta_slow)
    methods = {name: zoo.native(loaded, model.path) if name == "native"
               else zoo.baseline(name, betas, cfg.critical_dim) for name in cfg.methods}
    methods.update(lambda_methods([path for path, _ in lambda_files], basics))
    for name, pair in (settings or {}).items():
        short = RopeSpec.from_dict(pair["short"]) if pair.get("short") else None
        methods[name] = fixed_setting(RopeSpec.from_dict(pair["long"]), short, pair.get("short_attention", "long"),
                                      basics)
    return methods


def fixed_setting(long: RopeSpec, short: RopeSpec | None, short_attention: str, basics):
    """A pipeline's (long, short) sets with the short-input attention rule (``modules.SHORT_ATTENTION``)."""
    if short_attention == "long" or short is None:
        return zoo.fixed(long, short)
    module = rotary_for(long, short, basics, short_attention)  # not transformers' rule: the module itself
    return lambda n, b: module  # (so the zoo shares none of its results with another setting)


@device_task(name="evaluate-zoo", cache_policy=IDENTITY, retries=1, retry_delay_seconds=10, retry_condition_fn=transient_only)
def evaluate_zoo(model: ModelArtifact, data: DataArtifact, cfg: EvalConfig,
                 lambda_files: tuple[tuple[Path, str], ...] = (), settings: dict | None = None,
                 title: str = "") -> EvalArtifact:
    """PPL grid + passkey grid for the baselines, λ files ((path, sha256) pairs: the content is in the key) and
    fixed ``settings`` ({name: {"long": spec dict, "short": spec dict | None, "short_attention": "long" | "one"
    (optional)}}, e.g. a pipeline's final sets)."""
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
        cells = zoo.evaluate_ppl_grid(loaded, basics, methods, windows, bos=bos_placement(tokenizer.bos_token_id),
                                      on_cell=lambda c: bar.update(job, advance=1, status=f"{c.method} @ "
                                                                   f"{c.result.length}: {c.result.ppl:.3f}"))
        passkey = passkey_grid(loaded, tokenizer, basics, methods, lengths, cfg, bar)
        needle = needle_grid(loaded, tokenizer, basics, methods, lengths, cfg, data.path, bar)
    table = zoo.ppl_table(cells)
    out = paths().artifacts / "eval" / f"zoo-{model.fingerprint[:8]}-{int(time.time())}"
    with staged_directory(out) as staging:  # an interrupted report never looks complete
        flat = write_report(staging, cells, table, passkey, cfg, basics, data.fingerprint, title or model.kind)
        if needle:
            write_needle_report(staging, needle, cfg)
    return EvalArtifact(out, model.fingerprint, data.fingerprint, table=table, passkey=flat,
                        seconds=time.monotonic() - start, needle=needle)


def needle_grid(loaded, tokenizer, basics, methods, lengths, cfg: EvalConfig, corpus: Path, bar) -> dict:
    """Needle PPL of every method at every length that holds a needle sample (eval.needle_samples per length,
    built from the eval split's documents only)."""
    shortest = min_needle_length(tokenizer.encode, tokenizer.bos_token_id)
    lengths = [n for n in lengths if n >= shortest]
    if not cfg.needle_samples or not lengths:
        return {}
    docs = list(CorpusReader(corpus).documents(cfg.split, "evaluate"))
    sets = {n: build_needles(docs, cfg.split, tokenizer.encode, length=n, count=cfg.needle_samples, seed=cfg.seed,
                             bos=tokenizer.bos_token_id, eos=tokenizer.eos_token_id) for n in lengths}
    job = bar.add_task("needle PPL grid", total=len(methods) * len(lengths), status="")
    return evaluate_needle_grid(loaded, basics, methods, sets,
                                on_cell=lambda m, r: bar.update(job, advance=1, status=f"{m} @ {r.length}: {r.ppl:.3f}"))


def needle_caption(cfg: EvalConfig) -> str:
    return (f"Needle PPL (LongRoPE2's needle-driven perplexity: the loss on the 5-digit answer only) on "
            f"{cfg.needle_samples} {cfg.split} samples per length, the needle in the first 10 % of the haystack.")


def write_needle_report(out: Path, needle: dict, cfg: EvalConfig) -> None:
    (out / "needle.json").write_text(json.dumps({m: {str(n): v for n, v in row.items()} for m, row in needle.items()},
                                                indent=2))
    with open(out / "zoo.md", "a") as fh:
        fh.write("\n" + zoo.markdown_table(needle, needle_caption(cfg)))


def passkey_grid(loaded, tokenizer, basics, methods, lengths, cfg: EvalConfig, bar) -> dict:
    """The passkey grid and its positive control (``zoo.evaluate_passkey_grid``) at the lengths that hold it."""
    passkey_lengths = [n for n in lengths if n >= min_prompt_length(tokenizer)]  # shorter ones can't hold it
    if not cfg.passkey_trials or not passkey_lengths:
        return {}
    trials = len(methods) * (len(passkey_lengths) * len(cfg.passkey_depths) + 1) * cfg.passkey_trials
    job = bar.add_task("passkey grid", total=trials, status="")
    return zoo.evaluate_passkey_grid(loaded, tokenizer, basics, methods, passkey_lengths, cfg.passkey_depths,
                                     cfg.passkey_trials, torch.Generator().manual_seed(cfg.seed),
                                     on_trial=lambda m, r: bar.update(job, advance=1, status=f"{m} @ {r.length}"))


def ppl_caption(cells, cfg: EvalConfig, basics, data_md5: str) -> str:
    """Names the protocol as it ran (windows or whole documents, stride, where BOS went) and how much text."""
    protocols = "; ".join(sorted({c.result.protocol_words for c in cells}))
    amount = "whole documents" if cfg.protocol == "sliding" else "windows per length"
    return (f"Perplexity on {cfg.num_windows} held-out {cfg.split} {amount}: {protocols}; "
            f"L = {basics.original_max_position_embeddings}; data {data_md5[:8]}. Best per length in bold.")


def passkey_caption(cfg: EvalConfig) -> str:
    return (f"Passkey retrieval (LongRoPE/YaRN prompt, keys 1..50000, greedy 10 tokens): accuracy [Wilson 95% "
            f"interval] correct/trials over depths {', '.join(f'{d:g}' for d in cfg.passkey_depths)}, "
            f"{cfg.passkey_trials} trials per (length, depth). Control: the needle right before the question at "
            "the shortest length; if it fails, the model does not retrieve at all and zeros elsewhere say nothing "
            "about the extension.")


def write_report(out: Path, cells, table, passkey, cfg: EvalConfig, basics, data_md5: str, title: str) -> dict:
    markdown = zoo.markdown_table(table, ppl_caption(cells, cfg, basics, data_md5))
    if passkey:
        markdown += "\n" + zoo.passkey_markdown(passkey, passkey_caption(cfg))
    (out / "zoo.md").write_text(markdown)
    (out / "zoo.csv").write_text(zoo.csv_rows(cells, {"data_version": data_md5, "split": cfg.split}))
    protocol = cells[0].result.protocol_words if cells else cfg.protocol
    plot_ppl_vs_length(table, out / "ppl_vs_length.png", f"perplexity vs length: {title} model\n{protocol}",
                       basics.original_max_position_embeddings)
    for method, results in passkey.items():
        plot_passkey_heatmap(passkey_cells([r for r in results if not r.control]), control_cell(results),
                             out / f"passkey_{safe_file_name(method)}.png",
                             f"passkey retrieval: {display_name(method)} ({title} model)")
    accuracy = zoo.passkey_tables(passkey)
    flat = {m: {str(n): {str(d): a for d, a in row.items()} for n, row in acc.items()} for m, acc in accuracy.items()}
    (out / "passkey.json").write_text(json.dumps(passkey_json(passkey, flat), indent=2))
    return flat


def safe_file_name(method: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in method)


def passkey_json(passkey: dict, flat: dict) -> dict:
    """Accuracy per cell (as before), the cells with trials and intervals, the control, every trial."""
    def control(results):
        cell = control_cell(results)
        return cell.to_dict() if cell else None

    return {"accuracy": flat,
            "cells": {m: [c.to_dict() for c in passkey_cells([r for r in rs if not r.control])] for m, rs in passkey.items()},
            "control": {m: control(rs) for m, rs in passkey.items()},
            "trials": {m: [r.to_dict() for r in rs] for m, rs in passkey.items()}}
