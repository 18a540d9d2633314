"""EtcdArbiter against a real etcd on loopback: one holder at a time, renewals keep the hold,
an expired lease passes to the next host at a higher epoch (and the old holder learns it lost),
release frees it at once, and a dead or hung etcd answers ``reachable=False`` within the
timeout. Each test uses its own scenario name, so they share one etcd."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import etcd3gw
import pytest

from standby.config import ConfigError
from standby.ha.arbiter import EtcdArbiter

from .contract import check_single_host_contract
from .etcdserver import EtcdServer, free_port

LEASE = 2  # seconds: etcd's minimum TTL with its default election timeout
TIMEOUT = 0.8  # the budget of each arbiter call

MakeArbiter = Callable[..., EtcdArbiter]
_scenarios = itertools.count(1)


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    server = EtcdServer(tmp_path_factory.mktemp("etcd") / "data")
    yield server
    server.stop()


@pytest.fixture
def make(etcd: EtcdServer) -> Iterator[MakeArbiter]:
    """Arbiters for hosts of one fresh scenario on the shared etcd."""
    scenario = f"s{next(_scenarios)}"
    made: list[EtcdArbiter] = []

    def make(host: str, *, endpoints: list[str] | None = None, server: EtcdServer = etcd,
             lease: int = LEASE) -> EtcdArbiter:
        arbiter = EtcdArbiter(endpoints or [server.url], scenario, host, lease, TIMEOUT)
        made.append(arbiter)
        return arbiter

    yield make
    for arbiter in made:
        arbiter.close()


def wait_until(condition: Callable[[], bool], within: float) -> float:
    """Poll until ``condition()``; return when it first held (monotonic)."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"not within {within} s"
        time.sleep(0.05)
    return time.monotonic()


def test_single_host_contract(make: MakeArbiter) -> None:
    check_single_host_contract(make("db1"), "db1")


def test_one_host_acquires_and_a_second_cannot_while_the_lease_lives(make: MakeArbiter) -> None:
    first, second = make("db1"), make("db2")
    assert first.try_acquire("db1", 1)
    assert second.try_acquire("db2", 2) is False

    now = time.monotonic()
    seen = second.state(now)
    assert (seen.holder, seen.holder_epoch, seen.highest_epoch) == ("db1", 1, 1)
    assert not seen.we_hold
    assert seen.reachable
    assert seen.expires_at is not None
    assert now < seen.expires_at <= now + LEASE
    assert "db1 holds the etcd lease at epoch 1" in seen.detail

    mine = first.state(now)
    assert mine.we_hold
    assert mine.expires_at is not None
    assert now < mine.expires_at <= now + LEASE


def test_renewals_keep_the_hold_past_the_lease(make: MakeArbiter) -> None:
    holder, other = make("db1"), make("db2")
    assert holder.try_acquire("db1", 1)
    end = time.monotonic() + LEASE + 1
    while time.monotonic() < end:
        assert holder.renew()
        assert other.try_acquire("db2", 2) is False
        time.sleep(0.4)
    state = holder.state(time.monotonic())
    assert state.we_hold
    assert state.holder_epoch == 1


def test_expired_lease_passes_to_the_next_host_with_a_higher_epoch(make: MakeArbiter) -> None:
    old, new = make("db1"), make("db2")
    assert old.try_acquire("db1", 1)
    old_expiry = old.state(time.monotonic()).expires_at
    assert old_expiry is not None

    # The holder stops renewing: etcd deletes the leader key after the lease (its lessor
    # checks every 0.5 s), and nobody holds it; the epoch stays known.
    freed = wait_until(lambda: new.state(time.monotonic()).holder is None, within=LEASE + 2)
    assert freed >= old_expiry, "the old holder's own bound must run out first"
    assert new.state(time.monotonic()).highest_epoch == 1
    assert new.try_acquire("db2", 1) is False, "the epoch must go up"
    assert new.try_acquire("db2", 2)

    # The old holder's view: its bound has passed, renewal fails, the new holder is named.
    assert old.state(time.monotonic()).we_hold is False
    assert old.renew() is False
    seen = old.state(time.monotonic())
    assert (seen.holder, seen.holder_epoch, seen.we_hold) == ("db2", 2, False)
    assert new.state(time.monotonic()).we_hold


def test_release_lets_another_acquire_at_once(make: MakeArbiter) -> None:
    first, second = make("db1"), make("db2")
    assert first.try_acquire("db1", 1)
    first.release()
    assert second.try_acquire("db2", 2)
    assert first.renew() is False
    assert first.state(time.monotonic()).holder == "db2"


def test_exactly_one_of_racing_contenders_wins(make: MakeArbiter) -> None:
    arbiters = [make(f"db{i}") for i in range(6)]
    results: dict[str, bool] = {}
    start = threading.Barrier(len(arbiters))

    def contend(arbiter: EtcdArbiter) -> None:
        start.wait()
        results[arbiter.host] = arbiter.try_acquire(arbiter.host, 1)

    threads = [threading.Thread(target=contend, args=(a,)) for a in arbiters]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    winners = [host for host, won in results.items() if won]
    assert len(results) == len(arbiters)
    assert len(winners) == 1
    assert arbiters[0].state(time.monotonic()).holder == winners[0]


