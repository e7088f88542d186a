"""Export task: the pipeline's final model as a stock transformers directory (short = recovery, long = final)."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from ropelab.models import load_model
from ropelab.rope.hf import export_hf
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
