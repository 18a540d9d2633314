"""Is Alive extra checks: the ICMP codec and heartbeat bookkeeping as pure code, then every check
against real sockets, real ICMP and real processes, all on this machine (a network namespace of
our own stands in for hosts that do not answer)."""

from __future__ import annotations

import concurrent.futures
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from standby.ha.checks import (
    ICMP6_ECHO_REPLY,
    ICMP_DEST_UNREACH,
    ICMP_ECHO_REPLY,
    RESULT_MARGIN,
    TAIL_BYTES,
    Check,
    CheckResult,
    Heartbeats,
    IcmpCheck,
    IcmpMessage,
    PeerLiveness,
    ScriptCheck,
    TcpCheck,
    echo_request,
    icmp_checksum,
    parse_icmp,
    run_checks,
)

# --- pure: the ICMP codec -----------------------------------------------------------------------


def test_checksum_matches_rfc1071_example() -> None:
    """RFC 1071 section 3: the words 0001 f203 f4f5 f6f7 sum to ddf2; the checksum is 220d."""
    assert icmp_checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0x220D


def test_echo_request_checksum_verifies_and_odd_payloads_pad() -> None:
    """A packet carrying its own checksum sums to zero, whatever the payload length."""
    for payload in (b"", b"x", b"standby!", bytes(range(33))):
        packet = echo_request(0x1234, 7, payload)
        assert icmp_checksum(packet) == 0
        assert packet[:1] == b"\x08"
        assert struct.unpack("!HH", packet[4:8]) == (0x1234, 7)


def test_echo_request_v6_leaves_checksum_to_the_kernel() -> None:
    """ICMPv6's checksum needs the addresses (a pseudo-header): the kernel fills it in."""
    assert echo_request(1, 2, b"ab", v6=True) == bytes([128, 0, 0, 0, 0, 1, 0, 2]) + b"ab"


def _ipv4_header(protocol: int = 1) -> bytes:
    return bytes([0x45, 0, 0, 0, 0, 0, 0, 0, 64, protocol, 0, 0]) + bytes(8)


def _reply(ident: int, seq: int, payload: bytes, kind: int = ICMP_ECHO_REPLY) -> bytes:
    return struct.pack("!BBHHH", kind, 0, 0, ident, seq) + payload


def test_parse_reply_with_and_without_ip_header() -> None:
    """Raw IPv4 sockets hand over the IP header (its length from IHL); ping sockets do not."""
    bare = _reply(5, 2, b"token")
    expected = IcmpMessage("reply", 5, 2, b"token")
    assert parse_icmp(bare) == expected
    assert parse_icmp(_ipv4_header() + bare, ip_header=True) == expected
    options = bytes([0x46]) + _ipv4_header()[1:] + bytes(4)  # IHL 6: 24-byte header
    assert parse_icmp(options + bare, ip_header=True) == expected
    assert parse_icmp(_reply(5, 2, b"t", ICMP6_ECHO_REPLY), v6=True) == IcmpMessage(
        "reply", 5, 2, b"t")


def test_parse_unreachable_quoting_our_request() -> None:
    """An error quotes the offending packet: its IP header, then our echo header."""
    quote = _ipv4_header() + echo_request(9, 3, b"")
    error = struct.pack("!BBHI", ICMP_DEST_UNREACH, 1, 0, 0) + quote
    assert parse_icmp(_ipv4_header() + error, ip_header=True) == IcmpMessage(
        "unreachable", 9, 3, b"")
    v6_error = struct.pack("!BBHI", 1, 3, 0, 0) + bytes(40) + echo_request(9, 4, b"", v6=True)
    assert parse_icmp(v6_error, v6=True) == IcmpMessage("unreachable", 9, 4, b"")


