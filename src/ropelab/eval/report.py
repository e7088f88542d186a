"""Reports of composed runs: the CLEX comparison and the pipeline summary (Markdown), from typed artifacts."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ropelab.artifacts import (
    DataArtifact,
    EvalArtifact,
    ExportArtifact,
    ModelArtifact,
    Record,
    SearchArtifact,
    ShortChoice,
)
from ropelab.config import RunConfig
from ropelab.eval.passkey import PasskeyCell
from ropelab.eval.plots import plot_ppl_vs_length, plot_retrieval_by_stage
from ropelab.eval.zoo import ExtensionHeadline, extension_headline
from ropelab.plan import final_length


@dataclass(frozen=True)
class Longrope2Outcome:
    """LongRoPE2 on the base model: its search, the mixed-window fine-tuned model (a stock longrope directory,
    short_factor = 1.0), that model's evaluation, the fine-tuning tokens."""

    search: SearchArtifact
    model: ModelArtifact
    report: EvalArtifact
    tokens: int
    baselines: EvalArtifact | None = None  # base model: NTK/YaRN with and without the searched critical dim


@dataclass(frozen=True)
class PipelineOutcome:
    """Everything the progressive pipeline produced, stage by stage."""

    data: DataArtifact
    base: ModelArtifact
    stage1: dict[float, SearchArtifact]
    finetuned: tuple[ModelArtifact, ModelArtifact]
    stage2: SearchArtifact
    recovery: dict[float, SearchArtifact]
    short_choice: ShortChoice
    clex: ModelArtifact | None
    reports: dict[str, EvalArtifact]
    combined: dict[str, dict[int, float]]
    export: ExportArtifact
    headline: ExtensionHeadline
    durations: tuple[tuple[str, float], ...] = ()
    run_id: str = ""
    summary: str = field(default="", compare=False)
    report_dir: Path | None = None
    in_memory: ExtensionHeadline | None = None  # the in-memory model's, when the stock export drops part of it
    longrope2: Longrope2Outcome | None = None  # pipeline.longrope2: LongRoPE2 beside the progressive recipe
    progressive_tokens: int = 0  # the progressive recipe's fine-tuning tokens (the v1-vs-v2 comparison's budget)

    def record(self) -> Record:
        """The parent run: headline (the stock export's; the in-memory model's beside it when the export is lossy)
        and minutes per stage as metrics (MLflow's compare view), summary and plot."""
        metrics = {"headline/final_length_ppl_over_base_at_L": self.headline.long_ratio,
                   "headline/change_at_L": self.headline.short_change,
                   **{f"minutes/{name}": seconds / 60 for name, seconds in self.durations}}
        if self.in_memory is not None:
            metrics |= {"headline/in_memory_final_length_ppl_over_base_at_L": self.in_memory.long_ratio,
                        "headline/in_memory_change_at_L": self.in_memory.short_change}
        files = ((self.report_dir / "summary.md", ""), (self.report_dir / "every_stage_ppl_vs_length.png", "plots"))
        if self.report_dir and (self.report_dir / RETRIEVAL_PLOT).exists():  # beside summary.md: its link works
            files += ((self.report_dir / RETRIEVAL_PLOT, ""),)
        # the MLflow run's description (mlflow.note.content) is the summary: the headline first, readable in the UI
        tags = {"export.path": str(self.export.path), "mlflow.note.content": self.summary}
        return Record(metrics, tags=tags, files=files if self.report_dir else ())


def comparison_markdown(tables: Mapping[str, Mapping[int, float]], cfg: RunConfig, caption: str) -> str:
    lengths = sorted({int(n) for row in tables.values() for n in row})
    lines = [f"{caption} ({protocol_words(cfg.eval)})", "",
             "| model | " + " | ".join(map(str, lengths)) + " |", "|---|" + "---:|" * len(lengths)]
    for name, row in tables.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[n]:.3f}" if n in row else "–" for n in lengths) + " |")
    return "\n".join(lines) + "\n"


def protocol_words(e) -> str:
    """The PPL protocol of an eval config in words: how much text, which windows, where BOS went."""
    if e.protocol == "truncated":
        return f"{e.num_windows} {e.split} windows per length, truncated, BOS first where the tokenizer has one"
    bos = "BOS on every window" if e.sliding_bos == "every_window" else "BOS before each document only"
    return f"{e.num_windows} whole {e.split} documents, sliding windows, stride {e.stride}, {bos}"


