"""DNS redirection against a real BIND9 ``named`` on 127.0.0.1, started by these tests.

The server runs from a temporary directory (configuration, zone, journal, pid file) on a free
high port with no control channel, so it touches nothing of the system's own BIND.
"""

from __future__ import annotations

import base64
import os
import socket
import threading
import time
from collections.abc import Iterator

import dns.exception
import dns.message
import dns.query
import dns.rdatatype
import dns.tsig
import dns.update
import pytest

from standby.ha.redirect import (
    DnsRecord,
    DnsRedirect,
    DnsRedirectError,
    Redirect,
    RedirectError,
    StaleEpochError,
)
from tests.dnsserver import KEY, NAMED, ZONE, Named, start_named

pytestmark = pytest.mark.skipif(not os.path.exists(NAMED), reason="BIND9 named is not installed")


@pytest.fixture(scope="module")
def named(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Named]:
    """A BIND9 server with one zone that accepts updates signed by a fresh TSIG key."""
    with start_named(tmp_path_factory.mktemp("named")) as server:
        yield server


def _redirect(named: Named, name: str, *, secret: str | None = None, key: str = KEY,
              timeout: float = 3.0) -> DnsRedirect:
    return DnsRedirect("127.0.0.1", named.port, ZONE, name, key,
                       secret if secret is not None else named.secret, timeout=timeout)


def _lookup(named: Named, name: str, rdtype: str = "A") -> list[str]:
    """What any client asking the server sees (an unsigned query)."""
    response = dns.query.udp(dns.message.make_query(f"{name}.{ZONE}", rdtype), "127.0.0.1", 2,
                             named.port)
    return sorted(rd.to_text() for rrset in response.answer
                  if rrset.rdtype == dns.rdatatype.from_text(rdtype) for rd in rrset)


def test_point_to_sets_the_address_and_the_epoch(named: Named) -> None:
    """The first update creates the A record and the epoch record; clients see the address."""
    redirect = _redirect(named, "svc1")

    assert DnsRecord(None, 0) == redirect.current()
    redirect.point_to("10.1.0.11", 1)

    assert _lookup(named, "svc1") == ["10.1.0.11"]
    assert _lookup(named, "_standby-epoch.svc1", "TXT") == ['"standby-epoch=1"']
    assert redirect.current() == ("10.1.0.11", 1)


def test_a_higher_epoch_moves_the_name(named: Named) -> None:
    """Epoch 2 from another host moves the record; epoch 3 moves it again."""
    redirect = _redirect(named, "svc2")
    redirect.point_to("10.1.0.11", 1)

    redirect.point_to("10.1.0.12", 2)
    assert _lookup(named, "svc2") == ["10.1.0.12"]
    _redirect(named, "svc2").point_to("10.1.0.11", 3)

    assert redirect.current() == ("10.1.0.11", 3)


def test_an_older_or_equal_epoch_is_refused_and_changes_nothing(named: Named) -> None:
    """A stale host (epoch 1, or a second host claiming the same epoch 2) cannot swing it back."""
    redirect = _redirect(named, "svc3")
    redirect.point_to("10.1.0.11", 1)
    redirect.point_to("10.1.0.12", 2)

    with pytest.raises(StaleEpochError) as older:
        redirect.point_to("10.1.0.11", 1)
    with pytest.raises(StaleEpochError) as same:
        redirect.point_to("10.1.0.13", 2)

    assert (older.value.ours, older.value.current) == (1, 2)
    assert (same.value.ours, same.value.current) == (2, 2)
    assert "step down" in str(older.value)
    assert redirect.current() == ("10.1.0.12", 2)


def test_a_stale_belief_is_refused_by_the_server(named: Named) -> None:
    """Even a host that skips the read (its belief is old) is stopped by the prerequisite."""
    redirect = _redirect(named, "svc4")
    redirect.point_to("10.1.0.11", 1)
    redirect.point_to("10.1.0.12", 5)

    with pytest.raises(DnsRedirectError) as refused:
        redirect.point_to("10.1.0.11", 3, seen=DnsRecord("10.1.0.11", 1))

    assert refused.value.rcode == "NXRRSET"
    assert refused.value.lost_race
    assert "epoch 5" in str(refused.value)
    assert redirect.current() == ("10.1.0.12", 5)


def test_repeating_the_same_update_is_a_no_op(named: Named) -> None:
    """A retry after a lost answer (same epoch, same address) succeeds without a change."""
    redirect = _redirect(named, "svc5")
    redirect.point_to("10.1.0.11", 4)

    redirect.point_to("10.1.0.11", 4)

    assert redirect.current() == ("10.1.0.11", 4)


def test_aaaa_for_an_ipv6_address(named: Named) -> None:
    """An IPv6 address goes into an AAAA record, and the A record of the old host goes away."""
    redirect = _redirect(named, "svc6")
    redirect.point_to("10.1.0.11", 1)

    redirect.point_to("fd00::10", 2)

    assert _lookup(named, "svc6", "AAAA") == ["fd00::10"]
    assert _lookup(named, "svc6", "A") == []
    assert redirect.current() == ("fd00::10", 2)


def test_a_wrong_secret_gets_badsig(named: Named) -> None:
    """The server rejects our signature: BADSIG, whether on the read or on the update itself."""
    good = _redirect(named, "svc7")
    good.point_to("10.1.0.11", 1)
    wrong = _redirect(named, "svc7", secret=base64.b64encode(b"x" * 32).decode())

    with pytest.raises(DnsRedirectError) as on_read:
        wrong.point_to("10.1.0.12", 2)
    with pytest.raises(DnsRedirectError) as on_update:
        wrong.point_to("10.1.0.12", 2, seen=DnsRecord("10.1.0.11", 1))

    assert (on_read.value.rcode, on_update.value.rcode) == ("BADSIG", "BADSIG")
    assert "secret" in str(on_update.value)
    assert good.current() == ("10.1.0.11", 1)


