"""Mixed context window training (LongRoPE2 §3.3, arXiv 2502.20082): short documents packed into rows with
per-document positions and attention, mixed with long blocks, in one fine-tuning run.

Reference: microsoft/nnscaler@1585c15 examples/longrope2/data/process.py (``cat``: documents [BOS] text [EOS]
cut to the original context L, concatenated into rows with ``position_ids`` restarting at 0 per document) and
rope_modifier.py (the long factors when max(position_ids) + 1 > L, else the short ones). There, flash-attention
reads document boundaries from the restarting position ids; here an explicit block-diagonal causal mask says
so, which every attention implementation honours. Since every short position stays below L, the rotary
module's length switch (``RopelabRotaryEmbedding``) scores short rows with the original RoPE and long blocks
with the rescaled one, exactly as stock ``longrope`` does with ``short_factor = 1.0``.

Two deliberate differences from the reference: labels never cross documents (the reference's shifted labels
let a document's EOS predict the next one's BOS, across the attention boundary), and a document that does not
fit the rest of a row starts the next row (the reference truncates it): no text is cut except at L.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ropelab.errors import RopelabError
from ropelab.train.data import IGNORE_INDEX, Batch

PADDING = -1  # the document id of padding positions


@dataclass(frozen=True)
class PackedRows:
    """Short documents packed into rows, every tensor (n_rows, row_len): tokens, transformers-style labels,
    per-document position ids, and the document id of every position (PADDING after the last document)."""

    input_ids: torch.Tensor
    labels: torch.Tensor
    position_ids: torch.Tensor
    doc_ids: torch.Tensor

    @property
    def max_position(self) -> int:
        return int(self.position_ids.max())


def _framed(doc: Sequence[int], bos: int, eos: int, max_doc_len: int) -> list[int]:
    """[BOS] doc [EOS] cut to max_doc_len (the reference cuts to the original context: positions stay < L)."""
    return ([bos, *doc, eos])[:max_doc_len]


def _rows_of(framed: list[list[int]], row_len: int) -> list[list[list[int]]]:
    """Greedy first-fit in order: a document that does not fit the rest of the row opens the next row."""
    rows: list[list[list[int]]] = [[]]
    for doc in framed:
        if sum(map(len, rows[-1])) + len(doc) > row_len:
            rows.append([])
        rows[-1].append(doc)
    return [row for row in rows if row]


def _row_tensors(docs: list[list[int]], row_len: int, pad: int) -> tuple[torch.Tensor, ...]:
    """(input_ids, labels, position_ids, doc_ids) of one row, each (row_len,). Each document's first token is
    IGNORE_INDEX in ``labels``: it is never predicted from the document before it."""
    ids = torch.full((row_len,), pad, dtype=torch.long)
    labels = torch.full((row_len,), IGNORE_INDEX, dtype=torch.long)
    positions = torch.zeros(row_len, dtype=torch.long)  # padding at position 0: the row stays on the short path
    doc_ids = torch.full((row_len,), PADDING, dtype=torch.long)
    start = 0
    for index, doc in enumerate(docs):
        end = start + len(doc)
        ids[start:end] = torch.tensor(doc)
        labels[start + 1:end] = ids[start + 1:end]
        positions[start:end] = torch.arange(len(doc))
        doc_ids[start:end] = index
        start = end
    return ids, labels, positions, doc_ids


def pack_short_rows(token_docs: Sequence[Sequence[int]], row_len: int, max_doc_len: int, bos: int, eos: int,
                    pad: int) -> PackedRows:
    """Pack [BOS] doc [EOS] (cut to ``max_doc_len``, normally the original context L) into rows of ``row_len``
    tokens, padding each row's tail with ``pad`` (labels IGNORE_INDEX, attention to itself only).

    The reference packs into rows as long as the long segments (equal tokens per row); any ``row_len >=
    max_doc_len`` works, since positions restart per document.
    """
    if not 2 <= max_doc_len <= row_len:
        raise RopelabError(f"short packing needs 2 <= max_doc_len <= row_len, got max_doc_len {max_doc_len}, "
                           f"row_len {row_len}")
    framed = [_framed(doc, bos, eos, max_doc_len) for doc in token_docs]
    rows = _rows_of(framed, row_len)
    if not rows:
        raise RopelabError("no short documents to pack")
    columns = zip(*(_row_tensors(docs, row_len, pad) for docs in rows), strict=True)
    return PackedRows(*(torch.stack(column) for column in columns))


def block_causal_mask(doc_ids: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The additive 4-D mask (rows, 1, q, k) for ``doc_ids`` (rows, seq): 0 where position q may attend to k
    (same document, k <= q), the dtype's minimum elsewhere. A padding position attends to itself only, so no
    query row is fully masked (softmax over nothing is NaN). Additive, not bool: transformers (5.23,
    masking_utils._preprocess_mask_arguments) passes a 4-D mask through as given, and eager attention adds it
    to the scores, while sdpa takes either."""
    seq = doc_ids.shape[-1]
    causal = torch.ones(seq, seq, dtype=torch.bool, device=doc_ids.device).tril()
    same_doc = (doc_ids[:, :, None] == doc_ids[:, None, :]) & (doc_ids[:, :, None] != PADDING)
    allowed = (same_doc & causal) | torch.eye(seq, dtype=torch.bool, device=doc_ids.device)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=doc_ids.device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)[:, None]