def clex_caption(cfg: RunConfig) -> str:
    return f"CLEX (max_t {cfg.clex.max_t}) vs PI fine-tuned on the same tokens: held-out PPL"


def stage_times_markdown(durations) -> str:
    """Wall time per stage run, in the order they started (a cache hit shows as seconds)."""
    rows = [f"| {name} | {seconds / 60:.2f} |" for name, seconds in durations]
    total = sum(seconds for _, seconds in durations)
    return "\n".join(["| stage | minutes |", "|---|---:|", *rows, f"| all stages | {total / 60:.2f} |"])


def headline_line(cfg: RunConfig, h: ExtensionHeadline, in_memory: ExtensionHeadline | None = None,
                  lossy: Sequence[str] = ()) -> str:
    """The stock export's numbers (as transformers loads it); when the export drops part of the in-memory RoPE
    (``lossy``: n̂, the short-input attention rule), the in-memory model's beside them, labelled."""
    L = cfg.model.context_length
    line = (f"**{final_length(cfg)} tokens: PPL {h.final_at_final_length:.3f}, {h.long_ratio:.2f}× the base model's "
            f"{h.base_at_L:.3f} at {L}; at {L}: {h.final_at_L:.3f} ({h.short_change:+.1%})** (the export as stock "
            "transformers loads it, held-out windows)")
    if in_memory is None:
        return line
    dropped = "; ".join(note.split(";")[0] for note in lossy)
    return (f"{line}; in memory, with what the export drops ({dropped}): {in_memory.final_at_final_length:.3f} "
            f"({in_memory.long_ratio:.2f}×), at {L}: {in_memory.final_at_L:.3f} ({in_memory.short_change:+.1%})")


def stage_lines(cfg: RunConfig, o: PipelineOutcome) -> list[str]:
    choice = o.short_choice
    lines = [f"- data version `{o.data.fingerprint}`; base model `{o.base.path}`",
             *[f"- search {r:g}× on the base model: test PPL {s.test_ppl['winner']:.3f} "
               f"(best seed {min(v for k, v in s.test_ppl.items() if k != 'winner'):.3f})" for r, s in o.stage1.items()],
             f"- fine-tuned: `{o.finetuned[0].path}` → `{o.finetuned[1].path}` "
             f"(final loss {o.finetuned[1].metrics['finetune/final_loss']:.3f})",
             f"- search {cfg.pipeline.final_ratio:g}× on the fine-tuned model: test PPL {o.stage2.test_ppl['winner']:.3f}",
             *[f"- recovery {r:g}×: test PPL {s.test_ppl['winner']:.3f}" for r, s in o.recovery.items()],
             f"- short factors exported: **{choice.chosen}** (validation PPL at {choice.length}: "
             + ", ".join(f"{k} {v:.3f}" for k, v in choice.validation_ppl.items())
             + (f"; {choice.windows}" if choice.windows else "") + f"; short-input attention: {short_attention(cfg)})"]
    if o.clex is not None:
        m = o.clex.metrics
        lines.append(f"- CLEX (max_t {cfg.clex.max_t}): `{o.clex.path}` (loss {m['clex/first_loss']:.3f} → "
                     f"{m['clex/final_loss']:.3f}, {m['clex/seconds']:.0f} s)")
    lossy = f" (lossy: {'; '.join(o.export.lossy)})" if o.export.lossy else ""
    stock = ", ".join(f"{n}: {v:.3f}" for n, v in sorted(o.export.stock_ppl.items()))
    return [*lines, f"- export: `{o.export.path}`{lossy}; held-out PPL as stock transformers loads it: {stock}"]


def short_attention(cfg: RunConfig) -> str:
    if cfg.pipeline.short_attention == "long":
        return "the long set's attention factor (transformers' longrope)"
    return "1 up to L (the research inference; not in the stock export)"


V1_ROW, V2_ROW = ("finetuned", "progressive_recovery"), ("longrope2", "native")


def mean_passkey(report: EvalArtifact, row: str, length: int) -> float | None:
    """Passkey accuracy at one length, pooled over depths (equal trials per depth), or None if not scored."""
    cells = report.passkey.get(row, {}).get(str(length))
    return sum(cells.values()) / len(cells) if cells else None


