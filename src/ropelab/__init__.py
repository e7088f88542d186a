"""ropelab: context-window extension for RoPE language models (LongRoPE, CLEX, and the classic baselines).

This package is the pure library: math, search, training loops and metrics. It never imports Prefect,
MLflow or DVC; those live in the project's `tasks/` and `flows/` layers.
"""

from ropelab import offline as _offline

_offline.enforce()  # before anything imports huggingface_hub, which reads the settings once

__version__ = "0.1.0"
