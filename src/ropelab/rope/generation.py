"""Greedy generation that stays exact when the RoPE setting changes with the length."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ropelab.errors import RopelabError
from ropelab.rope.modules import rotary_module

GUARD = "_ropelab_stale_cache_guard"


def length_setting(model: nn.Module) -> Callable[[int], object] | None:
    """What the installed rotary module computes with for a sequence of n tokens, when that can change as a
    sequence grows: CLEX's (t, log-scaling factor) (``setting_for_length``), or which set of a LongRoPE
    short/long pair is in force (transformers' rule: the long set once max(position_ids) + 1 > L). None when it
    cannot change, so plain cached decoding is exact. (A length-dependent single set, dynamic NTK, is left as
    transformers decodes it.)"""
    module = rotary_module(model)
    if hasattr(module, "setting_for_length"):
        return module.setting_for_length
    if getattr(module, "short", None) is not None and callable(getattr(module, "select", None)):
        return lambda n: module.select(n) is module.short
    return None


@torch.no_grad()
def greedy_generate(model: nn.Module, input_ids: torch.Tensor, max_new_tokens: int,
                    eos_token_id: int | None = None, step_logits: list | None = None) -> list[int]:
    """Greedy decoding with a key/value cache that stays exact when the RoPE setting changes with the length.

    When the rotary setting changes as the sequence grows (``length_setting``: CLEX's t = ceil(n/L), or a
    LongRoPE short/long pair crossing L), the cache is rebuilt by one prefill of the whole sequence, so every
    step equals a full recompute (re-rotating cached keys would not: later layers' keys and values depend on
    attention computed with the old setting). Stock transformers does not: its cached keys keep the short set's
    rotation after L. ``input_ids`` is (1, n); ``step_logits`` collects each step's logits.
    """
    from transformers import DynamicCache

    setting = length_setting(model) or (lambda n: None)

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


def refuse_stale_cache(model: nn.Module) -> None:
    """Make ``model`` (transformers' ``generate``, or any caller passing ``past_key_values``) refuse a cached
    continuation whose new length changes the rotary setting (CLEX's t or log-scaling factor): its cached keys and
    values were computed with the old one, so it would be silently inexact. One forward pre-hook per model; it
    reads the rotary module in force at each call, so it does nothing once another module is installed."""
    if getattr(model, GUARD, None) is None:
        setattr(model, GUARD, model.register_forward_pre_hook(_refuse_stale_continuation, with_kwargs=True))


def _refuse_stale_continuation(model: nn.Module, args: tuple, kwargs: dict) -> None:
    cache, setting = kwargs.get("past_key_values"), getattr(rotary_module(model), "setting_for_length", None)
    cached = cache.get_seq_length() if setting is not None and hasattr(cache, "get_seq_length") else 0
    if not cached:  # no cache, an empty one (a prefill), or a rotary module whose setting never changes
        return
    new = next(x for x in (kwargs.get("input_ids"), args[0] if args else None, kwargs.get("inputs_embeds"))
               if x is not None)
    before, after = setting(cached), setting(cached + new.shape[1])
    if before != after:
        raise RopelabError(
            f"a cached continuation from {cached} to {cached + new.shape[1]} tokens changes the CLEX setting "
            f"(t, attention factor) {before} -> {after}: the cached keys and values would be stale. Decode with "
            "ropelab.rope.generation.greedy_generate(model, input_ids, max_new_tokens), which re-prefills at the "
            "change (exact), or pass use_cache=False")