def longrope2_markdown(cfg: RunConfig, o: PipelineOutcome) -> str:
    """LongRoPE (progressive) against LongRoPE2 (one search + mixed-window training) at their fine-tuning token
    budgets: PPL, needle PPL and passkey at 8× L and the final length, and the change at L against the base."""
    L, final = cfg.model.context_length, final_length(cfg)
    lengths = sorted({n for n in (8 * L, final) if n <= final})
    base = o.reports["base"].table["none"][L]
    v2 = o.longrope2
    rows = {"LongRoPE (progressive)": (o.reports[V1_ROW[0]], V1_ROW[1], o.progressive_tokens),
            "LongRoPE2 (longrope2 + mixed windows)": (v2.report, V2_ROW[1], v2.tokens)}
    head = " | ".join([f"PPL {n}" for n in lengths] + [f"needle PPL {n}" for n in lengths]
                      + [f"passkey {n}" for n in lengths])
    lines = [f"LongRoPE vs LongRoPE2 on the {cfg.preset} base (held-out {cfg.eval.split}: {protocol_words(cfg.eval)}; "
             f"needle PPL on {cfg.eval.needle_samples} samples per length; passkey pooled over depths "
             f"{', '.join(f'{d:g}' for d in cfg.eval.passkey_depths)}, {cfg.eval.passkey_trials} trials each). "
             f"Change at L = {L} against the base's {base:.3f}.", "",
             f"| model | fine-tuning tokens | PPL {L} (change) | {head} |", "|---|---:|---:|" + "---:|" * 3 * len(lengths)]
    for name, (report, row, tokens) in rows.items():
        ppl, needle = report.table.get(row, {}), report.needle.get(row, {})
        cells = [f"{ppl[n]:.3f}" if n in ppl else "–" for n in lengths]
        cells += [f"{needle[n]:.3f}" if n in needle else "–" for n in lengths]
        cells += ["–" if mean_passkey(report, row, n) is None else f"{mean_passkey(report, row, n):.0%}" for n in lengths]
        at_l = f"{ppl[L]:.3f} ({ppl[L] / base - 1:+.1%})" if L in ppl else "–"
        lines.append(f"| {name} | {tokens} | {at_l} | " + " | ".join(cells) + " |")
    s = v2.search
    lines += ["", f"LongRoPE2 search: critical dim {s.critical_dim} (rotary-pair index) of the sweep "
              + ", ".join(f"{cd}: {v:.3f}" for cd, v in sorted(s.sweep.items()))
              + f" ({s.fitness} fitness, validation); test {s.fitness} PPL of the winner {s.test_ppl['winner']:.3f}."]
    if v2.baselines is not None:
        t = v2.baselines.table

        def at(row: str) -> str:
            return " / ".join(f"{t[row][n]:.3f}" if n in t[row] else "–" for n in lengths)

        pairs = [(a, b) for a, b in (("ntk", "ntk_cd"), ("yarn", "yarn_cd")) if a in t and b in t]
        lines.append(f"Critical-dim baselines on the base model (no fine-tuning; critical dim {s.critical_dim}), PPL at "
                     + " / ".join(map(str, lengths)) + ": "
                     + "; ".join(f"{a} {at(a)} → {b} {at(b)}" for a, b in pairs) + ".")
    return "\n".join(lines) + "\n"


def retrieval_rows(reports: Mapping[str, EvalArtifact]) -> dict[str, dict[int, PasskeyCell]]:
    """Passkey cells of every stage's output, pooled over depths: {model:method (a native row: model):
    {length: cell}}, from each report's ``passkey.json`` (the trial counts, not only the accuracies)."""
    rows: dict[str, dict[int, PasskeyCell]] = {}
    for model, report in reports.items():
        path = report.path / "passkey.json"
        if not path.exists():
            continue
        for method, cells in json.loads(path.read_text())["cells"].items():
            pooled: dict[int, list[int]] = {}
            for c in cells:
                pooled.setdefault(c["length"], [0, 0])
                pooled[c["length"]][0] += c["correct"]
                pooled[c["length"]][1] += c["trials"]
            name = model if method == "native" else f"{model}:{method}"
            rows[name] = {n: PasskeyCell(n, math.nan, hit, trials) for n, (hit, trials) in sorted(pooled.items())}
    return rows


def retrieval_caption(cfg: RunConfig) -> str:
    depths = ", ".join(f"{d:g}" for d in cfg.eval.passkey_depths)
    return (f"Passkey retrieval of every stage's output (the LongRoPE/YaRN prompt, keys 1..50000): accuracy "
            f"[Wilson 95% interval] correct/trials, pooled over depths {depths} with {cfg.eval.passkey_trials} "
            f"trials per (length, depth)")


