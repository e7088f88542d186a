"""The transformers adapter: the only module that knows transformers' config layout.

``rope_basics`` reads a config's unscaled RoPE, ``specs_from_config`` reads its ``rope_parameters`` as ropelab
specs, ``stock_rope_parameters`` writes specs back as stock ``rope_parameters`` (what ``export.export_hf``
saves). Rotary modules live in ``modules``, generation in ``generation``, the export in ``export``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ropelab.errors import RopelabError
from ropelab.rope.registry import RopeSpec, as_longrope

SUPPORTED_FAMILIES = "Llama, Mistral, Qwen2, Phi-3 (any model with model.model.rotary_emb)"


@dataclass(frozen=True)
class RopeBasics:
    """What a model's config says about its unscaled RoPE."""

    head_dim: int
    base: float
    original_max_position_embeddings: int


def rope_basics(config) -> RopeBasics:
    params = dict(getattr(config, "rope_parameters", None) or {})
    if "rope_theta" not in params:
        raise RopelabError(f"{type(config).__name__} has no rope_parameters.rope_theta: not a RoPE model")
    if float(params.get("partial_rotary_factor", 1.0)) != 1.0:
        raise RopelabError("partial rotary embeddings (partial_rotary_factor != 1) are not supported yet")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    original = params.get("original_max_position_embeddings") or config.max_position_embeddings
    if params.get("rope_type", "default") == "dynamic":
        original = config.max_position_embeddings  # transformers' dynamic type scales from this length
    return RopeBasics(int(head_dim), float(params["rope_theta"]), int(original))


def check_compatible(spec: RopeSpec, basics: RopeBasics) -> None:
    if spec.head_dim != basics.head_dim:
        raise RopelabError(f"spec head_dim {spec.head_dim} != model head_dim {basics.head_dim}")
    if not math.isclose(spec.base, basics.base, rel_tol=1e-9) and spec.method != "ntk":
        raise RopelabError(f"spec base {spec.base} != model rope_theta {basics.base}")



def base_spec(config) -> RopeSpec:
    """The model's own unscaled RoPE as a spec."""
    b = rope_basics(config)
    return RopeSpec("default", b.head_dim, b.base)


def specs_from_config(config) -> tuple[RopeSpec, RopeSpec | None]:
    """(long, short) specs equivalent to a config's rope_parameters; short only for longrope."""
    p = dict(config.rope_parameters)
    b = rope_basics(config)
    rope_type = p.get("rope_type", "default")
    common = {"head_dim": b.head_dim, "base": b.base}
    if rope_type == "default":
        return RopeSpec("default", **common), None
    if rope_type == "linear":
        return RopeSpec("linear", factor=p["factor"], **common), None
    if rope_type == "dynamic":
        return RopeSpec("dynamic", factor=p["factor"], original_max_position_embeddings=b.original_max_position_embeddings, **common), None
    factor = p.get("factor") or config.max_position_embeddings / b.original_max_position_embeddings
    original = b.original_max_position_embeddings
    if rope_type == "yarn":
        spec = RopeSpec("yarn", factor=factor, original_max_position_embeddings=original,
                        beta_fast=p.get("beta_fast") or 32.0, beta_slow=p.get("beta_slow") or 1.0,
                        attention_factor=p.get("attention_factor"), mscale=p.get("mscale"),
                        mscale_all_dim=p.get("mscale_all_dim"), **common)
        return spec, None
    if rope_type == "llama3":
        return RopeSpec("llama3", factor=factor, original_max_position_embeddings=original,
                        low_freq_factor=p["low_freq_factor"], high_freq_factor=p["high_freq_factor"], **common), None
    if rope_type == "longrope":
        def longrope(lam):
            return RopeSpec("longrope", factor=factor, original_max_position_embeddings=original,
                            rescale_factors=tuple(lam), attention_factor=p.get("attention_factor"), **common)
        return longrope(p["long_factor"]), longrope(p["short_factor"])
    raise RopelabError(f"rope_type {rope_type!r} in the config has no ropelab equivalent yet")


# ---------------------------------------------------------------- export



def _single_set_parameters(spec: RopeSpec) -> dict | None:
    """Native stock rope_parameters for one set, or None when only longrope can express it."""
    original = spec.original_max_position_embeddings
    if spec.method == "default":
        return {"rope_type": "default", "rope_theta": spec.base}
    if spec.method == "ntk":  # static NTK is a change of base, exactly
        return {"rope_type": "default", "rope_theta": spec.base * spec.factor ** (spec.head_dim / (spec.head_dim - 2))}
    if spec.method == "linear":
        return {"rope_type": "linear", "rope_theta": spec.base, "factor": spec.factor}
    if spec.method == "dynamic":
        return {"rope_type": "dynamic", "rope_theta": spec.base, "factor": spec.factor}
    if spec.method == "yarn":
        # the attention factor is written explicitly so transformers cannot infer a different one
        return {"rope_type": "yarn", "rope_theta": spec.base, "factor": spec.factor,
                "original_max_position_embeddings": original, "beta_fast": spec.beta_fast or 32.0,
                "beta_slow": spec.beta_slow or 1.0, "attention_factor": spec.compute()[1]}
    if spec.method == "llama3":
        return {"rope_type": "llama3", "rope_theta": spec.base, "factor": spec.factor,
                "original_max_position_embeddings": original, "low_freq_factor": spec.low_freq_factor or 1.0,
                "high_freq_factor": spec.high_freq_factor or 4.0}
    return None


def _longrope_parameters(long: RopeSpec, short: RopeSpec | None, original: int) -> dict:
    if "dynamic" in (long.method, short.method if short else None):
        raise RopelabError("dynamic NTK depends on the length and cannot be stored as a longrope factor set")
    long_l = long if long.method == "longrope" else as_longrope(long, original_max_position_embeddings=original)
    short_l = long_l if short is None else (
        short if short.method == "longrope" else as_longrope(short, original_max_position_embeddings=original))
    return {"rope_type": "longrope", "rope_theta": long.base, "factor": long_l.factor,
            "original_max_position_embeddings": original, "attention_factor": long_l.compute()[1],
            "long_factor": list(long_l.rescale_factors), "short_factor": list(short_l.rescale_factors)}



def stock_rope_parameters(long: RopeSpec, short: RopeSpec | None, basics: RopeBasics) -> tuple[dict, int]:
    """(rope_parameters, max_position_embeddings) for stock transformers."""
    original = long.original_max_position_embeddings or basics.original_max_position_embeddings
    params = _single_set_parameters(long) if short is None else None
    if params is None:
        params = _longrope_parameters(long, short, original)
    if long.method == "dynamic":
        return params, original  # transformers' dynamic scales from max_position_embeddings
    return params, int(round(original * (long.factor or 1.0)))
