"""`ropelab finetune`: continue training the base model with a fixed RoPE at a longer length."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from ropelab.artifacts import DataArtifact, ModelArtifact
from ropelab.config import RunConfig
from ropelab.errors import RopelabError
from ropelab.flows.base import upstream
from ropelab.tasks import runner
from ropelab.tasks.train import finetune_model, lambda_identity


@flow(name="finetune", flow_run_name="finetune-{cfg.preset}")
def finetune_flow(cfg: RunConfig, parent_run_id: str | None = None, model: ModelArtifact | None = None,
                  data: DataArtifact | None = None, refresh: bool = False) -> ModelArtifact:
    lam = Path(cfg.finetune.rescale_factors_file) if cfg.finetune.rescale_factors_file else None
    if lam is not None and not lam.is_file():  # before any upstream stage runs
        raise RopelabError(f"finetune.rescale_factors_file: no such file {lam}")
    model, data = upstream(cfg, parent_run_id, model, data)
    with runner.stage(f"finetune-{cfg.finetune.train.seq_len}", cfg, parent_run_id=parent_run_id,
                      data_version=data.fingerprint, consumed={"model": model, "data": data}, refresh=refresh) as stage:
        result = stage.record(stage.call(finetune_model, model, data, cfg.finetune, lam, lambda_identity(lam)))
    print(f"fine-tuned model: {result.path} (loss {result.metrics['finetune/first_loss']:.3f} → "
          f"{result.metrics['finetune/final_loss']:.3f}; rope_type {result.rope_parameters['rope_type']})")
    return result
