"""`ropelab pipeline`: the progressive LongRoPE recipe (docs: README "The progressive pipeline") as one flow.

base → search r1, r2 (base model) → fine-tune at L·r1 with the r1 factors, then at L·r2 with the r2 factors →
search r3 on the fine-tuned model (stored factors = product) → recovery searches at short lengths → CLEX
(trained on the base model, with a PI fine-tune on the same tokens) → LongRoPE2 beside it when pipeline.longrope2
(``ropelab.flows.longrope2``: one search + mixed-window fine-tuning on as many tokens) → evaluation of every stage's output →
export (short_factor = recovery or long, long_factor = final), scored as stock transformers loads it. Adding a stage: a stage function (a subflow
running its tasks through ``runner.stage``), one line here, a field of ``PipelineOutcome`` if later stages or
the summary use it, and its config view in ``ropelab.recipe``. ``--rerun-from STAGE`` recomputes that stage
and everything after it.
"""

from __future__ import annotations

from prefect import flow

from ropelab import recipe
from ropelab.artifacts import ExportArtifact, ModelArtifact, SearchArtifact
from ropelab.config import PIPELINE_STAGES, RunConfig
from ropelab.errors import RopelabError
from ropelab.eval.report import PipelineOutcome, pipeline_report
from ropelab.flows.base import base_flow
from ropelab.flows.clex import clex_stage, evaluate_native, pi_comparisons
from ropelab.flows.data import data_flow
from ropelab.flows.evaluate import evaluate_stage
from ropelab.flows.finetune import finetune_flow
from ropelab.flows.longrope2 import longrope2_stage
from ropelab.flows.search import search_flow
from ropelab.plan import final_length, progressive_finetune_tokens
from ropelab.tasks import runner
from ropelab.tasks.export import choose_short_set, export_final, fitness_windows, lambda_spec, score_export


def refresh_from(rerun_from: str | None):
    if rerun_from is not None and rerun_from not in PIPELINE_STAGES:
        raise RopelabError(f"unknown stage {rerun_from!r}; stages: {', '.join(PIPELINE_STAGES)}")
    return lambda stage: rerun_from is not None and PIPELINE_STAGES.index(stage) >= PIPELINE_STAGES.index(rerun_from)


@flow(name="pipeline", flow_run_name="pipeline-{cfg.preset}")
def pipeline_flow(cfg: RunConfig, rerun_from: str | None = None) -> PipelineOutcome:
    refresh, p = refresh_from(rerun_from), cfg.pipeline
    with runner.stage("pipeline", cfg) as parent:
        run = parent.run_id
        data = data_flow(cfg, run)
        base = base_flow(cfg, run, refresh("base"), data)
        stage1 = {r: search_flow(recipe.search1(cfg, r), run, base, data, refresh("search1"), f"search1-{r:g}x")
                  for r in p.ratios}
        steps = (p.first_finetune_steps, p.second_finetune_steps)
        ft1 = finetune_flow(recipe.finetune(cfg, stage1[p.ratios[0]].lam, p.ratios[0], steps[0]), run, base, data,
                            refresh("finetune1"))
        ft2 = finetune_flow(recipe.finetune(cfg, stage1[p.ratios[1]].lam, p.ratios[1], steps[1]), run, ft1, data,
                            refresh("finetune2"))
        stage2 = search_flow(recipe.search2(cfg), run, ft2, data, refresh("search2"), f"search2-{p.final_ratio:g}x")
        long = lambda_spec(stage2.lam, ft2)
        recovery = {r: search_flow(recipe.recovery(cfg, r, long.get("attention_factor", 0.0)), run, ft2, data,
                                   refresh("recovery")) for r in p.recovery_ratios}
        fitness = fitness_of(cfg, stage1, stage2, recovery, long)
        choice = short_choice(cfg, parent, ft2, data, long, recovery[p.recovery_ratios[0]], fitness,
                              refresh("recovery"))
        clex = clex_stage(cfg, run, base, data, refresh("clex")) if p.clex else None
        v2 = longrope2_stage(cfg, run, base, data, refresh("longrope2")) if p.longrope2 else None
        reports = evaluate_stages(cfg, run, base, data, stage1, ft2, long, choice.short, clex, refresh("evaluate"))
        reports |= {"longrope2": v2.report, "base-cd": v2.baselines} if v2 is not None else {}
        export = parent.record(export_stage(cfg, parent, ft2, data, long, choice.short, refresh("export")))
        outcome = PipelineOutcome(data, base, stage1, (ft1, ft2), stage2, recovery, choice, clex, reports,
                                  combined_table(reports), export, None, run_id=run, longrope2=v2,
                                  progressive_tokens=progressive_finetune_tokens(cfg))
        outcome = parent.record(pipeline_report(cfg, outcome, parent.durations(), parent.report_dir()))
    print(outcome.summary)
    return outcome


