"""Is Alive extra checks (TCP connect, ICMP echo, a user script), run concurrently and bounded.

Each check is optional and has its own timeout; a check that fails, raises, or hangs beyond its
timeout counts as failed. Every check returns a :class:`CheckResult` whose ``detail`` is a short
sentence ready for an event message ("connection refused", "no echo reply from 10.0.0.7 within
2 s (3 requests sent)", "exited with status 1: disk /srv is full").

Time bounds, in layers:

- each check bounds its own work by its timeout (socket timeouts, a deadline for ICMP, a script's
  whole process group killed at its timeout);
- :func:`run_checks` bounds the caller: it returns after at most ``max(timeout) + margin`` even
  when a check ignores its timeout (a custom check, a name lookup stuck in ``getaddrinfo``, which
  has no timeout); such a check is reported as failed and its thread is left to finish alone.

Heartbeats are bookkeeping, not probes: :class:`Heartbeats` records when each peer was last heard
from and says which ones are silent past the timeout. It takes every time as an argument (no
clock reads), so the controller feeds it from the peer links and reads it into its immutable view,
and tests drive it with plain numbers.

This module also hosts :func:`run_command`, the one place that runs an operator's command with a
timeout (its own session, the whole group killed at the timeout, the output's tail kept): script
checks and workloads (``workload.py``) both use it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ipaddress
import logging
import os
import secrets
import shlex
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, Literal, Protocol

log = logging.getLogger("standby.ha.checks")

# Added to the largest check timeout before run_checks stops waiting: thread start-up and the
# kill-and-reap of a timed-out script take milliseconds; half a second absorbs a loaded host.
RESULT_MARGIN = 0.5

# Bytes of a command's combined stdout/stderr kept for messages: the last lines of an error,
# while an event message stays readable (systemd's journal shows a similar few lines in status).
TAIL_BYTES = 2048


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The outcome of one check run: ``detail`` says why, ``duration`` is in seconds."""

    name: str
    ok: bool
    detail: str
    duration: float


class Check(Protocol):
    """What :func:`run_checks` needs: a name for messages, a timeout, and a blocking ``run``.

    ``run`` must return (never raise, though run_checks tolerates it) within about ``timeout``
    seconds.
    """

    @property
    def name(self) -> str: ...

    @property
    def timeout(self) -> float: ...

    def run(self) -> CheckResult: ...


