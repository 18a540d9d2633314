"""The token bucket on fake time (and once on real time), and the weekly timetables."""

from __future__ import annotations

import datetime
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from standby.config import ReplicationOptions
from standby.engine.jobs import Cancelled
from standby.engine.ratelimit import (
    MIN_BURST,
    WAIT_SLICE,
    TokenBucket,
    bandwidth_limit_at,
    next_scheduled_run,
)

MiB = 1024 * 1024
# 2024-01-01 is a Monday: day d of that week is datetime(2024, 1, d).
MON, TUE, FRI, SAT, SUN = 1, 2, 5, 6, 7


class FakeTime:
    """A clock that only moves when slept on; every sleep is recorded."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []
        self.on_sleep: Callable[[int], None] = lambda count: None

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert 0 < seconds <= WAIT_SLICE
        self.sleeps.append(seconds)
        self.now += seconds
        self.on_sleep(len(self.sleeps))


@pytest.fixture
def fake() -> FakeTime:
    return FakeTime()


def bucket(fake: FakeTime, rate: float | None, burst: float | None = None) -> TokenBucket:
    return TokenBucket(rate, burst, clock=fake.clock, sleep=fake.sleep)


def at(day: int, hour: int, minute: int = 0) -> datetime.datetime:
    return datetime.datetime(2024, 1, day, hour, minute)


def options(**fields: object) -> ReplicationOptions:
    return ReplicationOptions.model_validate(fields)


# --- the token bucket ---------------------------------------------------------------------


@pytest.mark.parametrize(("rate", "chunk"), [
    (1 * MiB, 16 * 1024),
    (10 * MiB, 1 * MiB),  # chunks of 0.4 burst
    (100_000, 65_536),    # a slow link: the burst is the 64 KiB floor
    (3 * MiB, 5 * MiB),   # chunks larger than the burst: each one leaves a debt
])
def test_rate_is_respected_over_many_calls(fake: FakeTime, rate: int, chunk: int) -> None:
    """Bytes passed beyond the initial burst match rate x elapsed fake time within 2 %."""
    limiter = bucket(fake, rate)
    start, passed = fake.now, 0
    while fake.now - start < 20.0:
        limiter.consume(chunk)
        passed += chunk
    limiter.consume(1)  # returns once any debt of the last chunk is paid
    elapsed = fake.now - start
    assert abs((passed - limiter.burst) / elapsed - rate) <= 0.02 * rate
    assert all(s <= WAIT_SLICE for s in fake.sleeps)


def test_default_burst_is_a_quarter_second_but_at_least_64kib(fake: FakeTime) -> None:
    assert bucket(fake, 8 * MiB).burst == 2 * MiB
    assert bucket(fake, 1000).burst == MIN_BURST == 64 * 1024
    assert bucket(fake, 8 * MiB, burst=4096).burst == 4096


def test_full_bucket_passes_without_sleeping(fake: FakeTime) -> None:
    """The bucket starts full: the first burst's worth goes at once."""
    limiter = bucket(fake, 1 * MiB, burst=256 * 1024)
    for _ in range(4):
        limiter.consume(64 * 1024)
    assert fake.sleeps == []
    limiter.consume(1)
    assert fake.sleeps != []


def test_request_larger_than_the_burst_passes_then_is_paid_for(fake: FakeTime) -> None:
    """10 MiB through a 64 KiB bucket at 1 MiB/s: passes whole, the next caller pays."""
    limiter = bucket(fake, 1 * MiB, burst=64 * 1024)
    limiter.consume(10 * MiB)  # full bucket: goes at once, 10 MiB - 64 KiB in debt
    assert fake.sleeps == []
    limiter.consume(1)
    assert fake.now - 1000.0 == pytest.approx((10 * MiB - 64 * 1024 + 1) / MiB, rel=1e-3)


def test_set_rate_takes_effect_during_a_wait(fake: FakeTime) -> None:
    """A waiter at 1 KiB/s finishes soon after the rate is raised, not minutes later."""
    limiter = bucket(fake, 1024, burst=1024)
    limiter.consume(1024)  # empty the bucket
    fake.on_sleep = lambda count: limiter.set_rate(100 * MiB) if count == 3 else None
    limiter.consume(1024 * 1024)  # ~17 minutes at 1 KiB/s
    assert fake.now - 1000.0 < 0.5
    assert limiter.rate == 100 * MiB


