"""High availability across real hosts: engines in network namespaces on one LAN, a witness,
a service address and a DNS name that follow the active host.

The site (tests/integration/netns.py): alpha (the master) and beta (its replica) each run the
test application (ha_app.py) as the scenario's workload, listening on 0.0.0.0:8080; wit is a
third engine, the witness; client is where a user of the service sits. The scenario moves a
service address (10.N.0.100/24 on eth0, announced by gratuitous ARP) and the name svc in the
zone of a real BIND9 server started on the site's bridge (tests/dnsserver.py), so that the
client's view is the one that counts: which host answers at the service address, and which
address the name resolves to.

Faults: alpha killed (engine and application, as when the host dies), the alpha-beta link cut
while the witness still sees alpha (no failover may happen), and alpha isolated by a pulled
cable (beta takes over, and alpha, having lost its lease, stops its workload before beta
starts it; when it comes back it learns the new epoch and stays a standby).

Times: Is Alive every 0.5 s, timeout 3 s, lease 2 s (lease >= 3 x interval and lease +
2 x interval <= timeout). :class:`HaSite` builds the whole site; bench/failover.py uses it too.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.dnsserver import KEY, ZONE, Named, query, start_named

from .netns import Host, NetnsEngine, Site, needs_netns, pair_all, start_all, wait_until
from .test_ha import Host as AppHost
from .test_ha import contiguous

pytestmark = [pytest.mark.integration, needs_netns]

APP = Path(__file__).with_name("ha_app.py")
APP_PORT = 8080
SERVICE_HOST = 100  # the service address is 10.N.0.100
DNS_NAME = "svc"

SCENARIO = """\
name = "files"
master = "alpha"
replica = "beta"

[[roots]]
master = "{alpha_root}"
replica = "{beta_root}"

[ha]
interval = {interval}
timeout = {timeout}
auto_failover = true
arbitration = "witness"
witness = "wit"
lease_seconds = {lease}
addresses = {{alpha = "{alpha_address}", beta = "{beta_address}"}}

[ha.workload]
kind = "service"
start = "{python} {app} start"
stop = "{python} {app} stop"
check = "{python} {app} check"
timeout = 20
check_timeout = 3

[[ha.redirect]]
kind = "ip"
address = "{service_ip}/24"
interface = "eth0"

[[ha.redirect]]
kind = "dns"
server = "{dns_server}"
port = {dns_port}
zone = "{zone}"
name = "{name}"
key_name = "{key}"
key_secret = "{secret}"
ttl = 5
"""


@dataclass(frozen=True)
class Timing:
    """The scenario's [ha] times."""

    interval: float = 0.5
    timeout: float = 3.0
    lease: int = 2


@dataclass
class Node(AppHost):
    """A host of the scenario: its engine, root and application (AppHost), and its namespace."""

    host: Host

    @property
    def name(self) -> str:
        return self.engine.name

    def holds(self, address: str) -> bool:
        """Whether this host's eth0 has ``address``."""
        shown = self.host.run("ip", "-4", "-o", "addr", "show", "dev", "eth0").stdout
        return f" {address}/" in shown


@dataclass
class HaSite:
    """The whole site of this module, running: see :func:`ha_site`."""

    site: Site
    alpha: Node
    beta: Node
    wit: NetnsEngine
    client: Host
    named: Named
    timing: Timing
    tmp: Path

    @property
    def service_ip(self) -> str:
        return f"10.{self.site.subnet}.0.{SERVICE_HOST}"

    @property
    def dns_name(self) -> str:
        return f"{DNS_NAME}.{ZONE}"

    def scenario_text(self) -> str:
        return SCENARIO.format(
            alpha_root=self.alpha.root, beta_root=self.beta.root,
            interval=self.timing.interval, timeout=self.timing.timeout, lease=self.timing.lease,
            alpha_address=self.alpha.host.address, beta_address=self.beta.host.address,
            python=sys.executable, app=APP, service_ip=self.service_ip,
            dns_server=self.named.address, dns_port=self.named.port, zone=ZONE, name=DNS_NAME,
            key=KEY, secret=self.named.secret)

    def add_scenario(self) -> None:
        """Add the scenario on alpha (it goes to beta and the witness) and start it."""
        path = self.tmp / "files.toml"
        path.write_text(self.scenario_text())
        self.alpha.engine.cli("scenario", "add", str(path))
        self.alpha.engine.cli("scenario", "start", "files")

    def get(self, address: str, timeout: float = 1.0) -> str | None:
        """The body the client gets from http://ADDRESS:8080/ ("alpha 1234"), None if none."""
        answer = self.client.http_get(address, APP_PORT, "/", timeout=timeout)
        if answer is None or answer[0] != 200:
            return None
        return answer[1].decode()

    def answered_by(self, address: str, node: Node) -> bool:
        body = self.get(address)
        return body is not None and body.startswith(f"{node.name} ")

    def resolve(self) -> list[str]:
        """What the client's DNS query for the service name returns."""
        return query(self.named, self.dns_name, "A", netns=self.client.netns, timeout=1.0)

    def serving(self, node: Node, epoch: int, within: float = 20.0) -> None:
        """Wait until ``node`` is active at ``epoch`` with its application running."""
        def ready() -> bool:
            ha = node.ha()
            return (ha["role"], ha["epoch"], ha["workload"], ha["action"]) == \
                ("active", epoch, "running", None) and node.app_running()
        wait_until(ready, within, message=f"{node.name} serving at epoch {epoch}")

    def following(self, node: Node, active: Node, epoch: int) -> bool:
        ha = node.ha()
        return (ha["role"], ha["epoch"], ha["active"], ha["state"]) == \
            ("standby", epoch, active.name, "following")

    def redirected_to(self, node: Node) -> bool:
        """The client reaches ``node`` at the service address, and the name points at it."""
        return self.answered_by(self.service_ip, node) and \
            self.resolve() == [node.host.address]

    def logs(self) -> str:
        return self.site.logs() + f"----- named -----\n{self.named.log.read_text()[-3000:]}\n"


