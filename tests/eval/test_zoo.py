"""The method zoo on a tiny random model: per-length scales, identical windows, reports."""

from __future__ import annotations

import pytest
import torch

from ropelab.errors import RopelabError
from ropelab.eval import zoo
from ropelab.eval.perplexity import sliding_set, truncated_windows
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


def sliding_data(docs, lengths, stride):
    return {n: sliding_set(docs, n, stride, 256) for n in lengths}


def test_settings_that_compute_the_same_rope_share_one_evaluation(setup):
    """At L every baseline at scale 1 is the unscaled RoPE; with windows of exactly n tokens dynamic NTK is NTK at
    n/L. Each is evaluated once. Where forwards vary in length (sliding windows, the last one shorter), dynamic
    keeps its own beyond L (at L every window is ≤ L: unscaled, shared)."""
    model, basics, windows = setup
    names = ("none", "pi", "ntk", "dynamic")
    docs = [torch.randint(0, 256, (5 * L,), generator=torch.Generator().manual_seed(i)).tolist() for i in range(2)]
    forwards = []
    hook = model.register_forward_pre_hook(lambda *_: forwards.append(1))
    try:
        def count(methods, data):
            forwards.clear()
            zoo.evaluate_ppl_grid(model, basics, methods, data)
            return len(forwards)

        def table(methods, data):
            return zoo.ppl_table(zoo.evaluate_ppl_grid(model, basics, methods, data))

        truncated = {n: {n: windows[n]} for n in (L, 2 * L, 4 * L)}
        sliding = {n: sliding_data(docs, [n], L // 2) for n in (L, 2 * L, 4 * L)}
        unit = {(n, p): count({"none": zoo.baseline("none")}, data[n])
                for p, data in (("truncated", truncated), ("sliding", sliding)) for n in (L, 2 * L, 4 * L)}
        every = {n: zoo.baseline(n) for n in names}
        truncated_all = count(every, {n: windows[n] for n in (L, 2 * L, 4 * L)})
        sliding_all = count(every, sliding_data(docs, [L, 2 * L, 4 * L], L // 2))
        result = table(every, {n: windows[n] for n in (L, 2 * L, 4 * L)})
    finally:
        hook.remove()
    assert truncated_all == unit[L, "truncated"] + 3 * unit[2 * L, "truncated"] + 3 * unit[4 * L, "truncated"]
    assert sliding_all == unit[L, "sliding"] + 4 * unit[2 * L, "sliding"] + 4 * unit[4 * L, "sliding"]
    assert all(result[m][L] == result["none"][L] for m in names)
    assert all(result["dynamic"][n] == result["ntk"][n] for n in (2 * L, 4 * L))
    assert result["pi"][2 * L] != result["ntk"][2 * L]  # different RoPEs are still evaluated apart


def test_a_sliding_window_within_L_keeps_a_short_set_apart_from_its_long_only_twin(setup):
    """The reproduced bug (262.16643 vs 262.16688): at 2L the last sliding window of a document can be ≤ L
    tokens, where the short set is in force, so long+short is not long alone there."""
    model, basics, _ = setup
    long = RopeSpec("linear", basics.head_dim, basics.base, factor=4.0)
    short = RopeSpec("linear", basics.head_dim, basics.base, factor=1.5)
    docs = [torch.randint(0, 256, (70,), generator=torch.Generator().manual_seed(i)).tolist() for i in range(2)]
    data = sliding_data(docs, [2 * L], 48)  # windows [0, 63) and [48, 70): BOS + 22 tokens
    assert min(data[2 * L].forward_lengths()) <= L < max(data[2 * L].forward_lengths())
    both = zoo.ppl_table(zoo.evaluate_ppl_grid(model, basics, {"long": zoo.fixed(long),
                                                               "long+short": zoo.fixed(long, short)}, data))
    alone = zoo.ppl_table(zoo.evaluate_ppl_grid(model, basics, {"long+short": zoo.fixed(long, short)}, data))
    assert both["long+short"][2 * L] == alone["long+short"][2 * L] != both["long"][2 * L]
    full = sliding_data([d[: 2 * L - 1] for d in docs], [2 * L], 48)  # one full window each: never ≤ L
    shared = zoo.ppl_table(zoo.evaluate_ppl_grid(model, basics, {"long": zoo.fixed(long),
                                                                 "long+short": zoo.fixed(long, short)}, full))
    assert shared["long+short"][2 * L] == shared["long"][2 * L]


def test_a_setting_that_can_still_switch_is_shared_only_at_an_exact_length(setup):
    """Up to L a short set is in force, but a growing sequence (generation) moves on to the long set."""
    _, basics, _ = setup
    short = RopeSpec("linear", basics.head_dim, basics.base, factor=1.5)
    a, b = (RopeSpec("linear", basics.head_dim, basics.base, factor=f) for f in (4.0, 8.0))
    key = zoo.effective_setting
    assert key((a, short), L, basics, forward_lengths=[L]) == key((b, short), L, basics, forward_lengths=[L])
    assert key((a, short), L, basics) != key((b, short), L, basics)
    for exact in ([2 * L], None):  # beyond L the short set is never used again
        assert key((a, short), 2 * L, basics, forward_lengths=exact) == key((a, None), 2 * L, basics, forward_lengths=exact)
        assert key((a, None), 2 * L, basics, forward_lengths=exact) != key((b, None), 2 * L, basics, forward_lengths=exact)
    # a protocol with a forward of ≤ L tokens (a short last sliding window) uses the short set there
    assert key((a, short), 2 * L, basics, forward_lengths=[L, 2 * L]) != key((a, None), 2 * L, basics,
                                                                           forward_lengths=[L, 2 * L])


def test_the_evaluation_takes_the_yarn_betas_from_its_config():
    from ropelab.config import EvalConfig
    from ropelab.rope.adapter import RopeBasics
    from ropelab.tasks.evaluate import zoo_methods

    basics = RopeBasics(head_dim=64, base=10000.0, original_max_position_embeddings=256)
    cfg = EvalConfig(methods=("yarn",), yarn_beta_fast=128.0, yarn_beta_slow=2.0)
    long, _ = zoo_methods(None, None, cfg, basics, (2048,), (), None)["yarn"](2048, basics)
    assert (long.beta_fast, long.beta_slow) == (128.0, 2.0)


def test_the_critical_dimension_baselines_on_a_tiny_model(setup):
    """NTK-cd and YaRN-cd in the zoo: the critical pair is d_tcd unless given (tiny model: d = 16, θ = 10^4,
    L = 32: pair ⌈8·log_θ(32/2π)⌉ = 2, YaRN's β_slow pair, so yarn_cd is YaRN there), one for all lengths."""
    model, basics, windows = setup
    assert zoo.default_critical_pair(basics) == 2
    methods = {"none": zoo.baseline("none"), "ntk": zoo.baseline("ntk"), "yarn": zoo.baseline("yarn"),
               "ntk_cd": zoo.baseline("ntk_cd"), "yarn_cd": zoo.baseline("yarn_cd"),
               "ntk_cd@1": zoo.baseline("ntk_cd", critical_dim=1), "yarn_cd@5": zoo.baseline("yarn_cd", critical_dim=5)}
    installed = {}

    def record(cell):
        installed[cell.method, cell.result.length] = model.model.rotary_emb.long

    table = zoo.ppl_table(zoo.evaluate_ppl_grid(model, basics, methods, windows, on_cell=record))
    assert all(table[m][L] == pytest.approx(table["none"][L], rel=1e-6) for m in methods)  # s = 1 at L
    spec = installed["ntk_cd", 4 * L]
    assert (spec.method, spec.factor, spec.critical_dim) == ("ntk_cd", 4.0, 2)
    assert spec.exact_factors() == (1.0, 2.0, 4.0, 4.0, 4.0, 4.0, 4.0, 4.0)  # s^(i/2) below pair 2, s from it
    assert installed["ntk_cd@1", 2 * L].critical_dim == 1 and installed["yarn_cd@5", 2 * L].critical_dim == 5
    for n in (2 * L, 4 * L):
        assert table["yarn_cd"][n] == pytest.approx(table["yarn"][n], rel=1e-5)
        assert len({round(table[m][n], 6) for m in ("ntk", "ntk_cd", "ntk_cd@1", "yarn", "yarn_cd@5")}) == 5


def test_the_evaluation_takes_the_critical_dim_from_its_config():
    from ropelab.config import EvalConfig
    from ropelab.rope.adapter import RopeBasics
    from ropelab.tasks.evaluate import zoo_methods

    basics = RopeBasics(head_dim=64, base=10000.0, original_max_position_embeddings=256)
    cfg = EvalConfig(methods=("ntk_cd", "yarn_cd"), critical_dim=7, yarn_beta_fast=128.0, yarn_beta_slow=2.0)
    made = zoo_methods(None, None, cfg, basics, (2048,), (), None)
    ntk_cd, _ = made["ntk_cd"](2048, basics)
    yarn_cd, _ = made["yarn_cd"](2048, basics)
    assert ntk_cd.critical_dim == yarn_cd.critical_dim == 7
    assert (yarn_cd.beta_fast, yarn_cd.beta_slow) == (128.0, None)  # its slow end is the critical pair
    default, _ = zoo.baseline("yarn_cd")(2048, basics)
    assert default.critical_dim == 13  # d_tcd: ⌈32·log_10000(256/2π)⌉ = ⌈12.88⌉
    with pytest.raises(RopelabError, match="critical_dim must be a rotary-pair index in 1..31"):
        zoo.baseline("ntk_cd", critical_dim=32)(2048, basics)
