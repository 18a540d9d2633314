"""The multi-host harness itself (tests/integration/netns.py): namespaces, engines, faults.

One site with three hosts: engines on alpha and beta (paired, which makes each fetch the
other's certificate over the LAN), a plain HTTP server on beta, and a client that loses and
regains beta through a partition (iptables) and a pulled cable (switch port down).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .netns import NetnsEngine, Site, needs_netns, pair_all, start_all, wait_until

pytestmark = [pytest.mark.integration, needs_netns]


@pytest.fixture
def site(request: pytest.FixtureRequest) -> Iterator[Site]:
    """A site removed after the test; the engines' logs are printed if the test failed."""
    with Site() as site:
        yield site
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(site.logs())


def test_engines_in_namespaces_pair_and_a_client_sees_faults(site: Site, tmp_path: Path
                                                            ) -> None:
    """Engines answer their API from their namespaces and pair over the LAN; the client reaches
    beta's web server until cut() or isolate() and again after heal() or reconnect()."""
    alpha, beta, client = (site.add_host(n) for n in ("alpha", "beta", "client"))
    assert len({alpha.address, beta.address, client.address}) == 3
    a, b = site.engine(alpha, tmp_path), site.engine(beta, tmp_path)
    start_all(a, b)

    pair_all(a, b)

    for engine, host in ((a, alpha), (b, beta)):
        info = engine.api("GET", "/v1/engine")
        assert info["name"] == engine.name
        assert engine.peer_address == f"{host.address}:7710"
        assert engine.proc is not None
        assert engine.engine_pid == engine.proc.pid
    assert [p["address"] for p in a.api("GET", "/v1/peers")] == [b.peer_address]
    assert [p["address"] for p in b.api("GET", "/v1/peers")] == [a.peer_address]
    assert a.api("GET", "/v1/engine", token="wrong", expect=401) is not None

    www = tmp_path / "www"
    www.mkdir()
    (www / "hello.txt").write_bytes(b"hello from beta\n")
    beta.popen(sys.executable, "-m", "http.server", "8080", "--bind", "0.0.0.0", cwd=www)
    assert wait_until(lambda: client.http_get(beta.address, 8080, "/hello.txt", timeout=1.0),
                      message="the web server on beta") == (200, b"hello from beta\n")

    site.cut(client, beta)
    assert client.http_get(beta.address, 8080, "/hello.txt", timeout=0.5) is None
    assert beta.can_reach(beta.address, 8080)  # only the pair is cut
    site.heal(client, beta)
    assert client.http_get(beta.address, 8080, "/hello.txt") == (200, b"hello from beta\n")

    site.isolate(beta)
    assert client.http_get(beta.address, 8080, "/hello.txt", timeout=0.5) is None
    assert not a.host.can_reach(beta.address, 7710, timeout=0.5)
    site.reconnect(beta)
    assert wait_until(lambda: client.http_get(beta.address, 8080, "/hello.txt", timeout=0.5),
                      message="beta after reconnect") == (200, b"hello from beta\n")

    b.stop()
    assert b.proc is not None
    assert b.proc.returncode is not None
    assert not os.path.exists(b.home / "engine.json")


def test_a_killed_engine_restarts_on_its_address(site: Site, tmp_path: Path) -> None:
    """kill() reaches the real engine process; a restart listens on the same peer address and
    the CLI works inside the namespace."""
    alpha = site.add_host("alpha")
    engine: NetnsEngine = site.engine(alpha, tmp_path)
    engine.start()
    pid = engine.engine_pid
    engine.kill()
    assert pid is not None
    assert not os.path.exists(f"/proc/{pid}/cmdline")

    engine.start()

    assert engine.engine_pid != pid
    assert engine.peer_address == f"{alpha.address}:7710"
    assert engine.fingerprint in engine.cli("id").stdout