def _node(site: Site, host: Host, tmp: Path) -> Node:
    root = tmp / f"{host.name}-data"
    state = tmp / f"{host.name}-app"
    root.mkdir()
    state.mkdir()
    env = {"APP_DIR": str(root / "app"), "APP_STATE": str(state), "APP_HOST": host.name,
           "APP_PORT": str(APP_PORT), "APP_BIND": "0.0.0.0"}
    return Node(engine=site.engine(host, tmp, env=env), root=root, state=state, host=host)


@contextmanager
def ha_site(tmp: Path, timing: Timing = Timing()) -> Iterator[HaSite]:
    """A fresh site with the scenario added and started: alpha serving at epoch 1 (the client
    reaches it at the service address and by name), beta a consistent standby following it.
    Everything is removed on exit."""
    with ExitStack() as stack:
        site = stack.enter_context(Site())
        alpha_host, beta_host, wit_host, client = (
            site.add_host(name) for name in ("alpha", "beta", "wit", "client"))
        dns_dir = tmp / "dns"
        dns_dir.mkdir()
        named = stack.enter_context(start_named(dns_dir, address=site.gateway,
                                                netns=site.switch))
        alpha, beta = _node(site, alpha_host, tmp), _node(site, beta_host, tmp)
        wit = site.engine(wit_host, tmp)
        start_all(alpha.engine, beta.engine, wit)
        pair_all(alpha.engine, beta.engine, wit)
        ha = HaSite(site, alpha, beta, wit, client, named, timing, tmp)
        try:
            ha.add_scenario()
            ha.serving(alpha, 1)
            wait_until(lambda: beta.status()["consistent"] and ha.following(beta, alpha, 1)
                       and beta.ha()["hosts"]["alpha"].get("workload") == "running", 20,
                       message="beta a consistent standby")
            wait_until(lambda: ha.redirected_to(alpha), 10,
                       message="the client reaching alpha at the service address and by name")
        except BaseException:
            print(ha.logs())
            raise
        yield ha


@pytest.fixture
def cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[HaSite]:
    """A fresh :class:`HaSite` per test; the logs are printed when the test fails."""
    with ha_site(tmp_path) as ha:
        yield ha
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(ha.logs())


def test_master_killed_beta_takes_over_the_service_address_and_the_name(
        cluster: HaSite) -> None:
    """alpha's engine and application are killed: beta, with the witness's consent, promotes
    itself; the client gets beta's answers at the same service address, the name resolves to
    beta, and beta's journal holds every record beta had received from alpha, without a gap."""
    alpha, beta = cluster.alpha, cluster.beta
    body = cluster.get(cluster.service_ip)
    assert str(body).startswith("alpha "), body
    time.sleep(0.5)  # some more replicated writes
    received = beta.journal
    assert len(received) > 20
    assert contiguous(received)

    alpha.engine.kill()
    alpha.kill_app()
    killed = time.monotonic()
    wait_until(lambda: cluster.answered_by(cluster.service_ip, beta), 20,
               message="beta answering at the service address")
    took = time.monotonic() - killed
    print(f"failover seen by the client after {took:.1f} s")
    cluster.serving(beta, 2)
    wait_until(lambda: cluster.resolve() == [beta.host.address], 5,
               message=f"{cluster.dns_name} resolving to beta")
    body = cluster.get(beta.host.address)
    assert str(body).startswith("beta "), body

    journal = beta.journal
    assert journal[:len(received)] == received, "records lost in the failover"
    assert contiguous(journal)
    assert beta.events("SB4002"), "alpha not declared dead"
    raised = beta.events("SB4201")
    assert raised, "no SB4201 on beta"
    assert "failover" in raised[-1]["message"]
    for code in ("SB4202", "SB4204", "SB4206"):
        assert beta.events(code), f"no {code} on beta"
    assert cluster.wit.api("GET", "/v1/status/files")[0]["ha"]["epoch"] == 2
    assert took <= cluster.timing.timeout + 3, f"failover took {took:.1f} s"


