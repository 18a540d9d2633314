"""The CLI's output helpers: job progress while waiting, and numbers for people."""

from __future__ import annotations

import io
from typing import Any

import pytest
from rich.console import Console

from standby.cli.progress import POLL_INTERVAL, wait_for_job
from standby.cli.render import counter, duration, hosts_table, human_bytes, progress_line


def job(state: str, done: int, total: int = 4 << 20) -> dict[str, Any]:
    return {"id": "1-1", "scenario": "web", "state": state, "error": None, "report": None,
            "progress": {"phase": "copying", "files_done": done // 1024, "files_total": 4096,
                         "bytes_done": done, "bytes_total": total, "bytes_sent": done,
                         "elapsed_s": 1.0, "rate_bytes_s": 1 << 20, "eta_s": 3.0}}


class Script:
    """Plays a job's successive descriptions on a fake clock that each poll advances."""

    def __init__(self, jobs: list[dict[str, Any]], step: float) -> None:
        self.jobs = iter(jobs)
        self.step = step
        self.now = 0.0
        self.polls = 0
        self.slept: list[float] = []

    def fetch(self) -> dict[str, Any]:
        self.polls += 1
        return next(self.jobs)

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += self.step

    def clock(self) -> float:
        return self.now


def test_without_a_terminal_one_line_at_most_every_two_seconds() -> None:
    """Polls every 0.2 s; over 6 s of a running job, lines at 0, 2 and 4 s only."""
    running = [job("running", i * 1024) for i in range(1, 24)]
    script = Script([*running, job("succeeded", 4 << 20)], step=0.25)
    out = io.StringIO()
    final = wait_for_job(script.fetch, job("running", 0), Console(file=out),
                         sleep=script.sleep, clock=script.clock)
    assert final["state"] == "succeeded"
    assert script.polls == 24
    assert set(script.slept) == {POLL_INTERVAL}
    assert out.getvalue().splitlines() == [
        "web: copying, 0/4,096 files, 0 B/4.0 MiB, 1.0 MiB/s, ETA 3 s",
        "web: copying, 8/4,096 files, 8.0 KiB/4.0 MiB, 1.0 MiB/s, ETA 3 s",
        "web: copying, 16/4,096 files, 16.0 KiB/4.0 MiB, 1.0 MiB/s, ETA 3 s",
    ]


def test_a_finished_job_is_not_polled() -> None:
    script = Script([], step=0.25)
    out = io.StringIO()
    final = wait_for_job(script.fetch, job("failed", 0), Console(file=out),
                         sleep=script.sleep, clock=script.clock)
    assert (final["state"], script.polls, out.getvalue()) == ("failed", 0, "")


def test_on_a_terminal_a_progress_bar() -> None:
    script = Script([job("running", 2 << 20), job("succeeded", 4 << 20)], step=0.25)
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=150)
    final = wait_for_job(script.fetch, job("running", 0), console, sleep=script.sleep,
                         clock=script.clock)
    assert final["state"] == "succeeded"
    shown = out.getvalue()
    assert "web copying" in shown
    assert "4,096/4,096 files" in shown
    assert "4.0 MiB/4.0 MiB" in shown
    assert "━" in shown  # the bar itself


@pytest.mark.parametrize(("count", "text"), [
    (0, "0 B"), (1023, "1023 B"), (1024, "1.0 KiB"), (1536, "1.5 KiB"),
    (5 * 1024**3, "5.0 GiB"), (3 * 1024**6, "3072.0 PiB"),
])
def test_human_bytes(count: int, text: str) -> None:
    assert human_bytes(count) == text


@pytest.mark.parametrize(("seconds", "text"), [
    (None, "?"), (0.4, "0 s"), (59.4, "59 s"), (200, "3 min 20 s"), (3 * 3600 + 125, "3 h 02 min"),
])
def test_duration(seconds: float | None, text: str) -> None:
    assert duration(seconds) == text


@pytest.mark.parametrize(("key", "value", "text"), [
    ("bytes_sent", 2048, "2.0 KiB"), ("files_compared", 12345, "12,345"),
    ("rate_bytes_s", 1 << 20, "1.0 MiB/s"), ("duration_s", 61.2, "1 min 01 s"),
    ("block_size", 65536, "64.0 KiB"), ("ok", True, "True"), ("failure", None, "-"),
    ("whole_file_threshold", 0.7, "0.70"),
])
def test_counters_are_formatted_by_name(key: str, value: Any, text: str) -> None:
    assert counter(key, value) == text


def test_progress_line_before_the_sizes_are_known() -> None:
    unknown = job("running", 0, total=0)
    unknown["progress"].update(files_total=0, rate_bytes_s=0, eta_s=None, phase="listing")
    assert progress_line(unknown) == "web: listing, 0/0 files, 0 B/0 B, 0 B/s, ETA ?"


def test_hosts_table_puts_the_main_counters_first_and_hides_zero_extras() -> None:
    hosts = {"beta": {"files_hashed": 0, "symlinks_created": 3, "bytes_received": 2048},
             "alpha": {"bytes_sent": 2048, "files_compared": 7}}
    out = io.StringIO()
    Console(file=out, width=100).print(hosts_table(hosts))
    lines = [line.split() for line in out.getvalue().splitlines()]
    assert lines == [
        ["ALPHA", "BETA"],
        ["files", "compared", "7", "-"],
        ["bytes", "sent", "2.0", "KiB", "-"],
        ["bytes", "received", "-", "2.0", "KiB"],
        ["symlinks", "created", "-", "3"],
    ]
