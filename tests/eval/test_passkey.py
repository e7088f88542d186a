"""Passkey prompts: exact token counts and needle positions for byte-level and HF tokenizers."""

from __future__ import annotations

import pytest
import torch

from ropelab.data.tokenizer import ByteTokenizer, HFTokenizer
from ropelab.errors import RopelabError
from ropelab.eval.passkey import (
    NEEDLE,
    QUESTION,
    PasskeyResult,
    accuracy_table,
    build_prompt,
    first_integer,
    min_prompt_length,
    random_key,
)


def word_level_tokenizer():
    """A local HF tokenizer built in memory (nothing downloaded)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = "The grass is green . sky blue sun yellow Here we go There and back again pass key Remember it " \
            "What ? 0 1 2 3 4 5 6 7 8 9 [UNK] <s> </s>".split()
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Digits(True)])
    return HFTokenizer(PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>",
                                               unk_token="[UNK]"))


@pytest.mark.parametrize("make", [ByteTokenizer, word_level_tokenizer])
@pytest.mark.parametrize("length", [256, 1000])
@pytest.mark.parametrize("depth", [0.0, 0.37, 1.0])
def test_prompt_has_exact_length_and_needle_where_asked(make, length, depth):
    tok = make()
    prompt = build_prompt(tok, length, depth, 48213)
    assert len(prompt.ids) == length
    needle_ids = prompt.ids[prompt.needle_start: prompt.needle_start + prompt.needle_length]
    assert needle_ids == tok.encode(NEEDLE.format(key=48213))
    assert prompt.ids[-len(tok.encode(QUESTION)):] == tok.encode(QUESTION)
    filler = length - 1 - prompt.needle_length - len(tok.encode(QUESTION))
    assert prompt.needle_start - 1 == round(depth * filler)


def test_too_short_and_bad_depth_are_clear_errors():
    tok = ByteTokenizer()
    with pytest.raises(RopelabError, match="shorter than the needle"):
        build_prompt(tok, min_prompt_length(tok) - 1, 0.5, 12345)
    assert len(build_prompt(tok, min_prompt_length(tok), 0.5, 12345).ids) == min_prompt_length(tok)
    with pytest.raises(RopelabError, match="depth"):
        build_prompt(tok, 500, 1.5, 12345)


def test_answer_parsing_and_accuracy_table():
    assert first_integer(" 48213. Remember") == 48213 and first_integer("no digits") is None
    results = [PasskeyResult(256, 0.1, 5, 5, ""), PasskeyResult(256, 0.1, 6, 7, ""), PasskeyResult(512, 0.1, 1, 1, "")]
    assert accuracy_table(results) == {256: {0.1: 0.5}, 512: {0.1: 1.0}}


def test_keys_come_from_the_generator():
    keys = [random_key(torch.Generator().manual_seed(9)) for _ in range(2)]
    assert keys[0] == keys[1] and 10_000 <= keys[0] < 100_000