def _positive(what: str, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{what} must be positive, got {value!r}")


def _os_reason(exc: OSError) -> str:
    """'connection refused' rather than '[Errno 111] Connection refused'."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if exc.strerror:
        return exc.strerror[0].lower() + exc.strerror[1:]
    return str(exc) or type(exc).__name__


# --- TCP ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TcpCheck:
    """Healthy when a TCP connection to ``host:port`` is accepted within ``timeout`` seconds."""

    host: str
    port: int
    timeout: float = 5.0

    def __post_init__(self) -> None:
        _positive("timeout", self.timeout)
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be 1-65535, got {self.port}")

    @property
    def name(self) -> str:
        return f"tcp {self.host}:{self.port}"

    def run(self) -> CheckResult:
        started = time.monotonic()
        try:
            with socket.create_connection((self.host, self.port), timeout=self.timeout):
                pass
        except TimeoutError:
            ok, detail = False, f"no answer within {self.timeout:g} s"
        except OSError as exc:
            ok, detail = False, _os_reason(exc)
        else:
            ok, detail = True, "connected"
        return CheckResult(self.name, ok, detail, time.monotonic() - started)


# --- ICMP ---------------------------------------------------------------------------------------

ICMP_ECHO_REPLY = 0
ICMP_DEST_UNREACH = 3
ICMP_ECHO = 8
ICMP_TIME_EXCEEDED = 11
ICMP6_DEST_UNREACH = 1
ICMP6_TIME_EXCEEDED = 3
ICMP6_ECHO = 128
ICMP6_ECHO_REPLY = 129

_ECHO_HEADER = struct.Struct("!BBHHH")  # type, code, checksum, identifier, sequence
_IPV6_HEADER_SIZE = 40  # fixed part; an echo's error quote has no extension headers in practice

IcmpMode = Literal["auto", "raw", "dgram"]


def icmp_checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071): one's complement of the one's complement sum of the
    16-bit big-endian words, an odd last byte padded with zero."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo_request(ident: int, seq: int, payload: bytes, *, v6: bool = False) -> bytes:
    """An ICMP (or ICMPv6) echo request. The ICMPv6 checksum covers a pseudo-header with both
    addresses, so it is left zero: the kernel fills it in for ICMPv6 sockets (RFC 3542 3.1)."""
    kind = ICMP6_ECHO if v6 else ICMP_ECHO
    checksum = 0 if v6 else icmp_checksum(_ECHO_HEADER.pack(kind, 0, 0, ident, seq) + payload)
    return _ECHO_HEADER.pack(kind, 0, checksum, ident, seq) + payload


_IcmpError = Literal["unreachable", "time exceeded"]
_ICMP_ERRORS: dict[int, _IcmpError] = {
    ICMP_DEST_UNREACH: "unreachable", ICMP_TIME_EXCEEDED: "time exceeded"}
_ICMP6_ERRORS: dict[int, _IcmpError] = {
    ICMP6_DEST_UNREACH: "unreachable", ICMP6_TIME_EXCEEDED: "time exceeded"}


@dataclass(frozen=True, slots=True)
class IcmpMessage:
    """An echo reply, or an error (unreachable, time exceeded) quoting one of our requests."""

    kind: Literal["reply"] | _IcmpError
    ident: int
    seq: int
    payload: bytes  # the reply's payload; empty for errors (the quote is truncated)


def parse_icmp(packet: bytes, *, v6: bool = False, ip_header: bool = False) -> IcmpMessage | None:
    """Parse what an ICMP socket received; None for anything that is not an echo reply or an
    error quoting an echo request (other traffic a raw socket sees, short or garbled packets).

    ``ip_header``: the packet starts with its IPv4 header (raw IPv4 sockets; not ping sockets,
    not ICMPv6).
    """
    if ip_header:
        if len(packet) < 20:
            return None
        packet = packet[(packet[0] & 0x0F) * 4:]
    if len(packet) < _ECHO_HEADER.size:
        return None
    kind, _code, _sum, ident, seq = _ECHO_HEADER.unpack_from(packet)
    reply, request = (ICMP6_ECHO_REPLY, ICMP6_ECHO) if v6 else (ICMP_ECHO_REPLY, ICMP_ECHO)
    if kind == reply:
        return IcmpMessage("reply", ident, seq, packet[_ECHO_HEADER.size:])
    error = (_ICMP6_ERRORS if v6 else _ICMP_ERRORS).get(kind)
    if error is None:
        return None
    quote = packet[_ECHO_HEADER.size:]  # the offending packet: its IP header, then our header
    if v6:
        quoted = quote[_IPV6_HEADER_SIZE:]
    elif len(quote) >= 20:
        quoted = quote[(quote[0] & 0x0F) * 4:]
    else:
        return None
    if len(quoted) < _ECHO_HEADER.size or quoted[0] != request:
        return None
    _kind, _code, _sum, ident, seq = _ECHO_HEADER.unpack_from(quoted)
    return IcmpMessage(error, ident, seq, b"")


def _open_icmp_socket(family: socket.AddressFamily, mode: IcmpMode) -> tuple[socket.socket, bool]:
    """A raw ICMP socket (needs CAP_NET_RAW) or a ping socket (needs the process's group inside
    net.ipv4.ping_group_range); returns the socket and whether it is raw."""
    proto = socket.IPPROTO_ICMPV6 if family == socket.AF_INET6 else socket.IPPROTO_ICMP
    if mode in ("auto", "raw"):
        try:
            return socket.socket(family, socket.SOCK_RAW, proto), True
        except PermissionError:
            if mode == "raw":
                raise
    try:
        return socket.socket(family, socket.SOCK_DGRAM, proto), False
    except PermissionError as exc:
        raise PermissionError(
            exc.errno,
            "not permitted to send ICMP: run the engine as root (CAP_NET_RAW) or include its "
            "group in net.ipv4.ping_group_range",
        ) from None


def _same_address(a: str, b: str) -> bool:
    """Compare textual addresses, ignoring an IPv6 zone and spelling differences."""
    try:
        return ipaddress.ip_address(a.split("%")[0]) == ipaddress.ip_address(b.split("%")[0])
    except ValueError:
        return a == b


@dataclass(frozen=True, slots=True)
class IcmpCheck:
    """Healthy when ``host`` answers an ICMP echo request within ``timeout`` seconds.

    ``attempts`` requests are sent, one every ``timeout / attempts`` seconds, so one lost packet
    does not fail the check; the first matching reply ends it. A reply matches on the source
    address, our identifier (raw sockets; a ping socket's kernel rewrites and filters it), a
    sequence number we sent and our random payload, so concurrent checks and other pings on the
    host never answer for each other. A destination-unreachable or time-exceeded error quoting
    our request fails the check at once. IPv4 and IPv6.

    ``mode``: ``"raw"`` needs CAP_NET_RAW (root); ``"dgram"`` is the unprivileged ping socket,
    allowed when the process's group is inside net.ipv4.ping_group_range (which also governs
    ICMPv6 ping sockets); ``"auto"`` tries raw, then dgram.
    """

    host: str
    timeout: float = 2.0
    attempts: int = 3
    mode: IcmpMode = "auto"

    def __post_init__(self) -> None:
        _positive("timeout", self.timeout)
        if not 1 <= self.attempts <= 0xFFFF:
            raise ValueError(f"attempts must be 1-65535, got {self.attempts}")

    @property
    def name(self) -> str:
        return f"icmp {self.host}"

    def run(self) -> CheckResult:
        started = time.monotonic()
        try:
            ok, detail = self._ping(started + self.timeout)
        except OSError as exc:
            ok, detail = False, _os_reason(exc)
        return CheckResult(self.name, ok, detail, time.monotonic() - started)

    def _ping(self, deadline: float) -> tuple[bool, str]:
        info = socket.getaddrinfo(self.host, None, type=socket.SOCK_DGRAM)
        family, _type, _proto, _canon, sockaddr = info[0]
        address = str(sockaddr[0])
        v6 = family == socket.AF_INET6
        sock, raw = _open_icmp_socket(family, self.mode)
        with sock:
            return self._exchange(sock, raw, v6, sockaddr, address, deadline)

    def _exchange(self, sock: socket.socket, raw: bool, v6: bool, sockaddr: tuple[object, ...],
                  address: str, deadline: float) -> tuple[bool, str]:
        ident = secrets.randbelow(0x10000)
        token = secrets.token_bytes(16)
        interval = self.timeout / self.attempts
        sent = 0
        next_send = time.monotonic()
        while True:
            now = time.monotonic()
            if now >= deadline:
                return False, (f"no echo reply from {address} within {self.timeout:g} s "
                               f"({sent} request{'s' if sent != 1 else ''} sent)")
            if sent < self.attempts and now >= next_send:
                sent += 1
                sock.sendto(echo_request(ident, sent, token, v6=v6), sockaddr)
                next_send = now + interval
            wake = min(deadline, next_send) if sent < self.attempts else deadline
            sock.settimeout(max(wake - time.monotonic(), 0.001))
            try:
                packet, source = sock.recvfrom(65535)
            except TimeoutError:
                continue
            message = parse_icmp(packet, v6=v6, ip_header=raw and not v6)
            if message is None or not 1 <= message.seq <= sent or (raw and message.ident != ident):
                continue
            if message.kind != "reply":
                return False, f"{message.kind} (reported by {source[0]}) for {address}"
            if message.payload == token and _same_address(str(source[0]), address):
                elapsed_ms = (time.monotonic() - (deadline - self.timeout)) * 1000
                return True, f"echo reply from {address} in {elapsed_ms:.1f} ms"


# --- commands and script checks -----------------------------------------------------------------

Command = str | Sequence[str]
"""A shell string (run by ``/bin/sh -c``) or an argv list (run directly, no shell)."""


def command_argv(command: Command) -> list[str]:
    if isinstance(command, str):
        return ["/bin/sh", "-c", command]
    argv = list(command)
    if not argv:
        raise ValueError("empty command")
    return argv


def command_text(command: Command) -> str:
    """The command as an operator would type it, for messages."""
    return command if isinstance(command, str) else shlex.join(command)


@dataclass(frozen=True, slots=True)
class CommandResult:
    """One command run: ``returncode`` is None when it timed out or could not start."""

    command: str
    returncode: int | None
    output: str  # the tail of stdout and stderr, interleaved as written
    duration: float
    timed_out: bool = False
    error: str = ""  # why it could not start (not found, not executable)
    timeout: float | None = None  # what it was given

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def outcome(self) -> str:
        """'exited with status 3', 'killed at its 5 s timeout', 'could not start: ...'."""
        if self.error:
            return f"could not start: {self.error}"
        if self.timed_out:
            return f"killed at its {self.timeout:g} s timeout"
        assert self.returncode is not None
        if self.returncode < 0:
            try:
                return f"killed by {signal.Signals(-self.returncode).name}"
            except ValueError:
                return f"killed by signal {-self.returncode}"
        return f"exited with status {self.returncode}"

    def describe(self) -> str:
        """The outcome and, when there is any, the output's tail."""
        return f"{self.outcome()}: {self.output}" if self.output else self.outcome()


def _tail(out: IO[bytes]) -> str:
    size = out.seek(0, os.SEEK_END)
    out.seek(max(size - TAIL_BYTES, 0))
    text = out.read().decode("utf-8", "replace")
    if size > TAIL_BYTES:  # drop the cut first line, say that something came before
        text = "..." + text.partition("\n")[2]
    return text.strip()


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # the group died on its own meanwhile
        os.killpg(pgid, signal.SIGKILL)


def run_command(command: Command, *, timeout: float, env: Mapping[str, str] | None = None,
                cwd: str | os.PathLike[str] | None = None) -> CommandResult:
    """Run ``command`` and wait for it, at most ``timeout`` seconds.

    The command gets a session (so a process group) of its own and stdin from /dev/null. At the
    timeout its whole process group is killed (SIGKILL: a hung probe gets no grace). Its output
    goes to an anonymous temporary file, not a pipe, so a daemon that a start command leaves
    running in the background (holding the inherited stdout) cannot keep us waiting; we keep the
    last :data:`TAIL_BYTES` of it. A command that exits leaves its background children alone.

    Args:
        env: variables added to (or replacing) the engine's own environment.
        cwd: the working directory; the engine's by default.
    """
    text = command_text(command)
    argv = command_argv(command)
    environ = {**os.environ, **env} if env else None
    started = time.monotonic()
    with tempfile.TemporaryFile() as out:
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, env=environ, cwd=cwd,
                                    start_new_session=True)
        except OSError as exc:
            return CommandResult(text, None, "", time.monotonic() - started, timeout=timeout,
                                 error=_os_reason(exc) + (f": {exc.filename}" if exc.filename
                                                          else ""))
        timed_out = False
        try:
            returncode: int | None = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            proc.wait()
            returncode, timed_out = None, True
        except BaseException:  # interrupted: leave nothing running behind us
            _kill_group(proc.pid)
            proc.wait()
            raise
        return CommandResult(text, returncode, _tail(out), time.monotonic() - started,
                             timed_out=timed_out, timeout=timeout)


