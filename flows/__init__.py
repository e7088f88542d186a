"""Prefect flows: compose tasks into stages; nothing else."""

import tasks  # noqa: F401  (configures the environment before prefect is imported)
