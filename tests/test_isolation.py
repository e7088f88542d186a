"""Tests run in a throwaway project home: the developer's data/, mlflow/ and .prefect/ are never touched."""

from __future__ import annotations

import os

from tests.conftest import REPO, SESSION_HOME


def test_tasks_resolve_to_the_session_home():
    from ropelab.tasks.home import paths

    assert paths().home == SESSION_HOME.resolve() != REPO
    assert os.environ["PREFECT_HOME"].startswith(str(SESSION_HOME))
    assert str(SESSION_HOME) in os.environ["MLFLOW_TRACKING_URI"]