def short_batch(rows: PackedRows, index: torch.Tensor, mask_dtype: torch.dtype = torch.float32) -> Batch:
    """The micro-batch of packed rows ``index``: per-document positions, block-diagonal mask, labels."""
    doc_ids = rows.doc_ids[index]
    return Batch(rows.input_ids[index], rows.labels[index], rows.position_ids[index],
                 block_causal_mask(doc_ids, mask_dtype), int((doc_ids != PADDING).sum()))


class MixedBatches:
    """The mixture sampler: each micro-batch is long (``long_batch_size`` random rows of ``long_blocks``, plain
    causal attention) with probability ``long_fraction``, else short (``short_batch_size`` random packed rows).

    ``long_fraction`` is the expected share of MICRO-BATCHES that are long; ``long_fraction_for_tokens``
    converts a share of tokens (the paper mixes data by tokens). Stateless apart from the generator the caller
    passes (the training loop's, saved in its checkpoint), so a resumed run draws the same batches.
    """

    def __init__(self, short: PackedRows, long_blocks: torch.Tensor, long_fraction: float, long_batch_size: int,
                 short_batch_size: int, mask_dtype: torch.dtype = torch.float32):
        if not 0.0 <= long_fraction <= 1.0:
            raise RopelabError(f"long_fraction must be in [0, 1], got {long_fraction}")
        if long_batch_size < 1 or short_batch_size < 1:
            raise RopelabError(f"batch sizes must be >= 1, got long {long_batch_size}, short {short_batch_size}")
        self.short, self.long_blocks, self.long_fraction = short, long_blocks, long_fraction
        self.long_batch_size, self.short_batch_size, self.mask_dtype = long_batch_size, short_batch_size, mask_dtype

    def __call__(self, generator: torch.Generator) -> Batch:
        # the kind too comes from the caller's generator: a resumed run makes the same choices
        is_long = bool(torch.rand((), generator=generator) < self.long_fraction)
        if is_long:
            index = torch.randint(0, self.long_blocks.shape[0], (self.long_batch_size,), generator=generator)
            return Batch(self.long_blocks[index])
        index = torch.randint(0, self.short.input_ids.shape[0], (self.short_batch_size,), generator=generator)
        return short_batch(self.short, index, self.mask_dtype)


def long_fraction_for_tokens(token_share: float, long_tokens: int, short_tokens: int) -> float:
    """The micro-batch share giving an expected ``token_share`` of long tokens, when a long micro-batch holds
    ``long_tokens`` and a short one ``short_tokens`` (p·long / (p·long + (1 − p)·short) = token_share)."""
    if not 0.0 <= token_share <= 1.0 or long_tokens < 1 or short_tokens < 1:
        raise RopelabError(f"token_share must be in [0, 1] and token counts >= 1, got {token_share}, "
                           f"{long_tokens}, {short_tokens}")
    return token_share * short_tokens / (token_share * short_tokens + (1 - token_share) * long_tokens)
