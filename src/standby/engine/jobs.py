"""Long-running work (synchronizations) in a thread of its own, with visible progress."""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

log = logging.getLogger("standby.jobs")


class JobState(enum.Enum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class Cancelled(Exception):
    """The job was asked to stop."""


@dataclass
class Progress:
    """Counters a job advances and the API reads (plain ints: a torn read is harmless)."""

    phase: str = "starting"
    files_total: int = 0
    files_done: int = 0
    bytes_total: int = 0
    bytes_done: int = 0
    bytes_sent: int = 0
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None

    def snapshot(self) -> dict[str, Any]:
        end = time.time() if self.finished_at is None else self.finished_at
        elapsed = max(end - self.started_at, 1e-6)
        rate = self.bytes_done / elapsed
        remaining = max(self.bytes_total - self.bytes_done, 0)
        return {
            "phase": self.phase,
            "files_done": self.files_done,
            "files_total": self.files_total,
            "bytes_done": self.bytes_done,
            "bytes_total": self.bytes_total,
            "bytes_sent": self.bytes_sent,
            "elapsed_s": round(elapsed, 3),
            "rate_bytes_s": round(rate),
            "eta_s": round(remaining / rate, 1) if rate > 0 and self.bytes_total else None,
        }


class Work(Protocol):
    progress: Progress

    def run(self, cancelled: threading.Event) -> dict[str, Any]:
        """Do the work; return the report. Raise to fail (the report may be attached)."""
        ...


class JobFailed(Exception):
    """A job failed; ``report`` holds what was done before the failure."""

    def __init__(self, message: str, report: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.report = report


class Job:
    def __init__(self, job_id: str, scenario: str, kind: str, work: Work) -> None:
        self.id = job_id
        self.scenario = scenario
        self.kind = kind
        self.work = work
        self.state = JobState.RUNNING
        self.error: str | None = None
        self.report: dict[str, Any] | None = None
        self.finished_at: float | None = None
        self._cancel = threading.Event()
        self._done = threading.Event()  # set once the job ended and its handler ran
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.kind} {self.scenario} {self.state.value}>"

    def start(self, on_done: Callable[[Job], None]) -> None:
        self._thread = threading.Thread(target=self._run, args=(on_done,),
                                        name=f"job-{self.id}", daemon=True)
        self._thread.start()

    def _run(self, on_done: Callable[[Job], None]) -> None:
        try:
            self.report = self.work.run(self._cancel)
            self.state = JobState.SUCCEEDED
        except Cancelled:
            self.state = JobState.CANCELLED
            self.error = "cancelled"
        except JobFailed as exc:
            self.report = exc.report
            self.state = JobState.FAILED
            self.error = str(exc)
        except Exception as exc:  # a bug: keep the engine alive, say so
            log.exception("job %s failed unexpectedly", self.id)
            self.state = JobState.FAILED
            self.error = f"unexpected error, please report it as a bug: {exc!r}"
        finally:
            self.finished_at = self.work.progress.finished_at = time.time()
            self.work.progress.phase = self.state.value
            try:
                on_done(self)
            except Exception:
                log.exception("job %s: completion handler failed", self.id)
            self._done.set()

    def cancel(self) -> None:
        self._cancel.set()

    def wait_done(self, timeout: float | None = None) -> bool:
        """Wait until the job ended (and its report is stored); True if it has."""
        return self._done.wait(timeout)

    def describe(self) -> dict[str, Any]:
        return {"id": self.id, "scenario": self.scenario, "kind": self.kind,
                "state": self.state.value, "error": self.error,
                "progress": self.work.progress.snapshot(), "finished_at": self.finished_at,
                "report": self.report}
