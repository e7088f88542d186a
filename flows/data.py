"""`ropelab data`: assemble the corpus into data/ and version it with DVC."""

from __future__ import annotations

from prefect import flow

from ropelab.config import RunConfig, build
from tasks import tracking, versioning
from tasks.data import build_corpus, source_fingerprint
from tasks.settings import paths


def data_matches(home, md5: str) -> bool:
    """data/ exists, matches data.dvc, and data.dvc records this version."""
    return ((home / "data" / "corpus" / "manifest.json").exists() and versioning.data_version(home) == md5
            and versioning.is_clean(home))


@flow(name="data")
def data_flow(config: dict, parent_run_id: str | None = None) -> dict:
    cfg = build(RunConfig, config)
    p = paths()
    fingerprint = source_fingerprint(cfg.data)
    result = build_corpus(cfg.data, fingerprint, str(p.home))
    if not data_matches(p.home, result["md5"]):
        # the cached result describes data that was removed, edited or rebuilt from other inputs since
        result = build_corpus.with_options(refresh_cache=True)(cfg.data, fingerprint, str(p.home))
    with tracking.stage_run("data", cfg, parent_run_id=parent_run_id, data_version=result["md5"]) as run_id:
        tracking.log_dataset(run_id, "corpus", result["md5"], str(p.data), "training")
        tracking.log_metrics(run_id, {f"chars/{k}": v for k, v in result["chars"].items()})
        tracking.log_artifact(run_id, p.corpus / "manifest.json")
    print(f"data version {result['md5']}: {result['documents']} documents, {result['chars']} characters")
    return {**result, "run_id": run_id}
