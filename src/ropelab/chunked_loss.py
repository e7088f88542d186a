"""Next-token loss from hidden states, chunk by chunk of positions: never full-vocabulary logits for the whole
sequence (2M tokens × 32k vocab in fp32 ≈ 256 GB; one chunk of LOSS_CHUNK_TOKENS × vocab is bounded).

The model's base (``get_decoder()``: Llama's ``model.model``) gives the final hidden states; the LM head and
the log-softmax run on ``LOSS_CHUNK_TOKENS`` positions at a time. Evaluation runs under ``torch.no_grad``;
training wraps each chunk in a (non-reentrant) checkpoint, so the backward recomputes one chunk's logits at a
time instead of keeping all of them. A model whose logits are not a plain head over the base's hidden states
(logit soft-capping, no decoder/head accessors) falls back to the full forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

LOSS_CHUNK_TOKENS = 4096  # positions × rows whose logits exist at once (fp32: 4096 × 32k vocab = 512 MiB)


def base_and_head(model) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """(base, head) when logits are exactly ``head(base(...).last_hidden_state)``, else None."""
    if getattr(model.config, "final_logit_softcapping", None):
        return None
    get_base, get_head = getattr(model, "get_decoder", None), getattr(model, "get_output_embeddings", None)
    base, head = (get_base() if get_base else None), (get_head() if get_head else None)
    if base is None or head is None or base is model:
        return None
    return base, head


def _positions_per_chunk(rows: int, chunk_tokens: int) -> int:
    return max(1, chunk_tokens // max(1, rows))


def _chunk_nll(head: torch.nn.Module, hidden: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(rows,) summed NLL of one chunk; logits in fp32 as the full path computes them."""
    logits = head(hidden).float()
    return F.cross_entropy(logits.transpose(1, 2), target, reduction="none").sum(dim=1)


def _full_nll(model, inputs: torch.Tensor, score_from: int, **kwargs) -> torch.Tensor:
    logits = model(input_ids=inputs, use_cache=False, **kwargs).logits[:, score_from - 1: -1].float()
    return F.cross_entropy(logits.transpose(1, 2), inputs[:, score_from:], reduction="none").sum(dim=1)


@torch.no_grad()
def chunked_nll(model, inputs: torch.Tensor, score_from: int = 1, chunk_tokens: int = LOSS_CHUNK_TOKENS,
                **kwargs) -> torch.Tensor:
    """Per-row summed NLL (fp32, on the model's device) of the tokens at positions >= score_from, each predicted
    from the previous position; ``chunk_tokens <= 0`` computes the full logits (the reference)."""
    parts = base_and_head(model)
    if parts is None or chunk_tokens <= 0:
        return _full_nll(model, inputs, score_from, **kwargs)
    base, head = parts
    hidden = base(input_ids=inputs, use_cache=False, **kwargs).last_hidden_state
    step = _positions_per_chunk(inputs.shape[0], chunk_tokens)
    total = torch.zeros(inputs.shape[0], dtype=torch.float32, device=hidden.device)
    for s in range(score_from - 1, inputs.shape[1] - 1, step):
        e = min(s + step, inputs.shape[1] - 1)
        total += _chunk_nll(head, hidden[:, s:e], inputs[:, s + 1: e + 1])
    return total


def chunked_mean_loss(model, inputs: torch.Tensor, chunk_tokens: int = LOSS_CHUNK_TOKENS,
                      labels: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
    """The mean next-token cross-entropy (what ``model(labels=labels or inputs).loss`` gives), with gradients;
    each chunk is checkpointed so only one chunk's logits live during the backward too.

    ``labels`` (rows, seq), transformers' convention: aligned with ``inputs``, labels[:, 1:] are predicted from
    positions [:, :-1], -100 is skipped (packed documents, padding); the mean is over the labelled targets.
    Without labels every next token counts.
    """
    targets = inputs[:, 1:] if labels is None else labels[:, 1:]
    parts = base_and_head(model)
    if parts is None or chunk_tokens <= 0:
        return model(input_ids=inputs, labels=inputs if labels is None else labels, use_cache=False, **kwargs).loss
    base, head = parts
    hidden = base(input_ids=inputs, use_cache=False, **kwargs).last_hidden_state
    step = _positions_per_chunk(inputs.shape[0], chunk_tokens)
    total = hidden.new_zeros((), dtype=torch.float32)
    for s in range(0, inputs.shape[1] - 1, step):
        e = min(s + step, inputs.shape[1] - 1)
        total = total + checkpoint(_chunk_nll, head, hidden[:, s:e], targets[:, s:e], use_reentrant=False).sum()
    return total / _labelled(targets)


def _labelled(targets: torch.Tensor) -> int:
    """How many targets count (cross_entropy's ignore_index -100 gives the others 0)."""
    return int((targets != -100).sum())