@dataclass(frozen=True, slots=True)
class ScriptCheck:
    """Healthy when ``command`` exits with status 0 within ``timeout`` seconds.

    A command that hangs is killed with its whole process group at the timeout and counts as
    failed. The detail carries the tail of its output, so a script can say what is wrong.
    ``env`` is added to the engine's environment.
    """

    command: Command
    timeout: float = 10.0
    env: Mapping[str, str] | None = None

    def __post_init__(self) -> None:
        _positive("timeout", self.timeout)
        command_argv(self.command)  # refuse an empty argv now, not at the first run
        if not isinstance(self.command, str):
            object.__setattr__(self, "command", tuple(self.command))

    @property
    def name(self) -> str:
        return f"script {command_text(self.command)}"

    def run(self) -> CheckResult:
        result = run_command(self.command, timeout=self.timeout, env=self.env)
        return CheckResult(self.name, result.ok, result.describe(), result.duration)


# --- running checks together --------------------------------------------------------------------


def _run_one(check: Check) -> CheckResult:
    started = time.monotonic()
    try:
        return check.run()
    except Exception as exc:  # a bug in a check must not take the liveness loop down
        log.warning("check %s raised", check.name, exc_info=True)
        return CheckResult(check.name, False, f"check raised {type(exc).__name__}: {exc}",
                           time.monotonic() - started)


