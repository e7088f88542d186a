"""Held-out windows that share no token with other windows, so a model-selection score is not taken on text a
search was fitted on.

The pipeline's short-set choice (recovery set or long set at L) is scored on validation windows disjoint from
every search's fitness windows: scored on the recovery search's own fitness windows it would favour recovery.
The fitness windows are ``perplexity.truncated_windows`` of the validation split (``tasks.search.windows_for``);
``window_spans`` names the document spans they were cut from, ``disjoint_windows`` cuts windows elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from ropelab.errors import RopelabError
from ropelab.eval.perplexity import _choose, _prefix, _segments

Span = tuple[int, int, int]  # (document, first token, end): tokens [first, end) of a document (BOS not counted)


def window_spans(token_docs: Sequence[Sequence[int]], length: int, count: int, bos: int | None,
                 generator: torch.Generator) -> list[Span]:
    """The spans ``truncated_windows`` (same arguments, a generator in the same state) cuts its rows from, in
    row order."""
    size = length - len(_prefix(bos))
    segments = _segments(token_docs, size)
    return [(d, s, s + size) for d, s in (segments[i] for i in _choose(segments, count, generator,
                                                                        f"windows of {length} tokens"))]


def _overlaps(start: int, end: int, spans: Sequence[tuple[int, int]]) -> bool:
    return any(start < other_end and other_start < end for other_start, other_end in spans)


def disjoint_windows(token_docs: Sequence[Sequence[int]], length: int, count: int, bos: int | None,
                     generator: torch.Generator, taken: Iterable[Span]) -> torch.Tensor:
    """(count, length) windows built as ``truncated_windows`` builds them (BOS + a segment), chosen by the
    generator among the segments sharing no token with any span of ``taken``."""
    head = _prefix(bos)
    size = length - len(head)
    busy: dict[int, list[tuple[int, int]]] = {}
    for doc, start, end in taken:
        busy.setdefault(doc, []).append((start, end))
    free = [(d, s) for d, s in _segments(token_docs, size) if not _overlaps(s, s + size, busy.get(d, ()))]
    if len(free) < count:
        raise RopelabError(f"the validation split has {len(free)} windows of {length} tokens that share no token "
                           f"with the searches' fitness windows; {count} were asked for (add validation documents "
                           "or lower search.num_windows)")
    chosen = _choose(free, count, generator, f"windows of {length} tokens")
    return torch.tensor([[*head, *token_docs[free[i][0]][free[i][1]: free[i][1] + size]] for i in chosen],
                        dtype=torch.long)
