"""The registry of RoPE methods, dispatched by an explicit name.

Adding a method = one function in ``methods.py``, one ``RopeMethod`` line in ``REGISTRY`` (with how it reads
from and writes to stock transformers' ``rope_parameters``), one test. A ``RopeSpec`` is the bag of explicit
numbers a method needs; ``spec.compute(seq_len)`` binds exactly the numbers the method's function accepts and
rejects any other non-default number, so a typo never passes silently.

The stock readers and writers live here, not in the adapter, so that a method is owned end to end by its entry
and no chain of ``rope_type`` comparisons grows elsewhere. They see plain dicts and numbers only: the adapter
(``ropelab.rope.adapter``) is the one module that knows where transformers keeps them in a config.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from ropelab.errors import RopelabError, UnknownMethodError
from ropelab.rope import methods


class StockBasics(Protocol):
    """The unscaled RoPE a config states (the adapter's ``RopeBasics``), as a stock reader needs it."""

    head_dim: int
    base: float
    original_max_position_embeddings: int


# from_stock(rope_parameters, basics, max_position_embeddings) -> (long, short or None)
StockReader = Callable[[dict, StockBasics, int], "tuple[RopeSpec, RopeSpec | None]"]
# to_stock(spec) -> rope_parameters of one set, or None when only longrope's factor sets can express it
StockWriter = Callable[["RopeSpec"], "dict | None"]


def _only_longrope(spec: RopeSpec) -> None:
    """The writer of methods with no stock type of their own: the export falls back to longrope factor sets."""
    return None


@dataclass(frozen=True)
class RopeMethod:
    """One method end to end: its pure function, its flags, and how it reads and writes stock rope_parameters.

    ``from_stock`` reads the stock ``rope_type`` values in ``stock_types`` (a method may have none: static NTK
    is written as a change of base and reads back as plain RoPE); ``to_stock`` writes one set, or returns None
    when only longrope factor sets can express it (``stock_parameters`` then falls back to them).
    """

    name: str
    compute: Callable[..., tuple[torch.Tensor, float]]
    summary: str
    length_dependent: bool = False  # inv_freq changes with the current sequence length
    scales_positions: bool = True  # needs factor >= 1
    stock_types: tuple[str, ...] = ()  # the stock rope_type values from_stock reads
    from_stock: StockReader | None = None
    to_stock: StockWriter = _only_longrope
    # the stock type keeps the ORIGINAL length in max_position_embeddings (transformers' dynamic scales from it)
    stock_keeps_original_length: bool = False
    # to_stock writes another rope_theta (static NTK is a change of base): a model may carry either base
    stock_changes_base: bool = False
    # the rope_parameters keys from_stock reads beyond those of every type (the adapter's SHARED_STOCK_KEYS):
    # a config key outside both is not understood, and reading it is an error rather than a silent drop
    stock_keys: frozenset[str] = frozenset()
    # a method defined by its λ (θ/λ): the exact vector, so its longrope factor sets carry λ unrounded
    # (as_longrope would otherwise recover it as θ/inv_freq in fp32)
    factors: Callable[..., tuple[float, ...]] | None = None


PLAIN = "default"  # the unscaled method, and the stock rope_type of a config that names none


def _scaled_factor(params: dict, basics: StockBasics, max_positions: int) -> float:
    """Stock configs may omit factor; transformers then infers it as max_position_embeddings / original."""
    return params.get("factor") or max_positions / basics.original_max_position_embeddings


def _default_from_stock(params: dict, basics: StockBasics, max_positions: int):
    return RopeSpec("default", basics.head_dim, basics.base), None


def _default_to_stock(spec: RopeSpec) -> dict:
    return {"rope_type": "default", "rope_theta": spec.base}


def _linear_from_stock(params: dict, basics: StockBasics, max_positions: int):
    return RopeSpec("linear", basics.head_dim, basics.base, factor=params["factor"]), None


def _linear_to_stock(spec: RopeSpec) -> dict:
    return {"rope_type": "linear", "rope_theta": spec.base, "factor": spec.factor}


def _ntk_to_stock(spec: RopeSpec) -> dict:
    """Static NTK is exactly a change of base, so it exports as plain RoPE (and reads back as such)."""
    return {"rope_type": "default", "rope_theta": spec.base * spec.factor ** (spec.head_dim / (spec.head_dim - 2))}


def _dynamic_from_stock(params: dict, basics: StockBasics, max_positions: int):
    return RopeSpec("dynamic", basics.head_dim, basics.base, factor=params["factor"],
                    original_max_position_embeddings=basics.original_max_position_embeddings), None


def _dynamic_to_stock(spec: RopeSpec) -> dict:
    return {"rope_type": "dynamic", "rope_theta": spec.base, "factor": spec.factor}


def _yarn_from_stock(params: dict, basics: StockBasics, max_positions: int):
    """transformers' ``_compute_yarn_parameters`` also reads ``truncate`` (default true: floor/ceil the ramp's
    correction range); ``truncate: false`` moves the ramp by up to a dimension, so it is kept."""
    truncate = params.get("truncate")
    spec = RopeSpec("yarn", basics.head_dim, basics.base, factor=_scaled_factor(params, basics, max_positions),
                    original_max_position_embeddings=basics.original_max_position_embeddings,
                    beta_fast=params.get("beta_fast") or 32.0, beta_slow=params.get("beta_slow") or 1.0,
                    attention_factor=params.get("attention_factor"), mscale=params.get("mscale"),
                    mscale_all_dim=params.get("mscale_all_dim"), truncate=None if truncate is None else bool(truncate))
    return spec, None


def _yarn_to_stock(spec: RopeSpec) -> dict:
    # the attention factor is written explicitly so transformers cannot infer a different one
    params = {"rope_type": "yarn", "rope_theta": spec.base, "factor": spec.factor,
              "original_max_position_embeddings": spec.original_max_position_embeddings,
              "beta_fast": spec.beta_fast or 32.0, "beta_slow": spec.beta_slow or 1.0,
              "attention_factor": spec.compute()[1]}
    return params if spec.truncate is None else {**params, "truncate": spec.truncate}


def _llama3_from_stock(params: dict, basics: StockBasics, max_positions: int):
    return RopeSpec("llama3", basics.head_dim, basics.base, factor=_scaled_factor(params, basics, max_positions),
                    original_max_position_embeddings=basics.original_max_position_embeddings,
                    low_freq_factor=params["low_freq_factor"], high_freq_factor=params["high_freq_factor"]), None


def _llama3_to_stock(spec: RopeSpec) -> dict:
    return {"rope_type": "llama3", "rope_theta": spec.base, "factor": spec.factor,
            "original_max_position_embeddings": spec.original_max_position_embeddings,
            "low_freq_factor": spec.low_freq_factor or 1.0, "high_freq_factor": spec.high_freq_factor or 4.0}


def _longrope_from_stock(params: dict, basics: StockBasics, max_positions: int):
    """Stock longrope holds two factor sets: (long, short)."""
    factor = _scaled_factor(params, basics, max_positions)

    def factor_set(lam: Sequence[float]) -> RopeSpec:
        return RopeSpec("longrope", basics.head_dim, basics.base, factor=factor,
                        original_max_position_embeddings=basics.original_max_position_embeddings,
                        rescale_factors=tuple(lam), attention_factor=params.get("attention_factor"))

    return factor_set(params["long_factor"]), factor_set(params["short_factor"])


REGISTRY: dict[str, RopeMethod] = {
    m.name: m
    for m in (
        RopeMethod("default", methods.default, "plain RoPE, no scaling", scales_positions=False,
                   stock_types=("default",), from_stock=_default_from_stock, to_stock=_default_to_stock),
        RopeMethod("linear", methods.linear, "position interpolation (PI): θ/s",
                   stock_types=("linear",), from_stock=_linear_from_stock, to_stock=_linear_to_stock,
                   stock_keys=frozenset({"factor"})),
        RopeMethod("ntk", methods.ntk, "static NTK-aware: base · s^(d/(d-2))",
                   to_stock=_ntk_to_stock, stock_changes_base=True),
        RopeMethod("dynamic", methods.dynamic, "dynamic NTK: NTK with s from the current length", length_dependent=True,
                   stock_types=("dynamic",), from_stock=_dynamic_from_stock, to_stock=_dynamic_to_stock,
                   stock_keeps_original_length=True, stock_keys=frozenset({"factor"})),
        RopeMethod("yarn", methods.yarn, "YaRN, reference-code ramp in inverse-frequency space",
                   stock_types=("yarn",), from_stock=_yarn_from_stock, to_stock=_yarn_to_stock,
                   stock_keys=frozenset({"factor", "beta_fast", "beta_slow", "attention_factor", "mscale",
                                         "mscale_all_dim", "truncate"})),
        RopeMethod("llama3", methods.llama3, "Llama 3.1 wavelength-banded scaling",
                   stock_types=("llama3",), from_stock=_llama3_from_stock, to_stock=_llama3_to_stock,
                   stock_keys=frozenset({"factor", "low_freq_factor", "high_freq_factor"})),
        RopeMethod("longrope", methods.longrope, "LongRoPE: searched per-dimension λ, θ/λ",
                   stock_types=("longrope",), from_stock=_longrope_from_stock,
                   stock_keys=frozenset({"factor", "attention_factor", "long_factor", "short_factor"})),
        # LongRoPE2's critical-dimension baselines: no stock type of their own, exported as longrope factor sets
        RopeMethod("ntk_cd", methods.ntk_cd, "NTK-cd (LongRoPE2): NTK curve s^(i/cd) below the critical pair, s from it",
                   factors=methods.ntk_cd_factors),
        RopeMethod("yarn_cd", methods.yarn_cd, "YaRN-cd (LongRoPE2): YaRN's ramp ending at the critical pair",
                   factors=methods.yarn_cd_factors),
    )
}
# Facts about the model rather than knobs of a method: any spec may carry them, methods use them or not.
MODEL_FACTS = {"original_max_position_embeddings"}
ALIASES = {"none": "default", "pi": "linear", "dynamic_ntk": "dynamic", "dynamic-ntk": "dynamic", "ntk-cd": "ntk_cd",
           "yarn-cd": "yarn_cd"}


def known_methods() -> list[str]:
    return sorted(REGISTRY)


def get_method(name: str) -> RopeMethod:
    canonical = ALIASES.get(name, name)
    if canonical not in REGISTRY:
        raise UnknownMethodError(f"unknown RoPE method {name!r}; known methods: {', '.join(known_methods())}")
    return REGISTRY[canonical]


@dataclass(frozen=True)
class RopeSpec:
    """One RoPE setting: a method name plus the explicit numbers it needs.

    Field names follow transformers' vocabulary. ``head_dim`` is d of the RoPE formulas, the width RoPE
    rotates: the attention head width, or its first ``partial_rotary_factor`` part for partial-rotary models
    (transformers' ``dim = int(head_dim · partial_rotary_factor)``). ``rescale_factors`` is LongRoPE's λ, one
    per rotary pair (length head_dim/2); ``start_tokens`` is n̂, the count of initial positions that keep the
    original cos/sin. ``truncate`` is YaRN's (None: transformers' default, true). ``critical_dim`` is LongRoPE2's
    critical dimension as a rotary-pair index (the first pair scaled by the full s), for ntk_cd and yarn_cd.
    """

    method: str
    head_dim: int
    base: float
    factor: float | None = None
    original_max_position_embeddings: int | None = None
    rescale_factors: tuple[float, ...] | None = None
    beta_fast: float | None = None
    beta_slow: float | None = None
    mscale: float | None = None
    mscale_all_dim: float | None = None
    low_freq_factor: float | None = None
    high_freq_factor: float | None = None
    attention_policy: str | None = None
    attention_factor: float | None = None
    truncate: bool | None = None
    critical_dim: int | None = None
    start_tokens: int = 0
    extra: dict = field(default_factory=dict, compare=False, hash=False)  # free-form provenance, never used in math

    def __post_init__(self) -> None:
        object.__setattr__(self, "method", get_method(self.method).name)
        if self.rescale_factors is not None:
            object.__setattr__(self, "rescale_factors", tuple(float(v) for v in self.rescale_factors))
        _validate(self)

    @property
    def info(self) -> RopeMethod:
        return REGISTRY[self.method]

    def numbers(self) -> dict:
        """The non-None numeric fields, as the method function's keyword arguments."""
        skip = {"method", "start_tokens", "extra"}
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in skip
                and getattr(self, f.name) is not None}

    def compute(self, seq_len: int | None = None) -> tuple[torch.Tensor, float]:
        """(inv_freq (d/2,), attention_factor) for this setting at the current sequence length."""
        return self._call(self.info.compute, seq_len)

    def exact_factors(self) -> tuple[float, ...] | None:
        """λ exactly, for a method defined by its λ (``RopeMethod.factors``); None for the others."""
        return None if self.info.factors is None else self._call(self.info.factors)

    def _call(self, fn: Callable, seq_len: int | None = None):
        """``fn`` with exactly the numbers it accepts (and the current length, if it takes one)."""
        accepted = set(inspect.signature(fn).parameters)
        kwargs = {k: v for k, v in self.numbers().items() if k in accepted}
        if "seq_len" in accepted:
            kwargs["seq_len"] = seq_len
        return fn(**kwargs)

    def replace(self, **changes) -> RopeSpec:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        d = {"method": self.method, **self.numbers(), "start_tokens": self.start_tokens}
        if self.rescale_factors is not None:
            d["rescale_factors"] = list(self.rescale_factors)
        return d

    @classmethod
    def from_dict(cls, data: dict) -> RopeSpec:
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - valid
        if unknown:
            raise RopelabError(f"unknown RoPE spec keys {sorted(unknown)}; valid keys: {sorted(valid)}")
        return cls(**data)


