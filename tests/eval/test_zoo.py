"""The method zoo on a tiny random model: per-length scales, identical windows, reports."""

from __future__ import annotations

import pytest
import torch

from ropelab.errors import RopelabError
from ropelab.eval import zoo
from ropelab.eval.perplexity import truncated_windows
from ropelab.rope.adapter import rope_basics
from ropelab.rope.registry import RopeSpec

L = 32


@pytest.fixture(scope="module")
def setup():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=260, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=2, head_dim=16,
                                         max_position_embeddings=L, attn_implementation="sdpa")).eval()
    docs = [torch.randint(0, 256, (2000,), generator=torch.Generator().manual_seed(i)).tolist() for i in range(2)]
    windows = {n: truncated_windows(docs, n, 4, 256, torch.Generator().manual_seed(0)) for n in (L, 2 * L, 4 * L)}
    return model, rope_basics(model.config), windows


def test_grid_scales_per_length(setup):
    model, basics, windows = setup
    methods = {name: zoo.baseline(name) for name in ("none", "pi", "ntk", "yarn", "dynamic")}
    installed = {}

    def record(cell):
        installed[cell.method, cell.result.length] = model.model.rotary_emb.long

    cells = zoo.evaluate_ppl_grid(model, basics, methods, windows, on_cell=record)
    table = zoo.ppl_table(cells)
    assert set(table) == set(methods) and all(set(row) == {L, 2 * L, 4 * L} for row in table.values())
    for name in ("pi", "ntk", "yarn", "dynamic"):  # at 1× every method is the unscaled model
        assert table[name][L] == pytest.approx(table["none"][L], rel=1e-6)
    assert installed["pi", 4 * L].method == "linear" and installed["pi", 4 * L].factor == 4.0
    assert installed["yarn", 2 * L].factor == 2.0 and installed["ntk", 2 * L].factor == 2.0
    dynamic = methods["dynamic"](4 * L, basics)[0]
    assert dynamic.method == "dynamic" and dynamic.factor == 1.0  # one setting; s_eff = l / L comes from the length
    assert table["pi"][4 * L] != table["none"][4 * L]
    assert all(c.result.num_windows == 4 and c.result.protocol == "truncated" for c in cells)
    assert type(model.model.rotary_emb).__name__ == "LlamaRotaryEmbedding"  # the original module is restored


def test_reports(setup):
    model, basics, windows = setup
    cells = zoo.evaluate_ppl_grid(model, basics, {"none": zoo.baseline("none"), "pi": zoo.baseline("pi")},
                                  {n: w for n, w in windows.items() if n <= 2 * L})
    md = zoo.markdown_table(zoo.ppl_table(cells), "caption")
    rows = [line.split("|")[2:-1] for line in md.splitlines()[4:]]
    assert md.startswith("caption") and len(rows) == 2
    for column in zip(*rows, strict=True):  # the smallest value of every length is bold
        values = [float(v.strip(" *")) for v in column]
        assert all(("**" in v) == (float(v.strip(" *")) == min(values)) for v in column)
    csv = zoo.csv_rows(cells, {"data_version": "abc"})
    assert csv.splitlines()[0].startswith("method,length,ppl") and len(csv.splitlines()) == 5 and "abc" in csv


def test_unknown_zoo_method():
    with pytest.raises(RopelabError, match="baselines: none, pi"):
        zoo.baseline("rope-magic")


def test_a_short_set_is_evaluated_only_where_it_is_used(setup):
    """Two settings that differ only in their short set are the same RoPE beyond L: computed once there."""
    model, basics, windows = setup
    long = RopeSpec("linear", basics.head_dim, basics.base, factor=4.0)
    short = RopeSpec("linear", basics.head_dim, basics.base, factor=1.5)
    forwards = []
    hook = model.register_forward_pre_hook(lambda *_: forwards.append(1))
    try:
        def count(methods, lengths):
            forwards.clear()
            cells = zoo.evaluate_ppl_grid(model, basics, methods, {n: windows[n] for n in lengths})
            return len(forwards), zoo.ppl_table(cells)

        alone, _ = count({"long": zoo.fixed(long)}, windows)
        both, table = count({"long": zoo.fixed(long), "long+short": zoo.fixed(long, short)}, windows)
        at_l, _ = count({"long": zoo.fixed(long)}, [L])
    finally:
        hook.remove()
    assert both - alone == at_l  # the second setting cost only its evaluation at L
    assert table["long+short"][L] != table["long"][L]  # where the short set is used, it is evaluated
    assert all(table["long+short"][n] == table["long"][n] for n in (2 * L, 4 * L))


