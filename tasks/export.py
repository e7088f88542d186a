"""Export tasks: choosing the short factor set, and the pipeline's final model as a stock transformers directory
(short = recovery, long = final)."""

from __future__ import annotations

from pathlib import Path

import torch
from prefect import task

from ropelab import identity
from ropelab.artifacts import DataArtifact, ExportArtifact, ModelArtifact, ShortChoice
from ropelab.data.corpus import CorpusReader
from ropelab.eval.perplexity import perplexity, truncated_windows
from ropelab.models import load_model
from ropelab.rope.adapter import rope_basics
from ropelab.rope.export import export_hf
from ropelab.rope.factors_io import read_rescale_spec
from ropelab.rope.modules import install_rope, uninstall_rope
from ropelab.rope.registry import RopeSpec
from ropelab.tasks.caching import IDENTITY
from ropelab.tasks.devices import device_task
from ropelab.tasks.home import paths


@task(name="export", cache_policy=IDENTITY)
def export_final(model: ModelArtifact, long: dict, short: dict | None, name: str) -> ExportArtifact:
    loaded, tokenizer = load_model(model.path)
    out = paths().artifacts / "exports" / f"{name}-{model.fingerprint[:8]}"
    report = export_hf(loaded, out, RopeSpec.from_dict(long), RopeSpec.from_dict(short) if short else None,
                       tokenizer=tokenizer, provenance={"model": str(model.path)})
    return ExportArtifact(report.path, identity.model_fingerprint(report.path), model.data_version,
                          lossy=tuple(report.lossy), rope_parameters=report.rope_parameters)


@device_task(name="choose-short-factors", cache_policy=IDENTITY)
def choose_short_set(model: ModelArtifact, data: DataArtifact, long: dict, candidates: dict, num_windows: int,
                     seed: int) -> ShortChoice:
    """The candidate short set (name → spec dict) with the lowest validation PPL at the original length L,
    the long set installed beside it: a recovery search that cannot beat the long factors at L (its λ are
    bounded by the recovery maximum) must not make short inputs worse than keeping the long set."""
    loaded, tokenizer = load_model(model.path)
    length = rope_basics(loaded.config).original_max_position_embeddings
    docs = [tokenizer.encode(d.text) for d in CorpusReader(data.path).documents("validation", "select")]
    windows = truncated_windows(docs, length, num_windows, tokenizer.bos_token_id, torch.Generator().manual_seed(seed))
    scores = {}
    for name, short in candidates.items():
        install_rope(loaded, RopeSpec.from_dict(long), RopeSpec.from_dict(short))
        scores[name] = perplexity(loaded, windows).ppl
    uninstall_rope(loaded)
    chosen = min(scores, key=scores.get)
    return ShortChoice(chosen, candidates[chosen], scores, length)


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
