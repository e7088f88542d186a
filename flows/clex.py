"""`ropelab clex`: train CLEX on the base model, next to a PI fine-tune on the same tokens, and compare."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from flows.base import base_flow
from flows.finetune import finetune_flow
from ropelab.config import RunConfig, build, to_dict
from tasks import tracking
from tasks.clex import train_clex_model
from tasks.evaluate import evaluate_zoo


def pi_comparison_config(config: dict, cfg: RunConfig) -> dict:
    """PI at clex.compare_pi_scale, trained exactly like CLEX (same length, steps, batch, lr, seed)."""
    out = dict(config)
    out["finetune"] = {"method": "pi", "scale": cfg.clex.compare_pi_scale, "only_beyond_original": False,
                       "rescale_factors_file": "", "train": to_dict(cfg.clex.train)}
    return out


def native_eval(config: dict, original_length: int):
    """The eval section with only the model's own RoPE (CLEX, or the fine-tune's rope_parameters), at multiples
    of the base model's L (a stock PI export's config records only its extended length)."""
    return build(RunConfig, {**config, "eval": {**config.get("eval", {}), "methods": ["native"],
                                                 "rescale_factor_files": [], "original_length": original_length}}).eval


@flow(name="clex")
def clex_flow(config: dict, parent_run_id: str | None = None, model: dict | None = None,
              refresh: bool = False, evaluate: bool = True) -> dict:
    """Train CLEX (and the PI comparison); ``evaluate=False`` leaves evaluation to the caller (the pipeline)."""
    cfg = build(RunConfig, config)
    model = model or base_flow(config, parent_run_id=parent_run_id)
    data_md5 = model["data"]["md5"]
    with tracking.stage_run("clex", cfg, parent_run_id=parent_run_id, data_version=data_md5,
                            consumed={"model": model["run_id"]}) as run_id:
        trained = train_clex_model.with_options(refresh_cache=refresh)(
            model["path"], model["fingerprint"], data_md5, cfg.clex, run_id)
        tracking.log_metrics(run_id, {"clex/final_loss": trained["final_loss"], "clex/seconds": trained["seconds"]})
        tracking.log_artifact(run_id, Path(trained["plot"]), "plots")
        tracking.log_artifact(run_id, Path(trained["path"]), "model")  # the checkpoint: stock dir + CLEX table
        tracking.set_tags(run_id, {"model.path": trained["path"], "model.fingerprint": trained["fingerprint"]})
    result = {**trained, "run_id": run_id, "data": model["data"]}
    if cfg.clex.compare_pi_scale:
        result["pi"] = finetune_flow(pi_comparison_config(config, cfg), parent_run_id, model=model, refresh=refresh)
    if evaluate:
        tables = evaluate_clex(cfg, config, parent_run_id, result, refresh)
        print(comparison_markdown(tables, cfg))
    return result


def evaluate_clex(cfg: RunConfig, config: dict, parent_run_id: str | None, clex: dict, refresh: bool) -> dict:
    """Zoo (the model's own RoPE) on the CLEX model and on the PI comparison; {row name: {length: PPL}}."""
    models = {"clex": clex, **({pi_name(cfg): clex["pi"]} if "pi" in clex else {})}
    tables = {}
    for name, trained in models.items():
        with tracking.stage_run(f"evaluate-{name.split()[0]}", cfg, parent_run_id=parent_run_id,
                                data_version=clex["data"]["md5"], consumed={"model": trained["run_id"]}) as run_id:
            report = evaluate_zoo.with_options(refresh_cache=refresh)(
                trained["path"], trained["fingerprint"], clex["data"]["md5"],
                native_eval(config, clex["original_length"]), {}, run_id)
            tracking.log_metrics(run_id, {f"ppl/{name.split()[0]}/{n}": v for n, v in report["table"]["native"].items()})
            tracking.log_artifact(run_id, Path(report["dir"]), "zoo")
        clex.setdefault("reports", {})[name] = report
        tables[name] = report["table"]["native"]
    return tables


def pi_name(cfg: RunConfig) -> str:
    return f"pi-{cfg.clex.compare_pi_scale:g}x fine-tuned"


def comparison_markdown(tables: dict, cfg: RunConfig, caption: str = "") -> str:
    lengths = sorted({int(n) for row in tables.values() for n in row})
    caption = caption or f"CLEX (max_t {cfg.clex.max_t}) vs PI fine-tuned on the same tokens: held-out PPL"
    lines = [f"{caption} ({cfg.eval.num_windows} {cfg.eval.split} windows, {cfg.eval.protocol})", "",
             "| model | " + " | ".join(map(str, lengths)) + " |", "|---|" + "---:|" * len(lengths)]
    for name, row in tables.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[str(n)]:.3f}" if str(n) in row else "–" for n in lengths) + " |")
    return "\n".join(lines) + "\n"
