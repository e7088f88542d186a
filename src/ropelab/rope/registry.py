"""The registry of RoPE methods, dispatched by an explicit name.

Adding a method = one function in ``methods.py``, one ``RopeMethod`` line in ``REGISTRY``, one test.
A ``RopeSpec`` is the bag of explicit numbers a method needs; ``spec.compute(seq_len)`` binds exactly the
numbers the method's function accepts and rejects any other non-default number, so a typo never passes silently.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ropelab.errors import RopelabError, UnknownMethodError
from ropelab.rope import methods


@dataclass(frozen=True)
class RopeMethod:
    name: str
    compute: Callable[..., tuple[torch.Tensor, float]]
    summary: str
    length_dependent: bool = False  # inv_freq changes with the current sequence length
    scales_positions: bool = True  # needs factor >= 1


REGISTRY: dict[str, RopeMethod] = {
    m.name: m
    for m in (
        RopeMethod("default", methods.default, "plain RoPE, no scaling", scales_positions=False),
        RopeMethod("linear", methods.linear, "position interpolation (PI): θ/s"),
        RopeMethod("ntk", methods.ntk, "static NTK-aware: base · s^(d/(d-2))"),
        RopeMethod("dynamic", methods.dynamic, "dynamic NTK: NTK with s from the current length", length_dependent=True),
        RopeMethod("yarn", methods.yarn, "YaRN, reference-code ramp in inverse-frequency space"),
        RopeMethod("llama3", methods.llama3, "Llama 3.1 wavelength-banded scaling"),
        RopeMethod("longrope", methods.longrope, "LongRoPE: searched per-dimension λ, θ/λ"),
    )
}
# Facts about the model rather than knobs of a method: any spec may carry them, methods use them or not.
MODEL_FACTS = {"original_max_position_embeddings"}
ALIASES = {"none": "default", "pi": "linear", "dynamic_ntk": "dynamic", "dynamic-ntk": "dynamic"}


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

    Field names follow transformers' vocabulary. ``rescale_factors`` is LongRoPE's λ (length head_dim/2);
    ``start_tokens`` is n̂, the count of initial positions that keep the original cos/sin.
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
        fn = self.info.compute
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
    if not isinstance(spec.start_tokens, int) or spec.start_tokens < 0:
        raise RopelabError(f"start_tokens (n̂) must be a non-negative integer, got {spec.start_tokens}")
    _validate_rescale_factors(spec)
    _validate_arguments(spec)


def _validate_rescale_factors(spec: RopeSpec) -> None:
    lam = spec.rescale_factors
    if lam is None:
        return
    if len(lam) != spec.head_dim // 2:
        raise RopelabError(f"rescale_factors must have head_dim/2 = {spec.head_dim // 2} values, got {len(lam)}")
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
    # clamp: rounding can put a kept dimension at 0.9999999
    lam = (methods.rope_frequencies(spec.head_dim, spec.base) / inv_freq).clamp_min(1.0)
    return RopeSpec(
        "longrope", spec.head_dim, spec.base, factor=factor or spec.factor or 1.0,
        original_max_position_embeddings=original, rescale_factors=tuple(lam.tolist()),
        attention_factor=attention, start_tokens=spec.start_tokens,
    )


def spec_for(method: str, *, head_dim: int, base: float, **numbers: float | int | Sequence[float] | None) -> RopeSpec:
    """Build a spec from keyword numbers, dropping the None ones (CLI and config convenience)."""
    return RopeSpec(method, head_dim, base, **{k: v for k, v in numbers.items() if v is not None})
