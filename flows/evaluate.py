"""`ropelab evaluate`: the method-zoo report for the base model (or a user's model)."""

from __future__ import annotations

import hashlib
from pathlib import Path

from prefect import flow

from flows.base import base_flow
from ropelab.config import RunConfig, build
from tasks import tracking
from tasks.evaluate import evaluate_zoo


def file_hashes(files) -> dict[str, str]:
    return {f: hashlib.sha256(Path(f).read_bytes()).hexdigest()[:16] for f in files}


@flow(name="evaluate")
def evaluate_flow(config: dict, parent_run_id: str | None = None) -> dict:
    cfg = build(RunConfig, config)
    base = base_flow(config, parent_run_id=parent_run_id)
    with tracking.stage_run("evaluate", cfg, parent_run_id=parent_run_id, data_version=base["data"]["md5"],
                            consumed={"base": base["run_id"]}) as run_id:
        report = evaluate_zoo(base["path"], base["fingerprint"], base["data"]["md5"], cfg.eval,
                              file_hashes(cfg.eval.rescale_factor_files), run_id)
        # logged here too: a cache hit skips the task body and its logging
        tracking.log_metrics(run_id, {f"ppl/{m}/{n}": v for m, row in report["table"].items() for n, v in row.items()})
        tracking.log_artifact(run_id, Path(report["dir"]), "zoo")
        tracking.set_tags(run_id, {"report.dir": report["dir"]})
    print((Path(report["dir"]) / "zoo.md").read_text())
    print(f"report: {report['dir']}")
    return {**report, "run_id": run_id, "base": base}
