"""Prefect tasks: I/O, caching, retries and MLflow records around the pure ropelab library."""

from tasks.settings import configure_environment

configure_environment()  # before anything below imports prefect or mlflow
