"""The evaluation applies the pipeline's short-input attention rule: 1 up to L (the research inference) or the
long set's (transformers' longrope); beyond L both are the long set."""

from __future__ import annotations

import torch

from ropelab.config import ModelConfig
from ropelab.eval import zoo
from ropelab.eval.perplexity import truncated_windows
from ropelab.models import build_tiny_llama
from ropelab.rope import RopeSpec
from ropelab.rope.adapter import rope_basics
from ropelab.rope.modules import rotary_module

L = 64


def longrope(factors) -> RopeSpec:
    return RopeSpec("longrope", 16, 10000.0, factor=16.0, original_max_position_embeddings=L, rescale_factors=factors)


def test_the_rule_changes_only_lengths_up_to_L():
    from ropelab.tasks.evaluate import fixed_setting

    model = build_tiny_llama(ModelConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=64, context_length=L), 0).eval()
    basics = rope_basics(model.config)
    long, short = longrope((1.0, 1.5, 2.5, 4.0, 6.0, 9.0, 12.0, 16.0)), longrope((1.0,) * 6 + (1.1, 1.2))
    methods = {rule: fixed_setting(long, short, rule, basics) for rule in ("long", "one")}
    assert methods["one"](L, basics).frequencies(L)[1] == 1.0
    assert methods["long"](L, basics) == (long, short)  # transformers' rule: the spec pair, shared by the zoo
    docs = [torch.randint(0, 256, (2000,), generator=torch.Generator().manual_seed(0)).tolist()]
    windows = {n: truncated_windows(docs, n, 2, 0, torch.Generator().manual_seed(1)) for n in (L, 4 * L)}
    table = zoo.ppl_table(zoo.evaluate_ppl_grid(model, basics, methods, windows))
    assert table["one"][L] != table["long"][L] and table["one"][4 * L] == table["long"][4 * L]
    assert type(rotary_module(model)).__name__ == "LlamaRotaryEmbedding"  # the zoo put the model's own back
