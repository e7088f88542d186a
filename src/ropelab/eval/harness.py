"""Short-context quality through lm-evaluation-harness (the paper: ARC, HellaSwag, MMLU, TruthfulQA at 4k).

``harness_lm`` wraps any ropelab model + tokenizer (byte-level or HF; with whatever RoPE is installed) as an
``lm_eval`` language model, so the extended model is scored exactly as it will be served. Offline, tasks come
from local YAML + data files (``include_path``); the standard tasks work where their datasets are cached
locally. Needs the optional extra: pip install -e '.[eval]'.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from ropelab.errors import RopelabError


def _require_lm_eval():
    try:
        import lm_eval  # noqa: F401
        from lm_eval.api.model import LM
    except ImportError:
        raise RopelabError("short-context evaluation needs lm-evaluation-harness: pip install -e '.[eval]'") from None
    return LM


@torch.no_grad()
def continuation_logprob(model, context: list[int], continuation: list[int]) -> tuple[float, bool]:
    """(sum of log p(continuation | context), whether greedy decoding would produce it); ``context`` holds at
    least one token (``context_ids``)."""
    if not context:
        raise RopelabError("scoring a continuation needs at least one context token (BOS, or EOS without one)")
    device = next(model.parameters()).device
    ids = torch.tensor([context + continuation], device=device)
    logprobs = F.log_softmax(model(input_ids=ids, use_cache=False).logits[0, len(context) - 1: -1].float(), dim=-1)
    target = torch.tensor(continuation, device=device)
    return float(logprobs.gather(1, target[:, None]).sum()), bool((logprobs.argmax(-1) == target).all())


def prefix_token(tokenizer) -> int:
    """The token an empty context is conditioned on: BOS, else EOS (lm-eval's HFLM ``prefix_token_id`` rule;
    Qwen2 has no BOS)."""
    token = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if token is None:
        raise RopelabError("the tokenizer has neither a BOS nor an EOS token: an empty context cannot be scored")
    return token


def context_ids(tokenizer, text: str) -> list[int]:
    """A request's context as the model sees it: BOS + text (a tokenizer with BOS), the text alone (without),
    and never empty (the prefix token when there is no text)."""
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    return (bos + tokenizer.encode(text)) or [prefix_token(tokenizer)]


def harness_lm(model, tokenizer, max_gen_tokens: int = 64):
    LM = _require_lm_eval()

    class RopelabLM(LM):
        def loglikelihood(self, requests):
            out = []
            for request in requests:
                context, continuation = request.args
                out.append(continuation_logprob(model, context_ids(tokenizer, context), tokenizer.encode(continuation)))
            return out

        def loglikelihood_rolling(self, requests):
            return [continuation_logprob(model, [prefix_token(tokenizer)], tokenizer.encode(r.args[0]))[0]
                    for r in requests]

        def generate_until(self, requests):
            from ropelab.eval.passkey import greedy_continuation

            results = []
            for request in requests:
                context, kwargs = request.args
                text = tokenizer.decode(greedy_continuation(model, context_ids(tokenizer, context),
                                                            int(kwargs.get("max_gen_toks", max_gen_tokens))))
                for stop in kwargs.get("until", []):
                    text = text.split(stop)[0]
                results.append(text)
            return results

    return RopelabLM()


def short_context_quality(model, tokenizer, tasks: Sequence[str], include_path: str | Path | None = None,
                          limit: int | None = None, num_fewshot: int | None = None) -> dict:
    """{task: {metric: value}} from lm_eval.simple_evaluate on the wrapped model."""
    _require_lm_eval()
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(include_path)) if include_path else TaskManager()
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise RopelabError(f"unknown lm-eval task(s) {unknown}: offline, pass include_path with local task YAMLs")
    results = simple_evaluate(model=harness_lm(model, tokenizer), tasks=list(tasks), task_manager=manager,
                              limit=limit, num_fewshot=num_fewshot, log_samples=False, bootstrap_iters=0)
    return {task: {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
            for task, metrics in results["results"].items()}
