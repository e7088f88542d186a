"""Export: a model directory whose ``config.json`` uses stock ``rope_parameters``, so that
``AutoModelForCausalLM.from_pretrained(dir)`` reproduces the in-memory logits without custom code. Whatever stock
transformers cannot express (n̂) is reported loudly and recorded, never dropped silently. A config class that
takes only some rope types (Phi-3: default and longrope) gets the equivalent longrope factor sets, noted in the
record. Partial-rotary models keep their ``partial_rotary_factor``: λ has one value per rotary pair.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from ropelab.atomic import staged_directory
from ropelab.errors import RopelabError
from ropelab.rope.adapter import stock_config
from ropelab.rope.modules import SHORT_ATTENTION
from ropelab.rope.registry import RopeSpec

EXPORT_RECORD = "ropelab_export.json"


class LossyExportWarning(UserWarning):
    """An export could not express part of the in-memory RoPE in stock transformers."""


@dataclass
class ExportReport:
    """Where an export went, the stock numbers it wrote, and what stock transformers could not express."""

    path: Path
    rope_parameters: dict
    max_position_embeddings: int
    lossy: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # exact, but not as the method's own stock type

    def to_dict(self) -> dict:
        return {"path": str(self.path), "rope_parameters": self.rope_parameters,
                "max_position_embeddings": self.max_position_embeddings, "lossy": self.lossy, "notes": self.notes}


def lossy_notes(long: RopeSpec, short: RopeSpec | None, short_attention: str = "long") -> list[str]:
    """One line per part of (long, short) the stock config drops (n̂; an attention factor of 1 up to L), so it is
    reported, never silent."""
    if short_attention not in SHORT_ATTENTION:
        raise RopelabError(f"short_attention must be one of {', '.join(SHORT_ATTENTION)}, got {short_attention!r}")
    notes = []
    if short is not None and short_attention == "one":
        factor = long.compute()[1]
        notes.append(f"short set: attention factor 1 up to L (short_attention = one, the research inference) "
                     f"dropped; stock transformers applies the long set's {factor:.4g} to short inputs too (logits "
                     f"×{factor ** 2:.4g}; install_rope(..., short_attention='one') restores it)")
    for name, spec in (("long", long), ("short", short)):
        if spec is not None and spec.start_tokens:
            notes.append(
                f"{name} set: n̂ = {spec.start_tokens} un-interpolated start tokens dropped; stock transformers "
                f"applies the scaled frequencies to every position (ropelab.rope.modules.install_rope restores n̂)"
            )
    return notes


def export_hf(model: nn.Module, out_dir: str | Path, long: RopeSpec, short: RopeSpec | None = None,
              tokenizer=None, provenance: dict | None = None, short_attention: str = "long") -> ExportReport:
    """Save ``model`` with stock rope_parameters for (long, short); record what could not be expressed.
    ``short_attention``: the rule the in-memory model used for inputs up to L (``modules.SHORT_ATTENTION``)."""
    config, params, notes = stock_config(model.config, long, short)
    out = Path(out_dir)
    report = ExportReport(out, params, config.max_position_embeddings, lossy_notes(long, short, short_attention),
                          notes)
    record = {**report.to_dict(), "long": long.to_dict(), "short": short.to_dict() if short else None,
              "short_attention": short_attention, "provenance": provenance or {}}
    with staged_directory(out) as staging:  # a half-written export never looks complete
        model.save_pretrained(staging)
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


def load_export_specs(path: str | Path) -> tuple[RopeSpec, RopeSpec | None]:
    """The exact in-memory specs (with n̂) recorded by ``export_hf``."""
    record = json.loads((Path(path) / EXPORT_RECORD).read_text())
    short = record.get("short")
    return RopeSpec.from_dict(record["long"]), RopeSpec.from_dict(short) if short else None
