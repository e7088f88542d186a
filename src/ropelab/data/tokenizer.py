"""Tokenisers: byte-level for the embedded tiny model, a local HF tokenizer directory for real models."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ropelab.errors import RopelabError

DESCRIPTION_FILE = "ropelab_tokenizer.json"


@dataclass(frozen=True)
class ByteTokenizer:
    """UTF-8 bytes 0..255, then BOS, EOS, PAD. Vocabulary 259 (the model pads its embedding to 260)."""

    bos_token_id: int = 256
    eos_token_id: int = 257
    pad_token_id: int = 258
    vocab_size: int = 259

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids if 0 <= int(i) < 256).decode("utf-8", errors="replace")

    def save(self, directory: Path) -> None:
        (directory / DESCRIPTION_FILE).write_text(json.dumps({"type": "byte", "bos_token_id": self.bos_token_id,
                                                               "eos_token_id": self.eos_token_id,
                                                               "pad_token_id": self.pad_token_id}))


class HFTokenizer:
    """A local transformers tokenizer behind the same small interface (no special tokens added by encode)."""

    def __init__(self, tokenizer):
        self.inner = tokenizer
        self.bos_token_id = tokenizer.bos_token_id
        self.eos_token_id = tokenizer.eos_token_id
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.vocab_size = len(tokenizer)

    def encode(self, text: str) -> list[int]:
        return self.inner.encode(text, add_special_tokens=False)

    def decode(self, ids) -> str:
        return self.inner.decode(list(ids), skip_special_tokens=True)

    def save(self, directory: Path) -> None:
        self.inner.save_pretrained(directory)


def load_tokenizer(model_dir: Path):
    """The byte tokenizer when the directory describes one, else the HF tokenizer saved there."""
    description = model_dir / DESCRIPTION_FILE
    if description.exists():
        info = json.loads(description.read_text())
        return ByteTokenizer(info["bos_token_id"], info["eos_token_id"], info["pad_token_id"])
    from transformers import AutoTokenizer

    try:
        return HFTokenizer(AutoTokenizer.from_pretrained(model_dir))
    except (OSError, ValueError) as exc:
        raise RopelabError(f"no tokenizer in {model_dir}: {exc}") from None