def retrieval_markdown(rows: Mapping[str, Mapping[int, PasskeyCell]], caption: str) -> str:
    lengths = sorted({n for row in rows.values() for n in row})
    lines = [caption, "", "| model:method | " + " | ".join(map(str, lengths)) + " |", "|---|" + "---:|" * len(lengths)]
    for name, row in rows.items():
        cells = []
        for n in lengths:
            if n not in row:
                cells.append("–")
                continue
            low, high = row[n].interval
            cells.append(f"{row[n].accuracy:.0%} [{low:.0%}, {high:.0%}] {row[n].correct}/{row[n].trials}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


RETRIEVAL_PLOT = "every_stage_passkey.png"


def base_retrieval_line(cfg: RunConfig, base: ModelArtifact) -> str:
    """The base model's own retrieval check at L (``score_base``), when it ran."""
    m = base.metrics
    if "passkey/at_L" not in m:
        return ""
    return (f"Base model at L = {cfg.model.context_length}: passkey {m['passkey/at_L']:.0%} "
            f"[{m['passkey/at_L_ci_low']:.0%}, {m['passkey/at_L_ci_high']:.0%}] of {m['passkey/at_L_trials']:.0f} "
            f"prompts (20 keys × depths 0, 0.25, 0.5, 0.75, 1); the same prompts without the needle "
            f"{m['passkey/at_L_no_needle']:.0%} (chance: 1/50000).\n")


def pipeline_summary(cfg: RunConfig, o: PipelineOutcome, zoo_markdown: Mapping[str, str]) -> str:
    """Headline first, then every stage's output, one table of every stage, each zoo, the stage times."""
    lines = [f"# ropelab pipeline: {cfg.preset}", "", headline_line(cfg, o.headline, o.in_memory, o.export.lossy), "",
             *stage_lines(cfg, o), "",
             "## every stage", "", comparison_markdown(o.combined, cfg, "Held-out PPL of every stage's output"), ""]
    retrieval = retrieval_rows(o.reports)
    if retrieval:
        base_line = base_retrieval_line(cfg, o.base)
        lines += ["## retrieval (passkey)", "", f"![passkey accuracy of every stage]({RETRIEVAL_PLOT})", "",
                  *([base_line] if base_line else []), retrieval_markdown(retrieval, retrieval_caption(cfg)), ""]
    if o.longrope2 is not None:
        lines += ["## LongRoPE vs LongRoPE2", "", longrope2_markdown(cfg, o), ""]
    for name, text in zoo_markdown.items():
        lines += [f"## {name} model", "", text, ""]
    return "\n".join([*lines, "## stage times", "", stage_times_markdown(o.durations), ""])


def pipeline_report(cfg: RunConfig, outcome: PipelineOutcome, durations, out: Path) -> PipelineOutcome:
    """Headline, summary.md and the every-stage plot in ``out``; the outcome with them filled in. The headline is
    the stock export's (``export.stock_ppl``); when the export is lossy, the in-memory model's
    (finetuned:progressive_recovery, the same windows) goes beside it."""
    rows, L, final = outcome.combined, cfg.model.context_length, final_length(cfg)
    headline = extension_headline(rows["base:none"], outcome.export.stock_ppl, L, final)
    in_memory = (extension_headline(rows["base:none"], rows["finetuned:progressive_recovery"], L, final)
                 if outcome.export.lossy else None)
    outcome = dataclasses.replace(outcome, headline=headline, in_memory=in_memory, durations=tuple(durations),
                                  report_dir=out)
    zoos = {n: (r.path / "zoo.md").read_text() for n, r in outcome.reports.items()
            if n in ("base", "finetuned", "longrope2", "base-cd")}
    summary = pipeline_summary(cfg, outcome, zoos)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.md").write_text(summary)
    plot_ppl_vs_length(rows, out / "every_stage_ppl_vs_length.png",
                       f"held-out PPL of every stage's output (model:method)\n{protocol_words(cfg.eval)}", L)
    retrieval = retrieval_rows(outcome.reports)
    if retrieval:
        plot_retrieval_by_stage(retrieval, out / RETRIEVAL_PLOT, f"passkey retrieval of every stage's output "
                                f"({cfg.preset}; pooled over depths, {cfg.eval.passkey_trials} trials per length and depth)")
    return dataclasses.replace(outcome, summary=summary)
