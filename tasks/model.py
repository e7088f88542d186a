"""Model tasks: pretrain the embedded tiny base model, score it on held-out text, or check a user's model (a GGUF
file de-quantised once into the project home, a sliding window set as model.attention_window)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from prefect import task

from ropelab import identity
from ropelab.artifacts import DataArtifact, ModelArtifact, Series
from ropelab.atomic import staged_directory
from ropelab.config import EvalConfig, ModelConfig, TrainConfig
from ropelab.data.corpus import CorpusReader
from ropelab.data.tokenizer import ByteTokenizer
from ropelab.eval.passkey import min_prompt_length, retrieval_check
from ropelab.eval.perplexity import perplexity, truncated_windows
from ropelab.models import (
    attention_window_view,
    build_tiny_llama,
    check_context_length,
    convert_gguf,
    load_model,
    save_model,
)
from ropelab.rope.adapter import rope_basics
from ropelab.tasks.caching import IDENTITY
from ropelab.tasks.devices import device_task
from ropelab.tasks.home import paths
from ropelab.tasks.progress import progress_bar
from ropelab.tasks.retries import transient_only
from ropelab.train.data import pack_documents
from ropelab.train.loop import train_causal_lm

LOG_EVERY = 10


def held_out_ppl(model, reader: CorpusReader, tokenizer, length: int, cfg: EvalConfig, split: str = "test") -> float:
    docs = [tokenizer.encode(d.text) for d in reader.documents(split, "evaluate")]
    windows = truncated_windows(docs, length, cfg.num_windows, tokenizer.bos_token_id,
                                torch.Generator().manual_seed(cfg.seed))
    return perplexity(model, windows).ppl


def loss_curves(history, every: int, prefix: str) -> tuple[Series, ...]:
    """Training curves sampled every ``every`` steps (and the last step), as metric series."""
    kept = [r for r in history if r.step % every == 0 or r is history[-1]]
    return tuple(Series(f"{prefix}/{name}", tuple((r.step, float(getattr(r, name))) for r in kept))
                 for name in ("loss", "lr", "grad_norm", "tokens"))


@device_task(name="pretrain-base", cache_policy=IDENTITY, retries=1, retry_delay_seconds=10, retry_condition_fn=transient_only)
def pretrain_base(data: DataArtifact, model_cfg: ModelConfig, train_cfg: TrainConfig) -> ModelArtifact:
    """Pretrain the byte-level tiny Llama on the train split; save safetensors + config + tokenizer.
    Depends on the data, the model shape and the optimisation only (not on evaluation settings). Thread settings
    are made by the stage runner for every run (``runner.same_threads``), never here: a run whose base came from
    the cache must compute exactly as one that pretrained."""
    reader = CorpusReader(data.path)
    tokenizer = ByteTokenizer()
    train_docs = [tokenizer.encode(d.text) for d in reader.documents("train", "pretrain")]
    blocks = pack_documents(train_docs, train_cfg.seq_len, tokenizer.bos_token_id, tokenizer.eos_token_id)
    model = build_tiny_llama(model_cfg, train_cfg.seed)
    start = time.monotonic()
    with progress_bar() as bar:
        job = bar.add_task("pretraining tiny base", total=train_cfg.steps, status="")
        history = train_causal_lm(model, blocks, train_cfg, on_step=lambda rec: bar.update(
            job, completed=rec.step + 1, status=f"loss {rec.loss:.3f}"))
    seconds = time.monotonic() - start
    out = paths().artifacts / "models" / f"base-{data.fingerprint[:8]}-{int(time.time())}"
    with staged_directory(out) as staging:
        save_model(model, tokenizer, staging)
        (staging / "training.json").write_text(json.dumps({"seconds": seconds, "tokens": history[-1].tokens,
                                                           "final_loss": history[-1].loss,
                                                           "data_version": data.fingerprint}, indent=2))
    metrics = {"train/seconds": seconds, "train/final_loss": history[-1].loss, "train/tokens": history[-1].tokens}
    return ModelArtifact(out, identity.model_fingerprint(out), data.fingerprint, kind="base",
                         original_length=model_cfg.context_length, metrics=metrics,
                         history=loss_curves(history, LOG_EVERY, "train"),
                         read_documents=tuple(sorted(reader.ledger.get("pretrain", set()))))


BASE_RETRIEVAL_KEYS = 20  # per depth of passkey.RETRIEVAL_DEPTHS: 100 prompts, with and without the needle


@device_task(name="score-base", cache_policy=IDENTITY)
def score_base(model: ModelArtifact, data: DataArtifact, eval_cfg: EvalConfig) -> dict[str, float]:
    """Held-out PPL of the base model at its own L (the number every extension is compared with), and whether it
    retrieves there: passkey accuracy at L with its Wilson 95% interval, and without the needle (chance)."""
    loaded, tokenizer = load_model(model.path)
    length = rope_basics(loaded.config).original_max_position_embeddings
    scores = {"test/ppl": held_out_ppl(loaded, CorpusReader(data.path), tokenizer, length, eval_cfg)}
    if length >= min_prompt_length(tokenizer):
        hit, blind = retrieval_check(loaded, tokenizer, length, BASE_RETRIEVAL_KEYS,
                                     torch.Generator().manual_seed(eval_cfg.seed))
        scores |= {"passkey/at_L": hit.accuracy, "passkey/at_L_ci_low": hit.interval[0],
                   "passkey/at_L_ci_high": hit.interval[1], "passkey/at_L_trials": hit.trials,
                   "passkey/at_L_no_needle": blind.accuracy}
    return scores


GGUF_CONVERTER = 1  # part of a converted GGUF's name: bump it when convert_gguf writes something else


def converted_gguf(source: Path) -> Path:
    """The GGUF file de-quantised into a plain safetensors directory in the project home, once: named by the
    file's content, the transformers version (its GGUF reader de-quantises) and ``GGUF_CONVERTER``, so a second
    run, or another preset on the same file, converts nothing."""
    import transformers

    made_from = {"gguf_sha256": identity.sha256_file(source), "transformers": transformers.__version__,
                 "converter": GGUF_CONVERTER}
    out = paths().artifacts / "models" / f"gguf-{source.stem}-{identity.short(identity.json_identity(made_from))}"
    if not out.exists():
        with staged_directory(out) as staging:
            convert_gguf(source, staging)
            (staging / "ropelab_source.json").write_text(json.dumps({"gguf": str(source), **made_from}, indent=2))
    return out


def windowed(source: Path, window: int, trust_remote_code: bool) -> Path:
    """``source`` as every stage runs it with model.attention_window ``window``: a view directory in the project
    home (its own config.json, links to the weights), named by the source's files (``stat_signature``: the
    weights are hashed once, as the view's fingerprint) and the window."""
    key = identity.json_identity({"model": identity.stat_signature(source), "window": window})
    out = paths().artifacts / "models" / f"window{window}-{source.name}-{identity.short(key)}"
    if not out.exists():
        with staged_directory(out) as staging:
            attention_window_view(source, staging, window, trust_remote_code)
    return out


def stage_model(source: Path, attention_window: int, trust_remote_code: bool) -> Path:
    """The directory later stages load for a user's model: a GGUF file converted to a plain model, with the
    attention window set when asked; a plain directory with the model's own window is used where it lies."""
    path = converted_gguf(source) if source.suffix == ".gguf" else source
    return windowed(path, attention_window, trust_remote_code) if attention_window else path


@task(name="load-model", cache_policy=IDENTITY)
def describe_model(source: str, trust_remote_code: bool, data: DataArtifact, signature: str,
                   context_length: int, attention_window: int = 0) -> ModelArtifact:
    """Check a user's model loads, is RoPE-based and has the preset's L (``context_length``, every stage's
    lengths are multiples of it), as the directory later stages load (``stage_model``); its fingerprint is that
    directory's content (``signature``, from ``identity.stat_signature`` of the source, makes an edited model a
    cache miss)."""
    path = stage_model(Path(source), attention_window, trust_remote_code)
    loaded, _ = load_model(path, trust_remote_code)
    check_context_length(loaded.config, context_length, source)
    length = rope_basics(loaded.config).original_max_position_embeddings
    del loaded
    return ModelArtifact(path, identity.model_fingerprint(path), data.fingerprint, kind="user", original_length=length)
