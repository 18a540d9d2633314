"""High availability with real engines on loopback: switchover under load, failover,
switchback, a returning old master, DNS redirection on a real BIND9, the etcd arbiter on a
real etcd.

Each host runs the test application (ha_app.py) as its workload, in its own copy of the
replicated root; it writes without pause, so every switchover happens under load. "Nothing
lost" is checked on the application's own data: its journal numbers every record, and the new
active host's journal must hold every number the old one wrote, without a gap.

Times: Is Alive every 0.5 s with a 3 s timeout, so a failover takes seconds.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.treeutil import assert_trees_equal

from .harness import EngineProcess, pair
from .netns import wait_until

pytestmark = pytest.mark.integration

APP = Path(__file__).with_name("ha_app.py")
HA = """
[ha]
interval = 0.5
timeout = 3
{extra}
[ha.workload]
kind = "service"
start = "{python} {app} start"
stop = "{python} {app} stop"
check = "{python} {app} check"
timeout = 20
check_timeout = 3
"""
#: The data the scenario protects besides the application's: makes "differences only"
#: measurable (a full copy would send all of it).
SEED_FILES, SEED_SIZE = 8, 4 * 1024 * 1024


@dataclass
class Host:
    engine: EngineProcess
    root: Path  # the scenario's root on this host
    state: Path  # the application's pid file and counters (outside the root)

    @property
    def journal(self) -> list[int]:
        """The numbers of the application's journal on this host, complete lines only."""
        try:
            data = (self.root / "app" / "journal.log").read_bytes()
        except FileNotFoundError:
            return []
        return [int(line.split(b" ")[0]) for line in data.split(b"\n")[:-1]]

    def ha(self) -> dict[str, Any]:
        (status,) = self.engine.api("GET", "/v1/status/files")
        ha: dict[str, Any] = status["ha"]
        return ha

    def status(self) -> dict[str, Any]:
        (status,) = self.engine.api("GET", "/v1/status/files")
        return dict(status)

    def starts(self) -> int:
        """How many times the application was started on this host."""
        try:
            return len((self.state / "starts").read_text().splitlines())
        except FileNotFoundError:
            return 0

    def app_pid(self) -> int | None:
        """The application's pid, from its pid file (None: not started, or stopped)."""
        try:
            return int((self.state / "app.pid").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def app_running(self) -> bool:
        return _pid_alive(self.app_pid())

    def kill_app(self) -> None:
        """SIGKILL the application (the host died with it, or a test left it running)."""
        pid = self.app_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def events(self, code: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.engine.events("files") if code is None or e["code"] == code]


def _pid_alive(pid: int | None) -> bool:
    """Whether ``pid`` runs; a zombie (exited, not yet reaped by init) does not."""
    if pid is None:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@dataclass
class Pair:
    alpha: Host
    beta: Host
    tmp: Path

    def add(self, extra: str = "", top: str = "") -> None:
        """Add the scenario on alpha and start it (the initial synchronization)."""
        text = "\n".join([
            'name = "files"', 'master = "alpha"', 'replica = "beta"', top,
            "[[roots]]", f'master = "{self.alpha.root}"', f'replica = "{self.beta.root}"',
            HA.format(extra=extra, python=sys.executable, app=APP)])
        path = self.tmp / "files.toml"
        path.write_text(text)
        self.alpha.engine.cli("scenario", "add", str(path))
        self.alpha.engine.cli("scenario", "start", "files")

    def serving(self, host: Host, epoch: int, within: float = 20.0) -> None:
        """Wait until ``host`` is active at ``epoch`` with its application running."""
        def ready() -> bool:
            ha = host.ha()
            return (ha["role"], ha["epoch"], ha["workload"], ha["action"]) == \
                ("active", epoch, "running", None) and host.app_pid() is not None
        wait_until(ready, within, message=f"{host.engine.name} serving at epoch {epoch}")


def _engine(tmp: Path, name: str) -> Host:
    root = tmp / f"{name}-data"
    state = tmp / f"{name}-app"
    root.mkdir()
    state.mkdir()
    env = {"APP_DIR": str(root / "app"), "APP_STATE": str(state), "APP_HOST": name,
           "APP_PORT": str(_free_port())}
    return Host(EngineProcess(tmp / f"{name}-home", name, tmp, env=env), root, state)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def hosts(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Pair]:
    """alpha (master) and beta, paired; alpha's root seeded with SEED_FILES files."""
    alpha, beta = _engine(tmp_path, "alpha"), _engine(tmp_path, "beta")
    for number in range(SEED_FILES):
        (alpha.root / f"seed-{number}.bin").write_bytes(os.urandom(SEED_SIZE))
    started: list[Host] = []
    try:
        for host in (alpha, beta):
            host.engine.start()
            started.append(host)
        pair(alpha.engine, beta.engine)
        yield Pair(alpha, beta, tmp_path)
    finally:
        for host in started:
            host.engine.stop()
        for host in (alpha, beta):
            (host.state / "pause").unlink(missing_ok=True)
            host.kill_app()
        failed = getattr(request.node, "rep_call", None)
        if failed is not None and failed.failed:
            for host in started:
                print(f"----- log of {host.engine.name} -----\n{host.engine.log()[-30000:]}")


def contiguous(numbers: list[int]) -> bool:
    return numbers == list(range(1, len(numbers) + 1))


def last_written(host: Host) -> int:
    """The last number the application wrote before it was stopped on ``host``."""
    return int((host.state / "last").read_text())


def test_switchover_under_load_loses_nothing_then_replicates_back(hosts: Pair) -> None:
    """A planned switchover while the application writes: beta's journal holds every record
    alpha wrote; beta then replicates back to alpha, and a switchback does the same the other
    way."""
    alpha, beta = hosts.alpha, hosts.beta
    hosts.add()
    hosts.serving(alpha, 1)
    wait_until(lambda: beta.ha()["hosts"]["alpha"].get("workload") == "running", 10)
    time.sleep(1.0)  # a second of writes

    result = alpha.engine.cli("switchover", "files")
    assert "beta is active at epoch 2" in result.stdout

    written = last_written(alpha)
    assert written > 50
    hosts.serving(beta, 2)
    journal = beta.journal
    assert journal[:written] == list(range(1, written + 1)), "records lost in the switchover"
    assert contiguous(journal)
    assert alpha.ha()["role"] == "standby"
    assert alpha.events("SB4207"), "no drain event on alpha"
    assert beta.events("SB4202"), "no promotion event on beta"

    # Reverse replication: alpha follows beta's writes, and is a consistent copy again.
    wait_until(lambda: len(alpha.journal) > len(journal) + 20 and alpha.status()["consistent"],
               30, message="alpha receiving beta's changes")
    (beta.state / "pause").touch()
    time.sleep(0.2)
    wait_until(lambda: _equal(beta.root, alpha.root), 30, message="alpha equal to beta")
    (beta.state / "pause").unlink()

    result = beta.engine.cli("switchback", "files")
    assert "alpha is active at epoch 3" in result.stdout
    written = last_written(beta)
    hosts.serving(alpha, 3)
    journal = alpha.journal
    assert journal[:written] == list(range(1, written + 1))
    assert contiguous(journal)


def _equal(a: Path, b: Path) -> bool:
    try:
        assert_trees_equal(a, b)
    except (AssertionError, FileNotFoundError):
        return False
    return True


def test_failover_by_the_operator_then_switchback_sends_only_the_differences(
        hosts: Pair) -> None:
    """Peer arbitration, no automatic failover: the operator's failover is refused while alpha
    lives, accepted once it is gone. alpha comes back passive (its application is never
    started), steps down, and the switchback resynchronizes it with only the differences."""
    alpha, beta = hosts.alpha, hosts.beta
    hosts.add()
    hosts.serving(alpha, 1)
    wait_until(lambda: beta.status()["consistent"], 20)

    refused = beta.engine.cli("failover", "files", check=False)
    assert refused.returncode == 1
    assert "failover refused: alpha sent a heartbeat" in refused.stderr

    time.sleep(0.5)
    alpha.engine.kill()
    alpha.kill_app()
    wait_until(lambda: beta.events("SB4101"), 15, message="beta waiting for the operator")
    assert beta.events("SB4002"), "alpha not declared dead"
    assert beta.ha()["state"] == "active host dead"

    beta.engine.cli("failover", "files")
    hosts.serving(beta, 2)
    assert contiguous(beta.journal)
    time.sleep(1.0)  # beta's application writes: the differences alpha lacks

    alpha_starts = alpha.starts()
    alpha.engine.start()
    wait_until(lambda: alpha.ha()["role"] == "standby" and alpha.ha()["epoch"] == 2, 15,
               message="alpha stepping down")
    time.sleep(1.0)
    assert alpha.starts() == alpha_starts, "the returning master started its workload"
    assert not alpha.app_running()

    result = beta.engine.cli("switchback", "files")
    assert "alpha is active at epoch 3" in result.stdout
    hosts.serving(alpha, 3)
    written = last_written(beta)
    assert alpha.journal[:written] == list(range(1, written + 1))
    report = beta.engine.api("GET", "/v1/scenarios/files/report")
    data = SEED_FILES * SEED_SIZE
    sent = report["bytes_sent"]
    assert sent < data / 10, f"the resync sent {sent} bytes of {data}"


def test_automatic_failover_with_a_caught_up_replica(hosts: Pair) -> None:
    """Peer arbitration with auto_failover: alpha's engine and application die; beta, caught
    up, promotes itself after the Is Alive timeout and serves."""
    alpha, beta = hosts.alpha, hosts.beta
    hosts.add(extra="auto_failover = true")
    hosts.serving(alpha, 1)
    wait_until(lambda: beta.status()["consistent"]
               and beta.ha()["hosts"]["alpha"].get("workload") == "running", 20)

    alpha.engine.kill()
    alpha.kill_app()
    hosts.serving(beta, 2, within=20)  # how fast: bench/failover.py measures it
    assert beta.events("SB4002")
    assert beta.events("SB4201")
    assert contiguous(beta.journal)


def test_a_passing_check_keeps_a_silent_master_alive(hosts: Pair) -> None:
    """Only alpha's engine dies; its application still answers the TCP check, so beta does not
    declare alpha dead. When the application dies too, the check fails (SB4004) and beta
    fails over."""
    alpha, beta = hosts.alpha, hosts.beta
    port = alpha.engine.env["APP_PORT"]
    hosts.add(extra=f"auto_failover = true\nchecks = [{{kind = \"tcp\", host = \"127.0.0.1\", "
                    f"port = {port}, timeout = 1}}]")
    hosts.serving(alpha, 1)
    wait_until(lambda: beta.status()["consistent"]
               and beta.ha()["hosts"]["alpha"].get("workload") == "running", 20)

    alpha.engine.kill()
    time.sleep(3 * 2)  # twice the Is Alive timeout
    ha = beta.ha()
    assert (ha["role"], ha["epoch"]) == ("standby", 1), ha
    assert "is ok, so it is not declared dead" in ha["reason"]
    assert not beta.events("SB4002")

    alpha.kill_app()
    hosts.serving(beta, 2, within=20)
    (failed,) = beta.events("SB4004")
    assert f"tcp 127.0.0.1:{port}" in failed["message"]
    assert beta.events("SB4002")

