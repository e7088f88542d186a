"""CLEX as a rotary module for any Llama-family transformers model (installed through the adapter).

One pure rule picks the scale from the positions: ``t = ceil(n / L)`` capped at max_t, with n the largest
position + 1. Training positions (``ropelab.clex.train.ClexPositions``) end at t·L − 1, so the same rule
recovers the t drawn for the step; at inference it is the paper's rule. In training (grad enabled) the ODE is
solved from 1 to t with gradients; otherwise the frequency table for every integer t is solved once, and
cos/sin for positions [0, t·L) are rebuilt only when t changes.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ropelab.clex.ode import ClexDynamics, frequency_table, solve
from ropelab.config import LOG_SCALE_RULES
from ropelab.errors import RopelabError
from ropelab.rope.rotary import rotary_cos_sin


class ClexRotaryEmbedding(nn.Module):
    """``forward(x, position_ids) -> (cos, sin)`` like transformers' rotary modules; owns the ODE parameters."""

    def __init__(self, head_dim: int, base: float, original_length: int, max_t: int, *, time_dt: float = 0.01,
                 amplification: int = 1, activation: str = "tanh", log_scale: bool = False,
                 log_scale_rule: str = "reference", backend: str = "rk4", generator: torch.Generator | None = None):
        super().__init__()
        if max_t < 1:
            raise RopelabError(f"clex.max_t must be ≥ 1, got {max_t}")
        if original_length < 2:
            raise RopelabError(f"CLEX needs the original context length L ≥ 2, got {original_length}")
        self.dynamics = ClexDynamics(head_dim, base, amplification, activation, generator)
        self.original_length, self.max_t = int(original_length), int(max_t)
        if log_scale_rule not in LOG_SCALE_RULES:
            raise RopelabError(f"unknown clex.log_scale_rule {log_scale_rule!r}; choose one of {', '.join(LOG_SCALE_RULES)}")
        self.time_dt, self.log_scale, self.backend = float(time_dt), bool(log_scale), backend
        self.log_scale_rule = log_scale_rule
        self._table: torch.Tensor | None = None
        self._cos_sin: tuple[int, torch.Tensor, torch.Tensor] | None = None  # (t, cos, sin) for [0, t·L)

    # ------------------------------------------------------------ the numbers

    def scale_for_length(self, n: float) -> int:
        """t = ceil(n / L), at least 1, capped at max_t."""
        return min(max(1, math.ceil(n / self.original_length - 1e-9)), self.max_t)

    def attention_factor(self, n: float) -> float:
        """Optional log-scaling of the attention logits by r = log(n)/log(L) for n attended tokens (``attended``).

        The reference (DAMO-NLP-SG/CLEX@023709d9, CLEX/llama/modeling_llama_clex.py, LlamaFlashAttention2:
        ``query_states * log(kv_seq_len) / log(max_position_embeddings)``) multiplies the queries only, by r
        unclamped (< 1 below L; a clamp to 1 is commented out there). Here √r multiplies cos/sin, so q and k:
        the logits get exactly r in every forward pass; cached decoding, where the two differ, re-prefills when r
        changes (``greedy_generate``). Rule ``clamped``: max(1, r)."""
        if not self.log_scale:
            return 1.0
        ratio = math.log(n) / math.log(self.original_length)
        return math.sqrt(max(1.0, ratio) if self.log_scale_rule == "clamped" else ratio)

    def attended(self, position_ids: torch.Tensor) -> float:
        """The n of the log-scaling. Reference: the number of keys (its kv_seq_len): a pass from position 0 has
        as many as tokens (a training sequence of seq_len tokens spread over t·L positions has seq_len), a cached
        continuation (first position > 0) has last position + 1. Rule ``clamped``: last position + 1."""
        if self.log_scale_rule == "reference" and int(position_ids[..., 0].max()) == 0:
            return float(position_ids.shape[-1])
        return float(position_ids.max()) + 1

    def table(self) -> torch.Tensor:
        """inv_freq for t = 1 … max_t, (max_t, d/2), solved once (no gradients)."""
        if self._table is None:
            with torch.no_grad():
                self._table = frequency_table(self.dynamics, self.max_t, self.time_dt, self.backend)
        return self._table

    def set_table(self, table: torch.Tensor) -> None:
        """Use a saved frequency table (an export) instead of solving."""
        if table.shape != (self.max_t, self.dynamics.head_dim // 2):
            raise RopelabError(f"CLEX table shape {tuple(table.shape)} != ({self.max_t}, {self.dynamics.head_dim // 2})")
        self._table, self._cos_sin = table.float(), None

    def inverse_frequencies(self, t: int) -> torch.Tensor:
        if t == 1:
            return self.dynamics.log_theta.exp()
        if self.training and torch.is_grad_enabled():
            return solve(self.dynamics, torch.tensor([1.0, float(t)]), self.time_dt, self.backend)[-1].exp()
        return self.table()[t - 1]

    def train(self, mode: bool = True):
        if mode or self.training:  # entering or leaving training: parameters may have changed, solve again
            self._table, self._cos_sin = None, None
        return super().train(mode)

    # ------------------------------------------------------------ transformers' rotary interface

    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.scale_for_length(float(position_ids.max()) + 1)
        factor = self.attention_factor(self.attended(position_ids))
        if self.training and torch.is_grad_enabled():
            cos, sin = rotary_cos_sin(self.inverse_frequencies(t).to(x.device), factor, position_ids)
        else:
            cos, sin = self._cached_cos_sin(t, position_ids, factor)
        return cos.to(dtype=x.dtype), sin.to(dtype=x.dtype)

    def _cached_cos_sin(self, t: int, position_ids: torch.Tensor, factor: float):
        span = t * self.original_length
        integral = not position_ids.is_floating_point()
        if not integral or int(position_ids.max()) >= span:  # beyond max_t·L, or fractional: compute directly
            return rotary_cos_sin(self.inverse_frequencies(t).to(position_ids.device), factor, position_ids)
        if self._cos_sin is None or self._cos_sin[0] != t or self._cos_sin[1].device != position_ids.device:
            positions = torch.arange(span, device=position_ids.device)[None]
            cos, sin = rotary_cos_sin(self.inverse_frequencies(t).to(position_ids.device), 1.0, positions)
            self._cos_sin = (t, cos[0], sin[0])
        _, cos, sin = self._cos_sin
        return cos[position_ids] * factor, sin[position_ids] * factor

    # ------------------------------------------------------------ generation with a key cache

    def setting_for_length(self, n: int) -> tuple[int, float]:
        """What the cos/sin depend on at total length n. When it changes during generation, cached keys AND
        values are stale: re-rotating keys fixes layer 1 only, since every later layer's keys and values were
        computed from hidden states that attended with the old frequencies. ``greedy_generate`` recomputes."""
        return self.scale_for_length(n), self.attention_factor(n)

    def extra_repr(self) -> str:
        return (f"L={self.original_length}, max_t={self.max_t}, time_dt={self.time_dt}, "
                f"log_scale={self.log_scale} ({self.log_scale_rule}), backend={self.backend}")

