"""Exporting a CLEX model: a stock transformers directory plus the frequency table CLEX serves with.

Stock transformers has no rope_type for CLEX, so the config keeps the model's own default RoPE (it loads
anywhere, as the fine-tuned model *without* CLEX) and ``clex.json`` holds the per-t frequency table, the ODE
settings and a note; ``clex_dynamics.safetensors`` holds the ODE weights. ``load_clex`` reinstalls the exact
module. Never a config that stock transformers would reject.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ropelab.atomic import staged_directory
from ropelab.clex.rotary import ClexRotaryEmbedding
from ropelab.errors import RopelabError
from ropelab.rope.adapter import rope_basics
from ropelab.rope.export import save_tokenizer
from ropelab.rope.generation import refuse_stale_cache
from ropelab.rope.modules import install_rotary, uninstall_rope

CLEX_RECORD = "clex.json"
CLEX_WEIGHTS = "clex_dynamics.safetensors"
NOTE = ("CLEX (continuous length extrapolation) cannot be expressed in stock transformers' rope_parameters. "
        "This directory loads in stock transformers as the fine-tuned model with its ORIGINAL RoPE (usable up to "
        "the original length). For long inputs load it with ropelab.clex.io.load_clex(dir), which installs the "
        "CLEX rotary module: inv_freq = frequency_table[t - 1] for t = min(ceil(n / L), max_t).")


def is_clex_export(path: str | Path) -> bool:
    return (Path(path) / CLEX_RECORD).exists()


def export_clex(model, out_dir: str | Path, module: ClexRotaryEmbedding, tokenizer=None,
                provenance: dict | None = None) -> Path:
    """Write the stock model (original rotary module restored for saving) + clex.json + ODE weights."""
    out = Path(out_dir)
    table = module.table()
    record = {
        "note": NOTE, "original_max_position_embeddings": module.original_length, "max_t": module.max_t,
        "time_dt": module.time_dt, "log_scale": module.log_scale, "log_scale_rule": module.log_scale_rule,
        "backend": module.backend,
        "amplification": module.dynamics.up.shape[1] // module.dynamics.head_dim,
        "activation": type(module.dynamics.activation).__name__.lower(),
        "head_dim": module.dynamics.head_dim, "rope_theta": module.dynamics.base,
        "frequency_table": {str(t + 1): row.tolist() for t, row in enumerate(table)},
        "provenance": provenance or {},
    }
    uninstall_rope(model)
    try:
        with staged_directory(out) as staging:
            model.save_pretrained(staging)
            if tokenizer is not None:
                save_tokenizer(tokenizer, staging)
            save_file({k: v.detach().float().cpu().contiguous() for k, v in module.dynamics.state_dict().items()},
                      staging / CLEX_WEIGHTS)
            (staging / CLEX_RECORD).write_text(json.dumps(record, indent=2))
            (staging / "CLEX_README.md").write_text(f"# CLEX export\n\n{NOTE}\n")
    finally:
        install_rotary(model, module)
    return out


def clex_module_from_export(path: str | Path, config) -> ClexRotaryEmbedding:
    """The CLEX rotary module recorded in an export, serving the saved frequency table."""
    record = json.loads((Path(path) / CLEX_RECORD).read_text())
    basics = rope_basics(config)
    if record["head_dim"] != basics.head_dim:
        raise RopelabError(f"{path}: CLEX head_dim {record['head_dim']} != the model's {basics.head_dim}")
    module = ClexRotaryEmbedding(record["head_dim"], record["rope_theta"], record["original_max_position_embeddings"],
                                 record["max_t"], time_dt=record["time_dt"], amplification=record["amplification"],
                                 activation=record["activation"], log_scale=record["log_scale"],
                                 # exports written before the rule was recorded used the clamped one
                                 log_scale_rule=record.get("log_scale_rule", "clamped"), backend=record["backend"])
    module.dynamics.load_state_dict(load_file(Path(path) / CLEX_WEIGHTS))
    module.eval()
    table = torch.tensor([record["frequency_table"][str(t)] for t in range(1, record["max_t"] + 1)])
    module.set_table(table)
    return module


def load_clex(path: str | Path, model) -> ClexRotaryEmbedding:
    """Install the CLEX module of the export at ``path`` into ``model`` (loaded from the same directory);
    ``model.generate`` then refuses a cached continuation across a change of t (``refuse_stale_cache``)."""
    module = install_rotary(model, clex_module_from_export(path, model.config))
    refuse_stale_cache(model)
    return module
