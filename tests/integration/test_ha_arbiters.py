"""High availability with real engines on loopback, with what lies outside the two hosts: DNS
redirection on a real BIND9, the etcd arbiter on a real etcd, and a witness engine.

The hosts run the test application (ha_app.py) as their workload, as in test_ha.py, whose
helpers this module reuses. Times: Is Alive every 0.5 s with a 3 s timeout.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import etcd3gw
import pytest

from standby.engine.channel import connect
from standby.engine.identity import Identity
from standby.engine.session import Session
from standby.ha.redirect import DnsRecord, DnsRedirect, StaleEpochError
from standby.protocol import PURPOSE_HA, EpochClaim, Reply, Role
from tests.dnsserver import KEY, NAMED, ZONE, Named, query, start_named
from tests.ha.arbiter.etcdserver import EtcdServer

from .harness import EngineProcess, pair
from .netns import wait_until
from .test_ha import (
    Host,
    Pair,
    _engine,
    contiguous,
    last_written,
)

pytestmark = pytest.mark.integration

#: The addresses the DNS records hold (documentation addresses: nothing connects there).
ADDRESSES = {"alpha": "192.0.2.1", "beta": "192.0.2.2"}
SVC = f"svc.{ZONE}"
SVC_EPOCH = f"_standby-epoch.svc.{ZONE}"


class Cluster:
    """alpha and beta (as a test_ha Pair), and optionally a witness engine, all paired."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.pair = Pair(_engine(tmp, "alpha"), _engine(tmp, "beta"), tmp)
        self.witness: EngineProcess | None = None
        self.started: list[EngineProcess] = []
        self.logs: list[Path] = []  # other servers' logs, printed when a test fails

    @property
    def alpha(self) -> Host:
        return self.pair.alpha

    @property
    def beta(self) -> Host:
        return self.pair.beta

    def start(self, witness: bool = False) -> None:
        engines = [self.alpha.engine, self.beta.engine]
        if witness:
            self.witness = EngineProcess(self.tmp / "wit-home", "wit", self.tmp)
            engines.append(self.witness)
        for engine in engines:
            engine.start()
            self.started.append(engine)
        for index, first in enumerate(engines):
            for second in engines[index + 1:]:
                pair(first, second)


@pytest.fixture
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """Engines not started yet: each test starts them (with or without a witness)."""
    cluster = Cluster(tmp_path)
    try:
        yield cluster
    finally:
        for engine in cluster.started:
            engine.stop()
        for host in (cluster.alpha, cluster.beta):
            (host.state / "pause").unlink(missing_ok=True)
            host.kill_app()
        failed = getattr(request.node, "rep_call", None)
        if failed is not None and failed.failed:
            for engine in cluster.started:
                print(f"----- log of {engine.name} -----\n{engine.log()[-30000:]}")
            for path in cluster.logs:
                if path.exists():
                    print(f"----- {path.name} -----\n{path.read_text(errors='replace')[-5000:]}")


def _events(engine: EngineProcess, code: str) -> list[dict[str, Any]]:
    return [e for e in engine.events("files") if e["code"] == code]


# -- DNS -------------------------------------------------------------------------------------


def _dns(named: Named) -> tuple[list[str], list[str]]:
    """What a client sees: svc's A records and the epoch TXT record."""
    return query(named, SVC), query(named, SVC_EPOCH, "TXT")


def _points_at(named: Named, host: str, epoch: int) -> bool:
    return _dns(named) == ([ADDRESSES[host]], [f'"standby-epoch={epoch}"'])