def _check_finite_positive(name: str, value: float | None) -> None:
    if value is not None and (not math.isfinite(float(value)) or float(value) <= 0):
        raise RopelabError(f"{name} must be a finite positive number, got {value}")


def _validate(spec: RopeSpec) -> None:
    """Reject settings no method could mean: wrong lengths, NaN, factor < 1, missing numbers, unused numbers."""
    if not isinstance(spec.head_dim, int) or spec.head_dim < 4 or spec.head_dim % 2:
        raise RopelabError(f"head_dim must be an even integer >= 4, got {spec.head_dim}")
    for name in ("base", "factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim", "low_freq_factor", "high_freq_factor", "attention_factor"):
        _check_finite_positive(name, getattr(spec, name))
    if spec.original_max_position_embeddings is not None and spec.original_max_position_embeddings < 2:
        raise RopelabError(f"original_max_position_embeddings must be >= 2, got {spec.original_max_position_embeddings}")
    if spec.factor is not None and spec.info.scales_positions and spec.factor < 1:
        raise RopelabError(f"factor must be >= 1 for {spec.method} (it is the extension ratio), got {spec.factor}")
    if spec.truncate is not None and not isinstance(spec.truncate, bool):
        raise RopelabError(f"truncate must be true or false, got {spec.truncate!r}")
    if spec.critical_dim is not None:
        methods.check_critical_pair(spec.head_dim, spec.critical_dim)
    if not isinstance(spec.start_tokens, int) or spec.start_tokens < 0:
        raise RopelabError(f"start_tokens (n̂) must be a non-negative integer, got {spec.start_tokens}")
    _validate_rescale_factors(spec)
    _validate_arguments(spec)


