"""The transformers adapter: the only module that knows transformers' config layout.

``rope_basics`` reads a config's unscaled RoPE, ``specs_from_config`` reads its ``rope_parameters`` as ropelab
specs, ``stock_rope_parameters`` writes specs back as stock ``rope_parameters`` (what ``export.export_hf``
saves). What each method reads and writes is its registry entry's business (``from_stock`` / ``to_stock``):
this module only knows where transformers keeps those numbers, so it never compares method names.
Rotary modules live in ``modules``, generation in ``generation``, the export in ``export``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ropelab.errors import RopelabError
from ropelab.rope.registry import PLAIN, RopeSpec, reads_stock, stock_parameters, stock_reader

SUPPORTED_FAMILIES = "Llama, Mistral, Qwen2, Phi-3 (any model with model.model.rotary_emb)"


@dataclass(frozen=True)
class RopeBasics:
    """What a model's config says about its unscaled RoPE."""

    head_dim: int
    base: float
    original_max_position_embeddings: int


def _rope_type(params: dict) -> str:
    """transformers treats a rope_parameters without rope_type as plain RoPE."""
    return params.get("rope_type", PLAIN)


def rope_basics(config) -> RopeBasics:
    """head_dim, rope_theta and the original context length of a config; an error for non-RoPE models."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    if "rope_theta" not in params:
        raise RopelabError(f"{type(config).__name__} has no rope_parameters.rope_theta: not a RoPE model")
    if float(params.get("partial_rotary_factor", 1.0)) != 1.0:
        raise RopelabError("partial rotary embeddings (partial_rotary_factor != 1) are not supported yet")
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    original = params.get("original_max_position_embeddings") or config.max_position_embeddings
    reader = reads_stock(_rope_type(params))
    if reader is not None and reader.stock_keeps_original_length:
        original = config.max_position_embeddings  # transformers' dynamic type scales from this length
    return RopeBasics(int(head_dim), float(params["rope_theta"]), int(original))


def check_compatible(spec: RopeSpec, basics: RopeBasics) -> None:
    """A spec fits a model with its head_dim and base; a method whose export rebases (NTK) may differ in base."""
    if spec.head_dim != basics.head_dim:
        raise RopelabError(f"spec head_dim {spec.head_dim} != model head_dim {basics.head_dim}")
    if not math.isclose(spec.base, basics.base, rel_tol=1e-9) and not spec.info.stock_changes_base:
        raise RopelabError(f"spec base {spec.base} != model rope_theta {basics.base}")


def base_spec(config) -> RopeSpec:
    """The model's own unscaled RoPE as a spec."""
    b = rope_basics(config)
    return RopeSpec(PLAIN, b.head_dim, b.base)


def specs_from_config(config) -> tuple[RopeSpec, RopeSpec | None]:
    """(long, short) specs equivalent to a config's rope_parameters; short only for longrope.

    The registry entry reading the config's rope_type does the work; an unknown rope_type is one clear error.
    """
    params = dict(config.rope_parameters)
    basics = rope_basics(config)
    reader = stock_reader(_rope_type(params))
    return reader.from_stock(params, basics, config.max_position_embeddings)


def stock_rope_parameters(long: RopeSpec, short: RopeSpec | None, basics: RopeBasics) -> tuple[dict, int]:
    """(rope_parameters, max_position_embeddings) for stock transformers.

    max_position_embeddings is the extended length (original · factor), except for stock types that read it as
    the original length (dynamic NTK scales from it).
    """
    original = long.original_max_position_embeddings or basics.original_max_position_embeddings
    params = stock_parameters(long, short, original)
    if long.info.stock_keeps_original_length:
        return params, original
    return params, int(round(original * (long.factor or 1.0)))