def test_set_rate_to_unlimited_releases_a_waiter(fake: FakeTime) -> None:
    limiter = bucket(fake, 1024)
    limiter.consume(MIN_BURST)
    fake.on_sleep = lambda count: limiter.set_rate(0) if count == 2 else None
    limiter.consume(1 << 30)
    assert len(fake.sleeps) == 2
    assert limiter.rate is None


def test_leaving_unlimited_starts_with_a_full_bucket(fake: FakeTime) -> None:
    limiter = bucket(fake, None)
    limiter.consume(1 << 40)
    limiter.set_rate(1 * MiB)
    limiter.consume(256 * 1024)  # one burst: no wait, no debt carried from unlimited time
    assert fake.sleeps == []


def test_cancel_ends_a_wait(fake: FakeTime) -> None:
    """Setting the event while waiting raises Cancelled within one slice; nothing is taken."""
    limiter = bucket(fake, 1024, burst=1024)
    limiter.consume(1024)
    stop = threading.Event()
    fake.on_sleep = lambda count: stop.set() if count == 5 else None
    with pytest.raises(Cancelled):
        limiter.consume(1024 * 1024, stop)
    assert len(fake.sleeps) == 5
    assert fake.now - 1000.0 == pytest.approx(5 * WAIT_SLICE)


def test_cancelled_before_the_call_takes_nothing(fake: FakeTime) -> None:
    stop = threading.Event()
    stop.set()
    limiter = bucket(fake, None)
    with pytest.raises(Cancelled):
        limiter.consume(1, stop)


@pytest.mark.parametrize("rate", [None, 0])
def test_unlimited_never_sleeps(fake: FakeTime, rate: float | None) -> None:
    limiter = bucket(fake, rate)
    for _ in range(1000):
        limiter.consume(1 << 30, threading.Event())
    assert fake.sleeps == []
    assert limiter.rate is None


def test_bad_arguments_are_refused(fake: FakeTime) -> None:
    with pytest.raises(ValueError, match="rate must be"):
        bucket(fake, -1)
    with pytest.raises(ValueError, match="burst must be positive"):
        bucket(fake, 1, burst=0)
    with pytest.raises(ValueError, match="negative"):
        bucket(fake, 1).consume(-1)


def test_repr_shows_the_state(fake: FakeTime) -> None:
    assert repr(bucket(fake, 1 * MiB)) == "<TokenBucket 1048576 B/s, burst=262144, tokens=262144>"
    assert repr(bucket(fake, None)).startswith("<TokenBucket unlimited")


