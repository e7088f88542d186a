"""A tokenizer without BOS (Qwen2): window building, passkey and the harness bridge, on a Qwen2Tokenizer built
and saved locally (nothing downloaded) and a tiny Llama with its vocabulary."""

from __future__ import annotations

import json

import pytest
import torch

from ropelab.config import EvalConfig
from ropelab.data.corpus import CorpusReader
from ropelab.data.tokenizer import load_tokenizer
from ropelab.eval import zoo
from ropelab.eval.passkey import QUESTION, TASK, build_prompt, min_prompt_length
from ropelab.eval.perplexity import sliding_perplexity
from ropelab.rope.adapter import rope_basics
from tests.eval.local_tokenizers import qwen2_style_tokenizer

TEXT = " ".join(f"{TASK} The sun is yellow and {n} birds sing. {QUESTION} {n * 7}." for n in range(60))


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    """The tokenizer as ropelab loads it from a model directory, and a tiny Llama over its vocabulary."""
    from transformers import LlamaConfig, LlamaForCausalLM

    directory = tmp_path_factory.mktemp("qwen2-style")
    qwen2_style_tokenizer(directory)
    tokenizer = load_tokenizer(directory)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                         head_dim=16, max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
                                         bos_token_id=None, eos_token_id=tokenizer.eos_token_id)).eval()
    return tokenizer, model


@pytest.fixture
def corpus(tmp_path, qwen):
    tokenizer, _ = qwen
    (tmp_path / "test.jsonl").write_text("".join(json.dumps({"name": f"d{i}", "source": "s", "text": TEXT[i * 50:]})
                                                 + "\n" for i in range(3)))
    return CorpusReader(tmp_path)


@pytest.mark.parametrize("protocol", ["truncated", "sliding"])
def test_held_out_windows_and_perplexity_without_bos(qwen, corpus, protocol):
    from ropelab.tasks.evaluate import held_out_windows

    tokenizer, model = qwen
    assert tokenizer.bos_token_id is None
    cfg = EvalConfig(num_windows=3, protocol=protocol, stride=16)
    data = held_out_windows(corpus, tokenizer, cfg, [32, 64])
    docs = [tokenizer.encode(d.text) for d in corpus.documents("test", "evaluate")]
    basics = rope_basics(model.config)
    cells = zoo.evaluate_ppl_grid(model, basics, {"none": zoo.baseline("none")}, data, bos="none")
    assert all(c.result.bos == "none" and "no BOS" in c.result.describe() for c in cells)
    if protocol == "truncated":
        assert data[32].shape == (3, 32) and all(tuple(row[:5].tolist()) in {tuple(d[i: i + 5]) for d in docs
                                                                              for i in range(len(d))}
                                                 for row in data[32])
        assert cells[0].result.tokens == 3 * 31
    else:  # whole documents, each token after its document's first scored once
        result = sliding_perplexity(model, data[64])
        assert result.tokens == sum(len(d) - 1 for d in docs) and result.documents == 3


def test_passkey_without_bos(qwen):
    tokenizer, model = qwen
    length = min_prompt_length(tokenizer) + 20
    prompt = build_prompt(tokenizer, length, 0.5, 31337)
    assert len(prompt.ids) == length and tokenizer.decode(prompt.ids).startswith(TASK)
    results = zoo.evaluate_passkey_grid(model, tokenizer, rope_basics(model.config), {"none": zoo.baseline("none")},
                                        [length], [0.5], 2, torch.Generator().manual_seed(0))
    assert len(results["none"]) == 4 and sum(r.control for r in results["none"]) == 2
    assert all(isinstance(r.continuation, str) for r in results["none"])


def test_harness_bridge_conditions_an_empty_context_on_eos(qwen):
    pytest.importorskip("lm_eval", reason="lm-evaluation-harness not installed: pip install -e '.[eval]'")
    from lm_eval.api.instance import Instance

    from ropelab.eval.harness import context_ids, continuation_logprob, harness_lm

    tokenizer, model = qwen
    eos = tokenizer.eos_token_id
    assert context_ids(tokenizer, "") == [eos] and context_ids(tokenizer, "The sun")[0] != eos
    lm = harness_lm(model, tokenizer)

    def request(kind, args):
        return Instance(request_type=kind, doc={}, arguments=args, idx=0)

    continuation = tokenizer.encode(" The sun is yellow.")
    (empty,) = lm.loglikelihood([request("loglikelihood", ("", " The sun is yellow."))])
    (rolling,) = lm.loglikelihood_rolling([request("loglikelihood_rolling", (" The sun is yellow.",))])
    assert empty == continuation_logprob(model, [eos], continuation) and rolling == pytest.approx(empty[0])
    (text,) = lm.generate_until([request("generate_until", ("", {"max_gen_toks": 3, "until": []}))])
    assert isinstance(text, str)
