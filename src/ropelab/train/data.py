"""Packing documents into fixed-length training blocks and sampling batches with an explicit generator."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

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
