"""Training tasks: fine-tune a model with a fixed RoPE at a longer length; resumable, exported as stock HF."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

from prefect import task

from ropelab.config import FinetuneConfig
from ropelab.data.corpus import CorpusReader
from ropelab.errors import RopelabError
from ropelab.eval import zoo
from ropelab.models import fingerprint, load_model
from ropelab.rope.factors_io import read_rescale_spec
from ropelab.rope.hf import base_spec, export_hf, rope_basics
from ropelab.rope.registry import RopeSpec
from ropelab.train.data import pack_documents
from ropelab.train.finetune import finetune
from tasks import tracking
from tasks.caching import cached_on
from tasks.model import progress_bar
from tasks.retries import out_of_memory_is_final, transient_only
from tasks.settings import paths


def finetune_spec(model, cfg: FinetuneConfig) -> RopeSpec:
    b = rope_basics(model.config)
    if cfg.method != "longrope":
        length = int(round(cfg.scale * b.original_max_position_embeddings))
        return zoo.baseline(cfg.method)(length, b)[0]  # unknown names raise, listing the baselines
    if not cfg.rescale_factors_file:
        raise RopelabError("finetune.method longrope needs finetune.rescale_factors_file (a search's λ file)")
    return read_rescale_spec(cfg.rescale_factors_file, head_dim=b.head_dim, base=b.base,
                             original_max_position_embeddings=b.original_max_position_embeddings,
                             default_factor=cfg.scale)


def work_dir(model_fp: str, data_md5: str, cfg: FinetuneConfig, lam_sha: str) -> Path:
    key = hashlib.sha256(json.dumps([model_fp, data_md5, repr(cfg), lam_sha]).encode()).hexdigest()[:12]
    return paths().artifacts / "finetune" / key


@task(name="finetune", cache_policy=cached_on("run_id"), retries=2, retry_delay_seconds=[10, 60],
      retry_condition_fn=transient_only)
def finetune_model(model_path: str, model_fp: str, data_md5: str, cfg: FinetuneConfig, lam_sha: str,
                   run_id: str) -> dict:
    """Fine-tune; checkpoints every K steps (a killed run resumes); the result is a stock HF directory."""
    model, tokenizer = load_model(model_path)
    long = finetune_spec(model, cfg)
    train = cfg.train
    docs = [tokenizer.encode(d.text) for d in CorpusReader(paths().corpus).documents("train", "finetune")]
    blocks = pack_documents(docs, train.seq_len, tokenizer.bos_token_id, tokenizer.eos_token_id)
    directory = work_dir(model_fp, data_md5, cfg, lam_sha)
    (directory / "checkpoint").mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with progress_bar() as bar:
        job = bar.add_task(f"fine-tuning at {train.seq_len}", total=train.steps, status="")

        def on_step(rec):
            bar.update(job, completed=rec.step + 1, status=f"loss {rec.loss:.3f}")
            tracking.log_metrics(run_id, {"finetune/loss": rec.loss, "finetune/lr": rec.lr}, rec.step)

        with out_of_memory_is_final("fine-tuning", train.seq_len,
                                    "lower finetune.train.batch_size and raise grad_accum, or shard with FSDP"):
            history = finetune(model, blocks, long, train, only_beyond_original=cfg.only_beyond_original,
                               on_step=on_step, checkpoint_dir=directory / "checkpoint")
    short = base_spec(model.config) if cfg.only_beyond_original else None
    report = export_hf(model, directory / "model", long, short, tokenizer=tokenizer,
                       provenance={"base_model": model_path, "data_version": data_md5})
    (directory / "model" / "training.json").write_text(json.dumps(
        {"seconds": time.monotonic() - start, "final_loss": history[-1].loss, "steps": len(history)}, indent=2))
    shutil.rmtree(directory / "checkpoint", ignore_errors=True)  # done: the exported model replaces it
    return {"path": str(report.path), "fingerprint": fingerprint(report.path), "final_loss": history[-1].loss,
            "first_loss": history[0].loss, "lossy": report.lossy, "rope_parameters": report.rope_parameters}
