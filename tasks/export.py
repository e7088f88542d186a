"""Export tasks: choosing the short factor set, and the pipeline's final model as a stock transformers directory
(short = recovery, long = final)."""

from __future__ import annotations

from pathlib import Path

import torch
from prefect import task

from ropelab.data.corpus import CorpusReader
from ropelab.eval.perplexity import perplexity, truncated_windows
from ropelab.models import load_model
from ropelab.rope.hf import export_hf, install_rope, rope_basics, uninstall_rope
from ropelab.rope.registry import RopeSpec
from tasks.caching import cached_on
from tasks.settings import paths


@task(name="export", cache_policy=cached_on())
def export_final(model_path: str, model_fp: str, long: dict, short: dict | None, name: str) -> dict:
    model, tokenizer = load_model(model_path)
    out = paths().artifacts / "exports" / f"{name}-{model_fp[:8]}"
    report = export_hf(model, Path(out), RopeSpec.from_dict(long), RopeSpec.from_dict(short) if short else None,
                       tokenizer=tokenizer, provenance={"model": model_path})
    return {"path": str(report.path), "lossy": report.lossy, "rope_parameters": report.rope_parameters}


@task(name="choose-short-factors", cache_policy=cached_on())
def choose_short_set(model_path: str, model_fp: str, data_md5: str, long: dict, candidates: dict,
                     num_windows: int, seed: int) -> dict:
    """The candidate short set (name → spec dict) with the lowest validation PPL at the original length L,
    the long set installed beside it: a recovery search that cannot beat the long factors at L (its λ are
    bounded by the recovery maximum) must not make short inputs worse than keeping the long set."""
    model, tokenizer = load_model(model_path)
    length = rope_basics(model.config).original_max_position_embeddings
    docs = [tokenizer.encode(d.text) for d in CorpusReader(paths().corpus).documents("validation", "select")]
    windows = truncated_windows(docs, length, num_windows, tokenizer.bos_token_id, torch.Generator().manual_seed(seed))
    scores = {}
    for name, short in candidates.items():
        install_rope(model, RopeSpec.from_dict(long), RopeSpec.from_dict(short))
        scores[name] = perplexity(model, windows).ppl
    uninstall_rope(model)
    chosen = min(scores, key=scores.get)
    return {"chosen": chosen, "short": candidates[chosen], "validation_ppl": scores, "length": length}


def lambda_spec(lambda_path: str, model_path: str, short_of: dict | None = None) -> dict:
    """The longrope spec (as a dict) a search's λ file stands for on the model at ``model_path``.
    ``short_of``: the long spec whose attention factor a short set shares (transformers' rule)."""
    from transformers import AutoConfig

    from ropelab.rope.factors_io import read_rescale_spec
    from ropelab.rope.hf import rope_basics

    b = rope_basics(AutoConfig.from_pretrained(model_path))
    spec = read_rescale_spec(lambda_path, head_dim=b.head_dim, base=b.base,
                             original_max_position_embeddings=b.original_max_position_embeddings, default_factor=1.0)
    if short_of:  # a short set keeps the long set's factor and attention factor (transformers' rule)
        long = RopeSpec.from_dict(short_of)
        spec = spec.replace(factor=long.factor, attention_factor=long.compute()[1])
    return spec.to_dict()