def run_checks(checks: Sequence[Check], executor: concurrent.futures.Executor | None = None,
               *, margin: float = RESULT_MARGIN) -> list[CheckResult]:
    """Run ``checks`` concurrently; return their results, in order, within
    ``max(timeout) + margin`` seconds whatever the checks do.

    A check still running at that point is reported failed ("no result within ...") and left
    to finish in its thread; its late result is dropped. A check that raises is reported failed
    with the exception.

    Args:
        executor: a thread pool to run the checks in, with a worker per check (checks queued
            behind others may miss the deadline). By default a pool is made for this call and
            abandoned without waiting for stragglers.
    """
    if not checks:
        return []
    pool = executor or concurrent.futures.ThreadPoolExecutor(
        max_workers=len(checks), thread_name_prefix="standby-check")
    started = time.monotonic()
    budget = max(check.timeout for check in checks) + margin
    try:
        futures = [pool.submit(_run_one, check) for check in checks]
        concurrent.futures.wait(futures, timeout=budget)
        elapsed = time.monotonic() - started
        results = []
        for check, future in zip(checks, futures, strict=True):
            if future.done():
                results.append(future.result())
            else:
                future.cancel()  # when still queued; a running one cannot be stopped
                results.append(CheckResult(
                    check.name, False,
                    f"no result within {budget:g} s (its timeout is {check.timeout:g} s)",
                    elapsed))
        return results
    finally:
        if executor is None:
            pool.shutdown(wait=False, cancel_futures=True)


