"""Tests run in a throwaway project home: the developer's data/, mlflow/ and .prefect/ are never touched."""

from __future__ import annotations

import os

from tests.conftest import SESSION_HOME


def test_tasks_resolve_to_the_session_home():
    from tasks.settings import REPO_ROOT, paths

    assert paths().home == SESSION_HOME.resolve() != REPO_ROOT
    assert os.environ["PREFECT_HOME"].startswith(str(SESSION_HOME))
    assert str(SESSION_HOME) in os.environ["MLFLOW_TRACKING_URI"]