def _validate_rescale_factors(spec: RopeSpec) -> None:
    lam = spec.rescale_factors
    if lam is None:
        return
    if len(lam) != spec.head_dim // 2:
        raise RopelabError(f"rescale_factors must have one value per rotary pair (head_dim/2 = {spec.head_dim // 2}), "
                           f"got {len(lam)}")
    bad = [i for i, v in enumerate(lam) if not math.isfinite(v)]
    if bad:
        raise RopelabError(f"rescale_factors contain NaN/inf at dimensions {bad[:8]}")
    below = [i for i, v in enumerate(lam) if v < 1.0]
    if below:
        raise RopelabError(
            f"rescale_factors must be >= 1 (λ < 1 would extrapolate beyond the pretrained frequencies); "
            f"dimensions {below[:8]} are below 1 (min {min(lam):.4g})"
        )


def _validate_arguments(spec: RopeSpec) -> None:
    params = inspect.signature(spec.info.compute).parameters
    required = [n for n, p in params.items() if p.default is inspect.Parameter.empty]
    missing = [n for n in required if getattr(spec, n, None) is None]
    if missing:
        raise RopelabError(f"method {spec.method!r} needs {', '.join(missing)}")
    unused = [n for n in spec.numbers() if n not in params and n not in MODEL_FACTS]
    if unused:
        raise RopelabError(f"method {spec.method!r} does not use {', '.join(unused)}; accepted: {', '.join(params)}")
    if spec.start_tokens and spec.method != "longrope":
        raise RopelabError("start_tokens (n̂) belongs to the longrope method only")


