"""Progress of long task bodies: a rich bar on a terminal, and in every case a line every ``INTERVAL`` seconds
(and at the end) to the Prefect run's logger, so the Prefect UI shows a stage in flight and a log file of a
scheduled or CI run is never silent for ten minutes. Non-interactive output also gets the lines on stdout."""

from __future__ import annotations

import logging
import sys
import time

from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn

INTERVAL = 30.0


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    """The Prefect flow/task run's logger (its records go to the server), else a plain one."""
    from prefect.exceptions import MissingContextError
    from prefect.logging import get_run_logger

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger("ropelab")


class LoggedProgress(Progress):
    """A rich Progress that also reports each task's progress as log lines at most every ``interval`` seconds."""

    def __init__(self, *columns, interval: float = INTERVAL, **kwargs):
        super().__init__(*columns, **kwargs)
        self.interval = interval
        self._last: dict[TaskID, float] = {}
        self._echo = not sys.stdout.isatty()

    def update(self, task_id: TaskID, **kwargs) -> None:
        super().update(task_id, **kwargs)
        self._report(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._report(task_id)

    def _report(self, task_id: TaskID) -> None:
        task = self._tasks[task_id]
        now = time.monotonic()
        done = task.total is not None and task.completed >= task.total
        if not done and now - self._last.setdefault(task_id, now) < self.interval:
            return  # the first line comes one interval after the first update
        if done and self._last.get(task_id) == -1.0:
            return  # the final line is logged once
        self._last[task_id] = -1.0 if done else now
        line = progress_line(task.description, task.completed, task.total, task.fields.get("status", ""),
                             task.elapsed or 0.0)
        run_logger().info(line)
        if self._echo:
            print(line, flush=True)  # stdout, beside the bars; stderr stays for errors


def progress_line(what: str, done: float, total: float | None, status: str, elapsed: float) -> str:
    share = f" ({done / total:.0%})" if total else ""
    of = f"/{total:g}" if total is not None else ""
    return f"{what}: {done:g}{of}{share} after {elapsed:.0f} s" + (f" — {status}" if status else "")


def progress_bar(interval: float = INTERVAL) -> Progress:
    return LoggedProgress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                          TextColumn("{task.fields[status]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                          transient=False, interval=interval)