def fitness_of(cfg: RunConfig, stage1: dict, stage2: SearchArtifact, recovery: dict, long: dict) -> tuple:
    """(length, count, seed) of every search's validation fitness windows, which the short-set choice avoids."""
    views = [(stage1[r], recipe.search1(cfg, r)) for r in stage1] + [(stage2, recipe.search2(cfg))]
    views += [(recovery[r], recipe.recovery(cfg, r, long.get("attention_factor", 0.0))) for r in recovery]
    return tuple(fitness_windows(search, view.search) for search, view in views)


def short_choice(cfg: RunConfig, parent: runner.Stage, model: ModelArtifact, data, long: dict,
                 recovery: SearchArtifact, fitness: tuple, refresh: bool):
    """Recovery's short set only if it beats the long set at L on validation windows no search was fitted on
    (``fitness``: every search's fitness windows); else keep the long."""
    searched = lambda_spec(recovery.lam, model, short_of=long)
    return parent.record(parent.call(choose_short_set, model, data, long, {"recovery": searched, "long": long},
                                     cfg.search.num_windows, cfg.search.seed, fitness, cfg.pipeline.short_attention,
                                     refresh=refresh))


def export_stage(cfg: RunConfig, parent: runner.Stage, model: ModelArtifact, data, long: dict, short: dict,
                 refresh: bool) -> ExportArtifact:
    """The stock export, then its held-out PPL at L and the final length as stock transformers loads it (the
    headline's numbers), on the fine-tuned evaluation's windows."""
    export = parent.call(export_final, model, long, short, f"longrope-{cfg.preset}", cfg.pipeline.short_attention,
                         refresh=refresh)
    lengths = (cfg.model.context_length, final_length(cfg))
    return parent.call(score_export, export, data, recipe.finetuned_eval(cfg).eval, lengths, refresh=refresh)


def evaluate_stages(cfg, run, base, data, stage1, ft2, long, short, clex, refresh: bool) -> dict:
    """Zoo on the base model (baselines + search-only λ), on the fine-tuned model (progressive λ, with and
    without the chosen short factors), and CLEX with the PI comparison when the CLEX stage ran."""
    reports = {"base": evaluate_stage("evaluate-base", recipe.base_eval(cfg, [s.lam for s in stage1.values()]), run,
                                      base, data, refresh, title="base")}
    settings = {"progressive": {"long": long, "short": None},
                "progressive_recovery": {"long": long, "short": short, "short_attention": cfg.pipeline.short_attention}}
    reports["finetuned"] = evaluate_stage("evaluate-finetuned", recipe.finetuned_eval(cfg), run, ft2, data, refresh,
                                          settings, title="fine-tuned")
    if clex is None:
        return reports
    models = {"clex": clex}
    if cfg.pipeline.clex_compare_pi:
        models |= pi_comparisons(cfg, run, base, data, refresh)
    return reports | evaluate_native(cfg, run, models, data, clex.original_length, refresh)


def combined_table(reports: dict) -> dict[str, dict[int, float]]:
    """One row per (model, method): what every stage produced, side by side (a native-only report is one row)."""
    rows = {}
    for model, report in reports.items():
        for method, row in report.table.items():
            rows[model if method == "native" else f"{model}:{method}"] = row
    return rows
