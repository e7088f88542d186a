"""`ropelab data`: assemble the corpus into <home>/<data.name>/ and version it with DVC."""

from __future__ import annotations

from prefect import flow

from ropelab.artifacts import DataArtifact
from ropelab.config import RunConfig
from ropelab.tasks import runner
from ropelab.tasks.data import build_corpus, data_matches, source_fingerprint


@flow(name="data", flow_run_name="data-{cfg.preset}")
def data_flow(cfg: RunConfig, parent_run_id: str | None = None, refresh: bool = False) -> DataArtifact:
    with runner.stage("data", cfg, parent_run_id=parent_run_id, refresh=refresh) as stage:
        # a cached result describes data that was removed, edited or rebuilt from other inputs since: rebuild
        data = stage.record(stage.call(build_corpus, cfg.data, source_fingerprint(cfg.data), valid=data_matches))
    print(f"data version {data.fingerprint} ({data.name}.dvc): {data.documents} documents, {data.chars} characters")
    return data
