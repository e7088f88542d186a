"""The method zoo: evaluate a list of RoPE methods at a list of lengths on the same held-out windows.

Baselines are set for each evaluation length n with the scale s = max(1, n / L) (each method configured to
extend to that length); dynamic NTK is one setting for all lengths (factor 1: s_eff = l / L); a λ set from a
search is fixed. Every number carries method, length, protocol and window count.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from ropelab.errors import RopelabError
from ropelab.eval.passkey import PasskeyResult, accuracy_table, passkey_trial, random_key
from ropelab.eval.perplexity import PerplexityResult, perplexity, sliding_perplexity
from ropelab.rope.adapter import RopeBasics, specs_from_config
from ropelab.rope.modules import install_rope, install_rotary, rotary_for, uninstall_rope
from ropelab.rope.registry import RopeSpec

SpecPair = tuple[RopeSpec, RopeSpec | None]  # (long, short)
Setting = SpecPair | torch.nn.Module  # specs for the registry, or a whole rotary module (CLEX)


def _scale(length: int, basics: RopeBasics) -> float:
    return max(1.0, length / basics.original_max_position_embeddings)


BASELINES: dict[str, Callable[[int, RopeBasics], RopeSpec]] = {
    "none": lambda n, b: RopeSpec("default", b.head_dim, b.base),
    "pi": lambda n, b: RopeSpec("linear", b.head_dim, b.base, factor=_scale(n, b)),
    "ntk": lambda n, b: RopeSpec("ntk", b.head_dim, b.base, factor=_scale(n, b)),
    "dynamic": lambda n, b: RopeSpec("dynamic", b.head_dim, b.base, factor=1.0,
                                     original_max_position_embeddings=b.original_max_position_embeddings),
    "yarn": lambda n, b: RopeSpec("yarn", b.head_dim, b.base, factor=_scale(n, b),
                                  original_max_position_embeddings=b.original_max_position_embeddings),
    "llama3": lambda n, b: RopeSpec("llama3", b.head_dim, b.base, factor=_scale(n, b),
                                    original_max_position_embeddings=b.original_max_position_embeddings),
}


def baseline(name: str, yarn_betas: tuple[float, float] = (32.0, 1.0)) -> Callable[[int, RopeBasics], SpecPair]:
    """``yarn_betas``: YaRN's (β_fast, β_slow), eval.yarn_beta_fast/slow (LongRoPE's search.py: 128/2 for Mistral)."""
    if name not in BASELINES:
        raise RopelabError(f"unknown zoo method {name!r}; baselines: {', '.join(BASELINES)}, or native (the "
                           "model's own RoPE); λ sets come as files")
    if name == "yarn":
        return lambda n, b: (BASELINES[name](n, b).replace(beta_fast=yarn_betas[0], beta_slow=yarn_betas[1]), None)
    return lambda n, b: (BASELINES[name](n, b), None)


def fixed(long: RopeSpec, short: RopeSpec | None = None) -> Callable[[int, RopeBasics], SpecPair]:
    """A searched/exported setting, the same at every length (short set used up to L, as in transformers)."""
    return lambda n, b: (long, short)


def native(model, path) -> Callable[[int, RopeBasics], Setting]:
    """The model's own RoPE as saved: its rope_parameters, or CLEX when the directory is a CLEX export."""
    from ropelab.clex.io import clex_module_from_export, is_clex_export

    if path and is_clex_export(path):
        module = clex_module_from_export(path, model.config)
        return lambda n, b: module
    return fixed(*specs_from_config(model.config))


def effective_setting(setting: Setting, length: int, basics: RopeBasics, *, exact_length: bool = False) -> tuple | None:
    """What the model computes with for inputs of this length, as a comparable key: the frequencies, attention
    factor and n̂ that the installed rotary module uses for them. So settings that differ only where they are not
    used share one evaluation: a short set only matters up to L (the progressive λ with and without recovery
    factors are the same RoPE beyond L), and at L every baseline at scale 1 is the unscaled RoPE.

    A setting whose RoPE can still change as a sequence of this length grows (dynamic NTK; a short set up to L,
    which gives way to the long set beyond it) only stands for others when every forward has exactly ``length``
    positions (``exact_length``: the truncated PPL protocol; not generation or sliding windows). None for a
    rotary module (CLEX): never shared."""
    if isinstance(setting, torch.nn.Module):
        return None
    module = rotary_for(*setting, basics)
    inv_freq, attention = module.frequencies(length)
    key = (inv_freq.numpy().tobytes(), float(attention), module.select(length).start_tokens)
    switches = module.short is not None and length <= module.switch_length
    varies = switches or any(spec is not None and spec.info.length_dependent for spec in setting)
    return key if exact_length or not varies else (key, setting)


def install_setting(model, setting: Setting) -> None:
    if isinstance(setting, torch.nn.Module):
        install_rotary(model, setting)
    else:
        install_rope(model, *setting)


@dataclass(frozen=True)
class ZooCell:
    method: str
    result: PerplexityResult


