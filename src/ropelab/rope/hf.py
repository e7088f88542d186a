"""The transformers adapter: the only module that knows transformers' config layout.

Three jobs:
1. ``install_rope``: swap a loaded Llama-family model's rotary module (``model.model.rotary_emb``) for a
   ``RopelabRotaryEmbedding`` computing cos/sin from registry specs, with n̂ start tokens and the
   short/long switch. No modeling file is copied and no ``forward`` is patched: decoder layers receive
   ``position_embeddings`` from that one module.
2. ``specs_from_config``: read a config's ``rope_parameters`` as ropelab specs.
3. ``export_hf``: write a model directory whose ``config.json`` uses stock ``rope_parameters`` so that
   ``AutoModelForCausalLM.from_pretrained(dir)`` reproduces the in-memory logits, without custom code.
   Whatever stock transformers cannot express (n̂) is reported loudly and recorded, never dropped silently.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ropelab.errors import RopelabError
from ropelab.rope.methods import rope_frequencies
from ropelab.rope.registry import RopeSpec, as_longrope
from ropelab.rope.rotary import rotary_cos_sin

EXPORT_RECORD = "ropelab_export.json"
SUPPORTED_FAMILIES = "Llama, Mistral, Qwen2, Phi-3 (any model with model.model.rotary_emb)"


class LossyExportWarning(UserWarning):
    """An export could not express part of the in-memory RoPE in stock transformers."""


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


def _rotary_owner(model: nn.Module) -> nn.Module:
    for owner in (getattr(model, "model", None), model):
        if owner is not None and isinstance(getattr(owner, "rotary_emb", None), nn.Module):
            return owner
    raise RopelabError(
        f"{type(model).__name__} has no rotary embedding module at model.model.rotary_emb; "
        f"ropelab supports RoPE models of the Llama family: {SUPPORTED_FAMILIES}"
    )


class RopelabRotaryEmbedding(nn.Module):
    """Drop-in rotary module: ``forward(x, position_ids) -> (cos, sin)`` of shape (batch, seq, head_dim).

    Uses ``long`` for every length, or, when ``short`` is given, ``short`` while
    ``max(position_ids) + 1 <= switch_length`` (transformers' longrope rule). As in transformers' longrope,
    both sets use the long set's attention factor. Crossing the threshold during generation invalidates
    cached keys (they were rotated with the other set): decode with the set the final length needs.
    """

    def __init__(self, long: RopeSpec, short: RopeSpec | None = None, switch_length: int | None = None):
        super().__init__()
        if short is not None and switch_length is None:
            raise RopelabError("a short factor set needs switch_length (the original context length)")
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
                attention = self.long.compute(seq_len)[1]
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


def install_rotary(model: nn.Module, module: nn.Module) -> nn.Module:
    """Make ``module`` (forward(x, position_ids) -> (cos, sin)) the model's rotary module; uninstall_rope
    restores the one the model was loaded with. The module becomes a submodule: its parameters (CLEX's ODE)
    train with the model and appear in its state_dict."""
    owner = _rotary_owner(model)
    previous = owner.rotary_emb
    module.__dict__["replaced"] = getattr(previous, "replaced", previous)  # plain attribute: not a submodule
    owner.rotary_emb = module.to(next(model.parameters()).device)
    return module


def rotary_module(model: nn.Module) -> nn.Module:
    return _rotary_owner(model).rotary_emb


def check_compatible(spec: RopeSpec, basics: RopeBasics) -> None:
    if spec.head_dim != basics.head_dim:
        raise RopelabError(f"spec head_dim {spec.head_dim} != model head_dim {basics.head_dim}")
    if not math.isclose(spec.base, basics.base, rel_tol=1e-9) and spec.method != "ntk":
        raise RopelabError(f"spec base {spec.base} != model rope_theta {basics.base}")


def rotary_for(long: RopeSpec, short: RopeSpec | None, basics: RopeBasics) -> RopelabRotaryEmbedding:
    """The rotary module ``install_rope`` installs for these specs on a model with these basics."""
    for spec in (long, short):
        if spec is not None:
            check_compatible(spec, basics)
    switch = long.original_max_position_embeddings or basics.original_max_position_embeddings
    return RopelabRotaryEmbedding(long, short, switch if short is not None else None)


def install_rope(model: nn.Module, long: RopeSpec, short: RopeSpec | None = None) -> RopelabRotaryEmbedding:
    """Replace the model's rotary module by one computing ``long`` (and ``short`` for short inputs)."""
    return install_rotary(model, rotary_for(long, short, rope_basics(model.config)))


@torch.no_grad()
def greedy_generate(model: nn.Module, input_ids: torch.Tensor, max_new_tokens: int,
                    eos_token_id: int | None = None, step_logits: list | None = None) -> list[int]:
    """Greedy decoding with a key/value cache that stays exact when the RoPE setting changes with the length.

    A rotary module with ``setting_for_length(n)`` (CLEX: t = ceil(n/L)) gets the cache rebuilt by one
    prefill whenever the setting changes, so every step equals a full recompute (re-rotating cached keys would
    not: later layers' keys and values depend on attention computed with the old setting). ``input_ids`` is
    (1, n); ``step_logits`` collects each step's logits.
    """
    from transformers import DynamicCache

    setting = getattr(rotary_module(model), "setting_for_length", lambda n: None)

    def prefill(ids):
        cache = DynamicCache(config=model.config)
        return cache, model(input_ids=ids, past_key_values=cache, use_cache=True).logits

    sequence, tokens = input_ids, []
    cache, logits = prefill(sequence)
    for _ in range(max_new_tokens):
        token = int(logits[0, -1].argmax())
        tokens.append(token)
        if step_logits is not None:
            step_logits.append(logits[0, -1])
        if token == eos_token_id or len(tokens) == max_new_tokens:
            break
        length = sequence.shape[1]
        sequence = torch.cat([sequence, torch.tensor([[token]], device=sequence.device)], dim=1)
        if setting(length + 1) != setting(length):
            cache, logits = prefill(sequence)
        else:
            logits = model(input_ids=sequence[:, -1:], past_key_values=cache, use_cache=True,
                           position_ids=torch.tensor([[length]], device=sequence.device)).logits
    return tokens


def uninstall_rope(model: nn.Module) -> None:
    """Put back the rotary module the model was loaded with."""
    owner = _rotary_owner(model)
    original = getattr(owner.rotary_emb, "replaced", None)
    if original is not None:
        owner.rotary_emb = original


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


@dataclass
class ExportReport:
    path: Path
    rope_parameters: dict
    max_position_embeddings: int
    lossy: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"path": str(self.path), "rope_parameters": self.rope_parameters,
                "max_position_embeddings": self.max_position_embeddings, "lossy": self.lossy}


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


def lossy_notes(long: RopeSpec, short: RopeSpec | None) -> list[str]:
    notes = []
    for name, spec in (("long", long), ("short", short)):
        if spec is not None and spec.start_tokens:
            notes.append(
                f"{name} set: n̂ = {spec.start_tokens} un-interpolated start tokens dropped; stock transformers "
                f"applies the scaled frequencies to every position (ropelab.rope.hf.install_rope restores n̂)"
            )
    return notes


def stock_rope_parameters(long: RopeSpec, short: RopeSpec | None, basics: RopeBasics) -> tuple[dict, int]:
    """(rope_parameters, max_position_embeddings) for stock transformers."""
    original = long.original_max_position_embeddings or basics.original_max_position_embeddings
    params = _single_set_parameters(long) if short is None else None
    if params is None:
        params = _longrope_parameters(long, short, original)
    if long.method == "dynamic":
        return params, original  # transformers' dynamic scales from max_position_embeddings
    return params, int(round(original * (long.factor or 1.0)))


def export_hf(model: nn.Module, out_dir: str | Path, long: RopeSpec, short: RopeSpec | None = None,
              tokenizer=None, provenance: dict | None = None) -> ExportReport:
    """Save ``model`` with stock rope_parameters for (long, short); record what could not be expressed."""
    basics = rope_basics(model.config)
    for spec in (long, short):
        if spec is not None:
            check_compatible(spec, basics)
    params, max_positions = stock_rope_parameters(long, short, basics)
    out = Path(out_dir)
    report = ExportReport(out, params, max_positions, lossy_notes(long, short))
    record = {**report.to_dict(), "long": long.to_dict(), "short": short.to_dict() if short else None,
              "provenance": provenance or {}}
    with staged_directory(out) as staging:  # a half-written export never looks complete
        model.save_pretrained(staging)
        config = type(model.config).from_dict(
            {**model.config.to_dict(), "rope_parameters": params, "max_position_embeddings": max_positions})
        config.save_pretrained(staging)
        if tokenizer is not None:
            save_tokenizer(tokenizer, staging)
        (staging / EXPORT_RECORD).write_text(json.dumps(record, indent=2))
    for note in report.lossy:
        warnings.warn(f"lossy export to {out}: {note}", LossyExportWarning, stacklevel=2)
    return report


def save_tokenizer(tokenizer, directory: Path) -> None:
    """transformers tokenizers have save_pretrained(dir); ropelab's own have save(dir)."""
    if hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(directory)
    else:
        tokenizer.save(directory)


@contextlib.contextmanager
def staged_directory(target: Path):
    """Yield a sibling '<target>.partial' directory; on success replace ``target`` by it, else remove it."""
    staging = target.with_name(target.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)


def load_export_specs(path: str | Path) -> tuple[RopeSpec, RopeSpec | None]:
    """The exact in-memory specs (with n̂) recorded by ``export_hf``."""
    record = json.loads((Path(path) / EXPORT_RECORD).read_text())
    short = record.get("short")
    return RopeSpec.from_dict(record["long"]), RopeSpec.from_dict(short) if short else None
