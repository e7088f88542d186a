"""The method zoo: evaluate a list of RoPE methods at a list of lengths on the same held-out windows.

Baselines are set for each evaluation length n with the scale s = max(1, n / L) (each method configured to
extend to that length); dynamic NTK is one setting for all lengths (factor 1: s_eff = l / L); a λ set from a
search is fixed. NTK-cd and YaRN-cd (LongRoPE2's critical-dimension baselines) take one critical pair for all
lengths: eval.critical_dim, or the model's theoretical d_tcd. Every number carries method, length, protocol (with its stride and BOS placement) and window
count; every passkey cell its trials, a Wilson interval, and the positive control beside it.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

import torch

from ropelab.errors import RopelabError
from ropelab.eval.passkey import (
    CONTROL_DEPTH,
    PasskeyResult,
    accuracy_table,
    cells_by_length,
    check_scorer,
    control_cell,
    passkey_trial,
    random_key,
)
from ropelab.eval.perplexity import PerplexityResult, SlidingSet, perplexity, sliding_perplexity
from ropelab.rope.adapter import RopeBasics, specs_from_config
from ropelab.rope.modules import install_rope, install_rotary, rotary_for, uninstall_rope
from ropelab.rope.registry import RopeSpec
from ropelab.search.critical import theoretical_critical_pair

SpecPair = tuple[RopeSpec, RopeSpec | None]  # (long, short)
Setting = SpecPair | torch.nn.Module  # specs for the registry, or a whole rotary module (CLEX)


def _scale(length: int, basics: RopeBasics) -> float:
    return max(1.0, length / basics.original_max_position_embeddings)


def default_critical_pair(basics: RopeBasics) -> int:
    """The ntk_cd / yarn_cd default: LongRoPE2's theoretical critical dim d_tcd as a rotary-pair index (the first
    pair whose period exceeds L; YaRN's β_slow = 1 pair, so yarn_cd there is YaRN), at least 1. The real d_rcd,
    lower, comes from a search's sweep or eval.critical_dim."""
    pair = theoretical_critical_pair(basics.head_dim, basics.base, basics.original_max_position_embeddings)
    return max(1, pair)  # cd = 0 leaves no curve to anchor (a model with L < 2π positions)


BASELINES: dict[str, Callable[[int, RopeBasics], RopeSpec]] = {
    "none": lambda n, b: RopeSpec("default", b.head_dim, b.base),
    "pi": lambda n, b: RopeSpec("linear", b.head_dim, b.base, factor=_scale(n, b)),
    "ntk": lambda n, b: RopeSpec("ntk", b.head_dim, b.base, factor=_scale(n, b)),
    "dynamic": lambda n, b: RopeSpec("dynamic", b.head_dim, b.base, factor=1.0,
                                     original_max_position_embeddings=b.original_max_position_embeddings),
    "yarn": lambda n, b: RopeSpec("yarn", b.head_dim, b.base, factor=_scale(n, b),
                                  original_max_position_embeddings=b.original_max_position_embeddings,
                                  beta_fast=32.0, beta_slow=1.0),
    "llama3": lambda n, b: RopeSpec("llama3", b.head_dim, b.base, factor=_scale(n, b),
                                    original_max_position_embeddings=b.original_max_position_embeddings),
    # LongRoPE2's critical-dimension baselines (ropelab.rope.methods): exported as stock longrope factor sets
    "ntk_cd": lambda n, b: RopeSpec("ntk_cd", b.head_dim, b.base, factor=_scale(n, b),
                                    critical_dim=default_critical_pair(b)),
    "yarn_cd": lambda n, b: RopeSpec("yarn_cd", b.head_dim, b.base, factor=_scale(n, b),
                                     original_max_position_embeddings=b.original_max_position_embeddings,
                                     beta_fast=32.0, critical_dim=default_critical_pair(b)),
}


def _with_knobs(spec: RopeSpec, yarn_betas: tuple[float, float], critical_dim: int) -> RopeSpec:
    """The evaluation's knobs on the specs whose method reads them: YaRN's betas, the critical pair (0 keeps
    the default d_tcd). A spec without the field keeps it unset (a method rejects numbers it does not read:
yarn_cd has no β_slow, its slow end is the critical pair)."""
    knobs = {"beta_fast": yarn_betas[0], "beta_slow": yarn_betas[1], "critical_dim": critical_dim or None}
    return spec.replace(**{k: v for k, v in knobs.items() if v is not None and getattr(spec, k) is not None})


