"""The flow commands (`ropelab search`, …, and the flows a deployment runs) and how one is run as a top-level run.

Kept free of heavy imports: the CLI reads ``FLOWS`` to build its parser before anything starts.
"""

from __future__ import annotations

import importlib

FLOWS = {  # command -> (module, flow function, help)
    "data": ("ropelab.flows.data", "data_flow", "assemble the corpus and version it with DVC"),
    "base": ("ropelab.flows.base", "base_flow", "pretrain the embedded tiny base model (or check a user's model)"),
    "search": ("ropelab.flows.search", "search_flow", "LongRoPE evolutionary search of λ at search.scale"),
    "finetune": ("ropelab.flows.finetune", "finetune_flow", "fine-tune with a fixed RoPE (λ file or baseline) at a longer length"),
    "clex": ("ropelab.flows.clex", "clex_flow", "train CLEX (neural-ODE RoPE scaling) and compare it with a PI fine-tune"),
    "longrope2": ("ropelab.flows.longrope2", "longrope2_flow", "LongRoPE2: critical-dim search at the final length, "
                  "mixed context window fine-tuning, evaluation"),
    "pipeline": ("ropelab.flows.pipeline", "pipeline_flow", "the progressive LongRoPE recipe and CLEX end to end"),
    "evaluate": ("ropelab.flows.evaluate", "evaluate_flow", "the method-zoo report: PPL across lengths, passkey"),
}
SUITES = {  # `ropelab evaluate --suite NAME` -> (module, flow function); zoo is the evaluate flow itself
    "zoo": FLOWS["evaluate"][:2],
    "ruler": ("ropelab.flows.evaluate", "ruler_flow"),
}
SINGLE_STAGE = ("data", "base")  # one MLflow run each: nothing to nest


def run_command(command: str, cfg, rerun_from: str | None = None, suite: str = "zoo"):
    """Run a flow command. A command that runs its upstream stages too (search, finetune, clex, evaluate) opens
    one top-level MLflow run with those stages nested under it, as the pipeline does. ``suite``: which
    evaluation `evaluate` runs (``SUITES``)."""
    module, name = SUITES[suite] if command == "evaluate" else FLOWS[command][:2]
    target = getattr(importlib.import_module(module), name)
    if command == "pipeline":
        return target(cfg, rerun_from=rerun_from)
    if command in SINGLE_STAGE:
        return target(cfg)
    from ropelab.tasks import runner

    with runner.stage(command, cfg) as parent:
        return target(cfg, parent.run_id)
