"""`ropelab finetune`: continue training the base model with a fixed RoPE at a longer length."""

from __future__ import annotations

import hashlib
from pathlib import Path

from prefect import flow

from flows.base import base_flow
from ropelab.config import RunConfig, build
from tasks import tracking
from tasks.train import finetune_model


@flow(name="finetune")
def finetune_flow(config: dict, parent_run_id: str | None = None, model: dict | None = None,
                  refresh: bool = False) -> dict:
    cfg = build(RunConfig, config)
    model = model or base_flow(config, parent_run_id=parent_run_id)
    lam = cfg.finetune.rescale_factors_file
    lam_sha = hashlib.sha256(Path(lam).read_bytes()).hexdigest()[:16] if lam else ""
    with tracking.stage_run(f"finetune-{cfg.finetune.train.seq_len}", cfg, parent_run_id=parent_run_id,
                            data_version=model["data"]["md5"], consumed={"model": model["run_id"]}) as run_id:
        result = finetune_model.with_options(refresh_cache=refresh)(model["path"], model["fingerprint"], model["data"]["md5"], cfg.finetune, lam_sha,
                                run_id)
        tracking.log_metrics(run_id, {"finetune/final_loss": result["final_loss"]})
        tracking.set_tags(run_id, {"model.path": result["path"], "model.fingerprint": result["fingerprint"]})
    print(f"fine-tuned model: {result['path']} (loss {result['first_loss']:.3f} → {result['final_loss']:.3f}; "
          f"rope_type {result['rope_parameters']['rope_type']})")
    return {**result, "run_id": run_id, "data": model["data"]}
