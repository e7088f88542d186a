"""Plots people would rather look at than read. Headless (Agg) so they work on servers and in CI."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def display_name(series: str) -> str:
    """A series name as a legend shows it: the zoo's "lambda:extend-4x" (a metric-safe key) as "λ extend-4x"."""
    return series.replace("lambda:", "λ ")


def plot_effective_scale(curves: Mapping[str, Sequence[float]], path: str | Path, title: str) -> Path:
    """Per-dimension effective scale θ_i / inv_freq_i, one line per method (log y)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, values in curves.items():
        ax.plot(range(len(values)), list(values), label=display_name(name), linewidth=1.6)
    ax.set_yscale("log")
    ax.set_xlabel("rotary dimension i (0 = highest frequency)")
    ax.set_ylabel("effective scale θᵢ / inv_freqᵢ (λᵢ)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    _legend_beside(ax)
    return _save(fig, path, plt)


def plot_ppl_vs_length(curves: Mapping[str, Mapping[int, float]], path: str | Path, title: str,
                       original_length: int | None = None) -> Path:
    """Perplexity against evaluation length, one line per method, log y (and log x)."""
    return _save(ppl_figure(curves, title, original_length), path, _pyplot())


def ppl_figure(curves: Mapping[str, Mapping[int, float]], title: str, original_length: int | None = None):
    """The figure of ``plot_ppl_vs_length``: the evaluated lengths as x ticks, the legend beside the axes."""
    plt = _pyplot()
    from matplotlib.ticker import NullLocator

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, by_length in curves.items():
        lengths = sorted(by_length)
        ax.plot(lengths, [by_length[n] for n in lengths], marker="o", label=display_name(name), linewidth=1.6)
    if original_length:
        ax.axvline(original_length, color="grey", linestyle=":", label=f"pretrained length {original_length}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    evaluated = sorted({n for by_length in curves.values() for n in by_length})
    ax.set_xticks(evaluated, [str(n) for n in evaluated])  # the evaluated lengths, not powers of two
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel("evaluation length (tokens)")
    ax.set_ylabel("perplexity")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    _legend_beside(ax)
    return fig


def plot_passkey_heatmap(cells: Sequence, control, path: str | Path, title: str) -> Path:
    """Passkey accuracy by length (rows) × needle depth (columns), each cell annotated with correct/trials;
    the positive control (needle right before the question) under the title. ``cells``: PasskeyCell-like
    (length, depth, correct, trials, accuracy); ``control``: one such cell or None."""
    plt = _pyplot()
    lengths = sorted({c.length for c in cells})
    depths = sorted({c.depth for c in cells})
    by_key = {(c.length, c.depth): c for c in cells}
    grid = [[by_key[n, d].accuracy if (n, d) in by_key else float("nan") for d in depths] for n in lengths]
    fig, ax = plt.subplots(figsize=(1.3 * len(depths) + 3, 0.55 * len(lengths) + 2.2))
    image = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
    ax.set_xticks(range(len(depths)), [f"{d:.0%}" for d in depths])
    ax.set_yticks(range(len(lengths)), [str(n) for n in lengths])
    for i, n in enumerate(lengths):
        for j, d in enumerate(depths):
            if (n, d) in by_key:
                c = by_key[n, d]
                ax.text(j, i, f"{c.accuracy:.0%}\n{c.correct}/{c.trials}", ha="center", va="center", fontsize=8)
    ax.set_xlabel("needle depth")
    ax.set_ylabel("prompt length (tokens)")
    note = (f"control (needle before the question, {control.length} tokens): {control.correct}/{control.trials}"
            if control is not None else "no control trials")
    ax.set_title(f"{title}\n{note}", fontsize=10)
    fig.colorbar(image, ax=ax, label="accuracy")
    return _save(fig, path, plt)


def plot_retrieval_by_stage(rows: Mapping[str, Mapping[int, object]], path: str | Path, title: str) -> Path:
    """Passkey accuracy of every stage's output (rows, ``model:method``) × prompt length (columns), pooled over
    depths, each cell annotated with correct/trials; lengths a row did not score stay blank."""
    plt = _pyplot()
    lengths = sorted({n for row in rows.values() for n in row})
    names = list(rows)
    grid = [[rows[r][n].accuracy if n in rows[r] else float("nan") for n in lengths] for r in names]
    fig, ax = plt.subplots(figsize=(1.1 * len(lengths) + 4, 0.45 * len(names) + 2.0))
    image = ax.imshow(grid, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
    ax.set_xticks(range(len(lengths)), [str(n) for n in lengths])
    ax.set_yticks(range(len(names)), names)
    for i, r in enumerate(names):
        for j, n in enumerate(lengths):
            if n in rows[r]:
                c = rows[r][n]
                ax.text(j, i, f"{c.accuracy:.0%}\n{c.correct}/{c.trials}", ha="center", va="center", fontsize=7)
    ax.set_xlabel("prompt length (tokens)")
    ax.set_title(title, fontsize=10)
    fig.colorbar(image, ax=ax, label="accuracy")
    return _save(fig, path, plt)


def _legend_beside(ax) -> None:
    """The legend outside the axes, right of them: it never covers a curve (saved with a tight bounding box)."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=8, frameon=False)


