"""Export → reload in stock transformers (no custom code) → equal logits.

Where ropelab and transformers compute the same math (every stock type holding the spec as it is), the logits
must be bit-for-bit equal: a tolerance of 1e-5 on this tiny random model let a +0.01 in one λ or a 0.1 %
attention-factor error pass (measured: 2e-6 to 8e-6), so ``test_a_perturbed_export_is_caught`` shows equality
catching both."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from ropelab.errors import RopelabError
from ropelab.rope import RopeSpec
from ropelab.rope.export import EXPORT_RECORD, LossyExportWarning, export_hf, load_export_specs
from ropelab.rope.modules import install_rope

L, HEAD_DIM, BASE = 64, 16, 10000.0
LONG = (1.0, 1.1, 1.3, 1.8, 2.5, 4.0, 6.0, 8.0)
SHORT = (1.0, 1.0, 1.0, 1.05, 1.1, 1.2, 1.3, 1.4)


def logits(model, length: int) -> torch.Tensor:
    ids = torch.randint(0, model.config.vocab_size, (1, length), generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        return model(ids).logits


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a, b)


def longrope(factors, **extra) -> RopeSpec:
    return RopeSpec("longrope", HEAD_DIM, BASE, factor=8.0, original_max_position_embeddings=L,
                    rescale_factors=factors, **extra)


def export_and_reload(model, tmp_path, long, short=None):
    install_rope(model, long, short)
    report = export_hf(model, tmp_path / "export", long, short)
    reloaded = AutoModelForCausalLM.from_pretrained(report.path, attn_implementation="sdpa").eval()
    return report, reloaded


@pytest.mark.parametrize("length", [L // 2, L, L + 1, 4 * L])
def test_longrope_short_and_long_export_reloads_with_equal_logits(tiny_llama, tmp_path, length):
    model = tiny_llama(max_position_embeddings=L)
    report, reloaded = export_and_reload(model, tmp_path, longrope(LONG), longrope(SHORT))
    assert report.rope_parameters["rope_type"] == "longrope"
    assert reloaded.config.max_position_embeddings == 8 * L
    assert same(logits(reloaded, length), logits(model, length))


@pytest.mark.parametrize("spec,rope_type", [
    (RopeSpec("linear", HEAD_DIM, BASE, factor=4.0), "linear"),
    (RopeSpec("ntk", HEAD_DIM, BASE, factor=4.0), "default"),
    (RopeSpec("dynamic", HEAD_DIM, BASE, factor=4.0, original_max_position_embeddings=L), "dynamic"),
    (RopeSpec("yarn", HEAD_DIM, BASE, factor=4.0, original_max_position_embeddings=L), "yarn"),
    (RopeSpec("llama3", HEAD_DIM, BASE, factor=4.0, original_max_position_embeddings=L), "llama3"),
])
def test_single_set_exports_use_the_native_stock_type(tiny_llama, tmp_path, spec, rope_type):
    model = tiny_llama(max_position_embeddings=L)
    report, reloaded = export_and_reload(model, tmp_path, spec)
    assert reloaded.config.rope_parameters["rope_type"] == rope_type
    for length in (L // 2, 3 * L):
        assert same(logits(reloaded, length), logits(model, length))


def test_yarn_long_with_longrope_short_becomes_longrope(tiny_llama, tmp_path):
    model = tiny_llama(max_position_embeddings=L)
    yarn = RopeSpec("yarn", HEAD_DIM, BASE, factor=8.0, original_max_position_embeddings=L)
    report, reloaded = export_and_reload(model, tmp_path, yarn, longrope(SHORT))
    assert report.rope_parameters["rope_type"] == "longrope"
    assert same(logits(reloaded, L), logits(model, L))  # the short set: longrope on both sides
    # YaRN's inverse frequencies become λ = θ / inv_freq and back: float32 rounding only (measured 1.8e-7)
    assert (logits(reloaded, 3 * L) - logits(model, 3 * L)).abs().max().item() <= 1e-6


def test_config_is_stock_transformers(tiny_llama, tmp_path):
    report, _ = export_and_reload(tiny_llama(max_position_embeddings=L), tmp_path, longrope(LONG))
    config = json.loads((report.path / "config.json").read_text())
    assert "auto_map" not in config  # nothing needs trust_remote_code
    assert config["rope_parameters"]["long_factor"] == list(LONG)
    assert config["rope_parameters"]["short_factor"] == list(LONG)  # no short set: long everywhere, as in memory


def test_start_tokens_are_reported_recorded_and_restorable(tiny_llama, tmp_path):
    model = tiny_llama(max_position_embeddings=L)
    long = longrope(LONG, start_tokens=4)
    install_rope(model, long)
    with pytest.warns(LossyExportWarning, match="n̂ = 4"):
        report = export_hf(model, tmp_path / "export", long)
    assert report.lossy and "n̂ = 4" in report.lossy[0]
    record = json.loads((report.path / EXPORT_RECORD).read_text())
    assert record["lossy"] == report.lossy and record["long"]["start_tokens"] == 4
    restored_long, restored_short = load_export_specs(report.path)
    assert restored_long == long and restored_short is None
    stock = AutoModelForCausalLM.from_pretrained(report.path).eval()
    install_rope(stock, restored_long)
    assert same(logits(stock, 3 * L), logits(model, 3 * L))


def test_dynamic_cannot_be_combined_with_a_short_set(tiny_llama, tmp_path):
    model = tiny_llama(max_position_embeddings=L)
    dynamic = RopeSpec("dynamic", HEAD_DIM, BASE, factor=4.0, original_max_position_embeddings=L)
    with pytest.raises(RopelabError, match="dynamic"):
        export_hf(model, tmp_path / "export", dynamic, longrope(SHORT))


def test_failed_export_leaves_no_directory(tiny_llama, tmp_path):
    class Exploding:
        def save_pretrained(self, path):
            raise OSError("disk full")

    model = tiny_llama(max_position_embeddings=L)
    with pytest.raises(OSError, match="disk full"):
        export_hf(model, tmp_path / "export", longrope(LONG), tokenizer=Exploding())
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def bump_factor(params: dict, key: str) -> None:
    params[key][3] += 0.01


@pytest.mark.parametrize("change,lengths", [
    (lambda p: bump_factor(p, "long_factor"), (L + 1, 4 * L)),  # one long λ + 0.01: only beyond L
    (lambda p: bump_factor(p, "short_factor"), (L // 2, L)),  # one short λ + 0.01: only up to L
    (lambda p: p.update(attention_factor=p["attention_factor"] * 1.001), (L // 2, L, L + 1, 4 * L)),  # 0.1 %
])
def test_a_perturbed_export_is_caught(tiny_llama, tmp_path, change, lengths):
    model = tiny_llama(max_position_embeddings=L)
    report, reloaded = export_and_reload(model, tmp_path, longrope(LONG), longrope(SHORT))
    assert all(same(logits(reloaded, n), logits(model, n)) for n in lengths)
    config = json.loads((report.path / "config.json").read_text())
    change(config["rope_parameters"])
    (report.path / "config.json").write_text(json.dumps(config))
    perturbed = AutoModelForCausalLM.from_pretrained(report.path, attn_implementation="sdpa").eval()
    assert not any(same(logits(perturbed, n), logits(model, n)) for n in lengths)


def test_attention_factor_one_up_to_L_is_recorded_lossy_and_restorable(tiny_llama, tmp_path):
    """The research inference's rule (short_attention = one) has no stock form: the export says so, keeps the
    long set exact, and install_rope restores the rule from the record."""
    model = tiny_llama(max_position_embeddings=L)
    long, short = longrope(LONG), longrope(SHORT)
    install_rope(model, long, short, short_attention="one")
    with pytest.warns(LossyExportWarning, match="attention factor 1 up to L"):
        report = export_hf(model, tmp_path / "export", long, short, short_attention="one")
    assert len(report.lossy) == 1 and f"{long.compute()[1]:.4g}" in report.lossy[0]
    record = json.loads((report.path / EXPORT_RECORD).read_text())
    assert record["short_attention"] == "one" and record["lossy"] == report.lossy
    stock = AutoModelForCausalLM.from_pretrained(report.path, attn_implementation="sdpa").eval()
    assert same(logits(stock, 4 * L), logits(model, 4 * L))  # beyond L: the long set, exported exactly
    assert not same(logits(stock, L), logits(model, L))  # up to L: stock applies the long set's factor
    install_rope(stock, long, short, short_attention="one")
    assert same(logits(stock, L), logits(model, L))


def test_unknown_short_attention_rule_is_one_error(tiny_llama, tmp_path):
    with pytest.raises(RopelabError, match="short_attention must be one of long, one"):
        export_hf(tiny_llama(max_position_embeddings=L), tmp_path / "export", longrope(LONG), longrope(SHORT),
                  short_attention="research")
    assert not (tmp_path / "export").exists()


def test_the_config_choices_are_the_modules_rules():
    import typing

    from ropelab.config import ShortAttention
    from ropelab.rope.modules import SHORT_ATTENTION

    assert typing.get_args(ShortAttention) == SHORT_ATTENTION
