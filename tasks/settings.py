"""Project paths and the orchestration environment, set before Prefect or MLflow is imported.

The project home is the repository root (or $ROPELAB_HOME): data/ (DVC), mlflow/ (tracking store),
.prefect/ (Prefect's database and the persisted task results that make caching work), artifacts/ (outputs).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ropelab import offline

REPO_ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Paths:
    home: Path

    @property
    def data(self) -> Path:
        return self.home / "data"

    @property
    def corpus(self) -> Path:
        return self.data / "corpus"

    @property
    def mlflow_db(self) -> Path:
        return self.home / "mlflow" / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.home / "mlflow" / "artifacts"

    @property
    def prefect_home(self) -> Path:
        return self.home / ".prefect"

    @property
    def results(self) -> Path:
        return self.prefect_home / "results"

    @property
    def artifacts(self) -> Path:
        return self.home / "artifacts"

    @property
    def source_cache(self) -> Path:
        return self.home / ".cache" / "sources"

    @property
    def hf_cache(self) -> Path:
        return self.home / ".cache" / "huggingface"


def paths() -> Paths:
    return Paths(Path(os.environ.get("ROPELAB_HOME", REPO_ROOT)).resolve())


def configure_environment() -> Paths:
    """Offline + telemetry off, Prefect state and the MLflow store inside the project home."""
    offline.enforce()
    p = paths()
    p.prefect_home.mkdir(parents=True, exist_ok=True)
    p.mlflow_db.parent.mkdir(parents=True, exist_ok=True)
    os.environ["PREFECT_HOME"] = str(p.prefect_home)
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")  # cold start ~16 s here
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_RESULTS_PERSIST_BY_DEFAULT", "true")
    os.environ["PREFECT_LOCAL_STORAGE_PATH"] = str(p.results)
    # an absolute sqlite URI: relative ones resolve against the current directory
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{p.mlflow_db}")
    os.environ.setdefault("HF_DATASETS_CACHE", str(p.hf_cache / "datasets"))
    return p
