"""The CLI's output helpers: job progress while waiting, and numbers for people."""

from __future__ import annotations

import io
from typing import Any

import pytest
from rich.console import Console

from standby.cli.formatting import counter, duration, human_bytes, progress_line
from standby.cli.progress import MIN_POLL_INTERVAL, POLL_WAIT, wait_for_job
from standby.cli.render import hosts_table


def job(state: str, done: int, total: int = 4 << 20) -> dict[str, Any]:
    return {"id": "1-1", "scenario": "web", "state": state, "error": None, "report": None,
            "progress": {"phase": "copying", "files_done": done // 1024, "files_total": 4096,
                         "bytes_done": done, "bytes_total": total, "bytes_sent": done,
                         "elapsed_s": 1.0, "rate_bytes_s": 1 << 20, "eta_s": 3.0}}


class Script:
    """Plays a job's successive descriptions on a fake clock. Each poll takes ``step`` seconds
    (a long poll of a running job takes the whole wait; an engine without long polls, no time)
    and records the wait it asked for."""

    def __init__(self, jobs: list[dict[str, Any]], step: float) -> None:
        self.jobs = iter(jobs)
        self.step = step
        self.now = 0.0
        self.waits: list[float] = []
        self.slept: list[float] = []
        self.lines: list[str] = []

    def fetch(self, wait: float) -> dict[str, Any]:
        self.waits.append(wait)
        self.now += self.step
        return next(self.jobs)

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds

    def clock(self) -> float:
        return self.now

    def wait(self, first: dict[str, Any], console: Console | None = None) -> dict[str, Any]:
        return wait_for_job(self.fetch, first, lambda: console, write=self.lines.append,
                            sleep=self.sleep, clock=self.clock)


def test_without_a_terminal_one_line_at_most_every_two_seconds() -> None:
    """Long polls of 0.5 s; over 6 s of a running job, lines at 0.5, 2.5 and 4.5 s only,
    never a sleep between polls."""
    running = [job("running", i * 1024) for i in range(1, 13)]
    script = Script([*running, job("succeeded", 4 << 20)], step=POLL_WAIT)
    final = script.wait(job("running", 0))
    assert final["state"] == "succeeded"
    assert script.waits == [POLL_WAIT] * 13
    assert script.slept == []
    assert script.lines == [
        "web: copying, 1/4,096 files, 1.0 KiB/4.0 MiB, 1.0 MiB/s, ETA 3 s",
        "web: copying, 5/4,096 files, 5.0 KiB/4.0 MiB, 1.0 MiB/s, ETA 3 s",
        "web: copying, 9/4,096 files, 9.0 KiB/4.0 MiB, 1.0 MiB/s, ETA 3 s",
    ]


def test_a_job_that_ends_within_the_first_poll_shows_no_progress() -> None:
    """The first long poll starts as soon as the job does; the terminal is not even asked."""
    script = Script([job("succeeded", 4 << 20)], step=0.15)

    def no_terminal() -> Console | None:
        raise AssertionError("asked for a terminal")

    final = wait_for_job(script.fetch, job("running", 0), no_terminal, write=script.lines.append,
                         sleep=script.sleep, clock=script.clock)
    assert (final["state"], script.waits, script.slept, script.lines) == \
        ("succeeded", [POLL_WAIT], [], [])


def test_an_engine_without_long_polls_is_not_polled_in_a_tight_loop() -> None:
    """It answers at once: the client sleeps the rest of the minimal interval between polls."""
    script = Script([job("running", 1024), job("running", 2048), job("failed", 2048)], step=0.05)
    final = script.wait(job("running", 0))
    assert final["state"] == "failed"
    assert script.slept == pytest.approx([MIN_POLL_INTERVAL - 0.05] * 2)


def test_a_finished_job_is_not_polled() -> None:
    script = Script([], step=0.25)
    final = script.wait(job("failed", 0))
    assert (final["state"], script.waits, script.lines) == ("failed", [], [])


def test_on_a_terminal_a_progress_bar() -> None:
    script = Script([job("running", 2 << 20), job("running", 3 << 20), job("succeeded", 4 << 20)],
                    step=POLL_WAIT)
    out = io.StringIO()
    final = script.wait(job("running", 0), Console(file=out, force_terminal=True, width=150))
    assert final["state"] == "succeeded"
    assert script.lines == []
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