@pytest.mark.skipif(not os.path.exists(NAMED), reason="BIND9 named is not installed")
def test_dns_follows_the_active_host_and_a_stale_host_cannot_swing_it_back(
        cluster: Cluster, tmp_path: Path) -> None:
    """svc points at the active host with the epoch that put it there: alpha at 1, beta at 2
    after a switchover, alpha at 3 after the switchback. A host that still believes in epoch 2
    is refused by the server's epoch record, and the record stays."""
    directory = tmp_path / "named"
    directory.mkdir()
    with start_named(directory) as named:
        cluster.logs.append(named.log)
        cluster.start()
        hosts, alpha, beta = cluster.pair, cluster.alpha, cluster.beta
        addresses = ", ".join(f'{host} = "{address}"' for host, address in ADDRESSES.items())
        hosts.add(extra="\n".join([
            f"addresses = {{{addresses}}}",
            "[[ha.redirect]]", 'kind = "dns"', 'server = "127.0.0.1"', f"port = {named.port}",
            f'zone = "{ZONE}"', 'name = "svc"', f'key_name = "{KEY}"',
            f'key_secret = "{named.secret}"', "timeout = 3"]))

        hosts.serving(alpha, 1)
        wait_until(lambda: _points_at(named, "alpha", 1), 10,
                   message=f"svc at alpha, epoch 1: {_dns(named)}")
        assert alpha.events("SB4206"), "no redirection event on alpha"
        wait_until(lambda: beta.status()["consistent"]
                   and beta.ha()["hosts"]["alpha"].get("workload") == "running", 20)

        result = alpha.engine.cli("switchover", "files")
        assert "beta is active at epoch 2" in result.stdout
        hosts.serving(beta, 2)
        wait_until(lambda: _points_at(named, "beta", 2), 10,
                   message=f"svc at beta, epoch 2: {_dns(named)}")
        assert beta.events("SB4206"), "no redirection event on beta"

        result = beta.engine.cli("switchback", "files")
        assert "alpha is active at epoch 3" in result.stdout
        hosts.serving(alpha, 3)
        wait_until(lambda: _points_at(named, "alpha", 3), 10,
                   message=f"svc at alpha, epoch 3: {_dns(named)}")
        written = last_written(beta)
        assert alpha.journal[:written] == list(range(1, written + 1))
        assert contiguous(alpha.journal)

        # beta as it would be had it missed the switchback: active at epoch 2, redirecting.
        stale = DnsRedirect("127.0.0.1", named.port, ZONE, "svc", KEY, named.secret, timeout=3)
        assert stale.current() == DnsRecord(ADDRESSES["alpha"], 3)
        with pytest.raises(StaleEpochError) as refused:
            stale.apply("beta", ADDRESSES["beta"], 2)
        assert (refused.value.ours, refused.value.current) == (2, 3)
        with pytest.raises(StaleEpochError):  # this epoch, for another address
            stale.point_to(ADDRESSES["beta"], 3)
        assert _points_at(named, "alpha", 3), _dns(named)
        assert not alpha.events("SB4210"), "an HA action failed on alpha"

        # The DNS server hangs during a switchover: beta serves, its update fails (SB4210),
        # and once the server answers again beta's next cycles redirect the clients after all.
        pid = int((directory / "named.pid").read_text())
        wait_until(lambda: beta.status()["consistent"] and _streaming(alpha), 30,
                   message="alpha replicating to a consistent beta")
        os.kill(pid, signal.SIGSTOP)
        try:
            result = alpha.engine.cli("switchover", "files")
            assert "beta is active at epoch 4" in result.stdout
            wait_until(lambda: beta.events("SB4210"), 15, message="beta's failed update")
        finally:
            os.kill(pid, signal.SIGCONT)
        wait_until(lambda: _points_at(named, "beta", 4), 15,
                   message=f"svc at beta, epoch 4 once the server answers: {_dns(named)}")


def _streaming(host: Host) -> bool:
    replication = host.status().get("replication") or {}
    return bool(replication.get("phase") == "replicating" and replication.get("link_up"))


# -- etcd ------------------------------------------------------------------------------------