def test_a_restarted_holder_does_not_hold_its_old_lease(make: MakeArbiter) -> None:
    """A returning host learns the holder (itself, before the restart) and the epoch first."""
    assert make("db1").try_acquire("db1", 3)
    restarted = make("db1")
    seen = restarted.state(time.monotonic())
    assert (seen.holder, seen.holder_epoch, seen.we_hold) == ("db1", 3, False)
    assert restarted.renew() is False
    assert restarted.try_acquire("db1", 4) is False


def test_unreadable_leader_key_counts_as_held(make: MakeArbiter, etcd: EtcdServer) -> None:
    arbiter = make("db1")
    raw = etcd3gw.Etcd3Client(host="127.0.0.1", port=int(etcd.url.rsplit(":", 1)[1]),
                              timeout=2, api_path="/v3/")
    try:
        raw.put(f"/standby/{arbiter.scenario}/leader", "not json")
    finally:
        raw.session.close()
    seen = arbiter.state(time.monotonic())
    assert seen.holder == "(unreadable leader key)"
    assert seen.holder_epoch is None
    assert seen.expires_at is None  # no lease: it never runs out
    assert arbiter.try_acquire("db1", 1) is False


def test_a_dead_endpoint_fails_over_to_the_next(make: MakeArbiter, etcd: EtcdServer) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    arbiter = make("db1", endpoints=[dead, etcd.url])
    assert arbiter.try_acquire("db1", 1)
    assert arbiter.renew()
    assert arbiter.state(time.monotonic()).we_hold


def test_hung_then_dead_etcd_is_unreachable_within_the_timeout(
        make: MakeArbiter, tmp_path: Path) -> None:
    server = EtcdServer(tmp_path / "data")
    try:
        holder, other = make("db1", server=server), make("db2", server=server)
        assert holder.try_acquire("db1", 1)
        assert other.state(time.monotonic()).holder == "db1"
        expires_at = holder.state(time.monotonic()).expires_at
        assert expires_at is not None

        server.pause()  # a hang: connections accepted, no answers
        for arbiter in (holder, other):
            started = time.monotonic()
            seen = arbiter.state(started)
            assert time.monotonic() - started < TIMEOUT + 0.5
            assert not seen.reachable
            assert "etcd unreachable" in seen.detail
        assert holder.state(time.monotonic()).we_hold, "within our bound we still hold"
        started = time.monotonic()
        assert holder.renew() is False
        assert time.monotonic() - started < TIMEOUT + 0.5

        server.stop()  # dead: refused at once
        for call in (lambda: holder.renew(), lambda: other.try_acquire("db2", 2),
                     lambda: other.state(time.monotonic()).reachable, holder.release):
            started = time.monotonic()
            assert not call()
            assert time.monotonic() - started < TIMEOUT + 0.5
    finally:
        server.stop()

    # Another host keeps reporting what it saw last, marked unreachable.
    last = other.state(time.monotonic())
    assert (last.holder, last.holder_epoch, last.we_hold, last.reachable) == ("db1", 1, False,
                                                                              False)
    assert "last seen: db1 holds" in last.detail


def test_holder_past_its_bound_is_told_to_stop(make: MakeArbiter, tmp_path: Path) -> None:
    server = EtcdServer(tmp_path / "data")
    try:
        holder = make("db1", server=server)
        assert holder.try_acquire("db1", 1)
        expires_at = holder.state(time.monotonic()).expires_at
        assert expires_at is not None
    finally:
        server.stop()
    within = holder.state(expires_at - 0.1)
    assert (within.we_hold, within.reachable, within.holder) == (True, False, "db1")
    past = holder.state(expires_at + 0.1)
    assert (past.we_hold, past.reachable) == (False, False)
    assert past.expires_at == expires_at
    assert "stop the workload" in past.detail


@pytest.mark.parametrize(("args", "error"), [
    (([], "s", "db1", 2, 1.0), "at least one etcd endpoint"),
    ((["ftp://x"], "s", "db1", 2, 1.0), "not an http"),
    ((["http://127.0.0.1:1"], "s", "db1", 0, 0.5), "lease_seconds"),
    ((["http://127.0.0.1:1"], "s", "db1", 2, 2.0), "below lease_seconds"),
    ((["http://127.0.0.1:1"], "s", "db1", 2, 0), "positive"),
])
def test_bad_arguments_are_refused(args: tuple[list[str], str, str, int, float],
                                   error: str) -> None:
    with pytest.raises(ValueError, match=error):
        EtcdArbiter(*args)


def test_bad_names_are_refused() -> None:
    with pytest.raises(ConfigError, match="scenario name"):
        EtcdArbiter(["http://127.0.0.1:1"], "a/b", "db1", 2, 1.0)
    with pytest.raises(ConfigError, match="host name"):
        EtcdArbiter(["http://127.0.0.1:1"], "s", "", 2, 1.0)


def test_another_hosts_lease_stays_readable_to_its_last_second(make: MakeArbiter) -> None:
    """etcd's gateway leaves zero fields out: in a lease's last second its TTL is missing from
    the answer. That is "0 s left", not an unreachable etcd (which would make a standby refuse
    a failover at exactly the wrong moment)."""
    holder, watcher = make("db1"), make("db2")
    assert holder.try_acquire("db1", 1)
    holder.close()  # no renewals: the lease runs out within LEASE seconds
    unreachable = []
    deadline = time.monotonic() + LEASE + 2
    while time.monotonic() < deadline:
        seen = watcher.state(time.monotonic())
        if not seen.reachable:
            unreachable.append(seen.detail)
        if seen.holder is None:
            break
        time.sleep(0.05)
    assert unreachable == []
    assert watcher.state(time.monotonic()).holder is None
