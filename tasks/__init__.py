"""Prefect tasks (installed as ``ropelab.tasks``): I/O, caching, retries and MLflow records around the pure
ropelab library. Importing this package does nothing; entry points configure the environment
(``ropelab.tasks.home.configure_environment``)."""
