"""The progressive recipe's stage views: the config each pipeline stage runs with, derived from one RunConfig
with typed helpers (``config.derive``), so a stage's MLflow params show exactly the settings it used."""

from __future__ import annotations

from pathlib import Path

from ropelab.config import RunConfig, derive
from ropelab.plan import (
    final_length,
    final_multiplier,
    longrope2_steps,
    stage_search_overrides,
)


def search1(cfg: RunConfig, ratio: float) -> RunConfig:
    return derive(cfg, search={"scale": ratio})


def finetune(cfg: RunConfig, lam: Path, ratio: float, steps: int) -> RunConfig:
    """Fine-tune at L·ratio with a stage-1 search's λ file."""
    return derive(cfg, finetune={"method": "longrope", "rescale_factors_file": str(lam),
                                 "train": {"seq_len": int(cfg.model.context_length * ratio), "steps": steps}})


def search2(cfg: RunConfig) -> RunConfig:
    return derive(cfg, search={"scale": cfg.pipeline.final_ratio, **stage_search_overrides(cfg.pipeline, "search2")})


def recovery(cfg: RunConfig, ratio: float, attention_factor: float) -> RunConfig:
    """Short factors at L·ratio, capped by pipeline.recovery_max_rescale, scored with the attention factor short
    inputs get (pipeline.short_attention): the long set's ``attention_factor`` (transformers applies it to short
    inputs too), or 1 (the research inference). The research short factors are not capped this low: λ up to
    2.79 / 3.00 at 4k / 8k for the LLaMA2 128k model and 4.96 at 8k for the 256k one (microsoft/LongRoPE
    longrope@5d6e10a script/hf_benchmark/low_scale/low_scale_la2_*.csv); ropelab's default cap is 1.25."""
    attention = attention_factor if cfg.pipeline.short_attention == "long" else 1.0
    return derive(cfg, search={"scale": ratio, "mode": "recovery", "start_tokens": "none",
                               **stage_search_overrides(cfg.pipeline, "recovery"),
                               "max_rescale": cfg.pipeline.recovery_max_rescale, "attention_factor": attention})


def pi_comparison(cfg: RunConfig, length: str = "train") -> RunConfig:
    """A PI fine-tune to compare CLEX with (clex.compare_pi_lengths). ``train``: PI at clex.compare_pi_scale,
    trained exactly like CLEX (same length, steps, batch, lr, seed). ``serving``: PI at max_t fine-tuned at
    CLEX's serving length max_t·L (PI's own target length, as the paper's baselines), same steps and about as
    many tokens: the batch divided by the length ratio, at least 1."""
    from ropelab.config import to_dict

    train, scale = to_dict(cfg.clex.train), cfg.clex.compare_pi_scale
    if length == "serving":
        scale, serving = float(cfg.clex.max_t), cfg.clex.max_t * cfg.model.context_length
        train |= {"seq_len": serving, "batch_size": max(1, cfg.clex.train.batch_size * cfg.clex.train.seq_len // serving)}
    return derive(cfg, finetune={"method": "pi", "scale": scale, "only_beyond_original": False,
                                 "rescale_factors_file": "", "train": train})


def through_final(cfg: RunConfig) -> list[int]:
    """The evaluation's length multipliers plus the pipeline's final one (models that reach the final length)."""
    return sorted({*cfg.eval.length_multipliers, final_multiplier(cfg.pipeline)})


def base_eval(cfg: RunConfig, lams: list[Path]) -> RunConfig:
    """Baselines and the stage-1 λ sets on the base model."""
    return derive(cfg, eval={"rescale_factor_files": [str(p) for p in lams]})


def finetuned_eval(cfg: RunConfig) -> RunConfig:
    """Only the pipeline's own settings on the fine-tuned model, up to the final length."""
    return derive(cfg, eval={"methods": [], "rescale_factor_files": [], "length_multipliers": through_final(cfg)})


def native_eval(cfg: RunConfig, original_length: int) -> RunConfig:
    """Only the model's own RoPE (CLEX, or a fine-tune's rope_parameters), at multiples of the base model's L
    (a stock PI export's config records only its extended length)."""
    return derive(cfg, eval={"methods": ["native"], "rescale_factor_files": [], "original_length": original_length})


def longrope2_search(cfg: RunConfig) -> RunConfig:
    """LongRoPE2's one search, on the base model at the final length, with the stage-2 search's budget."""
    return derive(cfg, search={"variant": "longrope2", "scale": float(final_multiplier(cfg.pipeline)),
                               "start_tokens": "none", "mode": "extend", "fitness": cfg.pipeline.longrope2_fitness,
                               **stage_search_overrides(cfg.pipeline, "search2")})


def longrope2_finetune(cfg: RunConfig, lam: Path) -> RunConfig:
    """Mixed context window fine-tuning at the final length with the longrope2 factors, on as many tokens as the
    progressive recipe's fine-tunes (steps rounded, at least 1)."""
    return derive(cfg, finetune={"method": "longrope", "rescale_factors_file": str(lam), "windows": "mixed",
                                 "only_beyond_original": True,
                                 "train": {"seq_len": final_length(cfg), "steps": longrope2_steps(cfg)}})


def longrope2_eval(cfg: RunConfig) -> RunConfig:
    """The longrope2 model's own (stock) RoPE at the lengths the fine-tuned progressive model is evaluated at."""
    return derive(cfg, eval={"methods": ["native"], "rescale_factor_files": [], "length_multipliers": through_final(cfg)})


def critical_dim_baselines_eval(cfg: RunConfig, lam: Path, critical_dim: int) -> RunConfig:
    """On the base model: NTK and YaRN beside NTK-cd and YaRN-cd at the longrope2 search's critical dim, and the
    searched factors without fine-tuning, up to the final length (LongRoPE2's cheap critical-dim baselines)."""
    return derive(cfg, eval={"methods": ["none", "ntk", "yarn", "ntk_cd", "yarn_cd"], "critical_dim": critical_dim,
                             "rescale_factor_files": [str(lam)], "length_multipliers": through_final(cfg)})
