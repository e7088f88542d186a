"""Offline settings: nothing ropelab runs may reach the network (HF hub, telemetry, update checks).

The settings must be in the environment before torch/transformers/datasets/prefect/mlflow are imported,
because those libraries read them at import time. Entry points call `enforce()` first (the CLI's main, the
project home's `configure_environment`, the tests' conftest); importing ropelab itself sets nothing. Set ROPELAB_ALLOW_NETWORK=1 to opt in to the hub (for example to
load a dataset by name); telemetry stays off regardless.
"""

from __future__ import annotations

import os

TELEMETRY_OFF = {
    "DO_NOT_TRACK": "true",  # "true", not "1": MLflow honours only "true"
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT": "false",
    "PREFECT_CLOUD_ENABLE_ORCHESTRATION_TELEMETRY": "false",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "DVC_NO_ANALYTICS": "1",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
}
HUB_OFFLINE = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
}


def network_allowed() -> bool:
    return os.environ.get("ROPELAB_ALLOW_NETWORK", "").lower() in {"1", "true", "yes"}


def enforce() -> dict[str, str]:
    """Write the offline settings into os.environ; return what was set."""
    settings = dict(TELEMETRY_OFF)
    if not network_allowed():
        settings.update(HUB_OFFLINE)
    os.environ.update(settings)
    return settings
