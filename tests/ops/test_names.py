"""The names a person reads: schedule flows are the CLI's flow commands; top-level runs are distinct."""

from __future__ import annotations

import typing

from ropelab.config import ScheduleFlow, load_config
from ropelab.flows.commands import FLOWS
from ropelab.tasks.tracking import top_level_name


def test_every_schedulable_flow_is_a_flow_command_and_back():
    assert set(typing.get_args(ScheduleFlow)) == set(FLOWS)


def test_top_level_runs_are_named_by_command_preset_and_time(monkeypatch):
    cfg = load_config(None, ["preset=smoke"])
    monkeypatch.setattr("ropelab.tasks.tracking.time.strftime", lambda fmt: "1202-0324" + "05")
    assert top_level_name("pipeline", cfg) == "pipeline-smoke-1202-032405"
