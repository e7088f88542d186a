"""Plots people would rather look at than read. Headless (Agg) so they work on servers and in CI."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_effective_scale(curves: Mapping[str, Sequence[float]], path: str | Path, title: str) -> Path:
    """Per-dimension effective scale θ_i / inv_freq_i, one line per method (log y)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for name, values in curves.items():
        ax.plot(range(len(values)), list(values), label=name, linewidth=1.6)
    ax.set_yscale("log")
    ax.set_xlabel("rotary dimension i (0 = highest frequency)")
    ax.set_ylabel("effective scale θᵢ / inv_freqᵢ (λᵢ)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
