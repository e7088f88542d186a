"""A pipeline's plan and rough memory estimate, from the config alone (no weights, no data): the dry run
for paper-scale presets on GPUs."""

from __future__ import annotations

import dataclasses

from ropelab.config import PipelineConfig, RunConfig, SearchConfig
from ropelab.search.evolution import EvolutionConfig

GIB = 1024**3


def count(n: float) -> str:
    """3.2 M, 6.74 B: readable for the tiny model and for a 7B one alike."""
    for size, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.0f}"


def memory(gib: float) -> str:
    return f"{gib:.0f} GiB" if gib >= 1 else f"{gib * 1024:.0f} MiB"


def final_multiplier(p: PipelineConfig) -> int:
    """The progressive recipe's final length in units of L: r2 · r3."""
    return int(round(p.ratios[-1] * p.final_ratio))


def final_length(cfg: RunConfig) -> int:
    return cfg.model.context_length * final_multiplier(cfg.pipeline)


def stage_search_overrides(p: PipelineConfig, stage: str) -> dict:
    """The search settings a pipeline stage (search1, search2, recovery) changes; 0 means "as in search"."""
    values = {"search2": {"iterations": p.final_search_iterations, "evo_scale": p.final_search_evo_scale,
                          "num_windows": p.final_search_windows, "test_windows": p.final_search_test_windows},
              "recovery": {"iterations": p.recovery_iterations}}.get(stage, {})
    return {k: v for k, v in values.items() if v}


def stage_search_config(cfg: RunConfig, stage: str) -> SearchConfig:
    return dataclasses.replace(cfg.search, **stage_search_overrides(cfg.pipeline, stage))


def parameter_count(cfg: RunConfig) -> int:
    """Llama-family parameters: attention 4h², SwiGLU 3·h·i per layer; embeddings and head untied."""
    m = cfg.model
    per_layer = 4 * m.hidden_size**2 + 3 * m.hidden_size * m.intermediate_size
    return m.num_hidden_layers * per_layer + 2 * m.vocab_size * m.hidden_size


def search_counts(s: SearchConfig) -> dict[str, int]:
    """The scaled counts the search itself runs with (``EvolutionConfig.counts``, under search.evo_scale_rule),
    so the plan and the run agree."""
    return EvolutionConfig(s.population, s.iterations, s.mutations, s.crossovers, s.parents, scale=s.evo_scale,
                           scale_rule=s.evo_scale_rule).counts()


def search_candidates(s: SearchConfig) -> int:
    """Candidates scored: the initial population, then mutations and crossovers in every generation."""
    n = search_counts(s)
    return n["population"] + n["iterations"] * (n["mutations"] + n["crossovers"])


def forward_memory_gib(cfg: RunConfig, length: int, bytes_per_weight: int = 2) -> float:
    """bf16 weights + fp32 logits of one sequence (scored in full) + transient activations (sdpa, no cache)."""
    m = cfg.model
    weights = parameter_count(cfg) * bytes_per_weight
    logits = length * m.vocab_size * 4
    activations = 8 * length * max(m.hidden_size, m.intermediate_size) * bytes_per_weight
    return (weights + logits + activations) / GIB


def finetune_memory_gib(cfg: RunConfig, seq_len: int) -> float:
    """Mixed-precision AdamW (16 bytes/parameter, before sharding) + checkpointed activations."""
    m = cfg.model
    states = parameter_count(cfg) * 16
    activations = 2 * seq_len * m.hidden_size * m.num_hidden_layers * 2 * cfg.finetune.train.batch_size
    return (states + activations) / GIB


def progressive_finetune_tokens(cfg: RunConfig) -> int:
    """Tokens the progressive recipe's two fine-tunes train on (L·r1 then L·r2, the same batch)."""
    p, t = cfg.pipeline, cfg.finetune.train
    rows = t.batch_size * t.grad_accum
    return rows * sum(int(cfg.model.context_length * r) * n
                      for r, n in zip(p.ratios, (p.first_finetune_steps, p.second_finetune_steps), strict=True))


def longrope2_steps(cfg: RunConfig) -> int:
    """LongRoPE2's mixed-window fine-tuning steps at the final length: as many tokens as the progressive recipe's
    fine-tunes (rounded, at least 1)."""
    t = cfg.finetune.train
    return max(1, round(progressive_finetune_tokens(cfg) / (final_length(cfg) * t.batch_size * t.grad_accum)))


def pipeline_plan(cfg: RunConfig) -> list[str]:
    p, L = cfg.pipeline, cfg.model.context_length
    r1, r2 = p.ratios
    lines = [f"preset {cfg.preset}: model {cfg.model.source} ({count(parameter_count(cfg))} parameters, "
             f"L = {L}); data {', '.join(cfg.data.sources)}"]

    def search_line(name: str, length: int, stage: str = "search1", v2: bool = False) -> str:
        s = stage_search_config(cfg, stage)
        n = search_candidates(s) + (search_counts(s)["population"] if v2 else 0)  # v2 starts from 2 × population
        return (f"{name:<26} length {length:>9,}  {n} candidates × {s.num_windows} windows = "
                f"{count(n * s.num_windows * length)} tokens forward; peak ≈ "
                f"{memory(forward_memory_gib(cfg, length))} per sequence")

    def tune_line(name: str, seq_len: int, steps: int) -> str:
        t = cfg.finetune.train
        tokens = steps * t.batch_size * t.grad_accum * seq_len
        return (f"{name:<26} length {seq_len:>9,}  {steps} steps, {count(tokens)} tokens; optimiser + "
                f"activations ≈ {memory(finetune_memory_gib(cfg, seq_len))} before sharding (FSDP)")

    lines += [search_line(f"search {r1:g}× (base)", int(L * r1)), search_line(f"search {r2:g}× (base)", int(L * r2)),
              tune_line(f"fine-tune {r1:g}×", int(L * r1), p.first_finetune_steps),
              tune_line(f"fine-tune {r2:g}×", int(L * r2), p.second_finetune_steps),
              search_line(f"search {p.final_ratio:g}× (fine-tuned)", int(L * r2 * p.final_ratio), "search2")]
    lines += [search_line(f"recovery {r:g}×", int(L * r), "recovery") for r in p.recovery_ratios]
    if p.longrope2:
        sweep = cfg.search.critical_dims or "d_rcd … d_tcd"
        lines += [search_line(f"longrope2 {final_multiplier(p)}× (base)", final_length(cfg), "search2", v2=True)
                  + f"; per critical dim of {sweep}",
                  tune_line("longrope2 mixed windows", final_length(cfg), longrope2_steps(cfg))]
    lines.append(f"{'evaluate':<26} lengths {', '.join(f'{L * m:,}' for m in cfg.eval.length_multipliers)}; "
                 f"{cfg.eval.num_windows} windows each; the fine-tuned model also at {final_length(cfg):,}")
    return lines
