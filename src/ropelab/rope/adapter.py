"""The transformers adapter: the only module that knows transformers' config layout.

``rope_basics`` reads a config's unscaled RoPE, ``specs_from_config`` reads its ``rope_parameters`` as ropelab
specs, ``stock_rope_parameters`` writes specs back as stock ``rope_parameters`` and ``stock_config`` makes the
config an export saves (one the model's config class accepts). What each method reads and writes is its
registry entry's business (``from_stock`` / ``to_stock`` / ``stock_keys``): this module only knows where
transformers keeps those numbers, so it never compares method names.

Vocabulary: ropelab's ``head_dim`` is d of the RoPE formulas, the width RoPE rotates. For partial-rotary models
(Phi-4-mini, Phi-2, GPT-NeoX, StableLM: ``partial_rotary_factor`` p < 1) that is transformers' ``dim =
int(head_dim · p)``, the first dims of each head; the rest pass through unrotated. λ has one value per rotary
pair (d/2). Rotary modules live in ``modules``, generation in ``generation``, the export in ``export``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ropelab.errors import RopelabError
from ropelab.rope.registry import (
    PLAIN,
    RopeMethod,
    RopeSpec,
    longrope_stock_parameters,
    stock_parameters,
    stock_reader,
)

SUPPORTED_FAMILIES = ("Llama, Mistral, Qwen2/3, Phi-3/Phi-4-mini, Phi-2, GPT-NeoX, StableLM, Gemma (1) and others "
                      "whose base model has one rotary_emb in transformers' layout (docs/model-families.md)")
FAMILIES_GUIDE = "docs/model-families.md"
# rope_parameters keys of every rope_type: read here (the basics), not by a method's from_stock. "type" is the
# legacy spelling of rope_type, which transformers' standardize_rope_params keeps next to it.
SHARED_STOCK_KEYS = frozenset({"rope_type", "type", "rope_theta", "partial_rotary_factor",
                               "original_max_position_embeddings"})
# keys no transformers code reads, found in released configs: the YaRN authors' checkpoints
# (NousResearch/Yarn-Llama-2-*) carry "finetuned", a switch of their own modeling code only
INERT_STOCK_KEYS = frozenset({"finetuned"})
SLIDING = "sliding_attention"  # transformers' layer_types value of a sliding-window layer


@dataclass(frozen=True)
class RopeBasics:
    """What a model's config says about its unscaled RoPE.

    ``head_dim`` is the rotated width d (see the module docstring); ``attention_head_dim`` the full head width
    and ``partial_rotary_factor`` the factor as the config states it (None: not stated, the whole head).
    ``original_from`` names where L was read, for messages."""

    head_dim: int
    base: float
    original_max_position_embeddings: int
    partial_rotary_factor: float | None = None
    attention_head_dim: int | None = None
    original_from: str = field(default="max_position_embeddings", compare=False)

    @property
    def rotary_pairs(self) -> int:
        """d/2: the number of frequencies, of λ values, of searched dimensions."""
        return self.head_dim // 2

    def describe_width(self) -> str:
        if self.attention_head_dim in (None, self.head_dim):
            return f"head_dim {self.head_dim}"
        return (f"{self.head_dim} of head_dim {self.attention_head_dim} "
                f"(partial_rotary_factor {self.partial_rotary_factor:g}, {self.rotary_pairs} rotary pairs)")


def _rope_parameters(config) -> dict:
    """The config's one set of rope_parameters; a clear refusal for per-layer-type RoPE and for no RoPE."""
    params = dict(getattr(config, "rope_parameters", None) or {})
    name = type(config).__name__
    nested = sorted(k for k, v in params.items() if isinstance(v, dict))
    if nested:
        raise RopelabError(f"{name} keeps one RoPE per attention layer type ({', '.join(nested)}; e.g. Gemma 3): "
                           f"ropelab installs one rotary module per model, so it does not take this family "
                           f"({FAMILIES_GUIDE})")
    if getattr(config, "alibi", False):  # Falcon-RW: the rotary module exists, attention never applies it
        raise RopelabError(f"{name} has alibi: true, so its attention uses ALiBi and ignores RoPE; nothing for ropelab "
                           f"to swap ({FAMILIES_GUIDE})")
    if "rope_theta" not in params:
        raise RopelabError(f"{name} has no rope_parameters.rope_theta: ropelab swaps the rotary module transformers "
                           f"builds from rope_parameters, and this model has none (no RoPE, or RoPE computed inside "
                           f"attention as in GPT-J; {FAMILIES_GUIDE})")
    return params


