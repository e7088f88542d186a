"""`ropelab base`: the base model stage: pretrain the embedded tiny Llama, or load the user's model."""

from __future__ import annotations

from prefect import flow

from flows.data import data_flow
from ropelab.config import RunConfig, build
from tasks import tracking
from tasks.model import describe_model, model_exists, pretrain_base


@flow(name="base")
def base_flow(config: dict, parent_run_id: str | None = None, refresh: bool = False) -> dict:
    cfg = build(RunConfig, config)
    data = data_flow(config, parent_run_id=parent_run_id)
    with tracking.stage_run("base", cfg, parent_run_id=parent_run_id, data_version=data["md5"],
                            consumed={"data": data["run_id"]}) as run_id:
        if cfg.model.source != "tiny":
            summary = describe_model(cfg.model.source, cfg.model.trust_remote_code)
        else:
            args = (data["md5"], cfg.model, cfg.pretrain, cfg.eval, run_id)
            summary = pretrain_base.with_options(refresh_cache=refresh)(*args, parent_run_id=parent_run_id)
            if not model_exists(summary):  # cached result whose checkpoint was deleted
                summary = pretrain_base.with_options(refresh_cache=True)(*args, parent_run_id=parent_run_id)
            # a cache hit skips the task body and its logging: record the summary here
            tracking.log_metrics(run_id, {"test/ppl": summary["test_ppl"], "train/seconds": summary["seconds"]})
        tracking.set_tags(run_id, {"model.path": summary["path"], "model.fingerprint": summary["fingerprint"]})
    print(f"base model {summary['path']} (fingerprint {summary['fingerprint']})"
          + (f", held-out PPL at {cfg.model.context_length}: {summary['test_ppl']:.3f}" if "test_ppl" in summary else ""))
    return {**summary, "run_id": run_id, "data": data}