def test_real_clock_two_threads_share_2mb_per_second() -> None:
    """On real time, two senders sharing a 2 MB/s bucket move 1 MB in about half a second."""
    limiter = TokenBucket(2_000_000, burst=64 * 1024)
    chunk, per_thread = 16 * 1024, 500_000

    def send() -> None:
        for _ in range(per_thread // chunk):
            limiter.consume(chunk)

    threads = [threading.Thread(target=send) for _ in range(2)]
    start = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.monotonic() - start
    expected = (2 * (per_thread // chunk) * chunk - 64 * 1024) / 2_000_000  # ~0.46 s
    assert expected * 0.8 < elapsed < expected * 2.5


# --- bandwidth schedules --------------------------------------------------------------------


OFFICE = options(
    bandwidth_limit="10MiB",
    bandwidth_schedule=[
        {"days": "Mon-Fri", "hours": "08-18", "limit": "2MiB"},
        {"days": "Fri", "hours": "22-06", "limit": 0},  # Friday night: unlimited
        {"days": "Mon-Sun", "hours": "12-14", "limit": "5MiB"},  # shadowed on weekdays
    ],
)


@pytest.mark.parametrize(("when", "expected"), [
    (at(MON, 8), 2 * MiB),           # start hour is inside
    (at(MON, 17, 59), 2 * MiB),
    (at(MON, 18), 10 * MiB),         # end hour is not
    (at(MON, 7, 59), 10 * MiB),
    (at(TUE, 13), 2 * MiB),          # first match wins over the 12-14 entry
    (at(SAT, 13), 5 * MiB),          # ... which applies on the weekend
    (at(FRI, 22), None),             # the wrapping window on its own day
    (at(SAT, 5, 59), None),          # and after midnight, on the next day
    (at(SAT, 6), 10 * MiB),
    (at(MON, 2), 10 * MiB),          # Sunday is not in the window's days
    (at(FRI, 2), 10 * MiB),          # Friday early hours belong to Thursday's night
])
def test_bandwidth_limit_at(when: datetime.datetime, expected: int | None) -> None:
    assert bandwidth_limit_at(OFFICE, when) == expected


def test_no_schedule_means_the_plain_limit() -> None:
    assert bandwidth_limit_at(options(), at(MON, 12)) is None
    assert bandwidth_limit_at(options(bandwidth_limit="1MiB"), at(SUN, 3)) == MiB


def test_wrapping_window_across_the_week_end() -> None:
    """Sunday 22-06 reaches into Monday morning, and only Monday's."""
    sunday_nights = options(bandwidth_limit="1MiB",
                            bandwidth_schedule=[{"days": "Sun", "hours": "22-06", "limit": "8MiB"}])
    assert bandwidth_limit_at(sunday_nights, at(SUN, 23)) == 8 * MiB
    assert bandwidth_limit_at(sunday_nights, datetime.datetime(2024, 1, 8, 3)) == 8 * MiB
    assert bandwidth_limit_at(sunday_nights, datetime.datetime(2024, 1, 8, 6)) == MiB
    assert bandwidth_limit_at(sunday_nights, at(SUN, 3)) == MiB  # Saturday is not a day of it
    assert bandwidth_limit_at(sunday_nights, at(TUE, 3)) == MiB


@pytest.fixture
def local_zone(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[str], None]]:
    """Set the process's local time zone for one test (POSIX TZ strings need no tz files)."""
    def set_zone(tz: str) -> None:
        monkeypatch.setenv("TZ", tz)
        time.tzset()

    yield set_zone
    monkeypatch.undo()
    time.tzset()


def test_aware_times_are_read_in_local_time(local_zone: Callable[[str], None]) -> None:
    """07:30 UTC is 09:30 in a UTC+2 zone: inside the 08-18 window."""
    local_zone("XST-2")
    utc = datetime.datetime(2024, 1, 5, 7, 30, tzinfo=datetime.UTC)
    assert bandwidth_limit_at(OFFICE, utc) == 2 * MiB
    assert bandwidth_limit_at(OFFICE, utc.replace(tzinfo=None)) == 10 * MiB


# --- scheduled synchronizations ----------------------------------------------------------------


def runs(*entries: str) -> ReplicationOptions:
    return options(mode="scheduled", schedule=list(entries))


@pytest.mark.parametrize(("after", "expected"), [
    (at(MON, 1), at(MON, 2)),
    (at(MON, 2), at(TUE, 2)),          # strictly after: not the same minute again
    (at(FRI, 3), at(SUN, 23, 30)),     # past Friday's run: the weekend entry
    (at(SUN, 23, 30), datetime.datetime(2024, 1, 8, 2)),  # across the week end to Monday
    (at(SAT, 0), at(SUN, 23, 30)),
])
def test_next_scheduled_run(after: datetime.datetime, expected: datetime.datetime) -> None:
    schedule = runs("Mon-Fri 02:00", "Sun 23:30").schedule
    assert next_scheduled_run(schedule, after) == expected


def test_next_run_of_a_weekly_entry_can_be_a_week_away() -> None:
    schedule = runs("Wed 09:15").schedule
    wednesday = datetime.datetime(2024, 1, 3, 9, 15)
    assert next_scheduled_run(schedule, wednesday) == datetime.datetime(2024, 1, 10, 9, 15)
    assert next_scheduled_run(schedule, wednesday - datetime.timedelta(seconds=1)) == wednesday


def test_next_run_picks_the_earliest_of_several_entries_on_one_day() -> None:
    schedule = runs("daily 23:00", "Mon,Wed,Fri 12:00", "daily 03:15").schedule
    assert next_scheduled_run(schedule, at(MON, 4)) == at(MON, 12)
    assert next_scheduled_run(schedule, at(TUE, 4)) == at(TUE, 23)
    assert next_scheduled_run(schedule, at(TUE, 23, 1)) == datetime.datetime(2024, 1, 3, 3, 15)


def test_next_run_of_an_aware_time_is_aware_local(local_zone: Callable[[str], None]) -> None:
    """23:30 UTC Friday is 01:30 Saturday at UTC+2; the Saturday 02:00 run is 00:00 UTC."""
    local_zone("XST-2")
    after = datetime.datetime(2024, 1, 5, 23, 30, tzinfo=datetime.UTC)
    due = next_scheduled_run(runs("Sat 02:00").schedule, after)
    assert due == datetime.datetime(2024, 1, 6, 0, 0, tzinfo=datetime.UTC)
    assert (due.hour, due.utcoffset()) == (2, datetime.timedelta(hours=2))


def test_empty_schedule_is_refused() -> None:
    with pytest.raises(ValueError, match="empty"):
        next_scheduled_run((), at(MON, 0))
