"""Checks of the files a config names, before any stage starts: one clear line per mistake, naming the file and
the fix, instead of a failure minutes (or a retry) later inside a stage.

Pure library (no Prefect, no MLflow): the CLI calls ``check(config)`` after the config is validated.
"""

from __future__ import annotations

import math
from pathlib import Path

from ropelab.config import RunConfig
from ropelab.errors import RopelabError

BUILTIN_MODELS = ("tiny", "smollm2")
BUILTIN_SOURCES = ("shakespeare", "shakespeare-excerpt", "austen", "kjv")  # tasks/data.py PACKAGE_SOURCES (test_bad_inputs checks)
GGUF_MAGIC = b"GGUF"


def check(cfg: RunConfig) -> None:
    """Every file the config names: corpora, the model, the λ files (length against the model's head_dim)."""
    overlap = sorted(set(cfg.data.validation_docs) & set(cfg.data.test_docs))
    if overlap:
        raise RopelabError(f"data.validation_docs and data.test_docs share {', '.join(overlap)}: a test document "
                           "must never pick the search's winner; move it to one of the two")
    for source in cfg.data.sources:
        check_corpus_source(source)
    head_dim = check_model_source(cfg)
    if cfg.finetune.rescale_factors_file:
        check_lambda_file(Path(cfg.finetune.rescale_factors_file), "finetune.rescale_factors_file", head_dim)
    for path in cfg.eval.rescale_factor_files:
        check_lambda_file(Path(path), "eval.rescale_factor_files", head_dim)


def check_corpus_source(source: str) -> None:
    if source in BUILTIN_SOURCES:
        return
    path = Path(source).expanduser()
    if not path.exists():
        raise RopelabError(f"data.sources: {source} does not exist; give a .txt/.jsonl/.parquet file or directory, "
                           f"or one of {', '.join(BUILTIN_SOURCES)}")
    if path.is_file() and path.stat().st_size == 0:
        raise RopelabError(f"data.sources: {source} is empty; put documents in it or drop it from data.sources")


def check_model_source(cfg: RunConfig) -> int | None:
    """The model directory or GGUF file is there, is a transformers RoPE model with the preset's L and ships no
    code of its own (unless opted in). Returns the head_dim the λ files must match (None: not known yet)."""
    source = cfg.model.source
    if source == "tiny":
        return cfg.model.hidden_size // cfg.model.num_attention_heads
    if source in BUILTIN_MODELS:
        return None
    path = Path(source).expanduser()
    if not path.exists():
        raise RopelabError(f"model.source {source} does not exist; give a local model directory, a .gguf file, "
                           f"or one of {', '.join(BUILTIN_MODELS)}")
    if path.is_file():
        return _check_gguf(path)
    if not (path / "config.json").is_file():
        raise RopelabError(f"model.source {source} has no config.json: not a transformers model directory "
                           "(save one with save_pretrained, or give a .gguf file)")
    from ropelab.models import check_context_length, refuse_custom_code
    from ropelab.rope.adapter import rope_basics

    refuse_custom_code(path, cfg.model.trust_remote_code)
    config = _hf_config(path, cfg.model.trust_remote_code)
    if cfg.model.attention_window == 0:  # a set window moves where L is read from: the model stage checks it
        check_context_length(config, cfg.model.context_length, source)
    return int(rope_basics(config).head_dim)


def _check_gguf(path: Path) -> None:
    """A file must be a GGUF and start like one (the head_dim is read when it is converted)."""
    if path.suffix != ".gguf":
        raise RopelabError(f"model.source {path} is a file but not a .gguf file; give a model directory or a GGUF")
    with open(path, "rb") as fh:
        if fh.read(len(GGUF_MAGIC)) != GGUF_MAGIC:
            raise RopelabError(f"model.source {path} is not a GGUF file (corrupted or truncated: it does not start "
                               "with the GGUF magic); download or convert it again")


def _hf_config(path: Path, trust_remote_code: bool):
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError) as exc:
        raise RopelabError(f"model.source {path}: config.json is not a transformers config "
                           f"({' '.join(str(exc).split())[:200]})") from None
    from ropelab.rope.adapter import rope_basics

    rope_basics(config)  # not a RoPE model, or a rotated width RoPE cannot have: one line from the adapter
    return config


def check_lambda_file(path: Path, key: str, head_dim: int | None) -> None:
    """A λ file given to a stage: readable numbers, finite, ≥ 1, non-decreasing (LongRoPE's constraint, which
    every searched λ meets: ropelab.search.space), one per rotary pair when the model's head_dim is known."""
    from ropelab.rope.factors_io import read_rescale_factors, read_rescale_metadata

    if not path.is_file():
        raise RopelabError(f"{key}: no such file {path}")
    read_rescale_metadata(path)  # broken JSON: one line naming the file
    lam = read_rescale_factors(path)
    where = f"{key} {path}"
    bad = [i for i, v in enumerate(lam) if not math.isfinite(v)]
    if bad:
        raise RopelabError(f"{where}: λ is NaN or infinite at dimensions {bad[:8]}; use a search's rescale_factors.json")
    below = [i for i, v in enumerate(lam) if v < 1]
    if below:
        raise RopelabError(f"{where}: λ must be ≥ 1 (below 1 extrapolates beyond the pretrained frequencies); "
                           f"dimensions {below[:8]} are below 1")
    falling = [i for i in range(1, len(lam)) if lam[i] < lam[i - 1]]
    if falling:
        raise RopelabError(f"{where}: λ must be non-decreasing over dimensions (LongRoPE's constraint); it falls at "
                           f"dimensions {falling[:8]}")
    if head_dim is not None and len(lam) != head_dim // 2:
        raise RopelabError(f"{where}: {len(lam)} values, but the model has {head_dim // 2} rotary pairs "
                           f"(head_dim {head_dim} / 2); use a λ searched on this model")

