"""`ropelab search`: LongRoPE's evolutionary search of λ (and n̂) at one ratio, on the base model."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from flows.base import base_flow
from ropelab.config import RunConfig, build
from tasks import tracking
from tasks.search import search_generation, search_init, search_report


def log_generation(run_id: str, result: dict) -> None:
    step = result["generation"]
    tracking.log_metrics(run_id, {"search/best_fitness": result["best"], "search/median_fitness": result["median"],
                                  "search/evaluated": result["evaluated"]}, step)
    tracking.log_artifact(run_id, Path(result["log_path"]), "generations")


@flow(name="search")
def search_flow(config: dict, parent_run_id: str | None = None, model: dict | None = None,
                refresh: bool = False, stage: str = "") -> dict:
    """Search on ``model`` (a base-stage summary; default: run the base stage of this config).
    ``refresh`` recomputes every generation instead of using cached ones; ``stage`` names the MLflow run
    (default: search-<s>x or recovery-<s>x)."""
    cfg = build(RunConfig, config)
    model = model or base_flow(config, parent_run_id=parent_run_id)
    args = (model["path"], model["fingerprint"], model["data"]["md5"], cfg.search)
    stage = stage or f"{'recovery' if cfg.search.mode == 'recovery' else 'search'}-{cfg.search.scale:g}x"
    with tracking.stage_run(stage, cfg, parent_run_id=parent_run_id,
                            data_version=model["data"]["md5"], consumed={"model": model["run_id"]}) as run_id:
        init, generation, final = (t.with_options(refresh_cache=refresh)
                                   for t in (search_init, search_generation, search_report))
        result = init(*args)
        log_generation(run_id, result)
        while result["generation"] < cfg.search.iterations and not result["stopped_early"]:
            result = generation(*args, result)
            log_generation(run_id, result)
            print(f"generation {result['generation']}: best {result['best']:.4f}, median {result['median']:.4f}")
        report = final(*args, result)
        tracking.log_metrics(run_id, {f"test_ppl/{k}": v for k, v in report["test_ppl"].items()})
        tracking.log_metrics(run_id, {f"validation_ppl/{k}": v for k, v in report["validation_ppl"].items()})
        tracking.log_artifact(run_id, Path(report["dir"]), "result")
        tracking.set_tags(run_id, {"search.lambda": report["lambda"], "search.export": report["export"]})
    print(f"winner: validation PPL {report['validation_ppl']['winner']:.4f}, test PPL {report['test_ppl']['winner']:.4f}"
          f" ({report['evaluated']} candidates evaluated)")
    for name, value in sorted(report["test_ppl"].items()):
        print(f"  test PPL {name:>14}: {value:.4f}")
    print(f"λ: {report['lambda']}\nexport: {report['export']}")
    return {**report, "run_id": run_id, "model": model}
