"""Training tasks: fine-tune a model with a fixed RoPE at a longer length; resumable, exported as stock HF."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from ropelab import identity
from ropelab.artifacts import DataArtifact, ModelArtifact
from ropelab.config import FinetuneConfig
from ropelab.data.corpus import CorpusReader
from ropelab.errors import RopelabError
from ropelab.eval import zoo
from ropelab.models import load_model
from ropelab.rope.adapter import base_spec, rope_basics
from ropelab.rope.export import export_hf
from ropelab.rope.factors_io import read_rescale_spec
from ropelab.rope.registry import RopeSpec
from ropelab.tasks.caching import IDENTITY, code_version
from ropelab.tasks.devices import device_task
from ropelab.tasks.home import paths
from ropelab.tasks.model import loss_curves
from ropelab.tasks.progress import progress_bar
from ropelab.tasks.retries import out_of_memory_is_final, transient_only
from ropelab.train.data import pack_documents
from ropelab.train.finetune import finetune, mixed_finetune
from ropelab.train.mixed import pack_short_rows

LOG_EVERY = 1


def finetune_spec(model, cfg: FinetuneConfig, lam: Path | None) -> RopeSpec:
    b = rope_basics(model.config)
    if cfg.method != "longrope":
        length = int(round(cfg.scale * b.original_max_position_embeddings))
        return zoo.baseline(cfg.method)(length, b)[0]
    if lam is None:
        raise RopelabError("finetune.method longrope needs finetune.rescale_factors_file (a search's λ file)")
    return read_rescale_spec(lam, head_dim=b.head_dim, base=b.base,
                             original_max_position_embeddings=b.original_max_position_embeddings,
                             default_factor=cfg.scale)


def work_dir(model: ModelArtifact, cfg: FinetuneConfig, lam_identity: str) -> Path:
    """Checkpoints of a run in flight, keyed by everything the result depends on, the code version included
    (a rerun after a code change never resumes from the old code's checkpoint)."""
    key = identity.json_identity([model, cfg, lam_identity, code_version()])
    return paths().artifacts / "finetune" / identity.short(key)


def lambda_identity(lam: Path | None) -> str:
    return identity.sha256_file(lam)[:16] if lam else ""


def mixed_run(loaded, tokenizer, docs, blocks, long: RopeSpec, cfg: FinetuneConfig, on_step, checkpoint_dir: Path):
    """LongRoPE2's mixed context window training: the corpus cut into pieces of at most L tokens (framed
    [BOS] piece [EOS]), packed into train.seq_len rows with per-piece positions and attention, mixed with the
    long blocks at finetune.mixed_long_share of the tokens (both kinds hold seq_len tokens per row). Returns the
    history and what was mixed (metrics)."""
    if cfg.method != "longrope" or not cfg.only_beyond_original:
        raise RopelabError("finetune.windows mixed needs finetune.method longrope and only_beyond_original true "
                           "(short rows train with the original RoPE, long ones with the searched factors)")
    L = rope_basics(loaded.config).original_max_position_embeddings
    piece = L - 2  # room for BOS and EOS: every short position stays < L
    pieces = [doc[i: i + piece] for doc in docs for i in range(0, len(doc), piece)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    short = pack_short_rows(pieces, cfg.train.seq_len, L, tokenizer.bos_token_id, tokenizer.eos_token_id, pad)
    history = mixed_finetune(loaded, short, blocks, long, cfg.train, long_fraction=cfg.mixed_long_share,
                             on_step=on_step, checkpoint_dir=checkpoint_dir)
    return history, {"finetune/short_rows": float(short.input_ids.shape[0]),
                     "finetune/short_pieces": float(len(pieces)), "finetune/long_blocks": float(blocks.shape[0])}


@device_task(name="finetune", cache_policy=IDENTITY, retries=2, retry_delay_seconds=[10, 60],
      retry_condition_fn=transient_only)
def finetune_model(model: ModelArtifact, data: DataArtifact, cfg: FinetuneConfig, lam: Path | None,
                   lam_sha: str) -> ModelArtifact:
    """Fine-tune; checkpoints every K steps (a killed run resumes); the result is a stock HF directory.
    ``lam_sha`` (the λ file's content) is in the cache key; the path is where to read it."""
    loaded, tokenizer = load_model(model.path)
    long = finetune_spec(loaded, cfg, lam)
    train = cfg.train
    docs = [tokenizer.encode(d.text) for d in CorpusReader(data.path).documents("train", "finetune")]
    blocks = pack_documents(docs, train.seq_len, tokenizer.bos_token_id, tokenizer.eos_token_id)
    directory = work_dir(model, cfg, lam_sha)
    (directory / "checkpoint").mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    with progress_bar() as bar:
        kind = "mixed-window fine-tuning" if cfg.windows == "mixed" else "fine-tuning"
        job = bar.add_task(f"{kind} at {train.seq_len}", total=train.steps, status="")
        with out_of_memory_is_final("fine-tuning", train.seq_len,
                                    "lower finetune.train.batch_size and raise grad_accum, or shard with FSDP"):
            on_step = lambda rec: bar.update(job, completed=rec.step + 1, status=f"loss {rec.loss:.3f}")  # noqa: E731
            mixture: dict[str, float] = {}
            if cfg.windows == "mixed":
                history, mixture = mixed_run(loaded, tokenizer, docs, blocks, long, cfg, on_step,
                                             directory / "checkpoint")
            else:
                history = finetune(loaded, blocks, long, train, only_beyond_original=cfg.only_beyond_original,
                                   on_step=on_step, checkpoint_dir=directory / "checkpoint")
    short = base_spec(loaded.config) if cfg.only_beyond_original else None
    report = export_hf(loaded, directory / "model", long, short, tokenizer=tokenizer,
                       provenance={"base_model": str(model.path), "data_version": data.fingerprint})
    seconds = time.monotonic() - start
    (directory / "model" / "training.json").write_text(json.dumps(
        {"seconds": seconds, "final_loss": history[-1].loss, "steps": len(history)}, indent=2))
    shutil.rmtree(directory / "checkpoint", ignore_errors=True)  # done: the exported model replaces it
    metrics = {"finetune/first_loss": history[0].loss, "finetune/final_loss": history[-1].loss,
               "finetune/seconds": seconds, "finetune/tokens": float(history[-1].tokens), **mixture}
    return ModelArtifact(report.path, identity.model_fingerprint(report.path), data.fingerprint, kind="finetuned",
                         original_length=model.original_length, metrics=metrics,
                         history=loss_curves(history, LOG_EVERY, "finetune")[:2], lossy=tuple(report.lossy),
                         rope_parameters=report.rope_parameters)
