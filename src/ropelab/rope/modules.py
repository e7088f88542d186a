"""Rotary modules and their installation: swap a loaded model's one rotary module (``rotary_emb`` of its base
model: ``model.model`` for Llama-style models, ``model.gpt_neox`` for GPT-NeoX) for a module computing cos/sin
from registry specs (n̂ start tokens, the short/long switch, one setting per batch row). No modeling file is
copied and no ``forward`` is patched: decoder layers receive ``position_embeddings`` from that one module.

cos/sin have the rotated width d (``RopeBasics.head_dim``): partial-rotary families apply them to the first d
dims of each head (``q[..., :cos.shape[-1]]``), as their own rotary module's output is applied. Before the
first swap, ``check_rotary_layout`` proves the model's own rotary module and ropelab's rendering of its config
agree, so a family with another layout is refused rather than silently given a different RoPE.
"""

from __future__ import annotations

import torch
from torch import nn

from ropelab.errors import RopelabError
from ropelab.rope.adapter import (
    FAMILIES_GUIDE,
    SUPPORTED_FAMILIES,
    RopeBasics,
    check_compatible,
    rope_basics,
    specs_from_config,
)
from ropelab.rope.methods import rope_frequencies
from ropelab.rope.registry import RopeSpec
from ropelab.rope.rotary import rotary_cos_sin

LAYOUT_POSITIONS = 8  # positions compared by check_rotary_layout: enough to tell layouts and scales apart
SHORT_ATTENTION = ("long", "one")  # the attention factor of inputs up to L under a short set (RopelabRotaryEmbedding)


def _rotary_owner(model: nn.Module) -> nn.Module:
    """The module holding ``rotary_emb``: the base model (transformers' ``base_model_prefix``: ``model.model``,
    ``model.gpt_neox``, ``model.transformer``), else ``model.model`` or the model itself."""
    for owner in (getattr(model, "base_model", None), getattr(model, "model", None), model):
        if owner is not None and isinstance(getattr(owner, "rotary_emb", None), nn.Module):
            return owner
    raise RopelabError(
        f"{type(model).__name__} has no rotary module at its base model's rotary_emb, the one module ropelab swaps; "
        f"ropelab takes {SUPPORTED_FAMILIES}"
    )


class RopelabRotaryEmbedding(nn.Module):
    """Drop-in rotary module: ``forward(x, position_ids) -> (cos, sin)`` of shape (batch, seq, head_dim).

    Uses ``long`` for every length, or, when ``short`` is given, ``short`` while
    ``max(position_ids) + 1 <= switch_length`` (transformers' longrope rule). ``short_attention`` (one of
    ``SHORT_ATTENTION``): ``long``, both sets use the long set's attention factor, as transformers' longrope
    does; ``one``, inputs up to switch_length get 1, as the research inference did (microsoft/LongRoPE
    longrope@5d6e10a rope/LlamaLongRoPEScaledRotaryEmbedding.py: mscale = su(max(seq_len / L, 1))), which stock
    transformers cannot express. Crossing the threshold during generation invalidates cached keys (they were
    rotated with the other set): ``ropelab.rope.generation.greedy_generate`` re-prefills there.
    """

    def __init__(self, long: RopeSpec, short: RopeSpec | None = None, switch_length: int | None = None,
                 short_attention: str = "long"):
        super().__init__()
        if short is not None and switch_length is None:
            raise RopelabError("a short factor set needs switch_length (the original context length)")
        if short_attention not in SHORT_ATTENTION:
            raise RopelabError(f"short_attention must be one of {', '.join(SHORT_ATTENTION)}, got {short_attention!r}")
        self.short_attention = short_attention
        for spec in (short,) if short is not None else ():
            if (spec.head_dim, spec.base) != (long.head_dim, long.base):
                raise RopelabError("short and long sets must share head_dim and base")
        self.long, self.short, self.switch_length = long, short, switch_length
        self.original_inv_freq = rope_frequencies(long.head_dim, long.base)
        self._cache: dict[tuple, tuple[torch.Tensor, float]] = {}

    def select(self, seq_len: int) -> RopeSpec:
        """The spec in force for a sequence whose largest position is seq_len - 1."""
        use_short = self.short is not None and seq_len <= self.switch_length
        return self.short if use_short else self.long

    def frequencies(self, seq_len: int) -> tuple[torch.Tensor, float]:
        """(inv_freq, attention_factor) in force at this length, cached per (set, length if it matters)."""
        spec = self.select(seq_len)
        key = (spec is self.short, seq_len if spec.info.length_dependent or self.long.info.length_dependent else None)
        if key not in self._cache:
            inv_freq, attention = spec.compute(seq_len)
            if spec is self.short:
                attention = self.long.compute(seq_len)[1] if self.short_attention == "long" else 1.0
            self._cache[key] = (inv_freq, attention)
        return self._cache[key]

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seq_len = int(position_ids.max()) + 1
        inv_freq, attention = self.frequencies(seq_len)
        spec = self.select(seq_len)
        cos, sin = rotary_cos_sin(
            inv_freq.to(x.device), attention, position_ids, start_tokens=spec.start_tokens,
            original_inv_freq=self.original_inv_freq.to(x.device),
        )
        return cos.to(dtype=x.dtype), sin.to(dtype=x.dtype)

    def extra_repr(self) -> str:
        short = f", short={self.short.method}, switch_length={self.switch_length}" if self.short else ""
        return f"long={self.long.method}{short}"