def test_parse_ignores_other_traffic_and_garbage() -> None:
    """Requests (a raw socket sees ours on loopback), other types, short packets: None."""
    assert parse_icmp(echo_request(1, 1, b"x")) is None
    assert parse_icmp(struct.pack("!BBHI", 13, 0, 0, 0)) is None  # timestamp request
    assert parse_icmp(b"\x00\x00\x00") is None
    assert parse_icmp(b"\x45" * 10, ip_header=True) is None
    quoting_other = struct.pack("!BBHI", ICMP_DEST_UNREACH, 1, 0, 0) + _ipv4_header(17) + bytes(8)
    assert parse_icmp(quoting_other) is None
    assert parse_icmp(struct.pack("!BBHI", ICMP_DEST_UNREACH, 1, 0, 0) + bytes(5)) is None


# --- pure: heartbeats ---------------------------------------------------------------------------


def test_peer_never_heard_gets_a_full_timeout_from_start() -> None:
    """A fresh tracker does not declare its peers dead at once."""
    beats = Heartbeats(["b"], timeout=10.0, started=100.0)
    assert beats.last_heard("b") is None
    assert not beats.is_dead("b", now=109.9)
    assert beats.is_dead("b", now=110.0)


def test_heartbeats_track_the_latest_time_per_peer() -> None:
    """Late (older) reports change nothing; silence counts from the newest heartbeat."""
    beats = Heartbeats(["b", "c"], timeout=10.0, started=0.0)
    beats.heard("b", at=50.0)
    beats.heard("b", at=40.0)
    beats.heard("d", at=55.0)  # a peer added later
    assert beats.last_heard("b") == 50.0
    assert beats.silence("b", now=58.0) == 8.0
    assert beats.snapshot(now=60.0) == (
        PeerLiveness("b", 50.0, 10.0, True),
        PeerLiveness("c", None, 60.0, True),
        PeerLiveness("d", 55.0, 5.0, False),
    )
    assert repr(beats) == "<Heartbeats timeout=10 s peers=['b', 'c', 'd']>"


def test_invalid_parameters_are_refused() -> None:
    """Timeouts must be positive, ports in range, argv lists non-empty."""
    with pytest.raises(ValueError, match="timeout"):
        Heartbeats([], timeout=0, started=0)
    with pytest.raises(ValueError, match="port"):
        TcpCheck("127.0.0.1", 0)
    with pytest.raises(ValueError, match="timeout"):
        IcmpCheck("127.0.0.1", timeout=-1)
    with pytest.raises(ValueError, match="empty"):
        ScriptCheck([])


# --- TCP ----------------------------------------------------------------------------------------


def test_tcp_check_connects_to_a_listening_socket() -> None:
    """A listening socket accepts (the kernel completes the handshake from the backlog)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        result = TcpCheck("127.0.0.1", port, timeout=2).run()
    assert (result.name, result.ok, result.detail) == (f"tcp 127.0.0.1:{port}", True, "connected")


def test_tcp_check_fails_on_a_closed_port() -> None:
    """A port nobody listens on is refused at once."""
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port = probe.getsockname()[1]
    result = TcpCheck("127.0.0.1", port, timeout=2).run()
    assert (result.ok, result.detail) == (False, "connection refused")
    assert result.duration < 1


# --- ICMP ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_icmp_check_gets_an_echo_reply_on_loopback(host: str) -> None:
    """An echo request to loopback is answered (raw socket: the tests run as root)."""
    result = IcmpCheck(host, timeout=2).run()
    assert result.ok, result.detail
    assert result.detail.startswith(f"echo reply from {host} in ")


def test_concurrent_icmp_checks_each_match_their_own_reply() -> None:
    """A raw socket sees every echo reply on the host: each check takes only its own."""
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: IcmpCheck("127.0.0.1", timeout=2).run(), range(8)))
    assert [r.ok for r in results] == [True] * 8


NETNS_PROBE = """
import json, sys
from standby.ha.checks import IcmpCheck

def show(check):
    result = check.run()
    print(json.dumps([check.host, check.mode, result.ok, result.detail, result.duration]))

