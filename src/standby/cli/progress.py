"""Waiting for an engine job: poll its description and show its progress as it goes.

On a terminal a rich progress bar (files and bytes done of total, rate, ETA); elsewhere (a log,
a pipe, CI) one short line at most every :data:`LINE_INTERVAL` seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn

from .render import progress_fields, progress_line

#: Seconds between two polls of the job (GET /v1/jobs/{id}).
POLL_INTERVAL = 0.2
#: Seconds between two progress lines when the output is not a terminal.
LINE_INTERVAL = 2.0

Job = dict[str, Any]


def running(job: Mapping[str, Any]) -> bool:
    return bool(job["state"] == "running")


def wait_for_job(fetch: Callable[[], Job], job: Job, console: Console, *,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> Job:
    """Poll ``fetch`` (the job's latest description) until the job ends; return the last one."""
    if console.is_terminal:
        return _wait_with_bar(fetch, job, console, sleep)
    return _wait_with_lines(fetch, job, console, sleep, clock)


def _wait_with_lines(fetch: Callable[[], Job], job: Job, console: Console,
                     sleep: Callable[[float], None], clock: Callable[[], float]) -> Job:
    printed_at: float | None = None
    while running(job):
        if printed_at is None or clock() - printed_at >= LINE_INTERVAL:
            console.print(progress_line(job), markup=False, highlight=False, soft_wrap=True)
            printed_at = clock()
        sleep(POLL_INTERVAL)
        job = fetch()
    return job


def _wait_with_bar(fetch: Callable[[], Job], job: Job, console: Console,
                   sleep: Callable[[float], None]) -> Job:
    columns = (SpinnerColumn(), TextColumn("{task.description}", markup=False), BarColumn(),
               TextColumn("{task.fields[files]}"), TextColumn("{task.fields[bytes]}"),
               TextColumn("{task.fields[rate]}"), TextColumn("ETA {task.fields[eta]}"))
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("", total=None, files="", bytes="", rate="", eta="")
        while running(job):
            _show(bar, task, job)
            sleep(POLL_INTERVAL)
            job = fetch()
        _show(bar, task, job)
    return job


def _show(bar: Progress, task: TaskID, job: Mapping[str, Any]) -> None:
    progress = job["progress"]
    total = progress["bytes_total"] or None  # unknown while the trees are still listed
    done = progress["bytes_done"]
    if not running(job) and total is None:
        total = done = 1  # finished with nothing to copy: a full bar, not a pulsing one
    fields = progress_fields(progress)
    bar.update(task, description=f"{job['scenario']} {progress['phase']}", total=total,
               completed=done, files=fields["files"], bytes=fields["bytes"],
               rate=fields["rate"], eta=fields["eta"])
