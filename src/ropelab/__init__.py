"""ropelab: context-window extension for RoPE language models (LongRoPE, CLEX, and the classic baselines).

This package is the pure library: math, search, training loops and metrics. It never imports Prefect,
MLflow or DVC; those live in ``ropelab.tasks`` and ``ropelab.flows``. Importing it does nothing beyond
defining names: entry points call ``ropelab.offline.enforce()`` before heavy imports (the CLI does).
"""

__version__ = "0.2.0"