def evaluate_ppl_grid(model, basics: RopeBasics, methods: Mapping[str, Callable[[int, RopeBasics], Setting]],
                      windows: Mapping[int, torch.Tensor], *, protocol: str = "truncated", stride: int | None = None,
                      on_cell: Callable[[ZooCell], None] | None = None) -> list[ZooCell]:
    """PPL of every method at every length (the same windows for all methods). A setting that computes the
    same RoPE as one already evaluated at that length (see ``effective_setting``) reuses its result."""
    cells, done = [], {}
    try:
        for name, make in methods.items():
            for length, data in sorted(windows.items()):
                setting = make(length, basics)
                key = effective_setting(setting, length, basics, exact_length=protocol == "truncated")
                if key is None or (key, length) not in done:
                    install_setting(model, setting)
                    done[(key, length)] = (perplexity(model, data) if protocol == "truncated"
                                           else sliding_perplexity(model, data, length, stride or length))
                result = done[(key, length)]
                cells.append(ZooCell(name, result))
                if on_cell is not None:
                    on_cell(cells[-1])
    finally:
        uninstall_rope(model)
    return cells


def evaluate_passkey_grid(model, tokenizer, basics: RopeBasics,
                          methods: Mapping[str, Callable[[int, RopeBasics], Setting]], lengths: Sequence[int],
                          depths: Sequence[float], trials: int, generator: torch.Generator,
                          on_trial: Callable[[str, PasskeyResult], None] | None = None) -> dict[str, list[PasskeyResult]]:
    """Passkey results per method; keys are drawn once, so every method answers the same prompts."""
    keys = {(n, d, t): random_key(generator) for n in lengths for d in depths for t in range(trials)}
    out: dict[str, list[PasskeyResult]] = {}
    done: dict = {}
    try:
        for name, make in methods.items():
            for (n, d, t), key in keys.items():
                setting = make(n, basics)
                same = effective_setting(setting, n, basics)
                if same is None or (same, n, d, t) not in done:
                    install_setting(model, setting)
                    done[(same, n, d, t)] = passkey_trial(model, tokenizer, n, d, key)
                out.setdefault(name, []).append(done[(same, n, d, t)])
                if on_trial is not None:
                    on_trial(name, out[name][-1])
    finally:
        uninstall_rope(model)
    return out


def ppl_table(cells: Sequence[ZooCell]) -> dict[str, dict[int, float]]:
    table: dict[str, dict[int, float]] = {}
    for cell in cells:
        table.setdefault(cell.method, {})[cell.result.length] = cell.result.ppl
    return table


def markdown_table(table: Mapping[str, Mapping[int, float]], caption: str) -> str:
    lengths = sorted({n for row in table.values() for n in row})
    lines = [caption, "", "| method | " + " | ".join(str(n) for n in lengths) + " |",
             "|---|" + "---:|" * len(lengths)]
    for method, row in table.items():
        best = {n: min(r[n] for r in table.values() if n in r) for n in lengths}
        cells = [(f"**{row[n]:.3f}**" if row[n] == best[n] else f"{row[n]:.3f}") if n in row else "–" for n in lengths]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class ExtensionHeadline:
    """The numbers LongRoPE is judged by: the extended model at its final length and at L, against the base at L."""
    base_at_L: float
    final_at_final_length: float
    final_at_L: float

    @property
    def long_ratio(self) -> float:
        return self.final_at_final_length / self.base_at_L

    @property
    def short_change(self) -> float:
        """Relative change at L (+0.01 = 1% worse than the base)."""
        return self.final_at_L / self.base_at_L - 1


def extension_headline(base_row: Mapping, final_row: Mapping, original_length: int, final_length: int) -> ExtensionHeadline:
    """From two PPL-by-length rows (keys int or str, as after a JSON round trip): the base model's and the
    extended model's."""
    def at(row: Mapping, n: int) -> float:
        value = row.get(n, row.get(str(n)))
        if value is None:
            raise RopelabError(f"no PPL at length {n} in {sorted(row, key=int)}")
        return float(value)

    return ExtensionHeadline(at(base_row, original_length), at(final_row, final_length), at(final_row, original_length))


def csv_rows(cells: Sequence[ZooCell], extra: Mapping[str, str]) -> str:
    buffer = io.StringIO()
    fields = ["method", "length", "ppl", "nll", "tokens", "num_windows", "protocol", "stride", *extra]
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    for cell in cells:
        r = cell.result
        writer.writerow({"method": cell.method, "length": r.length, "ppl": f"{r.ppl:.6f}", "nll": f"{r.nll:.6f}",
                         "tokens": r.tokens, "num_windows": r.num_windows, "protocol": r.protocol,
                         "stride": r.stride or "", **extra})
    return buffer.getvalue()


def passkey_tables(results: Mapping[str, Sequence[PasskeyResult]]) -> dict[str, dict[int, dict[float, float]]]:
    return {name: accuracy_table(rs) for name, rs in results.items()}
