"""Building cos/sin tables from inverse frequencies, honouring LongRoPE's n̂ start tokens.

Layout follows transformers (``LlamaRotaryEmbedding``): ``emb = cat(freqs, freqs)``, so cos/sin have shape
``(batch, seq, head_dim)`` and are multiplied by the attention factor.
"""

from __future__ import annotations

import torch


def rotary_angles(inv_freq: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    """position × inv_freq duplicated to full head_dim, shape (batch, seq, head_dim), float32.

    ``inv_freq`` is (d/2,) for one setting shared by the batch, or (batch, d/2) for one setting per row
    (batched candidate evaluation in the search).
    """
    inv = inv_freq.float()
    inv = inv[None, None, :] if inv.dim() == 1 else inv[:, None, :]
    freqs = position_ids[..., None].float() * inv
    return torch.cat((freqs, freqs), dim=-1)


def _as_column(attention_factor: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor | float:
    """A scalar stays a scalar; a per-row tensor (batch,) becomes (batch, 1, 1) to broadcast over cos/sin."""
    if isinstance(attention_factor, torch.Tensor) and attention_factor.dim() == 1:
        return attention_factor.to(like)[:, None, None]
    return attention_factor


def rotary_cos_sin(
    inv_freq: torch.Tensor,
    attention_factor: float | torch.Tensor,
    position_ids: torch.Tensor,
    *,
    start_tokens: int | torch.Tensor = 0,
    original_inv_freq: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (batch, seq, head_dim), float32.

    Positions < ``start_tokens`` (n̂) use ``original_inv_freq`` and no attention factor: LongRoPE keeps the
    first n̂ tokens un-interpolated (paper §3.2). ``start_tokens`` may be a (batch,) tensor: one n̂ per row.
    """
    emb = rotary_angles(inv_freq, position_ids)
    scale = _as_column(attention_factor, emb)
    cos, sin = emb.cos() * scale, emb.sin() * scale
    per_row = isinstance(start_tokens, torch.Tensor)
    if (per_row and bool((start_tokens > 0).any())) or (not per_row and start_tokens > 0):
        if original_inv_freq is None:
            raise ValueError("start_tokens > 0 needs original_inv_freq")
        original = rotary_angles(original_inv_freq, position_ids)
        limit = start_tokens.to(position_ids.device)[:, None] if per_row else start_tokens
        keep = (position_ids < limit)[..., None]
        cos = torch.where(keep, original.cos(), cos)
        sin = torch.where(keep, original.sin(), sin)
    return cos, sin
