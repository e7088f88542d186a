"""CLEX training task: install the ODE into the model, train, export (stock dir + frequency table), plot."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path

from ropelab import identity
from ropelab.artifacts import DataArtifact, ModelArtifact, Series
from ropelab.clex.io import export_clex
from ropelab.clex.ode import ntk_log_frequencies
from ropelab.clex.train import optimization, train_clex
from ropelab.config import ClexConfig
from ropelab.data.corpus import CorpusReader
from ropelab.eval.plots import plot_clex_basis
from ropelab.models import load_model
from ropelab.rope.adapter import rope_basics
from ropelab.tasks.caching import IDENTITY, code_version
from ropelab.tasks.devices import device_task
from ropelab.tasks.home import paths
from ropelab.tasks.progress import progress_bar
from ropelab.tasks.retries import out_of_memory_is_final, transient_only
from ropelab.train.data import pack_documents

LOG_EVERY = 5


def work_dir(model: ModelArtifact, cfg: ClexConfig) -> Path:
    return paths().artifacts / "clex" / identity.short(identity.json_identity([model, cfg, code_version()]))


def plotted_scales(max_t: int) -> list[int]:
    return sorted({t for t in (2, 4, 8, 16, 32, 64) if t <= max_t} | {max_t} - {1})


def plot_basis(module, path: Path, original_length: int) -> Path:
    table = module.table()
    head_dim, base = module.dynamics.head_dim, module.dynamics.base
    scales = plotted_scales(module.max_t)
    return plot_clex_basis({t: table[t - 1].tolist() for t in scales},
                           {t: ntk_log_frequencies(t, head_dim, base).exp().tolist() for t in scales},
                           table[0].tolist(), path, f"CLEX frequency basis (L = {original_length}) vs NTK-style")


def clex_curves(steps: list[tuple[int, dict]]) -> tuple[Series, ...]:
    names = steps[0][1].keys() if steps else ()
    return tuple(Series(f"clex/{n}", tuple((s, float(v[n])) for s, v in steps)) for n in names)


@device_task(name="clex-train", cache_policy=IDENTITY, retries=2, retry_delay_seconds=[10, 60],
      retry_condition_fn=transient_only)
def train_clex_model(model: ModelArtifact, data: DataArtifact, cfg: ClexConfig) -> ModelArtifact:
    """Train CLEX (checkpoints every K steps: a killed run resumes); the result is a CLEX export directory."""
    loaded, tokenizer = load_model(model.path)
    L = rope_basics(loaded.config).original_max_position_embeddings
    docs = [tokenizer.encode(d.text) for d in CorpusReader(data.path).documents("train", "finetune")]
    blocks = pack_documents(docs, cfg.train.seq_len, tokenizer.bos_token_id, tokenizer.eos_token_id)
    directory = work_dir(model, cfg)
    (directory / "checkpoint").mkdir(parents=True, exist_ok=True)
    start, logged = time.monotonic(), []
    with progress_bar() as bar:
        job = bar.add_task(f"CLEX training (L = {L}, max_t {cfg.max_t})", total=cfg.train.steps, status="")

        def on_step(rec, t):
            bar.update(job, completed=rec.step + 1, status=f"loss {rec.loss:.3f} (t = {t})")
            if rec.step % LOG_EVERY == 0 or rec.step + 1 == cfg.train.steps:
                logged.append((rec.step, {"loss": rec.loss, "t": t, "lr": rec.lr, "grad_norm": rec.grad_norm}))

        with out_of_memory_is_final("CLEX training", cfg.train.seq_len,
                                    "lower clex.train.batch_size and raise grad_accum, or shard with FSDP"):
            module, history = train_clex(loaded, blocks, cfg, on_step=on_step, checkpoint_dir=directory / "checkpoint")
    seconds = time.monotonic() - start
    out = export_clex(loaded, directory / "model", module, tokenizer,
                      provenance={"base_model": str(model.path), "data_version": data.fingerprint})
    plot = plot_basis(module, directory / "clex_basis.png", L)
    (out / "training.json").write_text(json.dumps(
        {"seconds": seconds, "first_loss": history[0].loss, "final_loss": history[-1].loss, "steps": len(history),
         "tokens": history[-1].tokens, "optimizer": {"choice": cfg.optimizer, **asdict(optimization(cfg))}},
        indent=2))
    shutil.rmtree(directory / "checkpoint", ignore_errors=True)  # done: the export replaces it
    metrics = {"clex/first_loss": history[0].loss, "clex/final_loss": history[-1].loss, "clex/seconds": seconds,
               "clex/tokens": history[-1].tokens}
    return ModelArtifact(out, identity.model_fingerprint(out), data.fingerprint, kind="clex", original_length=L,
                         metrics=metrics, history=clex_curves(logged), plots=(plot,))
