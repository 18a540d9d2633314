"""Time standby's sync against rsync over loopback on the same data; print ratios.

Usage:
    .venv/bin/python bench/sync_vs_rsync.py [--quick] [--runs N] [--out DIR] [--only-rsync]

Each case first prepares every run's replica, one fresh directory per run and tool, then
settles the file system, and only then times the runs one after another: before each run it
settles the page cache (cold: sync and drop_caches; warm: read master and replica), times one
tool end to end from the client side, then checks that the replica equals the master. A wrong
copy fails the case: its speed is never reported. The ratio is median(standby) /
median(rsync): lower is better; the per-run times are reported too.

rsync runs as a daemon on 127.0.0.1 and the client pushes to it, as standby's master pushes to
its replica engine. Progress goes to stderr; the report (Markdown) to stdout and to --out.

Choices worth knowing when reading the numbers:
- Every run starts from the same replica content for both tools: empty (first syncs), the
  pristine image (resync after a change), or a `cp -a` of the master (no-change resyncs).
  Copies use `cp --sparse=always`, so zero runs of a prepared replica are holes for both.
- Nothing is deleted between preparing a run's replica and timing it. On ext4 without a
  journal (this VM's root file system), an inode freed in the last 60 s (up to 360 s while its
  inode-table block is dirty) is skipped by the allocator after a scan of its block group, so
  creating files next to a fresh deletion is many times slower. Old run directories are kept
  while the disk has room, else deleted at the end of a case; the next case then waits until
  60 s after that deletion. After preparing a case and before each run, a probe of 1,000 file
  creates must run within twice the best probe time plus 10 ms (details in Settler).
- Cold runs pause after drop_caches: the VM hands freed memory back to its host (free page
  reporting) a few seconds later, and page-cache writes run about 3x faster on pages that were
  not handed back yet. The pause makes both tools start from the same, settled, state.
- The scratch directory defaults to /var/tmp, not /tmp: test suites create and delete files
  under /tmp all day, which slows every file create in the block groups they use.
- Cold runs are the first syncs and case 2cold. Case 3 is warm: both tools then read both
  sides from memory and the case measures comparison work, not the disk. Case 5resync is warm
  too: it measures per-file overhead with metadata cached.
- standby is timed through its CLI, start-up of the Python client included, as a user runs it.
"""

from __future__ import annotations

import argparse
import enum
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from _common import (
    BenchError,
    GiB,
    KiB,
    MiB,
    allocated,
    change_blocks,
    copy_contents,
    drop_caches,
    fmt_size,
    free_loopback_port,
    port_open,
    stop_process,
    tail,
    tree_differences,
    wait_until,
    warm,
    write_image,
    write_sparse,
    write_tree,
)

REPO = Path(__file__).resolve().parent.parent
SEED = 20241125
# Marks a scratch directory as ours, so that we never delete a directory we did not create.
SCRATCH_MARKER = ".standby-bench"

IMAGE, SPARSE, TREE = "image", "sparse", "tree"


@dataclass(frozen=True, kw_only=True)
class Sizes:
    image: int
    sparse: int
    sparse_fraction: float = 0.10
    changed_fraction: float = 0.01
    tree_files: int
    tree_dirs: int
    tree_max_file: int = 16 * KiB


FULL = Sizes(image=4 * GiB, sparse=4 * GiB, tree_files=100_000, tree_dirs=1000)
QUICK = Sizes(image=256 * MiB, sparse=256 * MiB, tree_files=5000, tree_dirs=50)


class Start(enum.Enum):
    """The replica's content before each timed run."""

    EMPTY = "empty"  # first sync
    PRISTINE = "pristine"  # the master as it was before its blocks were changed
    EQUAL = "equal"  # a copy of the master now (a no-change resync leaves it as it is)


@dataclass(frozen=True, kw_only=True)
class Case:
    key: str
    title: str
    dataset: str
    cold: bool
    target: float
    start: Start
    rsync_flags: tuple[str, ...]
    method: str  # standby's --method
    changed_master: bool = False  # runs on the master after change_blocks()


