"""Plots: truthful titles, readable λ labels, legends that never cover the data."""

from __future__ import annotations

import pytest

from ropelab.eval.passkey import PasskeyCell
from ropelab.eval.plots import display_name, plot_passkey_heatmap, ppl_figure

CURVES = {"none": {64: 10.0, 128: 30.0, 1024: 900.0}, "lambda:extend-4x": {64: 10.1, 128: 10.5, 1024: 20.0},
          "lambda:extend-8x-searched-2x pipeline-a": {64: 10.2, 128: 10.4, 1024: 12.0}}


def test_the_legend_sits_beside_the_axes_and_names_lambda_series_by_stage():
    fig = ppl_figure(CURVES, "perplexity vs length: fine-tuned model", 64)
    fig.canvas.draw()
    ax = fig.axes[0]
    legend, axes_box = ax.get_legend().get_window_extent(), ax.get_window_extent()
    assert legend.x0 >= axes_box.x1  # entirely right of the plotting area: no curve is covered
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["none", "λ extend-4x", "λ extend-8x-searched-2x pipeline-a", "pretrained length 64"]
    assert ax.get_title() == "perplexity vs length: fine-tuned model"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["64", "128", "1024"]


def test_display_names_and_heatmap(tmp_path):
    assert display_name("lambda:extend-4x") == "λ extend-4x" and display_name("base:pi") == "base:pi"
    cells = [PasskeyCell(256, 0.5, 3, 5), PasskeyCell(512, 0.5, 0, 5)]
    path = plot_passkey_heatmap(cells, PasskeyCell(256, 1.0, 5, 5), tmp_path / "pk.png", "passkey: pi (base model)")
    assert path.read_bytes()[:4] == b"\x89PNG"
    assert cells[0].accuracy == pytest.approx(0.6)
