"""Packing documents into fixed-length training blocks, sampling batches with an explicit generator, and the
micro-batch the training loop consumes."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch


def pack_documents(token_docs: Sequence[Sequence[int]], seq_len: int, bos: int, eos: int) -> torch.Tensor:
    """Concatenate [BOS] doc [EOS] for every document and cut into blocks, shape (n_blocks, seq_len).

    The reference training code chunks documents to the sequence length with BOS/EOS in the same way; the
    incomplete tail is dropped.
    """
    stream: list[int] = []
    for doc in token_docs:
        stream.append(bos)
        stream.extend(doc)
        stream.append(eos)
    n_blocks = len(stream) // seq_len
    if n_blocks == 0:
        raise ValueError(f"the corpus ({len(stream)} tokens) is shorter than one block of {seq_len}")
    return torch.tensor(stream[: n_blocks * seq_len], dtype=torch.long).view(n_blocks, seq_len)


def random_batches(blocks: torch.Tensor, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Endless batches of random blocks (sampling with replacement, from the generator only)."""
    while True:
        index = torch.randint(0, blocks.shape[0], (batch_size,), generator=generator)
        yield blocks[index]


IGNORE_INDEX = -100  # labels torch's cross_entropy (and transformers' loss) skip


@dataclass(frozen=True)
class Batch:
    """One micro-batch for the training loop, every tensor (rows, seq_len).

    ``labels`` follow transformers' convention (aligned with ``input_ids``; the loss predicts labels[:, 1:] from
    positions [:, :-1]; IGNORE_INDEX is skipped). ``position_ids`` and ``attention_mask`` (a 4-D
    (rows, 1, q, k) additive float mask, see ``ropelab.train.mixed.block_causal_mask``) are None for plain
    causal rows. ``tokens``: real (non-padding) input tokens, the unit the loop counts.
    """

    input_ids: torch.Tensor
    labels: torch.Tensor | None = None
    position_ids: torch.Tensor | None = None
    attention_mask: torch.Tensor | None = None
    tokens: int | None = None

    def to(self, device: torch.device) -> Batch:
        move = lambda t: t.to(device) if t is not None else None  # noqa: E731
        return Batch(move(self.input_ids), move(self.labels), move(self.position_ids), move(self.attention_mask),
                     self.tokens)

    def model_kwargs(self) -> dict:
        """The keyword arguments the model's forward takes besides input_ids (nothing for plain rows)."""
        return {k: v for k, v in (("position_ids", self.position_ids), ("attention_mask", self.attention_mask))
                if v is not None}

    def token_count(self) -> int:
        return self.input_ids.numel() if self.tokens is None else self.tokens
