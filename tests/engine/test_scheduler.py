"""Scheduled mode: a synchronization at each configured time, with a real engine and its peer
server (the scenario replicates between two roots of one engine). The scheduler's clock is set
a second before a scheduled minute, so the test waits one second, not up to one minute."""

from __future__ import annotations

import datetime
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from standby.config import parse_scenario
from standby.engine.engine import Engine
from standby.engine.scheduler import ScheduledSync
from standby.engine.server import PeerServer


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = Engine(tmp_path / "home", name="alpha")
    server = PeerServer(engine, "127.0.0.1", 0)
    engine.peer_address = f"127.0.0.1:{server.port}"
    server.start()
    yield engine
    server.stop()
    engine.close()


def test_a_scheduled_synchronization_runs_at_its_time(engine: Engine, tmp_path: Path) -> None:
    master, replica = tmp_path / "m", tmp_path / "r"
    master.mkdir()
    (master / "a.txt").write_text("copied at the scheduled time\n")
    real = datetime.datetime.now().astimezone()
    due = (real + datetime.timedelta(minutes=2)).replace(second=0, microsecond=0)
    offset = (due - datetime.timedelta(seconds=1)) - real  # our clock: 1 s before `due`
    text = (f'name = "nightly"\nmaster = "alpha"\nreplica = "alpha"\n'
            f'[[roots]]\nmaster = "{master}"\nreplica = "{replica}"\n'
            f'[replication]\nmode = "scheduled"\nschedule = ["daily {due:%H:%M}"]\n')
    engine.add_scenario(text, "nightly.toml")
    scenario = parse_scenario(text)
    scheduler = ScheduledSync(engine, scenario,
                              now=lambda: datetime.datetime.now().astimezone() + offset)
    started = time.monotonic()
    scheduler.start()
    try:
        deadline = time.monotonic() + 30
        while scheduler.last_job is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert scheduler.last_job is not None, "no synchronization started"
        waited = time.monotonic() - started
        assert 0.8 <= waited < 5, waited  # at the scheduled time, not before
        job = engine.job(scheduler.last_job, wait=30)
        assert job["state"] == "succeeded", job
        assert (replica / "a.txt").read_text() == "copied at the scheduled time\n"
        assert scheduler.status()["next_run"] is not None
    finally:
        scheduler.stop()