# --- heartbeats ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PeerLiveness:
    """One peer as of ``now``: seconds of silence, and whether that is past the timeout."""

    peer: str
    last_heard: float | None  # None: not heard from since the tracker started
    silence: float
    dead: bool


class Heartbeats:
    """When each peer was last heard from; a peer silent for ``timeout`` seconds is dead.

    Times are monotonic seconds passed in by the caller: nothing here reads a clock, so the
    controller decides what "now" is and tests use plain numbers. A peer never heard from is
    counted silent since ``started`` (the tracker's creation), so an engine that has just come
    up gives its peers a full timeout before declaring them dead. Any message from a peer may
    count as a heartbeat. Thread-safe: links record, the controller reads.
    """

    def __init__(self, peers: Iterable[str], *, timeout: float, started: float) -> None:
        _positive("timeout", timeout)
        self.timeout = timeout
        self.started = started
        self._last: dict[str, float | None] = dict.fromkeys(peers)
        self._lock = threading.Lock()

    def heard(self, peer: str, at: float) -> None:
        """Record a heartbeat (or any message) from ``peer`` at ``at``; an older time than the
        one recorded (a late report) changes nothing. Unknown peers are added."""
        with self._lock:
            last = self._last.get(peer)
            if last is None or at > last:
                self._last[peer] = at

    def last_heard(self, peer: str) -> float | None:
        with self._lock:
            return self._last.get(peer)

    def silence(self, peer: str, now: float) -> float:
        last = self.last_heard(peer)
        return max(now - (self.started if last is None else last), 0.0)

    def is_dead(self, peer: str, now: float) -> bool:
        return self.silence(peer, now) >= self.timeout

    def snapshot(self, now: float) -> tuple[PeerLiveness, ...]:
        """Every peer's liveness as of ``now``, sorted by name (for the controller's view)."""
        with self._lock:
            last = dict(self._last)
        result = []
        for peer in sorted(last):
            heard = last[peer]
            silence = max(now - (self.started if heard is None else heard), 0.0)
            result.append(PeerLiveness(peer, heard, silence, silence >= self.timeout))
        return tuple(result)

    def __repr__(self) -> str:
        return f"<Heartbeats timeout={self.timeout:g} s peers={sorted(self._last)}>"
