"""Export → reload in stock transformers (no custom code) → equal logits."""

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
    assert (logits(reloaded, length) - logits(model, length)).abs().max().item() <= 1e-5


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
        assert (logits(reloaded, length) - logits(model, length)).abs().max().item() <= 1e-5


def test_yarn_long_with_longrope_short_becomes_longrope(tiny_llama, tmp_path):
    model = tiny_llama(max_position_embeddings=L)
    yarn = RopeSpec("yarn", HEAD_DIM, BASE, factor=8.0, original_max_position_embeddings=L)
    report, reloaded = export_and_reload(model, tmp_path, yarn, longrope(SHORT))
    assert report.rope_parameters["rope_type"] == "longrope"
    for length in (L, 3 * L):
        assert (logits(reloaded, length) - logits(model, length)).abs().max().item() <= 1e-5


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
    assert (logits(stock, 3 * L) - logits(model, 3 * L)).abs().max().item() <= 1e-5


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
