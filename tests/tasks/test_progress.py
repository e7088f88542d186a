"""Progress of long task bodies reaches the logs: a line at most every interval, and one at the end."""

from __future__ import annotations

import logging

from ropelab.tasks import progress


def test_progress_lines_are_rate_limited_and_the_last_one_is_logged_once(caplog, monkeypatch):
    clock = iter(range(0, 1000, 10))  # every update is 10 "seconds" after the previous one
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    with caplog.at_level(logging.INFO, logger="ropelab"):
        with progress.progress_bar(interval=25) as bar:
            job = bar.add_task("fine-tuning at 1024", total=10, status="")
            for step in range(10):
                bar.update(job, completed=step + 1, status=f"loss {3 - step / 10:.2f}")
            bar.update(job, completed=10)  # a repeated final update is not a second final line
    lines = [r.getMessage() for r in caplog.records if r.name == "ropelab"]
    assert 2 <= len(lines) <= 5, lines  # 10 updates, 10 s apart, reported at most every 25 s + the end
    assert lines[-1].startswith("fine-tuning at 1024: 10/10 (100%) after") and "loss 2.10" in lines[-1]
    assert sum("10/10" in line for line in lines) == 1


def test_a_progress_line_names_the_work_the_share_and_the_status():
    assert progress.progress_line("search: generation 3", 16, None, "best 5.1", 42.2) == \
        "search: generation 3: 16 after 42 s — best 5.1"
    assert progress.progress_line("passkey grid", 3, 12, "", 9.7) == "passkey grid: 3/12 (25%) after 10 s"
