"""Bandwidth limits and schedules: a thread-safe token bucket, and the weekly timetables.

The sender asks :class:`TokenBucket` for permission before each frame; the scenario runtime
calls :func:`bandwidth_limit_at` when the hour turns and hands the answer to
:meth:`TokenBucket.set_rate`, and :func:`next_scheduled_run` tells a scheduled scenario when to
synchronize next. Nothing here touches the network; the clock and sleep are injected so tests
run on fake time.
"""

from __future__ import annotations

import datetime
import threading
import time
from collections.abc import Callable, Iterable

from ..config import BandwidthWindow, ReplicationOptions, ScheduledRun
from .jobs import Cancelled

#: Longest single sleep while waiting: a cancel or a new rate is noticed within this time.
WAIT_SLICE = 0.1
#: Default burst, in seconds of the rate. A quarter second smooths the sender's uneven frames
#: (a 1 MiB frame, then a pause for compression) without letting the link run over the limit
#: for long, so a link shared with other traffic sees the limit at a fine grain.
BURST_SECONDS = 0.25
#: Smallest default burst: one block of the default size (64 KiB) passes as one piece even at
#: the lowest limit (64 KiB/s), instead of every block going into debt and waiting.
MIN_BURST = 64 * 1024
#: Shortest sleep: keeps a fake clock moving when float rounding leaves a sliver to wait.
_MIN_SLEEP = 1e-4


class TokenBucket:
    """Let bytes pass at ``rate`` bytes per second on average, up to ``burst`` at once.

    Thread-safe: several senders may share one bucket (one per scenario). The bucket starts
    full. A request larger than the burst waits for a full bucket and then passes whole,
    leaving a debt that later requests pay by waiting, so the average rate holds for any
    request size.

    Args:
        rate: bytes per second; ``None`` or 0 is unlimited.
        burst: the most that may pass at once without waiting; ``None`` picks
            ``max(0.25 s of rate, 64 KiB)`` and follows later :meth:`set_rate` calls.
        clock: seconds, monotonic (:func:`time.monotonic`).
        sleep: sleeps the given seconds (:func:`time.sleep`); called outside the lock.
    """

    def __init__(self, rate: float | None, burst: float | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if burst is not None and burst <= 0:
            raise ValueError(f"burst must be positive, got {burst}")
        self._clock = clock
        self._sleep = sleep
        self._fixed_burst = burst
        self._lock = threading.Lock()
        self._rate: float | None = None
        self._burst = float(MIN_BURST)
        self._tokens = 0.0
        self._stamp = clock()
        self.set_rate(rate)

    @property
    def rate(self) -> float | None:
        """Bytes per second now, or ``None`` when unlimited."""
        return self._rate

    @property
    def burst(self) -> float:
        return self._burst

    def set_rate(self, rate: float | None) -> None:
        """Change the rate at once (a schedule change); waiting callers notice within 0.1 s.

        Tokens earned so far at the old rate are kept (up to the new burst), and so is a debt;
        going to unlimited forgets both, and leaving unlimited starts with a full bucket.
        """
        if rate is not None and rate < 0:
            raise ValueError(f"rate must be positive, 0 or None, got {rate}")
        with self._lock:
            now = self._clock()
            self._refill(now)
            was_unlimited = self._rate is None
            self._rate = float(rate) if rate else None
            if self._rate is None:
                return
            self._burst = (self._fixed_burst if self._fixed_burst is not None
                           else max(self._rate * BURST_SECONDS, float(MIN_BURST)))
            self._tokens = self._burst if was_unlimited else min(self._tokens, self._burst)

    def consume(self, n: int, cancelled: threading.Event | None = None) -> None:
        """Wait until ``n`` bytes may pass, then take them.

        Raises:
            Cancelled: ``cancelled`` was set when called or while waiting; nothing is taken.
            ValueError: ``n`` is negative.
        """
        if n < 0:
            raise ValueError(f"cannot consume a negative amount, got {n}")
        while True:
            if cancelled is not None and cancelled.is_set():
                raise Cancelled("cancelled while waiting for the bandwidth limit")
            with self._lock:
                wait = self._try_take(n, self._clock())
            if wait <= 0:
                return
            self._sleep(min(max(wait, _MIN_SLEEP), WAIT_SLICE))

    def _try_take(self, n: int, now: float) -> float:
        """Take ``n`` and return 0, or return the seconds still to wait (lock held)."""
        self._refill(now)
        if self._rate is None:
            return 0.0
        want = min(float(n), self._burst)
        if self._tokens >= want:
            self._tokens -= n  # below zero for a request larger than the burst: a debt
            return 0.0
        return (want - self._tokens) / self._rate

    def _refill(self, now: float) -> None:
        if self._rate is not None:
            earned = (now - self._stamp) * self._rate
            self._tokens = min(self._burst, self._tokens + earned)
        self._stamp = now

    def __repr__(self) -> str:
        rate = "unlimited" if self._rate is None else f"{self._rate:.0f} B/s"
        return f"<TokenBucket {rate}, burst={self._burst:.0f}, tokens={self._tokens:.0f}>"


def bandwidth_limit_at(options: ReplicationOptions,
                       when: datetime.datetime) -> int | None:
    """The bandwidth limit in force at ``when``, in bytes per second; ``None`` is unlimited.

    The first entry of ``bandwidth_schedule`` that covers ``when`` decides; when none does,
    ``bandwidth_limit`` applies. An aware ``when`` is converted to the local time zone; a
    naive one is taken as local time already.
    """
    local = _local(when)
    for window in options.bandwidth_schedule:
        if window_covers(window, local.weekday(), local.hour):
            return window.limit or None
    return options.bandwidth_limit or None


def window_covers(window: BandwidthWindow, weekday: int, hour: int) -> bool:
    """Whether ``window`` covers the hour ``hour`` (0-23) of weekday ``weekday`` (0 = Monday).

    A window that wraps past midnight (``22-06``) covers the early hours of the day after each
    of its days: ``Fri 22-06`` covers Friday from 22:00 and Saturday until 06:00.
    """
    start, end = window.hours
    if start < end:
        return weekday in window.days and start <= hour < end
    return ((weekday in window.days and hour >= start)
            or ((weekday - 1) % 7 in window.days and hour < end))


def next_scheduled_run(schedule: Iterable[ScheduledRun],
                       after: datetime.datetime) -> datetime.datetime:
    """The first time in ``schedule`` strictly after ``after``, in the same kind of time.

    A naive ``after`` is local wall-clock time and gives a naive answer. An aware one is
    converted to the local zone, and the answer is aware in the local zone (a time skipped by
    a daylight-saving change comes out shifted by the system's rules).

    Raises:
        ValueError: the schedule is empty.
    """
    runs = tuple(schedule)
    if not runs:
        raise ValueError("the schedule is empty")
    local = _local(after)
    candidates = []
    for offset in range(8):  # today's times may all be past; the same weekday next week is not
        day = local.date() + datetime.timedelta(days=offset)
        for run in runs:
            if day.weekday() in run.days:
                wall = datetime.datetime.combine(day, datetime.time(run.hour, run.minute))
                moment = wall if after.tzinfo is None else wall.astimezone()
                if moment > local:
                    candidates.append(moment)
        if candidates:
            return min(candidates)
    raise AssertionError("unreachable: every run has at least one day")


def _local(when: datetime.datetime) -> datetime.datetime:
    return when if when.tzinfo is None else when.astimezone()