def test_an_unknown_key_gets_badkey(named: Named) -> None:
    """A key name the server does not know: BADKEY, and a message naming the key."""
    wrong = _redirect(named, "svc8", key="no-such-key")

    with pytest.raises(DnsRedirectError) as refused:
        wrong.point_to("10.1.0.12", 1, seen=DnsRecord(None, 0))

    assert refused.value.rcode == "BADKEY"
    assert "no-such-key" in str(refused.value)
    assert _lookup(named, "svc8") == []


def test_racing_hosts_with_the_same_belief_leave_one_winner(named: Named) -> None:
    """Both read epoch 1, both send epoch 2: the second update fails with NXRRSET."""
    host_a, host_b = _redirect(named, "svc9"), _redirect(named, "svc9")
    host_a.point_to("10.1.0.11", 1)
    seen_a, seen_b = host_a.current(), host_b.current()

    host_a.point_to("10.1.0.12", 2, seen=seen_a)
    with pytest.raises(DnsRedirectError) as lost:
        host_b.point_to("10.1.0.13", 2, seen=seen_b)

    assert lost.value.rcode == "NXRRSET"
    assert _lookup(named, "svc9") == ["10.1.0.12"]


def test_racing_first_updates_leave_one_winner(named: Named) -> None:
    """Both see no epoch record and create it: the second gets YXRRSET."""
    host_a, host_b = _redirect(named, "svc10"), _redirect(named, "svc10")
    seen_a, seen_b = host_a.current(), host_b.current()

    host_a.point_to("10.1.0.12", 1, seen=seen_a)
    with pytest.raises(DnsRedirectError) as lost:
        host_b.point_to("10.1.0.13", 1, seen=seen_b)

    assert lost.value.rcode == "YXRRSET"
    assert _lookup(named, "svc10") == ["10.1.0.12"]


def test_concurrent_hosts_leave_exactly_one_winner(named: Named) -> None:
    """Threads racing for real, several rounds: every round has exactly one winner, and the
    record holds the winner's address."""
    for epoch in range(1, 6):
        barrier = threading.Barrier(4)
        outcomes: dict[str, str] = {}

        def race(address: str, epoch: int = epoch, barrier: threading.Barrier = barrier,
                 outcomes: dict[str, str] = outcomes) -> None:
            redirect = _redirect(named, "svc11")
            barrier.wait()
            try:
                redirect.point_to(address, epoch)
                outcomes[address] = "won"
            except RedirectError as e:
                outcomes[address] = type(e).__name__

        threads = [threading.Thread(target=race, args=(f"10.1.0.{20 + i}",)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

        winners = [a for a, outcome in outcomes.items() if outcome == "won"]
        assert len(winners) == 1, outcomes
        assert (winners[0], epoch) == _redirect(named, "svc11").current()


def test_apply_is_the_redirect_protocol(named: Named) -> None:
    """The controller's view: apply(host, address, epoch); release() holds nothing."""
    redirect: Redirect = _redirect(named, "svc12")

    redirect.apply("node-b", "10.1.0.12", 7)
    redirect.release()

    assert _lookup(named, "svc12") == ["10.1.0.12"]
    with pytest.raises(RedirectError, match="needs the address of node-b"):
        redirect.apply("node-b", None, 8)


def test_a_silent_server_times_out(named: Named) -> None:
    """No answer within the timeout: DnsRedirectError without an rcode."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        redirect = DnsRedirect("127.0.0.1", silent.getsockname()[1], ZONE, "svc", KEY,
                               named.secret, timeout=0.3)
        started = time.monotonic()
        with pytest.raises(DnsRedirectError, match="no answer") as refused:
            redirect.current()

    assert refused.value.rcode is None
    assert time.monotonic() - started < 2


def test_a_hand_edited_epoch_record_stops_updates(named: Named) -> None:
    """An epoch record standby did not write is never guessed at: the message says how to fix."""
    redirect = _redirect(named, "svc13")
    redirect.point_to("10.1.0.11", 1)
    update = dns.update.UpdateMessage(ZONE)  # what an operator's nsupdate would send
    update.use_tsig(dns.tsig.Key(KEY, named.secret))
    update.replace(f"_standby-epoch.svc13.{ZONE}", 60, "TXT", '"something else"')
    dns.query.tcp(update, "127.0.0.1", 2, named.port)

    with pytest.raises(DnsRedirectError, match="not written by standby"):
        redirect.point_to("10.1.0.12", 2)
    assert _lookup(named, "svc13") == ["10.1.0.11"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"server": "ns.example"}, "does not appear to be an IPv4 or IPv6 address"),
        ({"name": "svc.other.test."}, "not inside zone"),
        ({"key_secret": "not base64!"}, "not base64"),
        ({"key_algorithm": "hmac-sha3"}, "unknown TSIG algorithm"),
    ],
)
def test_arguments_that_can_never_work_are_refused(kwargs: dict[str, str], message: str) -> None:
    """Configuration mistakes fail at construction, not at failover time."""
    args = {"server": "127.0.0.1", "port": 53, "zone": ZONE, "name": "svc",
            "key_name": KEY, "key_secret": base64.b64encode(b"k" * 32).decode()} | kwargs

    with pytest.raises(ValueError, match=message):
        DnsRedirect(**args)  # type: ignore[arg-type]