def _check_understood(params: dict, reader: RopeMethod, config) -> None:
    """Every key that may change the RoPE is read by ropelab; an unknown one is an error, never dropped."""
    unknown = sorted(set(params) - SHARED_STOCK_KEYS - INERT_STOCK_KEYS - reader.stock_keys)
    if unknown:
        known = ", ".join(sorted(SHARED_STOCK_KEYS | reader.stock_keys))
        raise RopelabError(f"{type(config).__name__}.rope_parameters has {', '.join(unknown)} for rope_type "
                           f"{_rope_type(params)!r}, which ropelab does not understand (it reads {known}); refusing "
                           f"rather than silently using a different RoPE")


def _rope_type(params: dict) -> str:
    """transformers treats a rope_parameters without rope_type as plain RoPE (or reads the legacy "type")."""
    return params.get("rope_type", params.get("type", PLAIN))


def _widths(config, params: dict) -> tuple[int, int, float | None]:
    """(rotated width d, attention head width, partial_rotary_factor as stated), as transformers computes dim."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    stated = params.get("partial_rotary_factor")
    rotary = int(head_dim * float(stated)) if stated is not None else int(head_dim)
    if rotary < 4 or rotary % 2:
        raise RopelabError(f"{type(config).__name__} rotates {rotary} dims (head_dim {head_dim} × "
                           f"partial_rotary_factor {stated}); RoPE needs an even rotated width ≥ 4")
    return rotary, int(head_dim), None if stated is None else float(stated)


def _sliding_everywhere(config) -> int | None:
    """The sliding window when every layer attends within it (Mistral-7B-v0.1), else None."""
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if not window or (layer_types and any(t != SLIDING for t in layer_types)):
        return None
    return int(window)


def _original_length(config, params: dict, reader: RopeMethod) -> tuple[int, str]:
    """L and where it came from. A model whose every layer slides within a window shorter than
    max_position_embeddings has that window as L: the reference's rule (microsoft/LongRoPE @ c9e56aa,
    evolution/search.py: ``original_length = config.sliding_window`` when set)."""
    if reader.stock_keeps_original_length:  # transformers' dynamic type scales from max_position_embeddings
        return int(config.max_position_embeddings), "max_position_embeddings"
    if params.get("original_max_position_embeddings"):
        return int(params["original_max_position_embeddings"]), "rope_parameters.original_max_position_embeddings"
    window = _sliding_everywhere(config)
    if window and window < config.max_position_embeddings:
        return window, "sliding_window (every layer attends within it, as the reference reads L)"
    return int(config.max_position_embeddings), "max_position_embeddings"


def _read(config) -> tuple[dict, RopeMethod, RopeBasics]:
    params = _rope_parameters(config)
    reader = stock_reader(_rope_type(params))
    _check_understood(params, reader, config)
    rotary, head_dim, partial = _widths(config, params)
    original, source = _original_length(config, params, reader)
    return params, reader, RopeBasics(rotary, float(params["rope_theta"]), original, partial, head_dim, source)


def rope_basics(config) -> RopeBasics:
    """The rotated width, rope_theta and the original context length of a config; one clear error for a config
    ropelab cannot read exactly (no RoPE, per-layer RoPE, an unknown rope_type or key)."""
    return _read(config)[2]


def check_compatible(spec: RopeSpec, basics: RopeBasics) -> None:
    """A spec fits a model with its rotated width and base; a method whose export rebases (NTK) may differ in
    base."""
    if spec.head_dim != basics.head_dim:
        raise RopelabError(f"spec rotates head_dim {spec.head_dim} dims, the model rotates {basics.describe_width()}")
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
    params, reader, basics = _read(config)
    return reader.from_stock(params, basics, config.max_position_embeddings)


def _with_rotary_width(params: dict, basics: RopeBasics) -> dict:
    """Stock configs default the factor per class (GPT-NeoX: 0.25), so a stated one is always written back."""
    if basics.partial_rotary_factor is None:
        return params
    return {**params, "partial_rotary_factor": basics.partial_rotary_factor}


def _max_positions(long: RopeSpec, original: int) -> int:
    """The extended length (original · factor), except for stock types that read it as the original length
    (dynamic NTK scales from it)."""
    return original if long.info.stock_keeps_original_length else int(round(original * (long.factor or 1.0)))


def stock_rope_parameters(long: RopeSpec, short: RopeSpec | None, basics: RopeBasics) -> tuple[dict, int]:
    """(rope_parameters, max_position_embeddings) for stock transformers: the method's own stock type when one
    set suffices and it has one, else longrope factor sets."""
    original = long.original_max_position_embeddings or basics.original_max_position_embeddings
    params = stock_parameters(long, short, original)
    return _with_rotary_width(params, basics), _max_positions(long, original)


def _factor_set_parameters(long: RopeSpec, short: RopeSpec | None, basics: RopeBasics) -> tuple[dict, int]:
    original = long.original_max_position_embeddings or basics.original_max_position_embeddings
    params = longrope_stock_parameters(long, short, original)
    return _with_rotary_width(params, basics), _max_positions(long, original)


def _built(config, params: dict, max_positions: int):
    """(the config class's own config holding ``params``, None) or (None, why the class refused or rewrote)."""
    data = {**config.to_dict(), "rope_parameters": params, "max_position_embeddings": max_positions}
    if "original_max_position_embeddings" in data and "original_max_position_embeddings" in params:
        # Phi-3 also keeps L outside rope_parameters and lets that copy win (standardize_rope_params)
        data["original_max_position_embeddings"] = params["original_max_position_embeddings"]
    try:
        built = type(config).from_dict(data)
    except Exception as exc:  # noqa: BLE001 - transformers refuses with KeyError, ValueError or its own types
        return None, str(exc).strip().splitlines()[-1].strip()
    rewritten = sorted(k for k, v in params.items() if built.rope_parameters.get(k) != v)
    if rewritten or built.max_position_embeddings != max_positions:
        return None, f"it rewrites {', '.join(rewritten) or 'max_position_embeddings'}"
    return built, None


def stock_config(config, long: RopeSpec, short: RopeSpec | None = None) -> tuple[object, dict, list[str]]:
    """(config to save, its rope_parameters, notes): ``config`` holding (long, short) in a form its class
    accepts. Classes taking only some rope types (Phi-3: default and longrope) get the equivalent longrope
    factor sets (same inv_freq and attention factor); a setting neither can hold is one clear error."""
    basics = rope_basics(config)
    for spec in (long, short):
        if spec is not None:
            check_compatible(spec, basics)
    params, max_positions = stock_rope_parameters(long, short, basics)
    built, refusal = _built(config, params, max_positions)
    if built is not None:
        return built, params, []
    name, rope_type = type(config).__name__, params.get("rope_type")
    try:
        fallback, fallback_positions = _factor_set_parameters(long, short, basics)
    except RopelabError as exc:
        raise RopelabError(f"{name} does not accept rope_type {rope_type!r} ({refusal}), and {exc}") from None
    built, second = _built(config, fallback, fallback_positions) if fallback != params else (None, refusal)
    if built is None:
        raise RopelabError(f"{name} accepts neither rope_type {rope_type!r} ({refusal}) nor "
                           f"{fallback.get('rope_type')!r} factor sets ({second})")
    note = (f"{name} does not accept rope_type {rope_type!r} ({refusal}): written as {fallback.get('rope_type')} "
            f"factor sets with the same inv_freq and attention factor")
    return built, fallback, [note]