class PerRowRotaryEmbedding(nn.Module):
    """One RoPE setting per batch row (batched candidate evaluation in the search).

    ``set_rows(specs)`` fixes the settings of the next forward's rows; every spec is evaluated at its own
    (length-independent) frequencies, with its own attention factor and n̂.
    """

    def __init__(self, head_dim: int, base: float):
        super().__init__()
        self.original_inv_freq = rope_frequencies(head_dim, base)
        self.rows: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def set_rows(self, specs: list[RopeSpec]) -> None:
        computed = [spec.compute() for spec in specs]
        self.rows = (torch.stack([inv for inv, _ in computed]),
                     torch.tensor([a for _, a in computed], dtype=torch.float32),
                     torch.tensor([spec.start_tokens for spec in specs], dtype=torch.long))

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.rows is None or self.rows[0].shape[0] != x.shape[0]:
            raise RopelabError("PerRowRotaryEmbedding: set_rows() must give one spec per batch row")
        position_ids = position_ids.expand(x.shape[0], -1)  # transformers passes (1, seq) for the whole batch
        inv_freq, attention, start_tokens = (t.to(x.device) for t in self.rows)
        cos, sin = rotary_cos_sin(inv_freq, attention, position_ids, start_tokens=start_tokens,
                                  original_inv_freq=self.original_inv_freq.to(x.device))
        return cos.to(dtype=x.dtype), sin.to(dtype=x.dtype)


def install_per_row_rope(model: nn.Module) -> PerRowRotaryEmbedding:
    """Replace the rotary module by a per-row one (uninstall_rope restores the original)."""
    basics = rope_basics(model.config)
    return install_rotary(model, PerRowRotaryEmbedding(basics.head_dim, basics.base))


def _native_cos_sin(native: nn.Module, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, ...]:
    try:
        with torch.no_grad():
            return tuple(t.float() for t in native(x, positions))
    except TypeError as exc:  # e.g. a rotary module that also needs a layer type
        raise RopelabError(f"{type(native).__name__}.forward(x, position_ids) fails ({exc}); ropelab swaps a rotary "
                           f"module with exactly that interface ({FAMILIES_GUIDE})") from None


