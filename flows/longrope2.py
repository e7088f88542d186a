"""`ropelab longrope2`: LongRoPE2 (Shang et al. 2025) on the base model, as one flow.

base → one longrope2 search at the final length (critical-dim sweep, needle-driven fitness by default) → mixed
context window fine-tuning at that length with the searched factors (short documents packed at L with the
original RoPE, long rows with the searched one; the same attention factor for both, transformers' longrope rule,
so the fine-tuned model is itself the stock export with short_factor = 1.0) → evaluation at every length (PPL,
needle PPL, passkey); and, on the base model, NTK-cd and YaRN-cd at the searched critical dim beside NTK, YaRN and
the searched factors without fine-tuning. The pipeline runs it beside the progressive recipe when
pipeline.longrope2 is true.
"""

from __future__ import annotations

from prefect import flow

from ropelab import recipe
from ropelab.artifacts import DataArtifact, ModelArtifact
from ropelab.config import RunConfig
from ropelab.eval.report import Longrope2Outcome
from ropelab.flows.base import upstream
from ropelab.flows.evaluate import evaluate_stage
from ropelab.flows.finetune import finetune_flow
from ropelab.flows.search import search_flow
from ropelab.plan import final_multiplier


def longrope2_stage(cfg: RunConfig, parent_run_id: str | None, base: ModelArtifact, data: DataArtifact,
                    refresh: bool = False) -> Longrope2Outcome:
    multiplier = final_multiplier(cfg.pipeline)
    search = search_flow(recipe.longrope2_search(cfg), parent_run_id, base, data, refresh, f"longrope2-{multiplier}x")
    tuned = recipe.longrope2_finetune(cfg, search.lam)
    model = finetune_flow(tuned, parent_run_id, base, data, refresh)
    report = evaluate_stage("evaluate-longrope2", recipe.longrope2_eval(cfg), parent_run_id, model, data, refresh,
                            title="longrope2")
    baselines = evaluate_stage("evaluate-critical-dim-baselines",
                               recipe.critical_dim_baselines_eval(cfg, search.lam, search.critical_dim), parent_run_id,
                               base, data, refresh, title=f"base, critical dim {search.critical_dim}")
    t = tuned.finetune.train
    return Longrope2Outcome(search, model, report, t.steps * t.batch_size * t.grad_accum * t.seq_len, baselines)


@flow(name="longrope2", flow_run_name="longrope2-{cfg.preset}")
def longrope2_flow(cfg: RunConfig, parent_run_id: str | None = None, model: ModelArtifact | None = None,
                   data: DataArtifact | None = None, refresh: bool = False) -> Longrope2Outcome:
    base, data = upstream(cfg, parent_run_id, model, data)
    outcome = longrope2_stage(cfg, parent_run_id, base, data, refresh)
    print((outcome.report.path / "zoo.md").read_text())
    print(f"longrope2 model (stock longrope, short_factor 1.0): {outcome.model.path}; critical dim "
          f"{outcome.search.critical_dim}; {outcome.tokens} fine-tuning tokens")
    return outcome