def rescale_factors_of(spec: RopeSpec, seq_len: int | None = None) -> torch.Tensor:
    """Effective per-dimension scale λ_i = θ_i / inv_freq_i of any setting, shape (d/2,)."""
    inv_freq, _ = spec.compute(seq_len)
    return methods.rope_frequencies(spec.head_dim, spec.base) / inv_freq


def as_longrope(
    spec: RopeSpec, *, factor: float | None = None, original_max_position_embeddings: int | None = None,
    seq_len: int | None = None,
) -> RopeSpec:
    """Express any setting as an equivalent longrope λ vector with the same attention factor.

    Used to seed LongRoPE's search with PI/NTK/YaRN and to export combinations stock transformers can hold.
    """
    original = original_max_position_embeddings or spec.original_max_position_embeddings
    if original is None:
        raise RopelabError(f"converting {spec.method!r} to longrope needs original_max_position_embeddings")
    inv_freq, attention = spec.compute(seq_len)
    lam = spec.exact_factors()
    if lam is None:  # clamp: rounding can put a kept dimension at 0.9999999
        lam = (methods.rope_frequencies(spec.head_dim, spec.base) / inv_freq).clamp_min(1.0).tolist()
    return RopeSpec(
        "longrope", spec.head_dim, spec.base, factor=factor or spec.factor or 1.0,
        original_max_position_embeddings=original, rescale_factors=tuple(lam),
        attention_factor=attention, start_tokens=spec.start_tokens,
    )