def make_cases(sizes: Sizes) -> list[Case]:
    image, sparse = fmt_size(sizes.image), fmt_size(sizes.sparse)
    delta = ("-a", "--inplace", "--no-whole-file")
    return [
        Case(key="1", title=f"first sync, {image} image", dataset=IMAGE, cold=True, target=1.0,
             start=Start.EMPTY, rsync_flags=("-a", "--inplace"), method="block"),
        Case(key="2cold", title="resync, 1 % of blocks changed", dataset=IMAGE, cold=True,
             target=0.5, start=Start.PRISTINE, rsync_flags=delta, method="block",
             changed_master=True),
        Case(key="2warm", title="resync, 1 % of blocks changed", dataset=IMAGE, cold=False,
             target=0.25, start=Start.PRISTINE, rsync_flags=delta, method="block",
             changed_master=True),
        # rsync -I compares content; standby without --ignore-same-size-time does too.
        Case(key="3", title="resync, nothing changed", dataset=IMAGE, cold=False, target=0.33,
             start=Start.EQUAL, rsync_flags=("-a", "-I", "--inplace", "--no-whole-file"),
             method="block"),
        Case(key="4", title=f"first sync, {sparse} sparse file, 10 % data", dataset=SPARSE,
             cold=True, target=0.2, start=Start.EMPTY, rsync_flags=("-a", "--sparse"),
             method="block"),
        Case(key="5first", title=f"first sync, {sizes.tree_files:,} small files", dataset=TREE,
             cold=True, target=1.0, start=Start.EMPTY, rsync_flags=("-a",), method="file"),
        # rsync's default quick check skips files of equal size and mtime; so does standby's
        # file method by itself (--ignore-same-size-time applies to the block method only).
        Case(key="5resync", title=f"resync, nothing changed, {sizes.tree_files:,} files",
             dataset=TREE, cold=False, target=1.0, start=Start.EQUAL, rsync_flags=("-a",),
             method="file"),
    ]


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(argv: Sequence[str | Path], timeout: float = 60, what: str = "") -> str:
    """Run a command; return its stdout, or raise BenchError with its stderr."""
    try:
        done = subprocess.run([str(a) for a in argv], capture_output=True, text=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise BenchError(f"{what or argv[0]}: no answer after {timeout:.0f} s") from None
    if done.returncode != 0:
        detail = (done.stderr or done.stdout).strip()[-2000:]
        raise BenchError(f"{what or argv[0]} exited {done.returncode}: {detail}")
    return done.stdout


# --- data -------------------------------------------------------------------------------------


class Data:
    """The master data sets under scratch/master, plus the pristine copy of the image."""

    def __init__(self, scratch: Path, sizes: Sizes, seed: int) -> None:
        self.scratch, self.sizes, self.seed = scratch, sizes, seed
        self.changed_blocks = 0
        self.tree_bytes = 0

    def master(self, dataset: str) -> Path:
        return self.scratch / "master" / dataset

    def pristine(self, dataset: str) -> Path:
        return self.scratch / "pristine" / dataset

    def make_dirs(self, datasets: set[str]) -> None:
        for dataset in datasets:
            self.master(dataset).mkdir(parents=True, exist_ok=True)

    def build(self, datasets: set[str]) -> None:
        s = self.sizes
        if IMAGE in datasets:
            self._timed(f"image {fmt_size(s.image)}", lambda: write_image(
                self.master(IMAGE) / "disk.img", s.image, self.seed))
            self._timed("pristine copy", lambda: copy_contents(
                self.master(IMAGE), self.pristine(IMAGE)))
        if SPARSE in datasets:
            self._timed(f"sparse {fmt_size(s.sparse)}", lambda: write_sparse(
                self.master(SPARSE) / "sparse.img", s.sparse, s.sparse_fraction, self.seed))
        if TREE in datasets:
            def tree() -> None:
                self.tree_bytes = write_tree(self.master(TREE), s.tree_files, s.tree_dirs,
                                             s.tree_max_file, self.seed)
            self._timed(f"tree {s.tree_files:,} files", tree)
        os.sync()  # so that no write-back of the data runs during the first timing

    def change_image(self) -> None:
        """Write 4 KiB into 1 % of the image's blocks, once."""
        if not self.changed_blocks:
            self.changed_blocks = change_blocks(self.master(IMAGE) / "disk.img",
                                                self.sizes.changed_fraction, self.seed)
            log(f"changed {self.changed_blocks} blocks of the image")

    @staticmethod
    def _timed(what: str, build: Callable[[], None]) -> None:
        started = time.perf_counter()
        build()
        log(f"built {what} in {time.perf_counter() - started:.1f} s")


# --- tools ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Slot:
    """One timed run of one tool: its own replica directory, fresh for every case, run and tool."""

    case: Case
    index: int  # 0-based run number
    tool: str
    top: Path  # <scratch>/runs/<case>-r<run>-<tool>; the replica is its <dataset> subdirectory

    @property
    def name(self) -> str:
        return self.top.name

    @property
    def replica(self) -> Path:
        return self.top / self.case.dataset


class Tool(Protocol):
    name: str

    def prepare(self, slot: Slot) -> None: ...

    def sync(self, slot: Slot) -> None: ...

    def bytes_sent(self, slot: Slot) -> int | None: ...


class RsyncDaemon:
    """An rsync daemon on 127.0.0.1 whose module ``replica`` is ``path`` (the parent of every
    run's directory); a context manager."""

    MODULE = "replica"

    def __init__(self, scratch: Path, path: Path) -> None:
        self.dir, self.path = scratch / "rsyncd", path
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> RsyncDaemon:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path.mkdir(parents=True, exist_ok=True)
        config = self.dir / "rsyncd.conf"
        config.write_text(
            f"log file = {self.dir / 'rsyncd.log'}\n"
            "use chroot = no\n"
            "read only = no\n"
            "uid = root\n"
            "gid = root\n"
            f"[{self.MODULE}]\n"
            f"    path = {self.path}\n"
        )
        self.port = free_loopback_port()
        self._proc = subprocess.Popen(
            ["rsync", "--daemon", "--no-detach", f"--config={config}", "--address=127.0.0.1",
             f"--port={self.port}"],
            stdout=subprocess.DEVNULL, stderr=(self.dir / "stderr.log").open("wb"))
        proc = self._proc
        wait_until(lambda: port_open(self.port), lambda: proc.poll() is None, 10, "rsync daemon")
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._proc is not None:
            stop_process(self._proc)

    def url(self, slot: Slot) -> str:
        relative = slot.replica.relative_to(self.path)
        return f"rsync://127.0.0.1:{self.port}/{self.MODULE}/{relative}/"


class Rsync:
    name = "rsync"

    def __init__(self, data: Data, daemon: RsyncDaemon) -> None:
        self._data, self._daemon = data, daemon
        self._stats = ""

    def prepare(self, slot: Slot) -> None:
        if not slot.replica.is_relative_to(self._daemon.path):
            raise BenchError(f"{slot.replica} is outside the rsync module {self._daemon.path}")

    def sync(self, slot: Slot) -> None:
        # --stats only adds a summary at the end; it gives the bytes sent.
        case = slot.case
        self._stats = run(["rsync", *case.rsync_flags, "--stats",
                           f"{self._data.master(case.dataset)}/", self._daemon.url(slot)],
                          timeout=3600, what="rsync")

    def bytes_sent(self, slot: Slot) -> int | None:
        found = re.search(r"Total bytes sent: ([\d,.]+)", self._stats)
        return int(re.sub(r"\D", "", found.group(1))) if found else None


def rsync_version() -> str:
    return run(["rsync", "--version"]).splitlines()[0].strip()


class StandbyCli:
    """Every standby command this benchmark runs, in one place, so they are easy to adjust.

    The CLI is being written alongside this benchmark; this class codes against the agreed
    interface (engine, id, peer add, scenario add, sync, report).
    """

    ENGINE_READY_TIMEOUT = 30.0

    def __init__(self, exe: Path) -> None:
        self.exe = exe

    def start_engine(self, home: Path, name: str) -> subprocess.Popen[bytes]:
        """Start an engine in the foreground; return once it wrote home/engine.json."""
        home.mkdir(parents=True, exist_ok=True)
        info = home / "engine.json"
        info.unlink(missing_ok=True)
        with (home.parent / f"{name}.log").open("wb") as output:
            proc = subprocess.Popen(
                # --home is the CLI's global option, so it goes before the command.
                [self.exe, "--home", home, "engine", "--name", name,
                 "--listen", "127.0.0.1:0", "--api", "127.0.0.1:0"],
                stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(lambda: self._engine_info(home) is not None, lambda: proc.poll() is None,
                   self.ENGINE_READY_TIMEOUT, f"standby engine {name}")
        return proc

    def engine_info(self, home: Path) -> dict[str, Any]:
        info = self._engine_info(home)
        if info is None:
            raise BenchError(f"{home}/engine.json is missing or incomplete")
        return info

    @staticmethod
    def _engine_info(home: Path) -> dict[str, Any] | None:
        try:
            info = json.loads((home / "engine.json").read_text())
        except (OSError, ValueError):  # not written yet, or half written
            return None
        if not isinstance(info, dict) or not {"fingerprint", "peer_address"} <= info.keys():
            return None
        return info

    def fingerprint(self, home: Path) -> str:
        return self._cli(home, "id").strip()

    def add_peer(self, home: Path, name: str, address: str, fingerprint: str) -> None:
        self._cli(home, "peer", "add", name, address, fingerprint)

    def add_scenario(self, home: Path, toml: Path) -> None:
        self._cli(home, "scenario", "add", str(toml))

    def sync(self, home: Path, scenario: str, method: str) -> None:
        # Never --ignore-same-size-time: the block method then compares content like rsync -I,
        # and the file method skips files of equal size and mtime by itself.
        self._cli(home, "sync", scenario, "--method", method, timeout=3600)

    def report(self, home: Path, scenario: str) -> dict[str, Any]:
        report = json.loads(self._cli(home, "report", scenario, "--json"))
        if not isinstance(report, dict):
            raise BenchError(f"standby report {scenario}: expected a JSON object")
        return report

    def _cli(self, home: Path, *args: str, timeout: float = 60) -> str:
        return run([self.exe, "--home", home, *args], timeout=timeout,
                   what=f"standby {' '.join(args[:2])}")


def scenario_toml(name: str, master: Path, replica: Path, method: str) -> str:
    q = json.dumps  # a JSON string is a valid TOML basic string
    return (f"name = {q(name)}\nmaster = \"alpha\"\nreplica = \"beta\"\n\n"
            f"[[roots]]\nmaster = {q(str(master))}\nreplica = {q(str(replica))}\n\n"
            f"[sync]\nmethod = {q(method)}\n")


class Standby:
    """Two standby engines on loopback, alpha (master) and beta (replica), paired; one scenario
    per run, added while preparing it; a context manager that stops the engines on exit."""

    name = "standby"

    def __init__(self, cli: StandbyCli, data: Data) -> None:
        self.cli, self._data = cli, data
        self.dir = data.scratch / "standby"
        self.alpha, self.beta = self.dir / "alpha", self.dir / "beta"
        self._procs: list[subprocess.Popen[bytes]] = []

    def __enter__(self) -> Standby:
        try:
            self._start()
        except BenchError as error:
            self.__exit__()
            raise BenchError(f"{error}\n{self.logs()}") from None
        except BaseException:
            self.__exit__()
            raise
        return self

    def _start(self) -> None:
        for home in (self.alpha, self.beta):
            self._procs.append(self.cli.start_engine(home, home.name))
        alpha, beta = self.cli.engine_info(self.alpha), self.cli.engine_info(self.beta)
        self.cli.add_peer(self.alpha, "beta", beta["peer_address"], beta["fingerprint"])
        self.cli.add_peer(self.beta, "alpha", alpha["peer_address"], alpha["fingerprint"])

    def __exit__(self, *exc_info: object) -> None:
        for proc in self._procs:
            stop_process(proc)

    def logs(self) -> str:
        return "\n".join(f"--- {name}.log (last lines)\n{tail(self.dir / f'{name}.log')}"
                         for name in ("alpha", "beta"))

    @staticmethod
    def scenario(slot: Slot) -> str:
        return f"bench-{slot.name}"

    def prepare(self, slot: Slot) -> None:
        """Add the run's own scenario (master data set -> the run's replica), outside timing."""
        name = self.scenario(slot)
        toml = self.dir / f"{name}.toml"
        toml.write_text(scenario_toml(name, self._data.master(slot.case.dataset), slot.replica,
                                      slot.case.method))
        self.cli.add_scenario(self.alpha, toml)

    def sync(self, slot: Slot) -> None:
        # `sync` on a scenario that was added but not started: with real-time replication
        # running, our own changes to the master would be replicated before the timing.
        self.cli.sync(self.alpha, self.scenario(slot), slot.case.method)

    def bytes_sent(self, slot: Slot) -> int | None:
        sent = self.cli.report(self.alpha, self.scenario(slot)).get("bytes_sent")
        return sent if isinstance(sent, int) else None


def find_standby(explicit: str | None) -> Path:
    candidates = [Path(explicit)] if explicit else [Path(sys.executable).parent / "standby"]
    if not explicit and (found := shutil.which("standby")):
        candidates.append(Path(found))
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    raise BenchError("standby command not found: run scripts/install, pass --standby, "
                     "or use --only-rsync")


# --- runs -------------------------------------------------------------------------------------


# Pause after drop_caches before a cold run. The VM reports freed memory to its host (virtio
# free page reporting, in 2 s rounds), after which the first write to each page faults in the
# host. Measured here, dd of 1 GiB into the page cache, by pause after drop_caches: 0 s 2.7-2.8
# GB/s, 2 s 1.6-2.2, 3 s 1.2-1.3, 5 s 1.0-1.2, 8 s 0.74-1.0, 12 s 0.71-0.83, 20 s 0.83-0.86:
# settled from about 8 s. Without the pause a run would race the reporting.
COLD_PAUSE = 8.0
# Disk kept free beyond the run directories when deciding to keep them all (others share it).
DISK_RESERVE = 10 * GiB


class Settler:
    """Waits until file creates run at their usual speed before a timed run.

    This VM's root file system is ext4 without a journal. There, the inode allocator skips
    every inode freed less than 60 s ago (360 s while its inode-table block is dirty), with a
    buffer-cache lookup per skipped inode (perf: recently_deleted() in find_inode_bit()), so a
    create in a block group full of freshly freed inodes costs up to ~1 ms instead of ~50 us.
    Measured here, 1,000 creates in a fresh directory, probed every second with a sync after
    each: 0.035-0.06 s normally; 0.25-1.0 s for 71 s after deleting 25,000 files (a quick
    run's scratch directory), then 0.035-0.06 s again at once; 0.6-1.0 s all the time under
    /tmp, where test suites delete files. A run started right after another one's cleanup saw
    0.4 s for over 150 s: building the data dirties the inode tables, and a dirty block's
    freed inodes stay "recent" for 360 s.

    So: sync; if we deleted something, wait until 60 s after; then probe 1,000 creates in a
    fresh directory (never deleted before the end) every second until ``streak`` probes in a
    row run within twice the best probe seen plus 10 ms, the best counting as at most 75 ms
    (a limit of 160 ms: the slow state is never below 250 ms, and the best probe seen may be
    one of them). After 300 s without success, warn and accept the current speed as normal.
    """

    PROBE_FILES = 1000
    AFTER_DELETION = 60.0
    SLOWER, SLACK = 2.0, 0.010
    INTERVAL, MAX_WAIT = 1.0, 300.0

    def __init__(self, root: Path) -> None:
        self.root = root
        self.best = 0.075
        self.worst = 0.0  # the slowest probe that let a run start
        self.waits: list[float] = []  # seconds spent settling, per call
        self._last_deletion = float("-inf")
        self._probes = 0

    def deleted(self) -> None:
        """Note a deletion of ours; sync so that the freed inodes' blocks are clean (60 s)."""
        os.sync()
        self._last_deletion = time.monotonic()

    def probe(self) -> float:
        self._probes += 1
        directory = self.root / f"p{self._probes:05d}"
        directory.mkdir(parents=True)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
        started = time.perf_counter()
        for i in range(self.PROBE_FILES):
            os.close(os.open(directory / f"f{i:04d}", flags, 0o644))
        seconds = time.perf_counter() - started
        self.best = min(self.best, seconds)
        return seconds

    @property
    def limit(self) -> float:
        return self.best * self.SLOWER + self.SLACK

    def settle(self, streak: int = 1) -> float:
        """Return the last probe's seconds, once the file system is steady (see the class)."""
        started = time.monotonic()
        os.sync()
        remaining = self._last_deletion + self.AFTER_DELETION - started
        if remaining > 0:
            log(f"waiting {remaining:.0f} s: creates are slow for 60 s after a deletion")
            time.sleep(remaining)
        good = 0
        while True:
            seconds = self.probe()
            os.sync()  # no write-back of the probe's inodes during the next probe or the timing
            good = good + 1 if seconds <= self.limit else 0
            if good >= streak:
                break
            if time.monotonic() - started > self.MAX_WAIT:
                log(f"warning: 1,000 creates still take {seconds:.3f} s (limit "
                    f"{self.limit:.3f} s) after {self.MAX_WAIT:.0f} s: other work on this file "
                    "system? Taking this speed as the normal one.")
                self.best = seconds / self.SLOWER
                break
            time.sleep(self.INTERVAL)
        self.worst = max(self.worst, seconds)
        self.waits.append(time.monotonic() - started)
        return seconds


class Room:
    """Disk room for the run directories: every case's are kept while the disk has room for
    the next case's (estimated from the master data set) plus a reserve; else the oldest cases'
    are deleted before the next case is prepared (then the Settler waits out the deletion)."""

    def __init__(self, data: Data, runs: int, tools: int) -> None:
        self.data, self.copies = data, runs * tools
        self.kept: list[tuple[str, list[Path]]] = []  # (case key, directories), oldest first
        self.deleted: list[str] = []
        self.free_at_start: int | None = None
        self.largest = 0

    def need(self, case: Case) -> int:
        master = self.data.master(case.dataset)
        apparent = sum(p.stat().st_size for p in master.rglob("*") if p.is_file())
        return max(apparent, allocated(master)) * self.copies  # a replica may fill the holes

    def make_room(self, case: Case, settler: Settler) -> None:
        need = self.need(case)
        self.largest = max(self.largest, need)
        if self.free_at_start is None:
            self.free_at_start = shutil.disk_usage(self.data.scratch).free
        deleted = []
        while self.kept and shutil.disk_usage(self.data.scratch).free < need + DISK_RESERVE:
            key, directories = self.kept.pop(0)
            for directory in directories:
                shutil.rmtree(directory, ignore_errors=True)
            deleted.append(key)
        if deleted:
            settler.deleted()
            self.deleted += deleted
            log(f"deleted the run directories of case(s) {', '.join(deleted)} to make room for "
                f"{fmt_size(need)}")

    def note(self) -> str:
        text = (f"run directories kept while the disk had room ("
                f"{fmt_size(self.free_at_start or 0)} free at the start, up to "
                f"{fmt_size(self.largest)} per case, {fmt_size(DISK_RESERVE)} reserve)")
        if self.deleted:
            return text + f"; those of {', '.join(self.deleted)} deleted before the next case"
        return text + "; none deleted"


@dataclass
class Outcome:
    """One tool's runs of one case."""

    seconds: list[float] = field(default_factory=list)
    bytes_sent: list[int | None] = field(default_factory=list)
    probes: list[float] = field(default_factory=list)  # the settle probe before each run, s
    error: str | None = None

    @property
    def median(self) -> float | None:
        return statistics.median(self.seconds) if self.seconds and not self.error else None


class Runner:
    def __init__(self, data: Data, tools: Sequence[Tool], runs: int, settler: Settler) -> None:
        self.data, self.tools, self.runs = data, tools, runs
        self.settler = settler
        self.room = Room(data, runs, len(tools))
        self.runs_root = data.scratch / "runs"
        self.cold_possible = True
        # 1-minute load average before and after the runs: other work on the machine skews
        # absolute times (ratios suffer less, as both tools share the load).
        self.load = (0.0, 0.0)

    def run_case(self, case: Case) -> dict[str, Outcome]:
        if case.changed_master:
            self.data.change_image()
        elif case.key == "1" and self.data.changed_blocks:
            raise BenchError("case 1 must run before the image is changed")
        outcomes = {tool.name: Outcome() for tool in self.tools}
        plan: list[tuple[Slot, Tool]] = []
        for index in range(self.runs):
            # Alternate which tool goes first, so neither always inherits the other's leftovers.
            order = self.tools if index % 2 == 0 else list(reversed(self.tools))
            plan += [(Slot(case, index, tool.name,
                           self.runs_root / f"{case.key}-r{index + 1}-{tool.name}"), tool)
                     for tool in order]
        # Every replica first, then the timings: nothing is deleted in between.
        self.room.make_room(case, self.settler)
        started = time.monotonic()
        for slot, tool in plan:
            try:
                self._prepare(slot, tool)
            except BenchError as error:
                outcomes[tool.name].error = f"preparing {slot.name}: {error}"
                log(f"[{case.key}] {outcomes[tool.name].error}")
        prepared = time.monotonic() - started
        probe = self.settler.settle(streak=2)
        log(f"[{case.key}] prepared {len(plan)} replicas in {prepared:.1f} s, settled in "
            f"{self.settler.waits[-1]:.1f} s (1,000 creates: {probe:.3f} s)")
        for slot, tool in plan:
            outcome = outcomes[tool.name]
            if outcome.error is None:
                self._run_once(slot, tool, outcome)
        self.room.kept.append((case.key, [slot.top for slot, _ in plan]))
        return outcomes

    def _run_once(self, slot: Slot, tool: Tool, outcome: Outcome) -> None:
        case = slot.case
        label = f"[{case.key}] run {slot.index + 1}/{self.runs} {tool.name}"
        try:
            probe = self.settler.settle()
            self._settle_cache(slot)
            started = time.perf_counter()
            tool.sync(slot)
            seconds = time.perf_counter() - started
            sent = tool.bytes_sent(slot)
            problems = tree_differences(self.data.master(case.dataset), slot.replica)
            if problems:
                raise BenchError("wrong copy: " + "; ".join(problems))
        except BenchError as error:
            outcome.error = str(error)
            log(f"{label}: FAILED: {error}")
            if isinstance(tool, Standby):
                log(tool.logs())
            return
        outcome.seconds.append(seconds)
        outcome.bytes_sent.append(sent)
        outcome.probes.append(probe)
        sent_text = fmt_size(sent) if sent is not None else "?"
        space = f", replica allocates {fmt_size(allocated(slot.replica))}"
        log(f"{label}: {seconds:.3f} s, sent {sent_text}, replica verified (probe "
            f"{probe:.3f} s)" + (space if case.dataset == SPARSE else ""))

    def _prepare(self, slot: Slot, tool: Tool) -> None:
        """Build the run's starting state in a directory of its own, which must be new: so that
        preparing never deletes anything."""
        case = slot.case
        slot.top.mkdir(parents=True, exist_ok=False)
        if case.start is Start.EMPTY:
            slot.replica.mkdir()
        elif case.start is Start.PRISTINE:
            copy_contents(self.data.pristine(case.dataset), slot.replica)
        else:  # a copy keeps the master's mtimes, for the quick check
            copy_contents(self.data.master(case.dataset), slot.replica)
        tool.prepare(slot)

    def _settle_cache(self, slot: Slot) -> None:
        if slot.case.cold:
            if not drop_caches() and self.cold_possible:
                self.cold_possible = False
                log("warning: cannot drop caches (not root?): cold runs are warm")
            time.sleep(COLD_PAUSE)
        else:
            os.sync()  # no write-back of our preparation during the timing
            warm(self.data.master(slot.case.dataset))
            warm(slot.replica)


# --- report -----------------------------------------------------------------------------------


def fmt_seconds(outcome: Outcome | None) -> str:
    if outcome is None:
        return "-"
    if outcome.error:
        return "FAILED"
    return f"{outcome.median:.2f}" if outcome.median is not None else "-"


def fmt_sent(outcome: Outcome | None) -> str:
    if outcome is None or outcome.error or not outcome.bytes_sent:
        return "-"
    sent = outcome.bytes_sent[-1]
    return fmt_size(sent) if sent is not None else "?"


def fmt_runs(outcome: Outcome | None) -> str:
    if outcome is None:
        return "-"
    text = " ".join(f"{s:.2f}" for s in outcome.seconds)
    return f"{text} FAILED" if outcome.error else text or "-"


def fmt_spread(outcome: Outcome | None) -> str:
    """(max - min) / median of the runs, in percent."""
    if outcome is None or outcome.median is None or len(outcome.seconds) < 2:
        return "-"
    return f"{(max(outcome.seconds) - min(outcome.seconds)) / outcome.median * 100:.0f} %"


def fmt_run_ratios(rsync: Outcome | None, standby: Outcome | None) -> str:
    if rsync is None or standby is None or rsync.error or standby.error:
        return "-"
    return " ".join(f"{b / a:.2f}" for a, b in zip(rsync.seconds, standby.seconds, strict=True)
                    if a > 0) or "-"


def verdict(case: Case, rsync: Outcome | None, standby: Outcome | None) -> tuple[str, str]:
    """The ratio cell and the result cell of one row."""
    if any(o is not None and o.error for o in (rsync, standby)):
        return "-", "FAILED"
    if rsync is None or standby is None or not rsync.median or standby.median is None:
        return "-", "-"
    ratio = standby.median / rsync.median
    return f"{ratio:.2f}", "ok" if ratio <= case.target else "MISSED"


def report(args: argparse.Namespace, sizes: Sizes, data: Data, cases: Sequence[Case],
           results: dict[str, dict[str, Outcome]], runner: Runner) -> str:
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True, check=False).stdout.strip()
    image_blocks = sizes.image // MiB
    lines = [
        f"### sync_vs_rsync ({'quick' if args.quick else 'full'}), "
        f"median of {args.runs} run{'s' if args.runs != 1 else ''}",
        "",
        f"- {time.strftime('%Y-%m-%d')}, standby {commit or '?'}, {rsync_version()}, "
        f"Linux {platform.release()}, {os.cpu_count()} cores, load average "
        f"{runner.load[0]:.1f} before and {runner.load[1]:.1f} after the runs"
        + ("" if runner.cold_possible else ", **cold runs were warm (no drop_caches)**"),
        f"- image: {fmt_size(sizes.image)} of 1 MiB blocks (50 % zeros, 25 % text-like, "
        f"25 % random); changed: "
        f"{data.changed_blocks or max(1, round(image_blocks * sizes.changed_fraction))}"
        f" blocks x 4 KiB; sparse: {fmt_size(sizes.sparse)}, "
        f"{sizes.sparse_fraction * 100:g} % data; tree: {sizes.tree_files:,} files of 0-"
        f"{fmt_size(sizes.tree_max_file)} in {sizes.tree_dirs:,} directories"
        + (f" ({fmt_size(data.tree_bytes)})" if data.tree_bytes else ""),
        "- cold: sync and drop_caches before each run; warm: master and replica read first. "
        "Ratio = standby / rsync, lower is better.",
        f"- each run syncs into a fresh directory, prepared for all runs of a case before the "
        f"first is timed; nothing deleted in between; {runner.room.note()}",
        f"- settling: sync, then 1,000 file creates had to run within 2x the best + 10 ms "
        f"(best {runner.settler.best * 1000:.0f} ms; slowest accepted "
        f"{runner.settler.worst * 1000:.0f} ms; longest wait "
        f"{max(runner.settler.waits, default=0):.0f} s); cold runs also paused "
        f"{COLD_PAUSE:g} s after drop_caches",
        "",
        "| case | | cache | rsync s | standby s | ratio | target | result "
        "| rsync sent | standby sent |",
        "|---|---|---|--:|--:|--:|--:|---|--:|--:|",
    ]
    for case in cases:
        outcomes = results.get(case.key, {})
        rsync, standby = outcomes.get("rsync"), outcomes.get("standby")
        ratio, result = verdict(case, rsync, standby)
        lines.append(
            f"| {case.key} | {case.title} | {'cold' if case.cold else 'warm'} "
            f"| {fmt_seconds(rsync)} | {fmt_seconds(standby)} | {ratio} | <= {case.target:g} "
            f"| {result} | {fmt_sent(rsync)} | {fmt_sent(standby)} |")
    first = [tool.name for tool in runner.tools]
    lines += [
        "",
        f"Per run, in run order (run 1 starts with {first[0]}, then the first tool alternates)"
        "; spread = (max - min) / median:",
        "",
        "| case | rsync s | standby s | ratio | rsync spread | standby spread |",
        "|---|---|---|---|--:|--:|",
    ]
    for case in cases:
        outcomes = results.get(case.key, {})
        rsync, standby = outcomes.get("rsync"), outcomes.get("standby")
        lines.append(f"| {case.key} | {fmt_runs(rsync)} | {fmt_runs(standby)} "
                     f"| {fmt_run_ratios(rsync, standby)} | {fmt_spread(rsync)} "
                     f"| {fmt_spread(standby)} |")
    failures = [f"- {case.key} {tool}: {outcome.error}" for case in cases
                for tool, outcome in results.get(case.key, {}).items() if outcome.error]
    if failures:
        lines += ["", "Failures:", *failures]
    return "\n".join(lines) + "\n"


# --- main -------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="small data (256 MiB images, 5,000 files) for a smoke run")
    parser.add_argument("--runs", type=int, default=3, help="runs per case and tool (median)")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out",
                        help="directory for the report (.md) and raw timings (.json)")
    # Not under /tmp: test suites delete files there all the time (see Settler).
    parser.add_argument("--scratch", type=Path, default=Path("/var/tmp/standby-bench"),
                        help="where the data is built (removed at the end unless --keep)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument("--only-rsync", action="store_true", help="time rsync alone")
    parser.add_argument("--cases", help="comma-separated case keys (default: all)")
    parser.add_argument("--standby", help="the standby command (default: the venv's)")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def select_cases(cases: list[Case], keys: str | None) -> list[Case]:
    if not keys:
        return cases
    wanted = [key.strip() for key in keys.split(",") if key.strip()]
    unknown = set(wanted) - {case.key for case in cases}
    if unknown:
        raise BenchError(f"unknown case(s) {sorted(unknown)}; known: "
                         + ", ".join(case.key for case in cases))
    return [case for case in cases if case.key in wanted]


@contextmanager
def scratch_dir(path: Path, keep: bool) -> Iterator[tuple[Path, bool]]:
    """Create ``path`` afresh; refuse a non-empty directory that we did not create.

    Yields the path and whether an old scratch directory was deleted.
    """
    path = path.resolve()
    deleted = False
    if path.exists() and any(path.iterdir()):
        if not (path / SCRATCH_MARKER).exists():
            raise BenchError(f"{path} is not empty and not a scratch directory of ours")
        shutil.rmtree(path)
        deleted = True
    path.mkdir(parents=True, exist_ok=True)
    (path / SCRATCH_MARKER).touch()
    try:
        yield path, deleted
    finally:
        if keep:
            log(f"kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # so that SIGTERM, too, stops the engines and removes the data


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    sizes = QUICK if args.quick else FULL
    try:
        cases = select_cases(make_cases(sizes), args.cases)
        if shutil.which("rsync") is None:
            raise BenchError("rsync not found: run scripts/install")
        standby_exe = None if args.only_rsync else find_standby(args.standby)
        log(rsync_version())
        datasets = {case.dataset for case in cases}
        with ExitStack() as stack:
            scratch, replaced = stack.enter_context(scratch_dir(args.scratch, args.keep))
            settler = Settler(scratch / "probe")
            if replaced:
                settler.deleted()
            data = Data(scratch, sizes, args.seed)
            data.make_dirs(datasets)
            # Start both tools before building the data: a tool that fails fails fast.
            daemon = stack.enter_context(RsyncDaemon(scratch, scratch / "runs"))
            tools: list[Tool] = [Rsync(data, daemon)]
            if standby_exe is not None:
                tools.append(stack.enter_context(Standby(StandbyCli(standby_exe), data)))
            data.build(datasets)
            runner = Runner(data, tools, args.runs, settler)
            load_before = os.getloadavg()[0]
            results = {case.key: runner.run_case(case) for case in cases}
            runner.load = (load_before, os.getloadavg()[0])
            text = report(args, sizes, data, cases, results, runner)
    except BenchError as error:
        log(f"error: {error}")
        return 1
    except KeyboardInterrupt:
        log("interrupted: engines and the rsync daemon were stopped")
        return 130
    write_results(args, text, results)
    print(text, end="")
    failed = any(o.error for outcomes in results.values() for o in outcomes.values())
    return 1 if failed else 0


def write_results(args: argparse.Namespace, text: str,
                  results: dict[str, dict[str, Outcome]]) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"sync_vs_rsync-{'quick' if args.quick else 'full'}"
    stem.with_suffix(".md").write_text(text)
    raw = {key: {tool: asdict(o) for tool, o in outcomes.items()}
           for key, outcomes in results.items()}
    stem.with_suffix(".json").write_text(json.dumps(raw, indent=2) + "\n")
    log(f"wrote {stem}.md and .json")


if __name__ == "__main__":
    sys.exit(main())