def baseline(name: str, yarn_betas: tuple[float, float] = (32.0, 1.0),
             critical_dim: int = 0) -> Callable[[int, RopeBasics], SpecPair]:
    """``yarn_betas``: YaRN's (β_fast, β_slow), eval.yarn_beta_fast/slow (LongRoPE's search.py: 128/2 for Mistral);
    yarn_cd takes β_fast. ``critical_dim``: the ntk_cd / yarn_cd critical pair, eval.critical_dim (0: d_tcd)."""
    if name not in BASELINES:
        raise RopelabError(f"unknown zoo method {name!r}; baselines: {', '.join(BASELINES)}, or native (the "
                           "model's own RoPE); λ sets come as files")
    return lambda n, b: (_with_knobs(BASELINES[name](n, b), yarn_betas, critical_dim), None)


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


def _rope_at(module, length: int) -> tuple:
    inv_freq, attention = module.frequencies(length)
    return inv_freq.numpy().tobytes(), float(attention), module.select(length).start_tokens


def effective_setting(setting: Setting, length: int, basics: RopeBasics, *,
                      forward_lengths: Collection[int] | None = None) -> tuple | None:
    """What the model computes with for inputs of this length, as a comparable key: the frequencies, attention
    factor and n̂ that the installed rotary module uses for them. So settings that differ only where they are not
    used share one evaluation: a short set only matters up to L (the progressive λ with and without recovery
    factors are the same RoPE beyond L), and at L every baseline at scale 1 is the unscaled RoPE.

    ``forward_lengths``: the exact lengths of every forward pass (the PPL protocols run without a cache, so each
    forward computes its RoPE for its own length): the key is what the setting computes at each of them, so a
    sliding protocol's last, shorter window (≤ L: the short set) keeps a long+short setting apart from its
    long-only twin. Without them (generation: a sequence grows from ``length``), a setting whose RoPE can still
    change as it grows (dynamic NTK; a short set up to L, which gives way to the long set beyond it) stands only
    for itself. None for a rotary module (CLEX): never shared."""
    if isinstance(setting, torch.nn.Module):
        return None
    module = rotary_for(*setting, basics)
    if forward_lengths is not None:
        return tuple(_rope_at(module, n) for n in sorted(set(forward_lengths)))
    switches = module.short is not None and length <= module.switch_length
    varies = switches or any(spec is not None and spec.info.length_dependent for spec in setting)
    key = _rope_at(module, length)
    return (key, setting) if varies else key


def install_setting(model, setting: Setting) -> None:
    if isinstance(setting, torch.nn.Module):
        install_rotary(model, setting)
    else:
        install_rope(model, *setting)


@dataclass(frozen=True)
class ZooCell:
    method: str
    result: PerplexityResult


EvalData = torch.Tensor | SlidingSet  # truncated windows (rows × length) or a sliding protocol's documents


def _forward_lengths(data: EvalData) -> set[int]:
    return data.forward_lengths() if isinstance(data, SlidingSet) else {data.shape[1]}


def _ppl(model, data: EvalData, bos: str) -> PerplexityResult:
    return sliding_perplexity(model, data) if isinstance(data, SlidingSet) else perplexity(model, data, bos=bos)


def evaluate_ppl_grid(model, basics: RopeBasics, methods: Mapping[str, Callable[[int, RopeBasics], Setting]],
                      windows: Mapping[int, EvalData], *, bos: str = "every_window",
                      on_cell: Callable[[ZooCell], None] | None = None) -> list[ZooCell]:
    """PPL of every method at every length (the same windows or documents for all methods; the protocol follows
    the data: truncated windows, whose BOS placement ``bos`` names, or a ``SlidingSet``). A setting that computes
    the same RoPE as one already evaluated at every forward length (see ``effective_setting``) reuses its result."""
    cells, done = [], {}
    try:
        for name, make in methods.items():
            for length, data in sorted(windows.items()):
                setting = make(length, basics)
                key = effective_setting(setting, length, basics, forward_lengths=_forward_lengths(data))
                if key is None or (key, length) not in done:
                    install_setting(model, setting)
                    done[(key, length)] = _ppl(model, data, bos)
                cells.append(ZooCell(name, done[(key, length)]))
                if on_cell is not None:
                    on_cell(cells[-1])
    finally:
        uninstall_rope(model)
    return cells