def _etcd_keys(server: EtcdServer) -> tuple[dict[str, Any] | None, int | None]:
    """The scenario's leader key (decoded JSON, None when absent) and epoch key, read through
    etcd's gateway."""
    client = etcd3gw.Etcd3Client(host="127.0.0.1", port=int(server.url.rsplit(":", 1)[1]),
                                 timeout=2, api_path="/v3/")
    try:
        leader = client.get("/standby/files/leader")
        epoch = client.get("/standby/files/epoch")
    finally:
        client.session.close()
    return (json.loads(leader[0]) if leader else None, int(epoch[0]) if epoch else None)


@pytest.fixture
def etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    """A fresh etcd (requested before ``cluster``, so that it outlives the engines)."""
    server = EtcdServer(tmp_path / "etcd-data")
    try:
        yield server
    finally:
        server.stop()


def test_etcd_lease_moves_to_the_standby_when_the_holder_dies(etcd: EtcdServer,
                                                              cluster: Cluster) -> None:
    """alpha holds the lease at epoch 1 and serves; killed (engine and application), its lease
    runs out and beta wins it at epoch 2 and serves with every record. alpha, restarted, learns
    from etcd and beta that it lost: it never starts its application and follows beta."""
    cluster.logs.append(etcd.log)
    cluster.start()
    hosts, alpha, beta = cluster.pair, cluster.alpha, cluster.beta
    hosts.add(extra="\n".join([
        "auto_failover = true", 'arbitration = "etcd"', f'etcd_endpoints = ["{etcd.url}"]',
        "lease_seconds = 2"]))

    hosts.serving(alpha, 1)
    assert _etcd_keys(etcd) == ({"host": "alpha", "epoch": 1}, 1)
    wait_until(lambda: beta.status()["consistent"]
               and beta.ha()["hosts"]["alpha"].get("workload") == "running", 20)
    assert beta.ha()["role"] == "standby"
    assert _etcd_keys(etcd) == ({"host": "alpha", "epoch": 1}, 1), "alpha's lease not renewed"

    time.sleep(0.5)
    alpha.engine.kill()
    alpha.kill_app()
    killed = time.monotonic()
    hosts.serving(beta, 2, within=20)
    took = time.monotonic() - killed
    assert _etcd_keys(etcd) == ({"host": "beta", "epoch": 2}, 2)
    assert beta.events("SB4002"), "alpha not declared dead"
    assert beta.events("SB4202"), "no promotion event on beta"
    assert contiguous(beta.journal)
    assert len(beta.journal) > 0
    print(f"etcd failover: beta serving {took:.1f} s after alpha was killed")

    alpha_starts = alpha.starts()
    alpha.engine.start()
    wait_until(lambda: (alpha.ha()["role"], alpha.ha()["epoch"]) == ("standby", 2), 15,
               message="alpha stepping down")
    assert alpha.ha()["active"] == "beta"
    time.sleep(2.0)  # a few cycles: nothing may start it now
    assert alpha.starts() == alpha_starts, "the returning master started its workload"
    assert not alpha.app_running()
    assert _etcd_keys(etcd) == ({"host": "beta", "epoch": 2}, 2)
    assert beta.ha()["role"] == "active"
    assert beta.app_running()


# -- the witness -----------------------------------------------------------------------------


def _status_json(engine: EngineProcess) -> dict[str, Any]:
    result = engine.cli("status", "files", "--json")
    data = json.loads(result.stdout)
    (status,) = data if isinstance(data, list) else [data]
    return dict(status)


def _claim(witness: EngineProcess, sender: EngineProcess, claim: EpochClaim) -> Reply:
    """Send ``claim`` to the witness over an "ha" session holding ``sender``'s real key, as a
    stale host would."""
    identity = Identity.load_or_create(sender.home, sender.name)
    host, port = witness.peer_address.rsplit(":", 1)
    channel = connect((host, int(port)), identity, expected_fingerprint=witness.fingerprint,
                      timeout=10)
    session = Session(channel, Role.INITIATOR, sender.name)
    try:
        session.open(PURPOSE_HA)
        session.send(claim)
        return session.expect(Reply)
    finally:
        session.close()