def check_rotary_layout(model: nn.Module) -> None:
    """The model's own rotary module and ropelab's reading of its config give the same cos/sin (width, layout
    ``cat(freqs, freqs)``, attention factor) at the first positions; else one clear error, because the
    swapped module would silently compute another RoPE. Checked once per loaded module."""
    basics = rope_basics(model.config)  # first: the config names the reason best
    owner = _rotary_owner(model)
    native = getattr(owner.rotary_emb, "replaced", owner.rotary_emb)
    if native.__dict__.get("_ropelab_layout_checked"):
        return
    ours = rotary_for(*specs_from_config(model.config), basics)
    device = next((b.device for b in native.buffers()), torch.device("cpu"))
    x, positions = torch.zeros(1, device=device), torch.arange(LAYOUT_POSITIONS, device=device)[None]
    theirs, mine = _native_cos_sin(native, x, positions), ours(x, positions)
    name = type(model).__name__
    if theirs[0].shape[-1] != mine[0].shape[-1]:
        raise RopelabError(f"{name}'s rotary module rotates {theirs[0].shape[-1]} dims but its config says "
                           f"{basics.describe_width()}: this family applies partial_rotary_factor its own way "
                           f"(ropelab follows transformers' rope_parameters; {FAMILIES_GUIDE})")
    low_precision = any(b.is_floating_point() and b.dtype != torch.float32 for b in native.buffers())
    tolerance = 5e-2 if low_precision else 1e-4
    if any(not torch.allclose(a, b, rtol=0, atol=tolerance) for a, b in zip(theirs, mine, strict=True)):
        raise RopelabError(f"{name}'s rotary module lays out or scales cos/sin differently from transformers' "
                           f"cat(freqs, freqs) layout ropelab builds (e.g. Cohere interleaves the pairs): ropelab "
                           f"would compute a different RoPE, so it does not take this family ({FAMILIES_GUIDE})")
    native.__dict__["_ropelab_layout_checked"] = True


def install_rotary(model: nn.Module, module: nn.Module) -> nn.Module:
    """Make ``module`` (forward(x, position_ids) -> (cos, sin)) the model's rotary module; uninstall_rope
    restores the one the model was loaded with. The module becomes a submodule: its parameters (CLEX's ODE)
    train with the model and appear in its state_dict. The family's layout is checked first."""
    check_rotary_layout(model)
    owner = _rotary_owner(model)
    previous = owner.rotary_emb
    module.__dict__["replaced"] = getattr(previous, "replaced", previous)  # plain attribute: not a submodule
    owner.rotary_emb = module.to(next(model.parameters()).device)
    return module


def rotary_module(model: nn.Module) -> nn.Module:
    """The rotary module in force (ours once installed), e.g. to ask it for ``setting_for_length``."""
    return _rotary_owner(model).rotary_emb


def rotary_for(long: RopeSpec, short: RopeSpec | None, basics: RopeBasics,
               short_attention: str = "long") -> RopelabRotaryEmbedding:
    """The rotary module ``install_rope`` installs for these specs on a model with these basics."""
    for spec in (long, short):
        if spec is not None:
            check_compatible(spec, basics)
    switch = long.original_max_position_embeddings or basics.original_max_position_embeddings
    return RopelabRotaryEmbedding(long, short, switch if short is not None else None, short_attention)


def install_rope(model: nn.Module, long: RopeSpec, short: RopeSpec | None = None,
                 short_attention: str = "long") -> RopelabRotaryEmbedding:
    """Replace the model's rotary module by one computing ``long`` (and ``short`` for short inputs, with the
    ``short_attention`` rule)."""
    return install_rotary(model, rotary_for(long, short, rope_basics(model.config), short_attention))


def uninstall_rope(model: nn.Module) -> None:
    """Put back the rotary module the model was loaded with."""
    owner = _rotary_owner(model)
    original = getattr(owner.rotary_emb, "replaced", None)
    if original is not None:
        owner.rotary_emb = original
