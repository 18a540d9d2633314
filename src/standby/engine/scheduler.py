"""Scheduled mode: no continuous replication; a synchronization at each configured time.

For links that cannot carry changes as they happen, or data that only needs a nightly copy.
A synchronization still due when the previous one runs is skipped (with a log line), not
queued: the next one brings the replica up to date anyway.
"""

from __future__ import annotations

import datetime
import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..config import Scenario
from .ratelimit import next_scheduled_run

if TYPE_CHECKING:
    from .engine import Engine

log = logging.getLogger("standby.scheduler")


class ScheduledSync:
    def __init__(self, engine: Engine, scenario: Scenario,
                 now: Callable[[], datetime.datetime] | None = None) -> None:
        """``now``: the wall clock (local, aware); a test passes one set just before a
        scheduled time instead of waiting for it."""
        self._now = now or (lambda: datetime.datetime.now().astimezone())
        self.engine = engine
        self.scenario = scenario
        self.name = scenario.name
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name=f"schedule-{self.name}",
                                        daemon=True)
        self.next_run: datetime.datetime | None = None
        self.last_job: str | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    def _main(self) -> None:
        while not self._stop.is_set():
            now = self._now()
            self.next_run = next_scheduled_run(self.scenario.replication.schedule, now)
            if self._stop.wait((self.next_run - now).total_seconds()):
                return
            try:
                job = self.engine.start_sync_job(self.name, None, None)
            except Exception as exc:  # EngineError: one already runs
                log.info("scenario %s: scheduled synchronization skipped: %s", self.name, exc)
                continue
            self.last_job = job["id"]
            self.engine.job_object(job["id"]).wait_done()

    def status(self) -> dict[str, Any]:
        return {"phase": "scheduled", "mode": "scheduled",
                "next_run": self.next_run.isoformat() if self.next_run else None,
                "last_job": self.last_job}
