"""Real-time replication between real engine processes: the stream, its faults, its modes."""

from __future__ import annotations

import errno
import os
import random
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ..treeutil import assert_trees_equal
from .harness import EngineProcess, write_scenario
from .proxy import Proxy


@pytest.fixture
def linked(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[
        tuple[EngineProcess, EngineProcess, Proxy]]:
    """alpha (master) and beta (replica), alpha reaching beta through a proxy we can cut."""
    alpha = EngineProcess(tmp_path / "alpha-home", "alpha", tmp_path)
    beta = EngineProcess(tmp_path / "beta-home", "beta", tmp_path)
    started: list[EngineProcess] = []
    proxy: Proxy | None = None
    try:
        for engine in (alpha, beta):
            engine.start()
            started.append(engine)
        proxy = Proxy(("127.0.0.1", beta.listen_port))
        alpha.cli("peer", "add", "beta", proxy.address, beta.fingerprint)
        beta.cli("peer", "add", "alpha", alpha.peer_address, alpha.fingerprint)
        yield alpha, beta, proxy
    finally:
        for engine in started:
            engine.stop()
        if proxy is not None:
            proxy.close()
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            for engine in started:
                print(f"----- log of {engine.name} -----\n{engine.log()[-20000:]}")


def replication(engine: EngineProcess, name: str = "live") -> dict[str, Any]:
    (status,) = engine.api("GET", f"/v1/status/{name}")
    return dict(status.get("replication") or {})


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def settled(alpha: EngineProcess, master: Path, replica: Path, name: str = "live") -> bool:
    """Caught up, and the trees equal. Caught up alone can hold for an instant while the last
    writes' notifications are still in the kernel's queue, not yet read by the engine."""
    return caught_up(alpha, name) and trees_equal(master, replica)


def trees_equal(master: Path, replica: Path) -> bool:
    try:
        assert_trees_equal(master, replica)
    except (AssertionError, OSError):
        return False
    return True


def caught_up(alpha: EngineProcess, name: str = "live") -> bool:
    r = replication(alpha, name)
    return (r.get("phase") == "replicating" and r.get("dirty_paths") == 0
            and r.get("durable_seq") == r.get("last_seq") and r.get("spool_records") == 0)


def start_live(alpha: EngineProcess, tmp_path: Path, master: Path, replica: Path,
               extra: str = "", name: str = "live") -> None:
    master.mkdir(exist_ok=True)
    scenario = write_scenario(tmp_path / f"{name}.toml", name, "alpha", "beta",
                              [(master, replica)], extra=extra)
    alpha.cli("scenario", "add", str(scenario))
    # The command follows the first synchronization attempt; if that one fails (a busy test
    # machine), the runtime tries again by itself: wait for the phase, not the command.
    alpha.cli("scenario", "start", name, check=False)
    wait_for(lambda: replication(alpha, name).get("phase") == "replicating", 60,
             "the initial synchronization and indexing")


class Workload:
    """A seeded random writer: create, append, overwrite at random offsets, truncate, rename,
    delete, mkdir, symlink; in a thread until stopped."""

    def __init__(self, root: Path, seed: int) -> None:
        self.root = root
        self.rng = random.Random(seed)
        self.stop = threading.Event()
        self.operations = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def finish(self) -> None:
        self.stop.set()
        self._thread.join(30)
        if self.error is not None:
            raise self.error

    def _files(self) -> list[Path]:
        return [p for p in self.root.rglob("*") if p.is_file() and not p.is_symlink()]

    def _dirs(self) -> list[Path]:
        return [self.root, *(p for p in self.root.rglob("*") if p.is_dir()
                             and not p.is_symlink())]

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                self.step_safely()
                time.sleep(self.rng.uniform(0, 0.01))
        except BaseException as exc:
            self.error = exc

    def step_safely(self) -> None:
        """One step; the races of a random writer with itself (a name taken, a directory
        not empty) are part of the game."""
        try:
            self.step()
        except OSError as exc:
            if exc.errno not in (errno.ENOENT, errno.EEXIST, errno.EISDIR, errno.ENOTDIR,
                                 errno.ENOTEMPTY):
                raise
        self.operations += 1

    def step(self) -> None:
        rng = self.rng
        op = rng.choices(["create", "append", "overwrite", "truncate", "rename", "delete",
                          "mkdir", "symlink", "rmdir"], [6, 6, 8, 2, 3, 2, 2, 1, 1])[0]
        files = self._files()
        dirs = self._dirs()
        if op == "create" or not files:
            path = rng.choice(dirs) / f"f{rng.randrange(10**6)}"
            path.write_bytes(rng.randbytes(rng.choice([0, 10, 4096, 70_000, 300_000])))
        elif op == "append":
            with open(rng.choice(files), "ab") as f:
                f.write(rng.randbytes(rng.randrange(1, 50_000)))
        elif op == "overwrite":
            path = rng.choice(files)
            size = path.stat().st_size
            with open(path, "r+b") as f:
                f.seek(rng.randrange(0, size + 1))
                f.write(rng.randbytes(rng.randrange(1, 20_000)))
        elif op == "truncate":
            path = rng.choice(files)
            os.truncate(path, rng.randrange(0, path.stat().st_size + 1))
        elif op == "rename":
            source = rng.choice(files + dirs[1:])
            target = rng.choice(dirs) / f"r{rng.randrange(10**6)}"
            if target.is_relative_to(source):
                return
            source.rename(target)
        elif op == "delete":
            rng.choice(files).unlink()
        elif op == "mkdir":
            (rng.choice(dirs) / f"d{rng.randrange(10**6)}").mkdir()
        elif op == "symlink":
            (rng.choice(dirs) / f"l{rng.randrange(10**6)}").symlink_to(
                f"target-{rng.randrange(100)}")
        elif op == "rmdir" and len(dirs) > 1:
            rng.choice(dirs[1:]).rmdir()


def test_changes_reach_the_replica_within_a_second(
        linked: tuple[EngineProcess, EngineProcess, Proxy], tmp_path: Path) -> None:
    alpha, _beta, _ = linked
    master, replica = tmp_path / "m", tmp_path / "r"
    master.mkdir()
    (master / "before.txt").write_text("written before the scenario started\n")
    start_live(alpha, tmp_path, master, replica)
    assert (replica / "before.txt").read_text() == "written before the scenario started\n"
    started = time.monotonic()
    (master / "new.txt").write_text("hello\n")
    wait_for(lambda: (replica / "new.txt").exists()
             and (replica / "new.txt").read_text() == "hello\n", 5, "new.txt on the replica")
    assert time.monotonic() - started < 2.0
    (master / "dir" / "sub").mkdir(parents=True)
    (master / "dir" / "sub" / "deep.bin").write_bytes(os.urandom(200_000))
    (master / "before.txt").rename(master / "dir" / "moved.txt")
    os.symlink("moved.txt", master / "dir" / "link")
    os.chmod(master / "new.txt", 0o600)
    wait_for(lambda: settled(alpha, master, replica), 20, "the replica to catch up")
    assert_trees_equal(master, replica)
    events = {e["code"] for e in alpha.events("live")}
    assert {"SB2201", "SB2202"} <= events


def test_only_changed_blocks_travel(linked: tuple[EngineProcess, EngineProcess, Proxy],
                                    tmp_path: Path) -> None:
    alpha, _, _ = linked
    master, replica = tmp_path / "m", tmp_path / "r"
    master.mkdir()
    big = master / "image.bin"
    big.write_bytes(os.urandom(32 * 1024 * 1024))
    start_live(alpha, tmp_path, master, replica, extra="[replication]\ncompression = false")
    before = replication(alpha)["sent_raw_bytes"]
    with open(big, "r+b") as f:  # two blocks in the middle, one append
        f.seek(10 * 65536 + 5)
        f.write(b"x" * 100)
        f.seek(300 * 65536)
        f.write(b"y" * 100)
    with open(big, "ab") as f:
        f.write(b"z" * 1000)
    wait_for(lambda: settled(alpha, master, replica), 20, "the replica to catch up")
    assert_trees_equal(master, replica)
    sent = replication(alpha)["sent_raw_bytes"] - before
    assert sent < 4 * 65536 + 64 * 1024, f"{sent} bytes sent for three small changes"


def test_random_workload_survives_link_cut_and_kill9(
        linked: tuple[EngineProcess, EngineProcess, Proxy], tmp_path: Path) -> None:
    """The core test: a seeded random workload; meanwhile the link is cut and restored, and
    each engine is killed with SIGKILL and restarted. Once quiet, the trees are equal."""
    alpha, beta, proxy = linked
    master, replica = tmp_path / "m", tmp_path / "r"
    master.mkdir()
    seed = int(os.environ.get("STANDBY_TEST_SEED", "20261125"))
    warmup = Workload(master, seed)
    for _ in range(200):
        warmup.step_safely()
    start_live(alpha, tmp_path, master, replica)
    workload = Workload(master, seed + 1)
    workload.start()
    try:
        time.sleep(2)
        faults = os.environ.get("FAULTS", "cut,beta,alpha")
        if "cut" in faults:
            proxy.cut()
            time.sleep(2)
            proxy.restore()
            time.sleep(2)
        if "beta" in faults:
            beta.kill()
            time.sleep(1)
            beta.start()
            time.sleep(2)
        if "alpha" in faults:
            alpha.kill()
            time.sleep(1)
            alpha.start()
            time.sleep(3)
    finally:
        workload.finish()
    assert workload.operations > 100
    wait_for(lambda: settled(alpha, master, replica), 60,
             "the replica to catch up after the faults")
    assert_trees_equal(master, replica)
    codes = [e["code"] for e in alpha.events("live")]
    assert "SB2203" in codes
    assert "SB2204" in codes
    # No full resynchronization after the restarts: only the first one.
    assert codes.count("SB2101") == 1, codes


def test_suspend_spools_and_resume_applies(
        linked: tuple[EngineProcess, EngineProcess, Proxy], tmp_path: Path) -> None:
    alpha, beta, _ = linked
    master, replica = tmp_path / "m", tmp_path / "r"
    start_live(alpha, tmp_path, master, replica)
    beta.cli("suspend", "live")
    (master / "while-suspended.txt").write_text("spooled on the replica\n")
    (master / "d").mkdir()
    (master / "d" / "x").write_bytes(os.urandom(100_000))
    wait_for(lambda: replication(alpha)["durable_seq"] == replication(alpha)["last_seq"]
             and replication(alpha)["last_seq"] > 0 and replication(alpha)["dirty_paths"] == 0,
             20, "the replica to hold the changes in its spool")
    assert not (replica / "while-suspended.txt").exists()
    status = replication(beta)
    assert status["suspended"]
    assert status["backlog_records"] > 0
    beta.cli("resume", "live")
    wait_for(lambda: (replica / "while-suspended.txt").exists()
             and replication(beta)["backlog_records"] == 0, 20, "the backlog to be applied")
    wait_for(lambda: settled(alpha, master, replica), 20, "the replica to catch up")
    assert_trees_equal(master, replica)
    assert {"SB2208", "SB2209"} <= {e["code"] for e in beta.events("live")}
    assert [e["code"] for e in alpha.events("live")].count("SB2101") == 1


def test_spool_over_limit_degrades_and_recovers(
        linked: tuple[EngineProcess, EngineProcess, Proxy], tmp_path: Path) -> None:
    alpha, _, proxy = linked
    master, replica = tmp_path / "m", tmp_path / "r"
    start_live(alpha, tmp_path, master, replica,
               extra='[replication]\nspool_max = "64MiB"\ncompression = false')
    proxy.cut()
    for i in range(12):  # 96 MiB of changes while the link is down: past the 64 MiB spool
        (master / f"big{i}.bin").write_bytes(os.urandom(8 * 1024 * 1024))
    wait_for(lambda: replication(alpha)["phase"] == "degraded", 30, "the degraded phase")
    (master / "after.txt").write_text("changed while degraded\n")
    proxy.restore()
    wait_for(lambda: settled(alpha, master, replica), 90, "the replica to catch up after degrading")
    assert_trees_equal(master, replica)
    codes = [e["code"] for e in alpha.events("live")]
    assert "SB2205" in codes
    assert "SB2206" in codes
    assert codes.count("SB2101") == 1  # recovered without a full resynchronization


def test_inotify_overflow_recovers_by_rescan(
        linked: tuple[EngineProcess, EngineProcess, Proxy], tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to lower fs.inotify.max_queued_events")
    alpha, _, _ = linked
    master, replica = tmp_path / "m", tmp_path / "r"
    limit = Path("/proc/sys/fs/inotify/max_queued_events")
    original = limit.read_text()
    alpha.stop()
    limit.write_text("32\n")  # taken when the engine's watcher is created
    try:
        alpha.start()
        start_live(alpha, tmp_path, master, replica)
    finally:
        limit.write_text(original)
    for i in range(500):  # far more events than the queue holds
        (master / f"file{i}.txt").write_text(f"{i}\n" * 10)
    wait_for(lambda: settled(alpha, master, replica), 60, "the replica to catch up after a rescan")
    assert_trees_equal(master, replica)
    assert "SB2207" in {e["code"] for e in alpha.events("live")}


def test_assessment_mode_sends_nothing_and_reports(
        linked: tuple[EngineProcess, EngineProcess, Proxy], tmp_path: Path) -> None:
    alpha, _, _ = linked
    master, replica = tmp_path / "m", tmp_path / "r"
    master.mkdir()
    (master / "existing.bin").write_bytes(os.urandom(1_000_000))
    scenario = write_scenario(tmp_path / "assess.toml", "assess", "alpha", "beta",
                              [(master, replica)],
                              extra='[replication]\nmode = "assessment"\nsample_seconds = 2')
    alpha.cli("scenario", "add", str(scenario))
    alpha.cli("scenario", "start", "assess")
    wait_for(lambda: replication(alpha, "assess").get("phase") == "assessing", 30, "assessing")
    (master / "new.txt").write_bytes(b"a" * 500_000)  # compresses well
    with open(master / "existing.bin", "r+b") as f:
        f.write(os.urandom(65536))
    wait_for(lambda: any(e["code"] == "SB2213" for e in alpha.events("assess"))
             and alpha.api("GET", "/v1/scenarios/assess/report", expect=None).get(
                 "changed_bytes", 0) > 0, 30, "an assessment sample")
    report = alpha.api("GET", "/v1/scenarios/assess/report")
    assert report["kind"] == "assessment"
    assert 500_000 + 65536 <= report["changed_bytes"] < 700_000
    assert report["compressed_bytes"] < report["changed_bytes"]
    assert report["bandwidth_peak_bytes_s"] > 0
    assert not replica.exists() or not any(replica.iterdir())  # nothing was sent
    assert replication(alpha, "assess")["sent_bytes"] == 0


@pytest.fixture
def trio(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[
        tuple[EngineProcess, EngineProcess, EngineProcess]]:
    """alpha, beta and gamma, each paired with the two others. gamma runs in its own mount
    namespace where tmp_path/gamma-disk is mounted on tmp_path/r: a replica path that is its
    own on gamma, as on a separate host."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the third engine runs in its own mount namespace")
    engines = [EngineProcess(tmp_path / "alpha-home", "alpha", tmp_path),
               EngineProcess(tmp_path / "beta-home", "beta", tmp_path),
               EngineProcess(tmp_path / "gamma-home", "gamma", tmp_path,
                             bind=(tmp_path / "gamma-disk", tmp_path / "r"))]
    started: list[EngineProcess] = []
    try:
        for engine in engines:
            engine.start()
            started.append(engine)
        for a in engines:
            for b in engines:
                if a is not b:
                    a.cli("peer", "add", b.name, b.peer_address, b.fingerprint)
        yield engines[0], engines[1], engines[2]
    finally:
        for engine in started:
            engine.stop()
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            for engine in started:
                print(f"----- log of {engine.name} -----\n{engine.log()[-20000:]}")


def test_fan_out_to_two_replicas(trio: tuple[EngineProcess, EngineProcess, EngineProcess],
                                 tmp_path: Path) -> None:
    """One master, two replicas: both receive the same stream; each is acknowledged apart."""
    alpha, beta, gamma = trio
    master, replica = tmp_path / "m", tmp_path / "r"
    master.mkdir()
    (master / "before.bin").write_bytes(os.urandom(300_000))
    scenario = write_scenario(tmp_path / "fan.toml", "fan", "alpha", "beta",
                              [(master, replica)], extra='replicas = ["gamma"]')
    alpha.cli("scenario", "add", str(scenario))
    alpha.cli("scenario", "start", "fan")
    wait_for(lambda: replication(alpha, "fan").get("phase") == "replicating", 60, "fan-out")
    workload = Workload(master, 7)
    for _ in range(150):
        workload.step_safely()
    wait_for(lambda: settled(alpha, master, replica, "fan")
             and trees_equal(master, tmp_path / "gamma-disk"), 30, "both replicas to catch up")
    assert_trees_equal(master, replica)  # beta's
    assert_trees_equal(master, tmp_path / "gamma-disk")  # gamma's, at the same path there
    status = replication(alpha, "fan")
    assert set(status["links"]) == {"beta", "gamma"}
    for link in status["links"].values():
        assert link["durable_seq"] == status["last_seq"] > 0
        assert link["sent_raw_bytes"] > 0
    assert set(status["hosts"]) == {"alpha", "beta", "gamma"}
    for engine in (beta, gamma):
        assert replication(engine, "fan")["durable_seq"] == status["last_seq"]


def test_cascade_forwards_to_a_further_replica(
        trio: tuple[EngineProcess, EngineProcess, EngineProcess], tmp_path: Path) -> None:
    """alpha -> beta -> gamma: beta forwards what it applies."""
    alpha, beta, gamma = trio
    master, middle = tmp_path / "m", tmp_path / "r"  # gamma has its own disk at r
    master.mkdir()
    (master / "before.txt").write_text("before\n")
    scenario = write_scenario(tmp_path / "chain.toml", "chain", "alpha", "beta",
                              [(master, middle)], extra='cascade = ["gamma"]')
    alpha.cli("scenario", "add", str(scenario))
    assert beta.api("GET", "/v1/scenarios/chain.cascade")["replica"] == "gamma"
    alpha.cli("scenario", "start", "chain")
    wait_for(lambda: replication(alpha, "chain").get("phase") == "replicating", 60, "chain")
    wait_for(lambda: replication(beta, "chain.cascade").get("phase") == "replicating", 60,
             "the cascade")
    workload = Workload(master, 9)
    for _ in range(100):
        workload.step_safely()
    wait_for(lambda: settled(alpha, master, middle, "chain"), 30, "beta to catch up")
    wait_for(lambda: settled(beta, middle, tmp_path / "gamma-disk", "chain.cascade"), 30,
             "gamma to catch up")
    assert_trees_equal(master, middle)
    assert_trees_equal(master, tmp_path / "gamma-disk")
    (status,) = gamma.api("GET", "/v1/status/chain.cascade")
    assert status["role"] == "replica"
    assert replication(gamma, "chain.cascade")["durable_seq"] > 0


def test_bandwidth_limit_holds(linked: tuple[EngineProcess, EngineProcess, Proxy],
                               tmp_path: Path) -> None:
    alpha, _, _ = linked
    master, replica = tmp_path / "m", tmp_path / "r"
    start_live(alpha, tmp_path, master, replica,
               extra='[replication]\nbandwidth_limit = "2MiB"\ncompression = false')
    started = time.monotonic()
    (master / "burst.bin").write_bytes(os.urandom(6 * 1024 * 1024))
    wait_for(lambda: caught_up(alpha) and (replica / "burst.bin").exists()
             and (replica / "burst.bin").stat().st_size == 6 * 1024 * 1024, 30, "the burst")
    elapsed = time.monotonic() - started
    # 6 MiB at 2 MiB/s, less a 0.5 MiB burst and one 0.5 MiB batch let through in debt: at
    # least 2.5 s; unlimited, it takes a fraction of a second on loopback.
    assert elapsed >= 2.3, elapsed
    assert_trees_equal(master, replica)


def test_rescan_of_an_empty_root_deletes_nothing(
        linked: tuple[EngineProcess, EngineProcess, Proxy], tmp_path: Path) -> None:
    """The master's root comes back empty after a restart (an unmounted disk): the rescan
    must not turn that into deletions on the replica."""
    alpha, _, _ = linked
    master, replica = tmp_path / "m", tmp_path / "r"
    master.mkdir()
    for i in range(5):
        (master / f"f{i}.txt").write_text(f"{i}\n")
    start_live(alpha, tmp_path, master, replica)
    alpha.stop()
    master.rename(tmp_path / "m-unmounted")
    master.mkdir()  # the empty mount point
    alpha.start()
    wait_for(lambda: replication(alpha).get("phase") == "failed", 30, "capture to stop")
    assert sorted(p.name for p in replica.iterdir()) == [f"f{i}.txt" for i in range(5)]
    codes = {e["code"] for e in alpha.events("live")}
    assert {"SB2104", "SB2212"} <= codes


def test_compression_shrinks_what_travels(
        linked: tuple[EngineProcess, EngineProcess, Proxy], tmp_path: Path) -> None:
    alpha, _, _ = linked
    master, replica = tmp_path / "m", tmp_path / "r"
    start_live(alpha, tmp_path, master, replica)  # compression is on by default
    text = b"".join(b"line %d of a log that compresses well\n" % i for i in range(100_000))
    (master / "app.log").write_bytes(text)
    (master / "random.bin").write_bytes(os.urandom(1_000_000))  # does not compress: sent raw
    wait_for(lambda: settled(alpha, master, replica), 30, "the replica to catch up")
    assert_trees_equal(master, replica)
    status = replication(alpha)
    raw, wire = status["sent_raw_bytes"], status["sent_bytes"]
    assert raw > len(text) + 1_000_000
    # The text shrinks several times; the random megabyte travels as it is.
    assert 1_000_000 < wire < 1_000_000 + len(text) / 3, (raw, wire)


def test_full_replica_disk_keeps_changes_in_the_spool(
        linked: tuple[EngineProcess, EngineProcess, Proxy], tmp_path: Path) -> None:
    """The replica's disk fills up: the replica says so (SB2210), the master keeps the changes
    and sends them again; once there is room, the replica catches up."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs")
    alpha, beta, _ = linked
    master, replica = tmp_path / "m", tmp_path / "r"
    replica.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(replica)], check=True)
    try:
        start_live(alpha, tmp_path, master, replica)
        (master / "big.bin").write_bytes(os.urandom(6 * 1024 * 1024))
        wait_for(lambda: any(e["code"] == "SB2210" for e in beta.events("live")), 30,
                 "the replica to report its full disk")
        assert replication(alpha)["spool_records"] > 0
        (master / "big.bin").unlink()
        (master / "small.txt").write_text("fits\n")
        subprocess.run(["mount", "-o", "remount,size=16m", str(replica)], check=True)
        wait_for(lambda: settled(alpha, master, replica), 60, "the replica to catch up once there is room")
        assert_trees_equal(master, replica)
    finally:
        subprocess.run(["umount", "-l", str(replica)], check=False)


def test_spool_over_limit_with_small_changes(
        linked: tuple[EngineProcess, EngineProcess, Proxy], tmp_path: Path) -> None:
    """Many small files fill the spool: the append that fails is as likely the one at the end
    of a round of changes as one in the middle of a large file. Either way: degraded, then
    recovered, never a stopped capture."""
    alpha, _, proxy = linked
    master, replica = tmp_path / "m", tmp_path / "r"
    start_live(alpha, tmp_path, master, replica,
               extra='[replication]\nspool_max = "64MiB"\ncompression = false')
    proxy.cut()
    for i in range(100):  # 100 MiB in 1 MiB files, a few per round
        (master / f"small{i:03}.bin").write_bytes(os.urandom(1024 * 1024))
        if i % 10 == 9:
            time.sleep(0.05)
    wait_for(lambda: replication(alpha)["phase"] == "degraded", 30, "the degraded phase")
    proxy.restore()
    wait_for(lambda: settled(alpha, master, replica), 90, "the replica to catch up")
    assert_trees_equal(master, replica)
    codes = [e["code"] for e in alpha.events("live")]
    assert "SB2212" not in codes  # capture never failed
    assert "SB2205" in codes
    assert "SB2206" in codes
