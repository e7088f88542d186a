"""The pipeline headline is the stock export's; the in-memory number stands beside it, labelled, when the export
drops part of the RoPE (n̂, the short-input attention rule)."""

from __future__ import annotations

from ropelab.config import load_config
from ropelab.eval.report import headline_line
from ropelab.eval.zoo import ExtensionHeadline
from ropelab.tasks.home import resolve_config

N_HAT = ("long set: n̂ = 4 un-interpolated start tokens dropped; stock transformers applies the scaled frequencies "
         "to every position (ropelab.rope.modules.install_rope restores n̂)")


def smoke():
    return load_config(resolve_config("smoke"))  # L = 64, final length 512


def test_the_headline_names_the_export_as_stock_transformers_loads_it():
    line = headline_line(smoke(), ExtensionHeadline(4.0, 4.4, 4.2))
    assert line == ("**512 tokens: PPL 4.400, 1.10× the base model's 4.000 at 64; at 64: 4.200 (+5.0%)** (the export "
                    "as stock transformers loads it, held-out windows)")
    assert "in memory" not in line


def test_a_lossy_export_puts_the_in_memory_numbers_beside_it_with_what_the_export_drops():
    line = headline_line(smoke(), ExtensionHeadline(4.0, 4.4, 4.2), ExtensionHeadline(4.0, 4.3, 4.1), [N_HAT])
    stock, in_memory = line.split("; in memory, ")
    assert stock.startswith("**512 tokens: PPL 4.400") and "as stock transformers loads it" in stock
    assert in_memory == ("with what the export drops (long set: n̂ = 4 un-interpolated start tokens dropped): 4.300 "
                         "(1.07×), at 64: 4.100 (+2.5%)")
