"""`ropelab pipeline`: the progressive LongRoPE recipe (../shared/algorithms.md §3) as one flow of subflows.

base → search r1, r2 (base model) → fine-tune at L·r1 with the r1 factors, then at L·r2 with the r2 factors →
search r3 on the fine-tuned model (stored factors = product) → recovery searches at short lengths → CLEX
(trained on the base model, with a PI fine-tune on the same tokens) → evaluation of every stage's output →
export (short_factor = recovery, long_factor = final). Adding a stage: a subflow here and a config section;
evaluate_stages puts its model into the combined table. Each stage is cached; a rerun
recomputes only what changed, `--rerun-from STAGE` recomputes that stage and everything after it.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

from prefect import flow

from flows.base import base_flow
from flows.clex import clex_flow, comparison_markdown, evaluate_clex
from flows.evaluate import file_hashes
from flows.finetune import finetune_flow
from flows.search import search_flow
from ropelab.config import PIPELINE_STAGES, RunConfig, build
from ropelab.errors import RopelabError
from ropelab.eval.plots import plot_ppl_vs_length
from ropelab.eval.zoo import ExtensionHeadline, extension_headline
from ropelab.plan import check_pipeline, final_length, final_multiplier, stage_search_overrides
from tasks import tracking
from tasks.evaluate import evaluate_zoo
from tasks.export import choose_short_set, export_final, lambda_spec

STAGES = PIPELINE_STAGES


def derive(config: dict, **sections) -> dict:
    """A copy of the config with some sections' fields replaced (each stage's own view of the config)."""
    out = copy.deepcopy(config)
    for section, values in sections.items():
        for key, value in values.items():
            if isinstance(value, dict):
                out.setdefault(section, {}).setdefault(key, {}).update(value)
            else:
                out.setdefault(section, {})[key] = value
    return out


def refresh_from(rerun_from: str | None):
    if rerun_from is not None and rerun_from not in STAGES:
        raise RopelabError(f"unknown stage {rerun_from!r}; stages: {', '.join(STAGES)}")
    return lambda stage: rerun_from is not None and STAGES.index(stage) >= STAGES.index(rerun_from)


@flow(name="pipeline")
def pipeline_flow(config: dict, rerun_from: str | None = None) -> dict:
    cfg = build(RunConfig, config)
    check_pipeline(cfg.pipeline)
    refresh = refresh_from(rerun_from)
    p, L = cfg.pipeline, cfg.model.context_length
    r1, r2 = p.ratios
    with tracking.stage_run("pipeline", cfg) as parent:
        base = base_flow(config, parent, refresh=refresh("base"))
        tracking.set_tags(parent, {"data.version": base["data"]["md5"]})
        stage1 = {r: search_flow(derive(config, search={"scale": r}), parent, model=base, refresh=refresh("search1"),
                                 stage=f"search1-{r:g}x")
                  for r in (r1, r2)}
        ft1 = finetune_flow(derive(config, finetune={"method": "longrope", "rescale_factors_file": stage1[r1]["lambda"],
                                                     "train": {"seq_len": int(L * r1), "steps": p.first_finetune_steps}}),
                            parent, model=base, refresh=refresh("finetune1"))
        ft2 = finetune_flow(derive(config, finetune={"method": "longrope", "rescale_factors_file": stage1[r2]["lambda"],
                                                     "train": {"seq_len": int(L * r2), "steps": p.second_finetune_steps}}),
                            parent, model=ft1, refresh=refresh("finetune2"))
        stage2 = search_flow(derive(config, search={"scale": p.final_ratio, **stage_search_overrides(p, "search2")}),
                             parent, model=ft2, refresh=refresh("search2"), stage=f"search2-{p.final_ratio:g}x")
        final_long = lambda_spec(stage2["lambda"], ft2["path"])
        recovery = {r: search_flow(derive(config, search={"scale": r, "mode": "recovery", "start_tokens": "none",
                                                          **stage_search_overrides(p, "recovery"),
                                                          "max_rescale": p.recovery_max_rescale,
                                                          "attention_factor": final_long.get("attention_factor", 0.0)}),
                                   parent, model=ft2, refresh=refresh("recovery"))
                    for r in p.recovery_ratios}
        searched_short = lambda_spec(recovery[p.recovery_ratios[0]]["lambda"], ft2["path"], short_of=final_long)
        choice = choose_short_set.with_options(refresh_cache=refresh("recovery"))(
            ft2["path"], ft2["fingerprint"], base["data"]["md5"], final_long,
            {"recovery": searched_short, "long": final_long}, cfg.search.num_windows, cfg.search.seed)
        short = choice["short"]
        clex_config = config if p.clex_compare_pi else derive(config, clex={"compare_pi_scale": 0})
        clex = clex_flow(clex_config, parent, model=base, refresh=refresh("clex"), evaluate=False) if p.clex else None
        reports = evaluate_stages(cfg, config, parent, base, stage1, ft2, final_long, short, refresh("evaluate"))
        combined = combined_table(reports)
        if clex is not None:
            combined.update(evaluate_clex(cfg, config, parent, clex, refresh("evaluate")))
        with tempfile.TemporaryDirectory() as scratch:  # the plot lives in the parent run only
            plot = plot_ppl_vs_length({m: {int(n): v for n, v in row.items()} for m, row in combined.items()},
                                      Path(scratch) / "every_stage_ppl_vs_length.png", "every stage: PPL vs length", L)
            tracking.log_artifact(parent, plot, "plots")
        export = export_final.with_options(refresh_cache=refresh("export"))(
            ft2["path"], ft2["fingerprint"], final_long, short, f"longrope-{cfg.preset}")
        headline = extension_headline(combined["base:none"], combined["finetuned:progressive_recovery"], L,
                                      final_length(cfg))
        durations = tracking.stage_durations(parent)
        tracking.log_metrics(parent, {"headline/final_length_ppl_over_base_at_L": headline.long_ratio,
                                      "headline/change_at_L": headline.short_change,
                                      **{f"minutes/{name}": seconds / 60 for name, seconds in durations}})
        summary = write_summary(cfg, base, stage1, ft1, ft2, stage2, recovery, choice, reports, export, clex, combined,
                                headline, durations)
        tracking.log_text(parent, summary, "summary.md")
        tracking.set_tags(parent, {"export.path": export["path"]})
    print(summary)
    return {"export": export, "reports": reports, "run_id": parent, "stage2": stage2, "recovery": recovery,
            "short_choice": choice,
            "base": base, "finetuned": ft2, "clex": clex, "combined": combined, "summary": summary}


def combined_table(reports: dict) -> dict:
    """One row per (model, method): what every stage produced, side by side."""
    return {f"{model}:{method}": row for model, report in reports.items() for method, row in report["table"].items()}


def evaluate_stages(cfg, config, parent, base, stage1, ft2, final_long, short, refresh: bool) -> dict:
    """Zoo on the base model (baselines + search-only λ) and on the fine-tuned model (progressive λ,
    with and without the recovery short factors)."""
    reports = {}
    base_eval = build(RunConfig, derive(config, eval={"rescale_factor_files": [s["lambda"] for s in stage1.values()]})).eval
    with tracking.stage_run("evaluate-base", cfg, parent_run_id=parent, data_version=base["data"]["md5"],
                            consumed={"base": base["run_id"]}) as run_id:
        reports["base"] = evaluate_zoo.with_options(refresh_cache=refresh)(
            base["path"], base["fingerprint"], base["data"]["md5"], base_eval,
            file_hashes(base_eval.rescale_factor_files), run_id)
        tracking.log_artifact(run_id, Path(reports["base"]["dir"]), "zoo")
    multipliers = sorted({*cfg.eval.length_multipliers, final_multiplier(cfg.pipeline)})
    tuned_eval = build(RunConfig, derive(config, eval={"methods": [], "rescale_factor_files": [],
                                                       "length_multipliers": multipliers})).eval
    settings = {"progressive": {"long": final_long, "short": None},
                "progressive_recovery": {"long": final_long, "short": short}}
    with tracking.stage_run("evaluate-finetuned", cfg, parent_run_id=parent, data_version=base["data"]["md5"],
                            consumed={"finetuned": ft2["run_id"]}) as run_id:
        reports["finetuned"] = evaluate_zoo.with_options(refresh_cache=refresh)(
            ft2["path"], ft2["fingerprint"], base["data"]["md5"], tuned_eval, {}, run_id, settings)
        tracking.log_artifact(run_id, Path(reports["finetuned"]["dir"]), "zoo")
    return reports


def stage_times_markdown(durations: list[tuple[str, float]]) -> str:
    """Wall time per stage run, in the order they started (a cache hit shows as seconds)."""
    rows = [f"| {name} | {seconds / 60:.2f} |" for name, seconds in durations]
    total = sum(seconds for _, seconds in durations)
    return "\n".join(["| stage | minutes |", "|---|---:|", *rows, f"| all stages | {total / 60:.2f} |"])


def write_summary(cfg, base, stage1, ft1, ft2, stage2, recovery, choice, reports, export, clex, combined,
                  headline: ExtensionHeadline, durations: list[tuple[str, float]]) -> str:
    L = cfg.model.context_length
    lines = [f"# ropelab pipeline: {cfg.preset}", "",
             f"**{final_length(cfg)} tokens: PPL {headline.final_at_final_length:.3f}, {headline.long_ratio:.2f}× the "
             f"base model's {headline.base_at_L:.3f} at {L}; at {L}: {headline.final_at_L:.3f} "
             f"({headline.short_change:+.1%})** (exported model, held-out windows)", "",
             f"- data version `{base['data']['md5']}`; base model `{base['path']}`",
             *[f"- search {r:g}× on the base model: test PPL {s['test_ppl']['winner']:.3f} "
               f"(best seed {min(v for k, v in s['test_ppl'].items() if k != 'winner'):.3f})" for r, s in stage1.items()],
             f"- fine-tuned: `{ft1['path']}` → `{ft2['path']}` (final loss {ft2['final_loss']:.3f})",
             f"- search {cfg.pipeline.final_ratio:g}× on the fine-tuned model: test PPL {stage2['test_ppl']['winner']:.3f}",
             *[f"- recovery {r:g}×: test PPL {s['test_ppl']['winner']:.3f}" for r, s in recovery.items()],
             f"- short factors exported: **{choice['chosen']}** (validation PPL at {choice['length']}: "
             + ", ".join(f"{k} {v:.3f}" for k, v in choice["validation_ppl"].items()) + ")",
             *([f"- CLEX (max_t {cfg.clex.max_t}): `{clex['path']}` (loss {clex['first_loss']:.3f} → "
                f"{clex['final_loss']:.3f}, {clex['seconds']:.0f} s)"] if clex else []),
             f"- export: `{export['path']}`" + (f" (lossy: {'; '.join(export['lossy'])})" if export["lossy"] else ""),
             ""]
    lines += ["## every stage", "", comparison_markdown(combined, cfg, caption="Held-out PPL of every stage's output"),
              ""]
    for name, report in reports.items():
        lines += [f"## {name} model", "", Path(report["dir"], "zoo.md").read_text(), ""]
    lines += ["## stage times", "", stage_times_markdown(durations), ""]
    return "\n".join(lines)
