"""Greedy generation that stays exact when the RoPE setting changes with the length."""

from __future__ import annotations

import torch
from torch import nn

from ropelab.rope.modules import rotary_module


@torch.no_grad()
def greedy_generate(model: nn.Module, input_ids: torch.Tensor, max_new_tokens: int,
                    eos_token_id: int | None = None, step_logits: list | None = None) -> list[int]:
    """Greedy decoding with a key/value cache that stays exact when the RoPE setting changes with the length.

    A rotary module with ``setting_for_length(n)`` (CLEX: t = ceil(n/L)) gets the cache rebuilt by one
    prefill whenever the setting changes, so every step equals a full recompute (re-rotating cached keys would
    not: later layers' keys and values depend on attention computed with the old setting). ``input_ids`` is
    (1, n); ``step_logits`` collects each step's logits.
    """
    from transformers import DynamicCache

    setting = getattr(rotary_module(model), "setting_for_length", lambda n: None)

    def prefill(ids):
        cache = DynamicCache(config=model.config)
        return cache, model(input_ids=ids, past_key_values=cache, use_cache=True).logits

    sequence, tokens = input_ids, []
    cache, logits = prefill(sequence)
    for _ in range(max_new_tokens):
        token = int(logits[0, -1].argmax())
        tokens.append(token)
        if step_logits is not None:
            step_logits.append(logits[0, -1])
        if token == eos_token_id or len(tokens) == max_new_tokens:
            break
        length = sequence.shape[1]
        sequence = torch.cat([sequence, torch.tensor([[token]], device=sequence.device)], dim=1)
        if setting(length + 1) != setting(length):
            cache, logits = prefill(sequence)
        else:
            logits = model(input_ids=sequence[:, -1:], past_key_values=cache, use_cache=True,
                           position_ids=torch.tensor([[length]], device=sequence.device)).logits
    return tokens