def spec_for(method: str, *, head_dim: int, base: float, **numbers: float | int | Sequence[float] | None) -> RopeSpec:
    """Build a spec from keyword numbers, dropping the None ones (CLI and config convenience)."""
    return RopeSpec(method, head_dim, base, **{k: v for k, v in numbers.items() if v is not None})


# ---------------------------------------------------------------- stock rope_parameters


def _stock_index() -> dict[str, RopeMethod]:
    """rope_type -> the one method reading it; two methods claiming a type would make reading ambiguous."""
    index: dict[str, RopeMethod] = {}
    for method in REGISTRY.values():
        for rope_type in method.stock_types:
            if rope_type in index:
                raise RopelabError(f"rope_type {rope_type!r} is read by both {index[rope_type].name} and {method.name}")
            index[rope_type] = method
    return index


STOCK_READERS: dict[str, RopeMethod] = _stock_index()


def reads_stock(rope_type: str) -> RopeMethod | None:
    """The method that reads this stock rope_type, or None when ropelab has no equivalent."""
    return STOCK_READERS.get(rope_type)


def stock_reader(rope_type: str) -> RopeMethod:
    """The method that reads this stock rope_type; a clear error naming the readable ones otherwise."""
    method = reads_stock(rope_type)
    if method is None:
        raise RopelabError(f"rope_type {rope_type!r} in the config has no ropelab equivalent yet; "
                           f"ropelab reads rope_type {', '.join(sorted(STOCK_READERS))}")
    return method


def _as_factor_set(spec: RopeSpec, original: int) -> RopeSpec:
    """A longrope spec is kept as is (its λ exactly); any other is converted (rounding clamps λ at 1)."""
    return spec if spec.method == "longrope" else as_longrope(spec, original_max_position_embeddings=original)


def longrope_stock_parameters(long: RopeSpec, short: RopeSpec | None, original: int) -> dict:
    """Stock longrope parameters holding both sets (long everywhere when ``short`` is None).

    As in transformers' longrope, both sets share the long set's attention factor.
    """
    for spec in (long, short):
        if spec is not None and spec.info.length_dependent:
            named = spec.info.summary.split(":")[0]  # the summary's head names the method in words
            raise RopelabError(f"{named} depends on the length and cannot be stored as a longrope factor set")
    long_set = _as_factor_set(long, original)
    short_set = long_set if short is None else _as_factor_set(short, original)
    return {"rope_type": "longrope", "rope_theta": long.base, "factor": long_set.factor,
            "original_max_position_embeddings": original, "attention_factor": long_set.compute()[1],
            "long_factor": list(long_set.rescale_factors), "short_factor": list(short_set.rescale_factors)}


def stock_parameters(long: RopeSpec, short: RopeSpec | None, original: int) -> dict:
    """Stock rope_parameters for (long, short): the method's own stock type when one set suffices and it has
    one, else longrope factor sets (the one stock type holding a short/long pair or an arbitrary λ)."""
    params = long.info.to_stock(long) if short is None else None
    return params if params is not None else longrope_stock_parameters(long, short, original)
