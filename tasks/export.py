"""Export tasks: choosing the short factor set, the pipeline's final model as a stock transformers directory
(short = recovery or long, long = final), and that directory's held-out PPL as stock transformers loads it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from prefect import task

from ropelab import identity
from ropelab.artifacts import DataArtifact, ExportArtifact, ModelArtifact, SearchArtifact, ShortChoice
from ropelab.config import EvalConfig, SearchConfig
from ropelab.data.corpus import CorpusReader
from ropelab.eval.perplexity import SlidingSet, bos_placement, perplexity, sliding_perplexity
from ropelab.eval.windows import disjoint_windows, window_spans
from ropelab.models import load_model
from ropelab.rope.adapter import rope_basics
from ropelab.rope.export import export_hf
from ropelab.rope.factors_io import read_rescale_metadata, read_rescale_spec
from ropelab.rope.modules import install_rope, uninstall_rope
from ropelab.rope.registry import RopeSpec
from ropelab.tasks.caching import IDENTITY
from ropelab.tasks.devices import device_task
from ropelab.tasks.evaluate import held_out_windows
from ropelab.tasks.home import paths

FitnessWindows = tuple[int, int, int]  # (length, count, seed) of a search's validation fitness windows


@task(name="export", cache_policy=IDENTITY)
def export_final(model: ModelArtifact, long: dict, short: dict | None, name: str,
                 short_attention: str = "long") -> ExportArtifact:
    loaded, tokenizer = load_model(model.path)
    out = paths().artifacts / "exports" / f"{name}-{model.fingerprint[:8]}"
    report = export_hf(loaded, out, RopeSpec.from_dict(long), RopeSpec.from_dict(short) if short else None,
                       tokenizer=tokenizer, provenance={"model": str(model.path)}, short_attention=short_attention)
    return ExportArtifact(report.path, identity.model_fingerprint(report.path), model.data_version,
                          lossy=tuple(report.lossy), notes=tuple(report.notes),
                          rope_parameters=report.rope_parameters)


@device_task(name="score-export", cache_policy=IDENTITY)
def score_export(export: ExportArtifact, data: DataArtifact, cfg: EvalConfig, scored: tuple[int, ...]) -> ExportArtifact:
    """The export's held-out PPL at the ``scored`` lengths as stock transformers loads it: its own rotary module
    from its config.json, no ropelab code, so n̂ and anything else recorded as lossy are absent. The windows are
    the evaluation's for ``cfg`` (the same lengths as ``evaluate_zoo``, so the same documents under sliding)."""
    loaded, tokenizer = load_model(export.path)
    lengths = [rope_basics(loaded.config).original_max_position_embeddings * m for m in cfg.length_multipliers]
    windows = held_out_windows(CorpusReader(data.path), tokenizer, cfg, sorted({*lengths, *scored}))
    bos = bos_placement(tokenizer.bos_token_id)

    def ppl(data) -> float:
        return (sliding_perplexity(loaded, data) if isinstance(data, SlidingSet) else perplexity(loaded, data, bos=bos)).ppl

    return dataclasses.replace(export, stock_ppl={n: ppl(windows[n]) for n in scored})


@device_task(name="choose-short-factors", cache_policy=IDENTITY)
def choose_short_set(model: ModelArtifact, data: DataArtifact, long: dict, candidates: dict, num_windows: int,
                     seed: int, fitness: tuple[FitnessWindows, ...] = (), short_attention: str = "long") -> ShortChoice:
    """The candidate short set (name → spec dict) with the lowest validation PPL at the original length L,
    the long set installed beside it (``short_attention``: the rule for inputs up to L): a recovery search that
    cannot beat the long factors at L (its λ are bounded by the recovery maximum) must not make short inputs
    worse than keeping the long set. Scored on validation windows sharing no token with any search's ``fitness``
    windows: on the recovery search's own fitness windows the choice would favour recovery."""
    loaded, tokenizer = load_model(model.path)
    length = rope_basics(loaded.config).original_max_position_embeddings
    docs = [tokenizer.encode(d.text) for d in CorpusReader(data.path).documents("validation", "select")]
    bos = tokenizer.bos_token_id
    taken = [span for n, count, s in fitness for span in window_spans(docs, n, count, bos, torch.Generator().manual_seed(s))]
    windows = disjoint_windows(docs, length, num_windows, bos, torch.Generator().manual_seed(seed), taken)
    scores = {}
    for name, short in candidates.items():
        install_rope(loaded, RopeSpec.from_dict(long), RopeSpec.from_dict(short), short_attention)
        scores[name] = perplexity(loaded, windows).ppl
    uninstall_rope(loaded)
    chosen = min(scores, key=scores.get)
    described = (f"{num_windows} validation windows of {length} tokens sharing no token with the {len(fitness)} "
                 f"searches' fitness windows")
    return ShortChoice(chosen, candidates[chosen], scores, length, described)


def fitness_windows(search: SearchArtifact, cfg: SearchConfig) -> FitnessWindows:
    """(length, count, seed) of the validation windows a search's fitness scored (``tasks.search.windows_for``):
    its target length is L × the factor its λ file records (s·L, or s × the fine-tuned length in stage 2)."""
    meta = read_rescale_metadata(search.lam)
    return int(round(meta["original_max_position_embeddings"] * meta["factor"])), cfg.num_windows, cfg.seed


def lambda_spec(lam: Path, model: ModelArtifact, short_of: dict | None = None) -> dict:
    """The longrope spec (as a dict) a search's λ file stands for on ``model``.
    ``short_of``: the long spec whose attention factor a short set shares (transformers' rule)."""
    from transformers import AutoConfig

    b = rope_basics(AutoConfig.from_pretrained(model.path))
    spec = read_rescale_spec(lam, head_dim=b.head_dim, base=b.base,
                             original_max_position_embeddings=b.original_max_position_embeddings, default_factor=1.0)
    if short_of:  # a short set keeps the long set's factor and attention factor (transformers' rule)
        long = RopeSpec.from_dict(short_of)
        spec = spec.replace(factor=long.factor, attention_factor=long.compute()[1])
    return spec.to_dict()
