"""Several hosts on one machine for high-availability integration tests: network namespaces.

A :class:`Site` is a small LAN made of network namespaces, created per test with unique names
and removed afterwards (with every process left inside them)::

    [alpha]  eth0 10.N.0.10 ---- p10 \\
    [beta]   eth0 10.N.0.11 ---- p11 --- br0 10.N.0.1/24   the switch namespace
    [client] eth0 10.N.0.12 ---- p12 /

``N`` is picked at random in 200..250 per site. Faults: :meth:`Site.cut` drops all traffic
between two hosts (iptables in both host namespaces) and :meth:`Site.isolate` takes a host's
switch port down (a pulled cable). :class:`NetnsEngine` is a real ``standby engine`` running
inside a host's namespace, listening for peers on the host's address; the test process still
reaches its API (on 127.0.0.1 inside the namespace) through a socket opened in that namespace.

Typical use::

    with Site() as site:
        alpha, beta = site.add_host("alpha"), site.add_host("beta")
        a = site.engine(alpha, tmp_path)
        b = site.engine(beta, tmp_path)
        start_all(a, b)
        pair_all(a, b)
        site.cut(alpha, beta)

Everything here needs root and iproute2's ``ip`` (see :data:`needs_netns`); the fault
:meth:`Site.cut` needs ``iptables`` too and skips the test when it is missing.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from pyroute2.netns import create_socket  # type: ignore[import-untyped]

from .harness import STANDBY, EngineProcess, pair

PEER_PORT = 7710
"""The port every :class:`NetnsEngine` listens on for peers (each namespace has its own)."""

needs_netns = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None,
    reason="tests with several hosts in network namespaces need root and iproute2's `ip`",
)
"""Mark for tests that build a :class:`Site`: skipped unless root with ``ip`` available."""

_HOST_NAME = re.compile(r"[a-z][a-z0-9]{0,31}")


def _ip(*args: str) -> None:
    """Run ``ip ARGS``; raise with ip's message when it fails."""
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")