def passkey_keys(lengths: Sequence[int], depths: Sequence[float], trials: int, generator: torch.Generator,
                 control: bool = True) -> dict[tuple[int, float, int, bool], int]:
    """{(length, depth, trial, is control): key}. Grid keys first, so adding the control changes no grid prompt;
    the control is the needle right before the question at the shortest length."""
    keys = {(n, d, t, False): random_key(generator) for n in lengths for d in depths for t in range(trials)}
    if control and lengths:
        keys |= {(min(lengths), CONTROL_DEPTH, t, True): random_key(generator) for t in range(trials)}
    return keys


def evaluate_passkey_grid(model, tokenizer, basics: RopeBasics,
                          methods: Mapping[str, Callable[[int, RopeBasics], Setting]], lengths: Sequence[int],
                          depths: Sequence[float], trials: int, generator: torch.Generator,
                          on_trial: Callable[[str, PasskeyResult], None] | None = None,
                          control: bool = True) -> dict[str, list[PasskeyResult]]:
    """Passkey results per method, grid and positive control; keys are drawn once, so every method answers the
    same prompts. The scorer is checked on every key first (``check_scorer``)."""
    keys = passkey_keys(lengths, depths, trials, generator, control)
    check_scorer(tokenizer, list(keys.values()))
    out: dict[str, list[PasskeyResult]] = {}
    done: dict = {}
    try:
        for name, make in methods.items():
            for (n, d, t, is_control), key in keys.items():
                setting = make(n, basics)
                same = effective_setting(setting, n, basics)
                if same is None or (same, n, d, t, is_control) not in done:
                    install_setting(model, setting)
                    done[(same, n, d, t, is_control)] = passkey_trial(model, tokenizer, n, d, key, control=is_control)
                out.setdefault(name, []).append(done[(same, n, d, t, is_control)])
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
    """One row per cell; every row names its protocol, stride, BOS placement and documents."""
    buffer = io.StringIO()
    fields = ["method", "length", "ppl", "nll", "tokens", "num_windows", "protocol", "stride", "bos", "documents",
              *extra]
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    for cell in cells:
        r = cell.result
        writer.writerow({"method": cell.method, "length": r.length, "ppl": f"{r.ppl:.6f}", "nll": f"{r.nll:.6f}",
                         "tokens": r.tokens, "num_windows": r.num_windows, "protocol": r.protocol,
                         "stride": r.stride or "", "bos": r.bos, "documents": r.documents or "", **extra})
    return buffer.getvalue()


def passkey_tables(results: Mapping[str, Sequence[PasskeyResult]]) -> dict[str, dict[int, dict[float, float]]]:
    return {name: accuracy_table(rs) for name, rs in results.items()}


def _percent_cell(cell) -> str:
    low, high = cell.interval
    return f"{cell.accuracy:.0%} [{low:.0%}, {high:.0%}] {cell.correct}/{cell.trials}"


def passkey_markdown(results: Mapping[str, Sequence[PasskeyResult]], caption: str) -> str:
    """Accuracy per method and length over every depth, with its Wilson 95% interval and trial count, and the
    positive control beside it (a zero table with a passing control is the extension failing; a failing control
    says the model does not retrieve at all)."""
    lengths = sorted({r.length for rs in results.values() for r in rs if not r.control})
    lines = [caption, "", "| method | " + " | ".join(map(str, lengths)) + " | control |",
             "|---|" + "---:|" * (len(lengths) + 1)]
    for method, rs in results.items():
        by_length = cells_by_length([r for r in rs if not r.control])
        control = control_cell(rs)
        row = [_percent_cell(by_length[n]) if n in by_length else "–" for n in lengths]
        lines.append(f"| {method} | " + " | ".join(row) + f" | {_percent_cell(control) if control else '–'} |")
    return "\n".join(lines) + "\n"
