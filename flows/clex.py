"""`ropelab clex`: train CLEX on the base model, next to PI fine-tunes (at CLEX's training length on the same
tokens, and at its serving length), and compare."""

from __future__ import annotations

from prefect import flow

from ropelab import recipe
from ropelab.artifacts import DataArtifact, EvalArtifact, ModelArtifact
from ropelab.config import RunConfig
from ropelab.eval.report import comparison_markdown
from ropelab.flows.base import upstream
from ropelab.flows.evaluate import evaluate_stage
from ropelab.flows.finetune import finetune_flow
from ropelab.tasks import runner
from ropelab.tasks.clex import train_clex_model


def clex_stage(cfg: RunConfig, parent_run_id: str | None, model: ModelArtifact, data: DataArtifact,
               refresh: bool = False) -> ModelArtifact:
    with runner.stage("clex", cfg, parent_run_id=parent_run_id, data_version=data.fingerprint,
                      consumed={"model": model, "data": data}, refresh=refresh) as stage:
        return stage.record(stage.call(train_clex_model, model, data, cfg.clex))


def pi_name(cfg: RunConfig, length: str = "train") -> str:
    """The comparison table's row: PI's scale and the length it was fine-tuned at, e.g. ``pi-4x fine-tuned at
    256`` (CLEX's training length) or ``pi-8x fine-tuned at 2048`` (its serving length max_t·L)."""
    view = recipe.pi_comparison(cfg, length).finetune
    return f"pi-{view.scale:g}x fine-tuned at {view.train.seq_len}"


def pi_comparisons(cfg: RunConfig, parent_run_id: str | None, model: ModelArtifact, data: DataArtifact,
                   refresh: bool = False) -> dict[str, ModelArtifact]:
    """The PI fine-tunes of clex.compare_pi_lengths (none when clex.compare_pi_scale is 0), by row name."""
    if not cfg.clex.compare_pi_scale:
        return {}
    return {pi_name(cfg, length): finetune_flow(recipe.pi_comparison(cfg, length), parent_run_id, model, data, refresh)
            for length in dict.fromkeys(cfg.clex.compare_pi_lengths)}


def caption(cfg: RunConfig) -> str:
    """The comparison table's caption, saying which PI row is which."""
    c = cfg.clex
    lengths = {"train": f"at {c.train.seq_len}: CLEX's training length, the same tokens",
               "serving": f"at {c.max_t * cfg.model.context_length}: CLEX's serving length max_t·L, about as many "
                          "tokens"}
    rows = [f"PI {lengths[n]}" for n in dict.fromkeys(c.compare_pi_lengths)] if c.compare_pi_scale else []
    return f"CLEX (max_t {c.max_t}, trained at {c.train.seq_len}) vs PI: held-out PPL" + "".join(f"; {r}" for r in rows)


def evaluate_native(cfg: RunConfig, parent_run_id: str | None, models: dict[str, ModelArtifact],
                    data: DataArtifact, original_length: int, refresh: bool = False) -> dict[str, EvalArtifact]:
    """Zoo with only the model's own RoPE on each named model, at multiples of the base model's L."""
    view = recipe.native_eval(cfg, original_length)
    return {name: evaluate_stage(stage_name(name), view, parent_run_id, model, data, refresh, title=name)
            for name, model in models.items()}


def stage_name(row: str) -> str:
    """``clex`` -> evaluate-clex, ``pi-4x fine-tuned at 256`` -> evaluate-pi-4x-at-256 (unique per PI row)."""
    words = row.split()
    return "-".join(["evaluate", words[0], *(["at", words[-1]] if len(words) > 1 else [])])


@flow(name="clex", flow_run_name="clex-{cfg.preset}")
def clex_flow(cfg: RunConfig, parent_run_id: str | None = None, model: ModelArtifact | None = None,
              data: DataArtifact | None = None, refresh: bool = False) -> dict[str, EvalArtifact]:
    """Train CLEX and the PI comparisons, evaluate each with its own RoPE; returns the reports by row name."""
    model, data = upstream(cfg, parent_run_id, model, data)
    models = {"clex": clex_stage(cfg, parent_run_id, model, data, refresh)}
    models |= pi_comparisons(cfg, parent_run_id, model, data, refresh)
    reports = evaluate_native(cfg, parent_run_id, models, data, models["clex"].original_length, refresh)
    print(comparison_markdown({k: r.table["native"] for k, r in reports.items()}, cfg, caption(cfg)))
    return reports
