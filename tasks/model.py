"""Model tasks: pretrain the embedded tiny base model, or load a user's model; evaluate held-out PPL."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from prefect import task
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from ropelab.config import EvalConfig, ModelConfig, TrainConfig
from ropelab.data.corpus import CorpusReader
from ropelab.data.tokenizer import ByteTokenizer
from ropelab.eval.perplexity import perplexity, truncated_windows
from ropelab.models import build_tiny_llama, fingerprint, load_model, save_model
from ropelab.train.data import pack_documents
from ropelab.train.loop import train_causal_lm
from tasks import tracking
from tasks.caching import cached_on
from tasks.settings import paths

LOG_EVERY = 10


def progress_bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TimeRemainingColumn(), transient=False)


def held_out_ppl(model, reader: CorpusReader, tokenizer, length: int, cfg: EvalConfig, split: str = "test") -> float:
    docs = [tokenizer.encode(d.text) for d in reader.documents(split, "evaluate")]
    windows = truncated_windows(docs, length, cfg.num_windows, tokenizer.bos_token_id,
                                torch.Generator().manual_seed(cfg.seed))
    return perplexity(model, windows).ppl


@task(name="pretrain-base", cache_policy=cached_on("parent_run_id", "run_id"), retries=1,
      retry_delay_seconds=10)
def pretrain_base(data_md5: str, model_cfg: ModelConfig, train_cfg: TrainConfig, eval_cfg: EvalConfig,
                  run_id: str, parent_run_id: str | None = None) -> dict:
    """Pretrain the byte-level tiny Llama on the train split; save safetensors + config + tokenizer."""
    torch.set_num_threads(max(1, torch.get_num_threads()))
    p = paths()
    reader = CorpusReader(p.corpus)
    tokenizer = ByteTokenizer()
    train_docs = [tokenizer.encode(d.text) for d in reader.documents("train", "pretrain")]
    blocks = pack_documents(train_docs, train_cfg.seq_len, tokenizer.bos_token_id, tokenizer.eos_token_id)
    model = build_tiny_llama(model_cfg, train_cfg.seed)
    start = time.monotonic()
    with progress_bar() as bar:
        job = bar.add_task("pretraining tiny base", total=train_cfg.steps, status="")

        def on_step(rec):
            bar.update(job, completed=rec.step + 1, status=f"loss {rec.loss:.3f}")
            if rec.step % LOG_EVERY == 0 or rec.step + 1 == train_cfg.steps:
                tracking.log_metrics(run_id, {"train/loss": rec.loss, "train/lr": rec.lr,
                                              "train/grad_norm": rec.grad_norm, "train/tokens": rec.tokens}, rec.step)

        history = train_causal_lm(model, blocks, train_cfg, on_step=on_step)
    seconds = time.monotonic() - start
    ppl = held_out_ppl(model, reader, tokenizer, model_cfg.context_length, eval_cfg)
    out = p.artifacts / "models" / f"base-{data_md5[:8]}-{int(time.time())}"
    staging = out.with_name(out.name + ".partial")
    save_model(model, tokenizer, staging)
    (staging / "training.json").write_text(json.dumps({"seconds": seconds, "tokens": history[-1].tokens,
                                                       "final_loss": history[-1].loss, "test_ppl": ppl,
                                                       "data_version": data_md5}, indent=2))
    staging.rename(out)
    summary = {"path": str(out), "fingerprint": fingerprint(out), "test_ppl": ppl, "seconds": seconds,
               "tokens": history[-1].tokens, "final_loss": history[-1].loss,
               "train_split_sha256": sorted(reader.ledger.get("pretrain", set()))}
    tracking.log_metrics(run_id, {"test/ppl": ppl, "train/seconds": seconds})
    tracking.log_artifact(run_id, out, "model")
    return summary


@task(name="load-model")
def describe_model(path: str, trust_remote_code: bool) -> dict:
    """Check a user's model loads and is RoPE-based; returns its fingerprint."""
    model, _ = load_model(path, trust_remote_code)
    del model
    return {"path": path, "fingerprint": fingerprint(Path(path)) if Path(path).is_dir() else Path(path).name}


def model_exists(summary: dict) -> bool:
    return Path(summary["path"]).is_dir() and (Path(summary["path"]) / "config.json").exists()
