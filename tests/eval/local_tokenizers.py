"""HF tokenizers built in memory from the `tokenizers`/transformers classes (nothing downloaded)."""

from __future__ import annotations

import json

from ropelab.data.tokenizer import HFTokenizer
from ropelab.eval.passkey import FILLER, NEEDLE, QUESTION, TASK

WORDS = ("There is an important info hidden inside a lot of irrelevant text Find it and memorize them I will quiz "
         "you about the information there The grass green . sky blue sun yellow Here we go back again pass key "
         "Remember What ? [UNK] <s> </s>").split()


def word_level_tokenizer(digits: bool = True) -> HFTokenizer:
    """Whole words, digits one by one, BOS <s>. Its decoder joins tokens with spaces, so it spells 48213 as
    "4 8 2 1 3"; without digits it cannot spell a key at all."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = WORDS + (list("0123456789") if digits else [])
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Digits(True)])
    return HFTokenizer(PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>",
                                               unk_token="[UNK]"))


def qwen2_style_tokenizer(directory=None) -> HFTokenizer:
    """transformers' Qwen2Tokenizer (byte-level BPE, Qwen2's pre-tokenizer, no BOS, EOS <|endoftext|>) on a
    vocabulary trained here on the passkey text. With ``directory`` it is saved there and loaded back through
    AutoTokenizer, as ropelab loads a model directory's tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, Qwen2Tokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator([TASK, FILLER, NEEDLE.format(key=48213), QUESTION, " ".join(map(str, range(200)))] * 4,
                            trainer)
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in json.loads(bpe.to_str())["model"]["merges"]]
    inner = Qwen2Tokenizer(vocab=bpe.get_vocab(), merges=merges)
    if directory is not None:
        inner.save_pretrained(directory)
        inner = AutoTokenizer.from_pretrained(directory)
    assert inner.bos_token_id is None and inner.eos_token_id is not None  # what makes it Qwen2-style
    return HFTokenizer(inner)