def _save(fig, path: str | Path, plt) -> Path:
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")  # tight: the legend beside the axes is kept
    plt.close(fig)
    return path


def plot_search_curves(seeds: Mapping[str, Sequence[float]], best_per_generation: Sequence[Sequence[float]],
                       path: str | Path, title: str) -> Path:
    """λ of the best candidate of every generation (light → dark) against the seeds (dashed)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    colours = plt.cm.viridis([i / max(1, len(best_per_generation) - 1) for i in range(len(best_per_generation))])
    for generation, (values, colour) in enumerate(zip(best_per_generation, colours, strict=True)):
        last = generation == len(best_per_generation) - 1
        ax.plot(range(len(values)), list(values), color=colour, linewidth=2.4 if last else 0.8,
                label=f"best, generation {generation}" if last or generation == 0 else None)
    for name, values in seeds.items():
        ax.plot(range(len(values)), list(values), linestyle="--", linewidth=1.2, label=f"seed {name}")
    ax.set_xlabel("rotary dimension i (0 = highest frequency)")
    ax.set_ylabel("rescale factor λᵢ")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    _legend_beside(ax)
    return _save(fig, path, plt)


def plot_clex_basis(learned: Mapping[int, Sequence[float]], ntk: Mapping[int, Sequence[float]],
                    base: Sequence[float], path: str | Path, title: str) -> Path:
    """CLEX's learned frequency basis against the NTK-style basis it started from, per scale t (paper Fig. 8):
    inv_freq per rotary dimension (log y); solid = learned, dashed = NTK with α = 2t − 1, black = unscaled."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(range(len(base)), list(base), color="black", linewidth=1.2, label="base (t = 1)")
    colours = plt.get_cmap("viridis")
    for k, t in enumerate(sorted(learned)):
        colour = colours(k / max(1, len(learned) - 1))
        ax.plot(range(len(learned[t])), list(learned[t]), color=colour, linewidth=1.6, label=f"CLEX t = {t}")
        if t in ntk:
            ax.plot(range(len(ntk[t])), list(ntk[t]), color=colour, linewidth=1.0, linestyle="--")
    ax.set_yscale("log")
    ax.set_xlabel("rotary dimension i (0 = highest frequency)")
    ax.set_ylabel("inverse frequency (dashed: NTK-style, α = 2t − 1)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    _legend_beside(ax)
    return _save(fig, path, plt)


def plot_ruler(table: Mapping[str, Mapping[int, float]], path: str | Path, title: str,
               original_length: int | None = None) -> Path:
    """RULER score (0–1) against evaluation length, one line per task (log-2 x); tasks with no scored length
    (every cell skipped) are left out: the table says why."""
    plt = _pyplot()
    from matplotlib.ticker import NullLocator

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for task, by_length in table.items():
        lengths = sorted(by_length)
        if lengths:
            ax.plot(lengths, [by_length[n] for n in lengths], marker="o", label=task, linewidth=1.6)
    if original_length:
        ax.axvline(original_length, color="grey", linestyle=":", label=f"pretrained length {original_length}")
    evaluated = sorted({n for by_length in table.values() for n in by_length})
    if evaluated:
        ax.set_xscale("log", base=2)
        ax.set_xticks(evaluated, [str(n) for n in evaluated])
        ax.xaxis.set_minor_locator(NullLocator())
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("evaluation length (tokens)")
    ax.set_ylabel("score (string match)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    _legend_beside(ax)
    return _save(fig, path, plt)