def _alive(pid: int) -> bool:
    """Whether a process with this pid exists (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05,
               message: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something true and return that; raise
    :class:`TimeoutError` naming ``message`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{message} not reached within {timeout} s")
        time.sleep(interval)


class Host:
    """One host of a :class:`Site`: a network namespace with ``eth0`` on the site's bridge.

    Create hosts with :meth:`Site.add_host`. ``name`` is the test's name for it (``alpha``),
    ``netns`` the namespace's real (unique) name, ``address`` its IPv4 address on the LAN and
    ``port`` the name of its switch port (the veth peer, in the switch namespace).
    """

    def __init__(self, site: Site, name: str, netns: str, address: str, port: str) -> None:
        self.site = site
        self.name = name
        self.netns = netns
        self.address = address
        self.port = port

    def __repr__(self) -> str:
        return f"<Host {self.name} {self.address} netns={self.netns}>"

    def exec_prefix(self) -> list[str]:
        """The command prefix that runs a command inside this host's namespace."""
        return ["ip", "netns", "exec", self.netns]

    def run(self, *cmd: str, check: bool = True, timeout: float = 60,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``cmd`` inside this host's namespace and wait for it; output is captured as
        text. With ``check``, a non-zero exit raises :class:`AssertionError` with the output."""
        result = subprocess.run([*self.exec_prefix(), *cmd], capture_output=True, text=True,
                                timeout=timeout, input=input)
        if check and result.returncode != 0:
            raise AssertionError(f"[{self.name}] {' '.join(cmd)} exited {result.returncode}:\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    def popen(self, *cmd: str, **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start ``cmd`` inside this host's namespace without waiting (a server, say). The
        site kills it when it closes. Output goes to /dev/null unless ``stdout``/``stderr``
        are given; other keyword arguments go to :class:`subprocess.Popen`. ``ip netns exec``
        execs the command, so the returned process's pid is the command's own."""
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        kwargs.setdefault("stdout", subprocess.DEVNULL)
        kwargs.setdefault("stderr", subprocess.DEVNULL)
        proc: subprocess.Popen[bytes] = subprocess.Popen([*self.exec_prefix(), *cmd], **kwargs)
        self.site._processes.append(proc)
        return proc

    def open_socket(self, family: int = socket.AF_INET,
               type: int = socket.SOCK_STREAM) -> socket.socket:
        """A new socket inside this host's namespace (opened by pyroute2 in a short-lived
        forked child that enters the namespace and passes the descriptor back)."""
        sock: socket.socket = create_socket(self.netns, family, type, flags=0)
        return sock

    def connect(self, address: str, port: int, timeout: float = 2.0) -> socket.socket:
        """A TCP connection from this host to ``address:port``, with ``timeout`` set on the
        socket; raises :class:`OSError` (``TimeoutError`` included) when it cannot connect."""
        sock = self.open_socket()
        try:
            sock.settimeout(timeout)
            sock.connect((address, port))
        except BaseException:
            sock.close()
            raise
        return sock

    def can_reach(self, address: str, port: int, timeout: float = 1.0) -> bool:
        """Whether a TCP connection from this host to ``address:port`` succeeds."""
        try:
            self.connect(address, port, timeout).close()
        except OSError:
            return False
        return True

    def http_get(self, address: str, port: int, path: str,
                 timeout: float = 2.0) -> tuple[int, bytes] | None:
        """HTTP GET ``http://address:port/path`` from inside this host's namespace, as a client
        on that host would. Returns ``(status, body)``, or None when the server cannot be
        reached or does not answer within ``timeout`` (a cut link, a dead server)."""
        sock = self.open_socket()  # outside the try: a missing namespace is the harness's bug
        conn = http.client.HTTPConnection(address, port, timeout=timeout)
        try:
            sock.settimeout(timeout)
            sock.connect((address, port))
            conn.sock = sock
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read()
        except (OSError, http.client.HTTPException):
            return None
        finally:
            conn.close()
            sock.close()


class Site:
    """A LAN of network namespaces for one test: a switch namespace with bridge ``br0`` and
    any number of hosts (:meth:`add_host`). Use it as a context manager (or call
    :meth:`close`): on exit it stops the engines and kills the processes started through it,
    kills whatever else still runs in its namespaces, and deletes every namespace it created,
    also when the test failed."""

    def __init__(self) -> None:
        token = secrets.token_hex(3)
        self.prefix = f"sb{token}"  # 8 characters: namespace names stay <= 15
        self.subnet = 200 + int(token, 16) % 51  # the LAN is 10.{subnet}.0.0/24
        self.switch = f"{self.prefix}sw"
        self.gateway = f"10.{self.subnet}.0.1"  # the bridge's own address
        self.hosts: dict[str, Host] = {}
        self.engines: list[NetnsEngine] = []
        self._processes: list[subprocess.Popen[bytes]] = []
        self._namespaces: list[str] = []
        self._cuts: set[frozenset[str]] = set()
        self._next = 10
        self._closed = False

    def __repr__(self) -> str:
        return f"<Site {self.prefix} 10.{self.subnet}.0.0/24 hosts={list(self.hosts)}>"

    def __enter__(self) -> Site:
        try:
            self._add_namespace(self.switch)
            _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.switch, "addr", "add", f"{self.gateway}/24", "dev", "br0")
            _ip("-n", self.switch, "link", "set", "br0", "up")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _add_namespace(self, netns: str) -> None:
        _ip("netns", "add", netns)  # fails if the name exists: never share another's namespace
        self._namespaces.append(netns)
        _ip("-n", netns, "link", "set", "lo", "up")

    def add_host(self, name: str) -> Host:
        """A new host ``name`` (lower-case letters and digits) with ``eth0`` on the bridge at
        the next free address, 10.N.0.10 first, and loopback up."""
        if not _HOST_NAME.fullmatch(name):
            raise ValueError(f"host name {name!r}: use up to 32 lower-case letters and digits")
        if name in self.hosts:
            raise ValueError(f"host {name} already exists")
        if self._next > 254:
            raise ValueError("no address left on this site")
        index, self._next = self._next, self._next + 1
        netns = f"{self.prefix}{name}" if len(self.prefix) + len(name) <= 15 else \
            f"{self.prefix}h{index}"
        port = f"p{index}"
        address = f"10.{self.subnet}.0.{index}"
        self._add_namespace(netns)
        _ip("-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", "eth0",
            "netns", netns)
        _ip("-n", self.switch, "link", "set", port, "master", "br0", "up")
        _ip("-n", netns, "addr", "add", f"{address}/24", "dev", "eth0")
        _ip("-n", netns, "link", "set", "eth0", "up")
        host = Host(self, name, netns, address, port)
        self.hosts[name] = host
        return host

    def host(self, name: str) -> Host:
        """The host called ``name``."""
        return self.hosts[name]

    def engine(self, host: Host, root: Path, name: str | None = None,
               bind: tuple[Path, Path] | None = None,
               env: dict[str, str] | None = None) -> NetnsEngine:
        """A (not yet started) :class:`NetnsEngine` for ``host``, named after the host unless
        ``name`` is given, with its home in ROOT/NAME-home and its log in ROOT/NAME.log, and
        ``env`` added to its environment. The site stops it when it closes."""
        engine_name = name or host.name
        engine = NetnsEngine(host, root / f"{engine_name}-home", engine_name, root, bind=bind,
                             env=env)
        self.engines.append(engine)
        return engine

    # -- faults ------------------------------------------------------------------------------

    def cut(self, a: Host, b: Host) -> None:
        """Drop every packet between ``a`` and ``b``, both ways (iptables DROP on INPUT and
        OUTPUT in both host namespaces); other traffic flows. Idempotent. Skips the test when
        iptables is not installed."""
        key = frozenset((a.netns, b.netns))
        if key in self._cuts:
            return
        if shutil.which("iptables") is None:
            pytest.skip("iptables is not installed (scripts/install installs it)")
        for rule in self._rules(a, b):
            self._iptables(rule[0], "-A", *rule[1:])
        self._cuts.add(key)

    def heal(self, a: Host, b: Host) -> None:
        """Undo :meth:`cut` between ``a`` and ``b``; nothing to do if they are not cut."""
        key = frozenset((a.netns, b.netns))
        if key not in self._cuts:
            return
        for rule in self._rules(a, b):
            self._iptables(rule[0], "-D", *rule[1:])
        self._cuts.discard(key)

    def isolate(self, host: Host) -> None:
        """Take ``host``'s switch port down: a pulled cable (its eth0 loses the carrier, all
        its LAN traffic stops, its loopback still works)."""
        _ip("-n", self.switch, "link", "set", host.port, "down")

    def reconnect(self, host: Host) -> None:
        """Plug ``host``'s cable back in (undo :meth:`isolate`)."""
        _ip("-n", self.switch, "link", "set", host.port, "up")

    @staticmethod
    def _rules(a: Host, b: Host) -> list[tuple[Host, str, str, str]]:
        return [(a, "INPUT", "-s", b.address), (a, "OUTPUT", "-d", b.address),
                (b, "INPUT", "-s", a.address), (b, "OUTPUT", "-d", a.address)]

    @staticmethod
    def _iptables(host: Host, action: str, chain: str, direction: str, address: str) -> None:
        host.run("iptables", "-w", action, chain, direction, address, "-j", "DROP",
                 timeout=15)

    # -- clean-up ----------------------------------------------------------------------------

    def logs(self, tail: int = 20000) -> str:
        """The end of every engine's log, for a failing test to print."""
        return "".join(f"----- log of {engine.name} ({engine.host.name}) -----\n"
                       f"{engine.log()[-tail:]}\n" for engine in self.engines)

    def close(self) -> None:
        """Stop the engines, kill every process started here or still running in the site's
        namespaces, delete the namespaces. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        for engine in self.engines:
            with contextlib.suppress(Exception):
                engine.stop(timeout=10)
        for proc in self._processes:
            if proc.poll() is None:
                proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
        for netns in reversed(self._namespaces):
            # Anything left in a namespace was started by this test (nothing else knows the
            # name); a namespace with processes in it outlives `ip netns del`.
            pids = subprocess.run(["ip", "netns", "pids", netns], capture_output=True,
                                  text=True, timeout=10).stdout.split()
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            subprocess.run(["ip", "netns", "del", netns], capture_output=True, timeout=10,
                           check=False)
        self._namespaces.clear()


class NetnsEngine(EngineProcess):
    """A ``standby engine`` process inside a host's network namespace.

    It listens for peers on HOST_ADDRESS:7710 (``peer_address``, reachable from the other
    hosts) and serves its API on 127.0.0.1 inside the namespace; :meth:`api` and :meth:`cli`
    reach it from there. ``bind`` works as for :class:`EngineProcess` (a private mount).
    """

    def __init__(self, host: Host, home: Path, name: str, log_dir: Path,
                 bind: tuple[Path, Path] | None = None, *, peer_port: int = PEER_PORT,
                 env: dict[str, str] | None = None) -> None:
        super().__init__(home, name, log_dir, bind=bind, env=env)
        self.host = host
        self.listen_port = peer_port
        self.engine_pid: int | None = None  # the pid in engine.json: normally proc.pid

    def __repr__(self) -> str:
        pid = self.proc.pid if self.proc else None
        return f"<NetnsEngine {self.name} on {self.host.name} pid={pid}>"

    def command(self, listen: str | None = None) -> list[str]:
        """The command line that starts this engine inside its host's namespace, listening
        on the host's address."""
        address = listen or f"{self.host.address}:{self.listen_port}"
        return [*self.host.exec_prefix(), *super().command(address)]

    def launch(self) -> None:
        """Start the process without waiting for it to be ready (see :func:`start_all`)."""
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "engine.json").unlink(missing_ok=True)
        self.info = {}
        self.engine_pid = None
        log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        try:
            self.proc = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env={"STANDBY_LOG_LEVEL": "INFO", **os.environ, **self.env})
        finally:
            log.close()  # the child has its own copy

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until the launched engine publishes HOME/engine.json."""
        assert self.proc is not None, "launch() first"
        deadline = time.monotonic() + timeout
        path = self.home / "engine.json"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"engine {self.name} on {self.host.name} exited with "
                                   f"{self.proc.returncode}:\n" + self.log()[-3000:])
            if path.exists():
                with contextlib.suppress(ValueError):  # written atomically, but be safe
                    info = json.loads(path.read_text())
                    pid = info.get("pid")
                    # `ip netns exec` (and unshare, sh -c exec) exec the engine: its pid is
                    # the Popen's. Engine.json was removed before launch, so a different pid
                    # can only be a descendant; remember it to signal the real engine.
                    if isinstance(pid, int) and (pid == self.proc.pid or _alive(pid)):
                        self.info = info
                        self.engine_pid = pid
                        return
            time.sleep(0.05)
        raise TimeoutError(f"engine {self.name} on {self.host.name} did not start within "
                           f"{timeout} s")

    def start(self, timeout: float = 30.0) -> None:
        """Start the engine and wait until it is ready (keeps the peer port across restarts)."""
        self.launch()
        self.wait_ready(timeout)

    @property
    def api_port(self) -> int:
        """The API's port on 127.0.0.1 inside the host's namespace."""
        port = urlsplit(str(self.info["api_url"])).port
        assert port is not None, self.info
        return port

    def api(self, method: str, path: str, body: Any = None, *, expect: int | None = 200,
            token: str | None = None) -> Any:
        """Call the engine's API (JSON in, JSON out) through a socket opened in the host's
        namespace; with ``expect``, assert the status as :meth:`EngineProcess.api` does."""
        headers = {"Authorization": f"Bearer {self.token if token is None else token}",
                   "Accept": "application/json"}
        payload: bytes | None = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        sock = self.host.connect("127.0.0.1", self.api_port, timeout=60)
        conn = http.client.HTTPConnection("127.0.0.1", self.api_port, timeout=60)
        conn.sock = sock
        try:
            conn.request(method, path, body=payload, headers=headers)
            response = conn.getresponse()
            status, content = response.status, response.read()
        finally:
            conn.close()
            sock.close()
        if expect is not None:
            assert status == expect, (status, content.decode(errors="replace"))
        return json.loads(content) if content else None

    def cli(self, *args: str, check: bool = True,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """Run ``standby --home HOME ARGS`` inside the host's namespace (where the API is)."""
        result = subprocess.run([*self.host.exec_prefix(), *STANDBY, "--home", str(self.home),
                                 *args], capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"[{self.host.name}] standby {' '.join(args)} exited "
                                 f"{result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result

    def _other_engine_pid(self) -> int | None:
        """The engine's pid when it is not the Popen child's (something forked) and alive."""
        if self.proc is None or self.engine_pid is None or self.engine_pid == self.proc.pid:
            return None
        return self.engine_pid if _alive(self.engine_pid) else None

    def _running(self) -> bool:
        if self.proc is None:
            return False
        return self.proc.poll() is None or self._other_engine_pid() is not None

    def _end(self, sig: signal.Signals, timeout: float) -> bool:
        """Send ``sig`` to the engine itself and wait up to ``timeout`` s for it and for the
        Popen child to end; True if both did."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        other = self._other_engine_pid()
        if other is not None:
            # The Popen child is a wrapper: signal only the engine, so that it shuts down
            # cleanly while the wrapper waits for it, then give the wrapper a moment to exit.
            with contextlib.suppress(ProcessLookupError):
                os.kill(other, sig)
            while _alive(other) and time.monotonic() < deadline:
                time.sleep(0.02)
            if _alive(other):
                return False
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(min(2.0, max(0.0, deadline - time.monotonic())))
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(max(0.0, deadline - time.monotonic()))
        return not self._running()

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the engine and wait for it (SIGKILL after ``timeout`` seconds)."""
        if self._running() and not self._end(signal.SIGTERM, timeout):
            self.kill()

    def kill(self) -> None:
        """SIGKILL the engine (a crash) and wait for it."""
        if self._running():
            self._end(signal.SIGKILL, 10)

def start_all(*engines: NetnsEngine, timeout: float = 30.0) -> None:
    """Start several engines at once and wait until all are ready (faster than one by one)."""
    for engine in engines:
        engine.launch()
    for engine in engines:
        engine.wait_ready(timeout)


def pair_all(*engines: EngineProcess) -> None:
    """Pair every engine with every other, both ways (``standby peer add`` on each side)."""
    for i, a in enumerate(engines):
        for b in engines[i + 1:]:
            pair(a, b)