def test_extension_headline_reads_rows_with_int_or_json_string_lengths():
    base = {256: 6.0, 512: 7.0}
    final = {"256": 6.06, "2048": 6.3, "8192": 6.9}  # as after a JSON round trip
    h = zoo.extension_headline(base, final, 256, 8192)
    assert (h.base_at_L, h.final_at_final_length, h.final_at_L) == (6.0, 6.9, 6.06)
    assert h.long_ratio == pytest.approx(1.15) and h.short_change == pytest.approx(0.01)
    with pytest.raises(RopelabError, match="no PPL at length 4096"):
        zoo.extension_headline(base, final, 256, 4096)


def test_settings_that_compute_the_same_rope_share_one_evaluation(setup):
    """At L every baseline at scale 1 is the unscaled RoPE; with windows of exactly n tokens dynamic NTK is NTK at
    n/L. Each is evaluated once. Where forwards vary in length (sliding windows), dynamic keeps its own."""
    model, basics, windows = setup
    names = ("none", "pi", "ntk", "dynamic")
    forwards = []
    hook = model.register_forward_pre_hook(lambda *_: forwards.append(1))
    try:
        def count(methods, lengths, protocol="truncated"):
            forwards.clear()
            cells = zoo.evaluate_ppl_grid(model, basics, methods, {n: windows[n] for n in lengths},
                                          protocol=protocol, stride=L // 2)
            return len(forwards), zoo.ppl_table(cells)

        unit = {(n, p): count({"none": zoo.baseline("none")}, [n], p)[0]
                for n in (L, 2 * L, 4 * L) for p in ("truncated", "sliding")}
        truncated, table = count({n: zoo.baseline(n) for n in names}, [L, 2 * L, 4 * L])
        sliding, _ = count({n: zoo.baseline(n) for n in names}, [L, 2 * L, 4 * L], "sliding")
    finally:
        hook.remove()
    assert truncated == unit[L, "truncated"] + 3 * unit[2 * L, "truncated"] + 3 * unit[4 * L, "truncated"]
    assert sliding == 2 * unit[L, "sliding"] + 4 * unit[2 * L, "sliding"] + 4 * unit[4 * L, "sliding"]
    assert all(table[m][L] == table["none"][L] for m in names)
    assert all(table["dynamic"][n] == table["ntk"][n] for n in (2 * L, 4 * L))
    assert table["pi"][2 * L] != table["ntk"][2 * L]  # different RoPEs are still evaluated apart


def test_a_setting_that_can_still_switch_is_shared_only_at_an_exact_length(setup):
    """Up to L a short set is in force, but a growing sequence (generation) moves on to the long set."""
    _, basics, _ = setup
    short = RopeSpec("linear", basics.head_dim, basics.base, factor=1.5)
    a, b = (RopeSpec("linear", basics.head_dim, basics.base, factor=f) for f in (4.0, 8.0))
    key = zoo.effective_setting
    assert key((a, short), L, basics, exact_length=True) == key((b, short), L, basics, exact_length=True)
    assert key((a, short), L, basics) != key((b, short), L, basics)
    for exact in (True, False):  # beyond L the short set is never used again
        assert key((a, short), 2 * L, basics, exact_length=exact) == key((a, None), 2 * L, basics, exact_length=exact)
        assert key((a, None), 2 * L, basics, exact_length=exact) != key((b, None), 2 * L, basics, exact_length=exact)