def test_witness_arbitrates_switchover_and_failover(cluster: Cluster) -> None:
    """The witness holds the scenario as witness and follows the epoch of a switchover; the
    standby's failover is refused while the active host lives; once it is dead (engine and
    application) the standby claims a new epoch at the witness, which grants it; a claim for an
    old epoch, or a failover from a host while the witness sees the active one, is refused."""
    cluster.start(witness=True)
    hosts, alpha, beta, wit = cluster.pair, cluster.alpha, cluster.beta, cluster.witness
    assert wit is not None
    hosts.add(extra="\n".join([
        "auto_failover = true", 'arbitration = "witness"', 'witness = "wit"',
        "lease_seconds = 2"]))

    hosts.serving(alpha, 1)
    status = _status_json(wit)
    assert status["ha"]["role"] == "witness", status
    assert (status["ha"]["epoch"], status["ha"]["active"]) == (1, "alpha")
    wait_until(lambda: beta.status()["consistent"]
               and beta.ha()["hosts"]["alpha"].get("workload") == "running", 20)
    assert beta.ha()["hosts"]["wit"]["last_heard_s"] is not None

    # A planned switchover: the witness's record follows.
    result = alpha.engine.cli("switchover", "files")
    assert "beta is active at epoch 2" in result.stdout
    hosts.serving(beta, 2)
    ha = _status_json(wit)["ha"]
    assert (ha["role"], ha["epoch"], ha["active"]) == ("witness", 2, "beta")
    granted = _events(wit, "SB4201")
    assert any("handover claimed by alpha" in e["message"] for e in granted), granted

    # alpha replicates from beta now (its journal grows past what alpha wrote itself); the
    # operator's failover there is refused while beta sends heartbeats.
    written = last_written(alpha)
    wait_until(lambda: len(alpha.journal) > written + 20 and alpha.status()["consistent"]
               and alpha.ha()["hosts"]["beta"].get("workload") == "running", 30,
               message="alpha receiving beta's changes")
    refused = alpha.engine.cli("failover", "files", check=False)
    assert refused.returncode == 1
    assert "failover refused: beta sent a heartbeat" in refused.stderr
    assert (alpha.ha()["role"], alpha.ha()["epoch"]) == ("standby", 2)

    # beta dies: the witness no longer hears it and grants alpha's failover claim.
    time.sleep(0.5)
    beta.engine.kill()
    beta.kill_app()
    hosts.serving(alpha, 3, within=20)
    granted = _events(wit, "SB4201")
    assert any("alpha active from epoch 3 (failover claimed by alpha, granted by the witness)"
               in e["message"] for e in granted), granted
    ha = _status_json(wit)["ha"]
    assert (ha["epoch"], ha["active"]) == (3, "alpha")
    assert alpha.events("SB4002"), "beta not declared dead"
    journal = alpha.journal
    assert journal[:written + 20] == list(range(1, written + 21)), "beta's records lost"
    assert contiguous(journal)

    # beta, stale, claims with its real key: epoch 2 (its own) is not above the record...
    reply = _claim(wit, beta.engine, EpochClaim(scenario="files", epoch=2, active="beta",
                                                failover=True))
    assert not reply.ok
    assert "epoch 2 is not above the witness's record (epoch 3, alpha active)" in reply.message
    assert reply.data == {"epoch": 3, "active": "alpha"}
    assert _events(wit, "SB4211"), "no stale-epoch event on the witness"
    # ...and a higher one is refused while the witness hears alpha.
    reply = _claim(wit, beta.engine, EpochClaim(scenario="files", epoch=4, active="beta",
                                                failover=True))
    assert not reply.ok
    assert "the witness still sees alpha" in reply.message
    ha = _status_json(wit)["ha"]
    assert (ha["epoch"], ha["active"]) == (3, "alpha")
    assert alpha.ha()["role"] == "active"
