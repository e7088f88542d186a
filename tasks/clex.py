"""CLEX training task: install the ODE into the model, train, export (stock dir + frequency table), plot."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

from prefect import task

from ropelab.clex.io import export_clex
from ropelab.clex.ode import ntk_log_frequencies
from ropelab.clex.train import train_clex
from ropelab.config import ClexConfig
from ropelab.data.corpus import CorpusReader
from ropelab.eval.plots import plot_clex_basis
from ropelab.models import fingerprint, load_model
from ropelab.rope.hf import rope_basics
from ropelab.train.data import pack_documents
from tasks import tracking
from tasks.caching import cached_on
from tasks.model import progress_bar
from tasks.retries import out_of_memory_is_final, transient_only
from tasks.settings import paths

LOG_EVERY = 5


def work_dir(model_fp: str, data_md5: str, cfg: ClexConfig) -> Path:
    key = hashlib.sha256(json.dumps([model_fp, data_md5, repr(cfg)]).encode()).hexdigest()[:12]
    return paths().artifacts / "clex" / key


def plotted_scales(max_t: int) -> list[int]:
    return sorted({t for t in (2, 4, 8, 16, 32, 64) if t <= max_t} | {max_t} - {1})


def plot_basis(module, path: Path, original_length: int) -> Path:
    table = module.table()
    head_dim, base = module.dynamics.head_dim, module.dynamics.base
    scales = plotted_scales(module.max_t)
    return plot_clex_basis({t: table[t - 1].tolist() for t in scales},
                           {t: ntk_log_frequencies(t, head_dim, base).exp().tolist() for t in scales},
                           table[0].tolist(), path, f"CLEX frequency basis (L = {original_length}) vs NTK-style")


@task(name="clex-train", cache_policy=cached_on("run_id"), retries=2, retry_delay_seconds=[10, 60],
      retry_condition_fn=transient_only)
def train_clex_model(model_path: str, model_fp: str, data_md5: str, cfg: ClexConfig, run_id: str) -> dict:
    """Train CLEX (checkpoints every K steps: a killed run resumes); the result is a CLEX export directory."""
    model, tokenizer = load_model(model_path)
    L = rope_basics(model.config).original_max_position_embeddings
    docs = [tokenizer.encode(d.text) for d in CorpusReader(paths().corpus).documents("train", "finetune")]
    blocks = pack_documents(docs, cfg.train.seq_len, tokenizer.bos_token_id, tokenizer.eos_token_id)
    directory = work_dir(model_fp, data_md5, cfg)
    (directory / "checkpoint").mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with progress_bar() as bar:
        job = bar.add_task(f"CLEX training (L = {L}, max_t {cfg.max_t})", total=cfg.train.steps, status="")

        def on_step(rec, t):
            bar.update(job, completed=rec.step + 1, status=f"loss {rec.loss:.3f} (t = {t})")
            if rec.step % LOG_EVERY == 0 or rec.step + 1 == cfg.train.steps:
                tracking.log_metrics(run_id, {"clex/loss": rec.loss, "clex/t": t, "clex/lr": rec.lr,
                                              "clex/grad_norm": rec.grad_norm}, rec.step)

        with out_of_memory_is_final("CLEX training", cfg.train.seq_len,
                                    "lower clex.train.batch_size and raise grad_accum, or shard with FSDP"):
            module, history = train_clex(model, blocks, cfg, on_step=on_step, checkpoint_dir=directory / "checkpoint")
    seconds = time.monotonic() - start
    out = export_clex(model, directory / "model", module, tokenizer,
                      provenance={"base_model": model_path, "data_version": data_md5})
    plot = plot_basis(module, directory / "model" / "clex_basis.png", L)
    (out / "training.json").write_text(json.dumps(
        {"seconds": seconds, "first_loss": history[0].loss, "final_loss": history[-1].loss, "steps": len(history),
         "tokens": history[-1].tokens}, indent=2))
    shutil.rmtree(directory / "checkpoint", ignore_errors=True)  # done: the export replaces it
    return {"path": str(out), "fingerprint": fingerprint(out), "first_loss": history[0].loss,
            "final_loss": history[-1].loss, "seconds": seconds, "tokens": history[-1].tokens, "plot": str(plot),
            "original_length": L}
