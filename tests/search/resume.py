"""Shared by the search tests: a search killed right after a generation, for exact-resume checks."""

from __future__ import annotations

import pytest

from ropelab.search.evolution import SearchState


def state_when_killed(run, generation: int) -> SearchState:
    """``run(on_generation=...)`` killed right after ``generation``: the state it had saved last."""
    saved = {}

    def kill(state: SearchState) -> None:
        saved["json"] = state.to_json()
        if state.generation == generation:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(on_generation=kill)
    return SearchState.from_json(saved["json"])