show(IcmpCheck("127.0.0.1", timeout=1))
show(IcmpCheck("10.213.0.2", timeout=1))   # on the link, never answers
show(IcmpCheck("10.214.0.1", timeout=1))   # no route
with open("/proc/sys/net/ipv4/ping_group_range", "w") as f:   # this namespace's own setting
    f.write("0 0")
show(IcmpCheck("127.0.0.1", timeout=1, mode="dgram"))
show(IcmpCheck("::1", timeout=1, mode="dgram"))
"""


@pytest.fixture(scope="module")
def silent_namespace() -> Iterator[str]:
    """A network namespace with loopback up and a veth link 10.213.0.1/24 whose neighbour
    10.213.0.2 has a permanent MAC entry: packets to it leave and nothing ever answers,
    like a dead host on the LAN. Nothing leaves this machine."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 for a network namespace")
    name = f"sbchk{os.getpid()}"
    steps = [
        ["ip", "netns", "add", name],
        ["ip", "-n", name, "link", "set", "lo", "up"],
        ["ip", "-n", name, "link", "add", "sb0", "type", "veth", "peer", "name", "sb1"],
        ["ip", "-n", name, "addr", "add", "10.213.0.1/24", "dev", "sb0"],
        ["ip", "-n", name, "link", "set", "sb0", "up"],
        ["ip", "-n", name, "link", "set", "sb1", "up"],
        ["ip", "-n", name, "neigh", "add", "10.213.0.2", "lladdr", "02:00:00:00:02:13",
         "dev", "sb0", "nud", "permanent"],
    ]
    try:
        for step in steps:
            subprocess.run(step, check=True, capture_output=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def test_icmp_in_a_namespace_silent_host_no_route_and_ping_sockets(silent_namespace: str) -> None:
    """Inside our namespace: loopback answers; a silent neighbour fails at the timeout after all
    attempts; a destination without a route fails at once; the unprivileged ping socket works
    once the namespace's ping_group_range includes our group."""
    done = subprocess.run(
        ["ip", "netns", "exec", silent_namespace, sys.executable, "-c", NETNS_PROBE],
        check=True, capture_output=True, text=True, timeout=30)
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    by_case = {(host, mode): (ok, detail, duration) for host, mode, ok, detail, duration in rows}

    assert by_case["127.0.0.1", "auto"][0] is True
    ok, detail, duration = by_case["10.213.0.2", "auto"]
    assert (ok, detail) == (False, "no echo reply from 10.213.0.2 within 1 s (3 requests sent)")
    assert 1.0 <= duration < 2.0
    ok, detail, duration = by_case["10.214.0.1", "auto"]
    assert (ok, detail) == (False, "network is unreachable")
    assert duration < 0.5
    assert by_case["127.0.0.1", "dgram"][0] is True
    assert by_case["::1", "dgram"][0] is True


# --- scripts ------------------------------------------------------------------------------------


def _live_group_members(pgid: int) -> list[int]:
    """Processes of process group ``pgid`` that are not zombies (a killed orphan stays a zombie
    until init reaps it; it runs nothing)."""
    live = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state not in ("Z", "X"):
            live.append(int(stat.parent.name))
    return live


def test_script_check_healthy_on_exit_zero_with_env() -> None:
    """Exit 0 is healthy; ``env`` is added to the environment."""
    result = ScriptCheck('test "$DISK" = /srv', timeout=5, env={"DISK": "/srv"}).run()
    assert (result.name, result.ok, result.detail) == (
        'script test "$DISK" = /srv', True, "exited with status 0")


def test_script_check_failure_carries_the_output_tail() -> None:
    """A non-zero exit fails; stdout and stderr reach the detail, for the event message."""
    result = ScriptCheck(["/bin/sh", "-c", "echo checking; echo 'disk /srv is full' >&2; exit 3"],
                         timeout=5).run()
    assert (result.name, result.ok) == (
        "script /bin/sh -c 'echo checking; echo '\"'\"'disk /srv is full'\"'\"' >&2; exit 3'",
        False)
    assert result.detail == "exited with status 3: checking\ndisk /srv is full"


def test_script_check_keeps_only_the_tail_of_long_output() -> None:
    """Long output is cut to its last TAIL_BYTES, at a line boundary, marked with '...'."""
    script = "for i in $(seq 1 2000); do echo line $i; done; exit 1"
    result = ScriptCheck(script, timeout=5).run()
    assert result.detail.startswith("exited with status 1: ...line ")
    assert result.detail.endswith("line 1999\nline 2000")
    assert len(result.detail) < TAIL_BYTES + 40


def test_script_check_missing_program_fails() -> None:
    """A script that cannot start fails with the reason, not an exception."""
    result = ScriptCheck(["/nonexistent/check-db"], timeout=5).run()
    assert not result.ok
    assert result.detail == "could not start: no such file or directory: /nonexistent/check-db"


def test_hanging_script_is_killed_with_its_process_group_at_the_timeout() -> None:
    """A script that hangs (with a background child) is killed, children included, at its
    timeout; it counts as failed and what it printed before hanging is kept."""
    started = time.monotonic()
    result = ScriptCheck("echo pgid $$; sleep 30 & sleep 30", timeout=0.5).run()
    elapsed = time.monotonic() - started

    assert elapsed < 0.5 + 1
    assert not result.ok
    assert result.detail.startswith("killed at its 0.5 s timeout: pgid ")
    pgid = int(result.detail.rpartition(" ")[2])
    deadline = time.monotonic() + 1  # SIGKILL is delivered asynchronously
    while _live_group_members(pgid) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _live_group_members(pgid) == []


# --- running checks together --------------------------------------------------------------------


class Stubborn:
    """A misbehaving check: ignores its timeout until released."""

    name = "stubborn"
    timeout = 0.5

    def __init__(self) -> None:
        self.release = threading.Event()

    def run(self) -> CheckResult:
        self.release.wait(10)
        return CheckResult(self.name, True, "late", 10)


class Broken:
    name = "broken"
    timeout = 0.5

    def run(self) -> CheckResult:
        raise RuntimeError("bug in a check")


def test_run_checks_returns_within_the_largest_timeout_whatever_the_checks_do() -> None:
    """Checks run concurrently; a hung script is killed at its timeout, a check that ignores its
    timeout is abandoned at max(timeout) + margin, a check that raises fails; order is kept."""
    stubborn = Stubborn()
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        checks: list[Check] = [TcpCheck("127.0.0.1", port, timeout=1), IcmpCheck("127.0.0.1", timeout=1),
                  ScriptCheck("sleep 30", timeout=1), stubborn, Broken(),
                  *[ScriptCheck("sleep 0.5", timeout=1) for _ in range(4)]]
        started = time.monotonic()
        try:
            results = run_checks(checks)
        finally:
            stubborn.release.set()
        elapsed = time.monotonic() - started

    assert elapsed < 1 + RESULT_MARGIN + 0.5
    assert [r.name for r in results] == [c.name for c in checks]
    assert [r.ok for r in results] == [True, True, False, False, False, True, True, True, True]
    assert results[2].detail.startswith("killed at its 1 s timeout")
    assert results[3].detail == "no result within 1.5 s (its timeout is 0.5 s)"
    assert results[4].detail == "check raised RuntimeError: bug in a check"


def test_run_checks_in_a_given_executor() -> None:
    """With the caller's pool, the checks still run concurrently and the pool stays usable."""
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        started = time.monotonic()
        results = run_checks([ScriptCheck("sleep 0.3", timeout=2) for _ in range(4)], pool)
        elapsed = time.monotonic() - started
        assert pool.submit(lambda: 42).result() == 42
    assert [r.ok for r in results] == [True] * 4
    assert elapsed < 0.3 * 4
    assert run_checks([]) == []