def test_cut_between_the_hosts_while_the_witness_sees_alpha_no_failover(
        cluster: HaSite) -> None:
    """Only the alpha-beta link is cut: beta hears no heartbeat, but the witness still sees
    alpha, so beta waits (SB4101 says why) and alpha keeps serving; once the link heals,
    beta follows alpha again at the same epoch and replication resumes."""
    alpha, beta, site = cluster.alpha, cluster.beta, cluster.site
    timing = cluster.timing
    cluster.site.cut(alpha.host, beta.host)
    cut = time.monotonic()
    while time.monotonic() - cut < 2 * timing.timeout + timing.interval:
        ha = beta.ha()
        assert (ha["role"], ha["epoch"], ha["active"]) == ("standby", 1, "alpha"), ha
        assert alpha.ha()["role"] == "active"
        assert alpha.app_running()
        body = cluster.get(cluster.service_ip)
        assert str(body).startswith("alpha "), body
        time.sleep(0.25)
    waiting = beta.events("SB4101")
    assert waiting, "beta raised no SB4101"
    assert "the witness still sees alpha" in waiting[-1]["message"], waiting[-1]
    assert beta.events("SB4002"), "beta did not declare alpha dead"
    assert not beta.events("SB4201"), "beta raised the epoch"
    assert not beta.events("SB4204"), "beta started its workload"
    assert not alpha.events("SB4102"), "alpha lost its authority while the witness saw it"
    assert alpha.events("SB4003"), "alpha did not notice that beta fell silent"
    assert cluster.resolve() == [alpha.host.address]

    before = len(beta.journal)
    site.heal(alpha.host, beta.host)
    wait_until(lambda: cluster.following(beta, alpha, 1), 15, message="beta following again")
    assert beta.events("SB4001"), "beta did not report alpha heard again"
    wait_until(lambda: len(beta.journal) > before + 50 and beta.status()["consistent"], 30,
               message="replication to beta resuming")
    assert contiguous(beta.journal)
    ha = alpha.ha()
    assert (ha["role"], ha["epoch"], ha["state"]) == ("active", 1, "serving"), ha
    assert cluster.redirected_to(alpha)
    assert beta.starts() == 0


def test_isolated_master_stops_within_its_lease_and_returns_as_a_standby(
        cluster: HaSite) -> None:
    """alpha's cable is pulled: it loses the standby and the witness, so it stops its
    workload a little after lease_seconds (SB4102), before beta, past the timeout and with
    the witness's consent, starts its own. Plugged back in, alpha learns epoch 2, releases the
    service address and stays a standby: its application is not started again."""
    alpha, beta, site = cluster.alpha, cluster.beta, cluster.site
    timing = cluster.timing
    alpha_starts = alpha.starts()
    site.isolate(alpha.host)
    isolated = time.monotonic()
    wait_until(lambda: not alpha.app_running(), timing.lease + 2 * timing.interval,
               message="alpha's application stopped after its lease", interval=0.02)
    print(f"alpha stopped its application {time.monotonic() - isolated:.2f} s after the cut")
    isolation = alpha.events("SB4102")
    assert isolation, "alpha raised no SB4102"
    assert "no contact with a standby or the witness" in isolation[-1]["message"]

    wait_until(lambda: cluster.answered_by(cluster.service_ip, beta), 20,
               message="beta answering at the service address")
    cluster.serving(beta, 2)
    (stopped,) = alpha.events("SB4205")
    (started,) = beta.events("SB4204")
    assert stopped["ts"] < started["ts"], "beta started before alpha had stopped"
    assert beta.events("SB4201"), "no SB4201 on beta"
    assert beta.events("SB4206"), "no SB4206 on beta"

    site.reconnect(alpha.host)
    wait_until(lambda: cluster.following(alpha, beta, 2), 20,
               message="alpha a standby following beta at epoch 2")
    wait_until(lambda: not alpha.holds(cluster.service_ip), 5,
               message="alpha releasing the service address")
    time.sleep(2 * timing.interval)
    ha = alpha.ha()
    assert (ha["role"], ha["epoch"]) == ("standby", 2), ha
    assert alpha.starts() == alpha_starts, "the returning master started its workload"
    assert not alpha.app_running()
    assert alpha.events("SB4203"), "alpha did not step down"
    assert cluster.redirected_to(beta)
