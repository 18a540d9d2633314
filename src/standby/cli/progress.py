"""Waiting for an engine job: long-poll its description and show its progress as it goes.

Each poll is ``GET /v1/jobs/{id}?wait=POLL_WAIT``: the engine answers when the job ends, or
after :data:`POLL_WAIT` seconds with its progress. So the end is seen at once, and progress
still refreshes twice a second.

A job that ends within the first poll shows no progress at all (and rich is never imported).
Otherwise, on a terminal, a rich progress bar (files and bytes done of total, rate, ETA);
elsewhere (a log, a pipe, CI) one short line at most every :data:`LINE_INTERVAL` seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from .formatting import progress_fields, progress_line

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

#: Seconds each poll asks the engine to wait for the job's end (the ``wait`` query parameter).
POLL_WAIT = 0.5
#: Fewest seconds between two polls of a running job: an engine that does not know ``wait``
#: answers at once, and must not be polled in a tight loop.
MIN_POLL_INTERVAL = 0.2
#: Seconds between two progress lines when the output is not a terminal.
LINE_INTERVAL = 2.0

Job = dict[str, Any]
#: ``fetch(wait)``: the job's description, after waiting up to ``wait`` seconds for its end.
Fetch = Callable[[float], Job]


def running(job: Mapping[str, Any]) -> bool:
    return bool(job["state"] == "running")


def _print_line(line: str) -> None:
    print(line, flush=True)


def wait_for_job(fetch: Fetch, job: Job, terminal: Callable[[], Console | None], *,
                 write: Callable[[str], None] = _print_line,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic) -> Job:
    """Poll ``fetch`` until the job ends; return its last description.

    ``terminal()``, called once the job outlives the first poll, gives a rich console to draw
    a progress bar on, or None to ``write`` progress lines instead.
    """
    if running(job):
        job = _poll(fetch, sleep, clock)
    if not running(job):
        return job
    console = terminal()
    if console is not None:
        return _wait_with_bar(fetch, job, console, sleep, clock)
    return _wait_with_lines(fetch, job, write, sleep, clock)


def _poll(fetch: Fetch, sleep: Callable[[float], None], clock: Callable[[], float]) -> Job:
    started = clock()
    job = fetch(POLL_WAIT)
    early = MIN_POLL_INTERVAL - (clock() - started)
    if running(job) and early > 0:
        sleep(early)
    return job


def _wait_with_lines(fetch: Fetch, job: Job, write: Callable[[str], None],
                     sleep: Callable[[float], None], clock: Callable[[], float]) -> Job:
    printed_at: float | None = None
    while running(job):
        if printed_at is None or clock() - printed_at >= LINE_INTERVAL:
            write(progress_line(job))
            printed_at = clock()
        job = _poll(fetch, sleep, clock)
    return job


def _wait_with_bar(fetch: Fetch, job: Job, console: Console, sleep: Callable[[float], None],
                   clock: Callable[[], float]) -> Job:
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn

    columns = (SpinnerColumn(), TextColumn("{task.description}", markup=False), BarColumn(),
               TextColumn("{task.fields[files]}"), TextColumn("{task.fields[bytes]}"),
               TextColumn("{task.fields[rate]}"), TextColumn("ETA {task.fields[eta]}"))
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("", total=None, files="", bytes="", rate="", eta="")
        while running(job):
            _show(bar, task, job)
            job = _poll(fetch, sleep, clock)
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
