"""Measure real-time replication between two engines on loopback: latency, catch-up after an
outage, master CPU per MB, compression and the bandwidth limit.

Usage:
    .venv/bin/python bench/replication.py [--quick] [--parts latency,catchup,compression,bandwidth]
                                          [--out DIR] [--scratch DIR] [--keep]

Two real `standby engine` processes run on 127.0.0.1: alpha (master) and beta (replica). Each
measurement adds its own scenario (a fresh master and replica directory), starts it, waits for
the initial synchronization, measures, checks that the replica equals the master, and removes
the scenario. Progress goes to stderr; the report (Markdown) to stdout and, with the raw
numbers, to --out (replication.md and replication.json; replication-quick.* with --quick).

1. Latency. A writer thread writes 64 KiB at a steady rate (10 and 50 MB/s): half appends to
   ``log.bin``, half overwrites of 64 KiB-aligned slots of the 64 MiB ``data.bin`` (the slots
   in a fixed shuffled order, so a slot is written again only after all the others); extra
   cases vary ``aggregate_ms`` and ``rehash_rate``, write appends only, or spread the same
   64 MiB of slots over 64 files of 1 MiB (below the engine's 4 MiB "small file" size, under
   which a changed file is compared in whole at once, with no rehash_rate wait). Every write
   starts and ends with a 16-byte marker holding its sequence number; the rest is random.
   Right after each write returns, the writer notes (time, file, offset, sequence). A poller
   thread in the same process watches the replica's files every 2 ms: when a file's (inode,
   size, mtime, ctime) moves (and for 3 polls after; every 0.25 s at least), it preads the
   markers of every place with writes not yet seen there. A write is visible once its 64 KiB
   on the replica hold a whole write (the same marker at both ends) numbered at least as high
   as its own: its own bytes, or those of a later write to the same place (a slot written
   again before the replica showed the earlier write). Latency = that moment minus the
   moment the write returned ("visible on the replica": applied, in the page cache). With
   ``ack = "durable"`` (the default) the replica fdatasyncs each Batch before it
   acknowledges; that moment is not observable per write from outside, so the master's
   ``lag_s`` (age of the oldest spooled record not yet acknowledged as durable) is sampled
   every 200 ms and reported alongside.
2. Catch-up. The same writer at 20 MB/s; the link goes through a TCP proxy
   (tests/integration/proxy.py) that is cut for 60 s (30 s with --quick) and restored while
   the writer goes on. Reported: what the master spooled meanwhile, the time to reconnect,
   and the time until every record spooled before the restore is durable on the replica
   (the writer still running), as MB/s; then the writer stops and the time to a fully idle
   replica is noted. The reference is a local copy of a random file of the spooled size with
   `cp` and with `rsync --whole-file`, each followed by an fsync of the copy (`sync FILE`),
   since the replica makes what it receives durable.
3. CPU per MB. /proc/PID/stat utime+stime of each engine from the writer's start until the
   replica is idle again, divided by the MB the master sent (``sent_raw_bytes``, before
   compression), for every latency run; the status requests the bench makes are measured
   (CPU per request) and subtracted. The reference is the CPU (both sides) that the local
   `rsync --whole-file` and `cp` of the catch-up reference spend per MB.
4. Compression and bandwidth limit. 256 MiB (64 MiB with --quick) of text-like data, written
   at once, replicated with ``compression`` on and off: bytes on the wire (``sent_bytes``)
   against ``sent_raw_bytes``, and the time from the first write to an idle replica. Then
   ``bandwidth_limit = "5MiB"`` with incompressible data and compression off: the measured
   wire rate (least-squares slope of ``sent_bytes``, sampled every 0.5 s for 20 s, 10 s with
   --quick, after the first 2 s) against the limit.

MB is 10^6 bytes, MiB 2^20. Absolute numbers on a shared 2-core VM move from hour to hour;
the writer and the poller share those cores with both engines.
"""

from __future__ import annotations

import argparse
import functools
import http.client
import importlib.util
import json
import math
import os
import platform
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.parse
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from _common import BenchError, KiB, MiB, Noise, Text, tail, tree_differences

REPO = Path(__file__).resolve().parent.parent
SEED = 20261125
SCRATCH_MARKER = ".standby-bench-replication"
STANDBY = [sys.executable, "-m", "standby.cli.main"]
MB = 1_000_000

WRITE = 64 * KiB
DATA_SIZE = 64 * MiB
SLOTS = DATA_SIZE // WRITE
MARKER = 16

POLL_S = 0.002  # the replica poller's period
HOT_POLLS = 3  # polls that re-check a file after it last moved
SAFETY_S = 0.25  # a file with writes not yet seen is re-checked at least this often
STATUS_S = 0.2  # the status sampler's period during latency runs
LATENCY_TARGET_MS = 50.0


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(argv: Sequence[str | Path], timeout: float = 600, what: str = "") -> str:
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


def wait_for(predicate: Callable[[], bool], timeout: float, what: str,
             interval: float = 0.05) -> float:
    """Poll ``predicate`` until true; return the seconds waited."""
    started = time.monotonic()
    while not predicate():
        if time.monotonic() - started > timeout:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
    return time.monotonic() - started


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0-100) of a non-empty sequence."""
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


# --- engines ----------------------------------------------------------------------------------


class Engine:
    """One `standby engine` process on loopback, with its own home."""

    def __init__(self, home: Path, name: str, logs: Path) -> None:
        self.home, self.name = home, name
        self.log_path = logs / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.info: dict[str, Any] = {}
        self.token = ""
        self._ticks = os.sysconf("SC_CLK_TCK")

    def start(self, timeout: float = 30.0) -> None:
        (self.home / "engine.json").unlink(missing_ok=True)
        with self.log_path.open("ab") as output:
            self.proc = subprocess.Popen(
                [*STANDBY, "--home", str(self.home), "engine", "--name", self.name,
                 "--listen", "127.0.0.1:0", "--api", "127.0.0.1:0"],
                stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
        proc = self.proc

        def ready() -> bool:
            if proc.poll() is not None:
                raise BenchError(f"engine {self.name} exited {proc.returncode}:\n"
                                 f"{tail(self.log_path)}")
            try:
                info = json.loads((self.home / "engine.json").read_text())
            except (OSError, ValueError):
                return False
            if not isinstance(info, dict) or info.get("pid") != proc.pid:
                return False
            self.info = info
            return True

        wait_for(ready, timeout, f"engine {self.name} to start")
        self.token = (self.home / "api-token").read_text().strip()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def peer_address(self) -> str:
        return str(self.info["peer_address"])

    @property
    def listen_port(self) -> int:
        return int(self.peer_address.rsplit(":", 1)[1])

    @property
    def fingerprint(self) -> str:
        return str(self.info["fingerprint"])

    def api(self, method: str, path: str) -> Any:
        url = urllib.parse.urlsplit(self.info["api_url"])
        conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=60)
        try:
            conn.request(method, path, headers={"Authorization": f"Bearer {self.token}"})
            response = conn.getresponse()
            body = response.read()
        except OSError as error:
            raise BenchError(f"{self.name} API {method} {path}: {error}") from None
        finally:
            conn.close()
        if response.status != 200:
            raise BenchError(f"{self.name} API {method} {path}: {response.status} "
                             f"{body[:500]!r}")
        return json.loads(body) if body else None

    def replication(self, scenario: str) -> dict[str, Any]:
        status = self.api("GET", f"/v1/status/{scenario}")
        return dict(status[0].get("replication") or {})

    def cli(self, *args: str, timeout: float = 600) -> str:
        return run([*STANDBY, "--home", str(self.home), *args], timeout=timeout,
                   what=f"standby {' '.join(args[:2])} on {self.name}")

    def cpu_seconds(self) -> float:
        """utime + stime of the engine process (all its threads)."""
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2:].split()
        return (int(fields[11]) + int(fields[12])) / self._ticks

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def load_proxy_class() -> Any:
    """tests/integration/proxy.py's Proxy (a TCP relay on loopback that can be cut)."""
    spec = importlib.util.spec_from_file_location(
        "standby_bench_proxy", REPO / "tests" / "integration" / "proxy.py")
    if spec is None or spec.loader is None:
        raise BenchError("tests/integration/proxy.py not found")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Proxy


class Pair:
    """alpha (master) and beta (replica), paired; a context manager that stops both."""

    def __init__(self, scratch: Path) -> None:
        self.dir = scratch / "engines"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.alpha = Engine(self.dir / "alpha", "alpha", self.dir)
        self.beta = Engine(self.dir / "beta", "beta", self.dir)
        self.api_cpu = 0.0  # alpha CPU seconds per status request

    def __enter__(self) -> Pair:
        try:
            for engine in (self.alpha, self.beta):
                engine.start()
            self.alpha.cli("peer", "add", "beta", self.beta.peer_address, self.beta.fingerprint)
            self.beta.cli("peer", "add", "alpha", self.alpha.peer_address,
                          self.alpha.fingerprint)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        for engine in (self.alpha, self.beta):
            engine.stop()

    def logs(self) -> str:
        return "\n".join(f"--- {e.name}.log (last lines)\n{tail(e.log_path, 30)}"
                         for e in (self.alpha, self.beta))

    def check_alive(self) -> None:
        for engine in (self.alpha, self.beta):
            if not engine.alive():
                raise BenchError(f"engine {engine.name} died:\n{tail(engine.log_path, 40)}")

    def beta_address(self, address: str) -> None:
        """Where alpha reaches beta from now on (new connections only)."""
        self.alpha.cli("peer", "add", "beta", address, self.beta.fingerprint)

    def measure_api_cpu(self, scenario: str, requests: int = 200) -> None:
        before = self.alpha.cpu_seconds()
        for _ in range(requests):
            self.alpha.replication(scenario)
        self.api_cpu = (self.alpha.cpu_seconds() - before) / requests
        log(f"alpha spends {self.api_cpu * 1000:.2f} ms of CPU per status request")


def toml_value(value: str | int | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value) if isinstance(value, int) else json.dumps(value)


class Live:
    """One scenario of the pair: a fresh master and replica directory; a context manager that
    stops and removes it (and deletes both directories) on exit."""

    def __init__(self, pair: Pair, scratch: Path, name: str,
                 options: dict[str, str | int | bool]) -> None:
        self.pair, self.name, self.options = pair, name, options
        self.dir = scratch / name
        self.master, self.replica = self.dir / "master", self.dir / "replica"
        self.master.mkdir(parents=True)
        self._added = False

    def start(self) -> None:
        q = json.dumps  # a JSON string is a valid TOML basic string
        text = (f"name = {q(self.name)}\nmaster = \"alpha\"\nreplica = \"beta\"\n\n"
                f"[[roots]]\nmaster = {q(str(self.master))}\n"
                f"replica = {q(str(self.replica))}\n\n[sync]\nmethod = \"block\"\n\n"
                "[replication]\n"
                + "".join(f"{k} = {toml_value(v)}\n" for k, v in self.options.items()))
        toml = self.dir / "scenario.toml"
        toml.write_text(text)
        alpha = self.pair.alpha
        alpha.cli("scenario", "add", str(toml))
        self._added = True
        alpha.cli("scenario", "start", self.name)
        wait_for(lambda: self.status().get("phase") == "replicating", 300,
                 f"{self.name}: the initial synchronization and indexing", 0.1)
        self.wait_idle(300)

    def status(self) -> dict[str, Any]:
        return self.pair.alpha.replication(self.name)

    def idle(self) -> bool:
        r = self.status()
        return (r.get("phase") == "replicating" and r.get("dirty_paths") == 0
                and r.get("spool_records") == 0 and r.get("durable_seq") == r.get("last_seq"))

    def wait_idle(self, timeout: float) -> float:
        return wait_for(self.idle, timeout, f"{self.name}: the replica to catch up", 0.05)

    def verify(self) -> None:
        problems = tree_differences(self.master, self.replica)
        if problems:
            raise BenchError(f"{self.name}: the replica differs: " + "; ".join(problems))

    def __enter__(self) -> Live:
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            if self._added and self.pair.alpha.alive():
                self.pair.alpha.cli("scenario", "stop", self.name)
                self.pair.alpha.cli("scenario", "remove", self.name)
        except BenchError as error:
            log(f"warning: removing scenario {self.name}: {error}")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


# --- the writer and the replica poller ----------------------------------------------------------


@dataclass(slots=True)
class Write:
    seq: int
    file: int  # index into the workload's files
    offset: int
    written: float  # time.perf_counter() right after the write returned
    seen: float | None = None


MARKER_HEAD, MARKER_TAIL = b"SBMK", b"\xa5\x5a\xc3\x3c"


def marker(seq: int) -> bytes:
    """The 16 bytes that start and end write number ``seq``."""
    return MARKER_HEAD + seq.to_bytes(8, "big") + MARKER_TAIL


def marker_seq(data: bytes) -> int | None:
    """The write number in a marker, or None when ``data`` is no marker."""
    if len(data) != MARKER or not data.startswith(MARKER_HEAD) or not data.endswith(MARKER_TAIL):
        return None
    return int.from_bytes(data[4:12], "big")


MIXED, APPENDS, SMALL = "mixed", "appends", "small"
SMALL_FILES = 64  # "small": the 64 MiB of slots spread over 64 files of 1 MiB


class Layout:
    """The files a workload writes and where each write goes.

    mixed: even writes append to log.bin, odd ones overwrite the next slot of data.bin (64 MiB);
    appends: every write appends to log.bin; small: every write overwrites the next slot of
    64 files of 1 MiB (small/f00.bin...). Slots are 64 KiB, in a fixed shuffled order.
    """

    def __init__(self, workload: str, seed: int) -> None:
        self.workload = workload
        if workload == SMALL:
            self.names = [f"small/f{i:02d}.bin" for i in range(SMALL_FILES)]
            self.log: int | None = None
        else:
            self.names = ["log.bin", "data.bin"]
            self.log = 0
        self.first_slot_file = 0 if workload == SMALL else 1
        self.file_size = DATA_SIZE // (SMALL_FILES if workload == SMALL else 1)
        slots = list(range(SLOTS))
        random.Random(f"{seed}/slots").shuffle(slots)
        self._slots = slots
        self._seed = seed

    def make(self, master: Path) -> None:
        """The files before the scenario starts: 64 MiB of random data, an empty log."""
        noise = Noise(self._seed, "data")
        if self.workload == SMALL:
            (master / "small").mkdir()
        for name in self.names[self.first_slot_file:]:
            with (master / name).open("wb") as f:
                for _ in range(self.file_size // MiB):
                    f.write(noise.read(MiB))
        if self.log is not None:
            (master / self.names[self.log]).touch()

    def slot(self, n: int) -> tuple[int, int]:
        """(file, offset) of the n-th overwrite."""
        position = self._slots[n % SLOTS] * WRITE
        return (self.first_slot_file + position // self.file_size, position % self.file_size)


class Writer:
    """Writes 64 KiB at ``rate`` bytes per second as ``layout`` says; calls ``on_write`` after
    each write."""

    def __init__(self, master: Path, rate: float, layout: Layout, seed: int, *,
                 on_write: Callable[[Write], None] | None = None) -> None:
        self.rate, self.layout, self.on_write = rate, layout, on_write
        self._fds = [os.open(master / name, os.O_WRONLY) for name in layout.names]
        self._log_end = os.fstat(self._fds[layout.log]).st_size if layout.log is not None else 0
        self._noise = Noise(seed, "writes")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="writer", daemon=True)
        self.writes = 0
        self.bytes = 0
        self.started = self.ended = 0.0
        self.late_s = 0.0  # schedule time dropped because the writer fell behind
        self.error: BaseException | None = None

    def start(self) -> None:
        self.started = time.perf_counter()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        for fd in self._fds:
            os.close(fd)
        self._fds = []
        if self.error is not None:
            raise BenchError(f"the writer failed: {self.error!r}")

    @property
    def achieved(self) -> float:
        """Bytes per second actually written."""
        return self.bytes / max(1e-9, self.ended - self.started)

    def _main(self) -> None:
        try:
            interval = WRITE / self.rate
            due = time.perf_counter()
            overwrites = 0
            layout = self.layout
            while not self._stop.is_set():
                now = time.perf_counter()
                if due > now:
                    time.sleep(due - now)
                elif now - due > 0.1:  # fell behind: do not burst to catch up
                    self.late_s += now - due
                    due = now
                seq = self.writes
                if layout.log is not None and (layout.workload == APPENDS or seq % 2 == 0):
                    file, offset = layout.log, self._log_end
                    self._log_end += WRITE
                else:
                    file, offset = layout.slot(overwrites)
                    overwrites += 1
                mark = marker(seq)
                block = bytearray(self._noise.read(WRITE))
                block[:MARKER] = mark
                block[-MARKER:] = mark
                if os.pwrite(self._fds[file], block, offset) != WRITE:
                    raise OSError("short write")
                written = time.perf_counter()
                self.writes += 1
                self.bytes += WRITE
                self.ended = written
                if self.on_write is not None:
                    self.on_write(Write(seq, file, offset, written))
                due += interval
        except BaseException as error:
            self.error = error


class Tracker:
    """Notes when each write is visible on the replica (see the module doc).

    A write counts as visible once its 64 KiB on the replica hold a whole write (the same
    marker at both ends) whose sequence number is at least its own: its bytes, or those of a
    later write to the same place. So a write overwritten on the master before the replica
    showed it is not waiting for a marker that will never come.
    """

    def __init__(self, replica: Path, layout: Layout) -> None:
        count = len(layout.names)
        self.paths = [replica / name for name in layout.names]
        self.log = layout.log
        self.writes: list[Write] = []
        self._inbox: deque[Write] = deque()
        # Per file: offset -> the writes there not yet visible, in sequence order. For the log,
        # offsets come in increasing order.
        self._pending: list[dict[int, list[Write]]] = [{} for _ in range(count)]
        self._fds: list[int | None] = [None] * count
        self._inodes = [0] * count
        self._keys: list[tuple[int, ...]] = [()] * count
        self._hot = [0] * count
        self._checked = [0.0] * count
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="tracker", daemon=True)
        self.polls = 0
        self.reads = 0
        self.covered = 0  # writes first visible through a later write to the same place
        self.error: BaseException | None = None

    def add(self, write: Write) -> None:
        self._inbox.append(write)  # deque.append is thread-safe

    def start(self) -> None:
        self._thread.start()

    def unseen(self) -> int:
        return len(self._inbox) + sum(len(writes) for pending in self._pending
                                      for writes in list(pending.values()))

    def wait_all(self, timeout: float) -> None:
        wait_for(lambda: self.error is not None or self.unseen() == 0, timeout,
                 f"{self.unseen()} write(s) to appear on the replica", 0.02)
        self.stop()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        for fd in self._fds:
            if fd is not None:
                os.close(fd)
        self._fds = [None] * len(self._fds)
        if self.error is not None:
            raise BenchError(f"the replica poller failed: {self.error!r}")

    def _main(self) -> None:
        try:
            while not self._stop.is_set():
                while self._inbox:
                    write = self._inbox.popleft()
                    self.writes.append(write)
                    self._pending[write.file].setdefault(write.offset, []).append(write)
                for index, pending in enumerate(self._pending):
                    if pending:
                        self._poll(index)
                self.polls += 1
                time.sleep(POLL_S)
        except BaseException as error:
            self.error = error

    def _poll(self, index: int) -> None:
        try:
            st = os.stat(self.paths[index])
        except FileNotFoundError:
            return
        now = time.perf_counter()
        key = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if key != self._keys[index]:
            self._keys[index] = key
            self._hot[index] = HOT_POLLS
            fd = self._fds[index]
            if fd is None or self._inodes[index] != st.st_ino:
                if fd is not None:
                    os.close(fd)
                self._fds[index] = os.open(self.paths[index], os.O_RDONLY)
                self._inodes[index] = st.st_ino
        elif self._hot[index] > 0:
            self._hot[index] -= 1
        elif now - self._checked[index] < SAFETY_S:
            return
        self._checked[index] = now
        self._check(index, st.st_size)

    def _check(self, index: int, size: int) -> None:
        fd = self._fds[index]
        if fd is None:
            return
        pending = self._pending[index]
        done = []
        for offset, writes in pending.items():
            end = offset + WRITE
            if end > size:
                if index == self.log:
                    break  # appends are in offset order: none further can be there
                continue
            self.reads += 1
            head = os.pread(fd, MARKER, offset)
            seq = marker_seq(head)
            if seq is None or seq < writes[0].seq or os.pread(fd, MARKER, end - MARKER) != head:
                continue
            seen = time.perf_counter()
            while writes and writes[0].seq <= seq:
                write = writes.pop(0)
                write.seen = seen
                self.covered += write.seq != seq
            if not writes:
                done.append(offset)
        for offset in done:
            del pending[offset]

    def timeline(self, started: float, step: float = 2.0) -> list[dict[str, float | int]]:
        """Latency by time of write, in ``step``-second buckets: how it evolves in a run."""
        buckets: dict[int, list[float]] = {}
        for w in self.writes:
            if w.seen is not None:
                buckets.setdefault(int((w.written - started) // step), []).append(
                    (w.seen - w.written) * 1000)
        return [{"from_s": b * step, "writes": len(v), "p50_ms": percentile(v, 50),
                 "max_ms": max(v)} for b, v in sorted(buckets.items())]

    def latencies_ms(self, appends: bool | None = None) -> list[float]:
        """All latencies, or those of the appends (True) or of the overwrites (False)."""
        return [(w.seen - w.written) * 1000 for w in self.writes
                if w.seen is not None and (appends is None or (w.file == self.log) == appends)]


class Sampler:
    """Samples the master's replication status every ``interval`` seconds in a thread."""

    def __init__(self, live: Live, interval: float) -> None:
        self.live, self.interval = live, interval
        self.samples: list[tuple[float, dict[str, Any]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="sampler", daemon=True)
        self.error: BaseException | None = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        if self.error is not None:
            raise BenchError(f"status sampling failed: {self.error!r}")

    def _main(self) -> None:
        try:
            while not self._stop.is_set():
                self.samples.append((time.perf_counter(), self.live.status()))
                self._stop.wait(self.interval)
        except BaseException as error:
            self.error = error

    def values(self, key: str, since: float = 0.0, until: float = math.inf) -> list[float]:
        return [float(s[key]) for t, s in self.samples if since <= t <= until and key in s]


def system_busy_seconds() -> float:
    """CPU seconds all processors spent busy since boot (/proc/stat), summed over CPUs."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(f) for f in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_and_children_cpu() -> float:
    """CPU seconds of this process and of its children that ended (engines, CLI, cp, rsync)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own_cpu_seconds() + children.ru_utime + children.ru_stime


def own_cpu_seconds() -> float:
    """CPU seconds of this process (the writer, the poller, the proxy, status requests)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class CpuWindow:
    """Engine CPU seconds over a run, and what the master sent meanwhile."""

    alpha_s: float = 0.0
    beta_s: float = 0.0
    raw_bytes: int = 0
    wire_bytes: int = 0
    seconds: float = 0.0
    bench_s: float = 0.0  # this process (writer, poller, sampler)
    # The rest of the machine: other processes, and kernel threads (writeback, network) that
    # also work for us. Much more than usual here means other work skewed the numbers.
    other_s: float = 0.0
    status_requests: int = 0


@contextmanager
def cpu_window(pair: Pair, live: Live) -> Iterator[CpuWindow]:
    window = CpuWindow()
    before = live.status()
    a0, b0 = pair.alpha.cpu_seconds(), pair.beta.cpu_seconds()
    s0, busy0 = own_cpu_seconds(), system_busy_seconds()
    t0 = time.perf_counter()
    yield window
    window.seconds = time.perf_counter() - t0
    window.alpha_s = pair.alpha.cpu_seconds() - a0
    window.beta_s = pair.beta.cpu_seconds() - b0
    window.bench_s = own_cpu_seconds() - s0
    window.other_s = max(0.0, system_busy_seconds() - busy0 - window.alpha_s - window.beta_s
                         - window.bench_s)
    after = live.status()
    window.raw_bytes = after["sent_raw_bytes"] - before["sent_raw_bytes"]
    window.wire_bytes = after["sent_bytes"] - before["sent_bytes"]
    # Our own status requests cost alpha CPU too: take them out.
    window.alpha_s = max(0.0, window.alpha_s - window.status_requests * pair.api_cpu)


# --- 1. latency (and 3. CPU) ----------------------------------------------------------------------


@dataclass(frozen=True)
class LatencyCase:
    key: str
    rate: float  # bytes per second
    aggregate_ms: int = 20
    rehash_rate: str | None = None  # None: the default (256MiB)
    workload: str = MIXED

    @property
    def options(self) -> dict[str, str | int | bool]:
        options: dict[str, str | int | bool] = {"aggregate_ms": self.aggregate_ms}
        if self.rehash_rate is not None:
            options["rehash_rate"] = self.rehash_rate
        return options

    @property
    def title(self) -> str:
        mix = {MIXED: "log appends + 64 MiB file overwrites", APPENDS: "log appends only",
               SMALL: "overwrites in 64 files of 1 MiB"}[self.workload]
        extra = f", rehash_rate {self.rehash_rate}" if self.rehash_rate else ""
        return f"{self.rate / MB:g} MB/s {mix}, aggregate_ms {self.aggregate_ms}{extra}"


LATENCY_CASES = [
    LatencyCase("10", 10 * MB),
    LatencyCase("50", 50 * MB),
    LatencyCase("10-agg5", 10 * MB, aggregate_ms=5),
    LatencyCase("10-agg0", 10 * MB, aggregate_ms=0),
    LatencyCase("50-agg0", 50 * MB, aggregate_ms=0),
    LatencyCase("10-agg0-rehash2g", 10 * MB, aggregate_ms=0, rehash_rate="2GiB"),
    LatencyCase("10-appends", 10 * MB, workload=APPENDS),
    LatencyCase("10-small", 10 * MB, workload=SMALL),
    LatencyCase("50-small", 50 * MB, workload=SMALL),
    LatencyCase("10-small-agg0", 10 * MB, aggregate_ms=0, workload=SMALL),
]


def summarize(values: Sequence[float]) -> dict[str, float | int | None]:
    if not values:
        return {"count": 0, "p50": None, "p90": None, "p99": None, "max": None}
    return {"count": len(values), "p50": percentile(values, 50), "p90": percentile(values, 90),
            "p99": percentile(values, 99), "max": max(values)}


def run_latency(pair: Pair, scratch: Path, case: LatencyCase, seconds: float,
                seed: int) -> dict[str, Any]:
    name = f"lat-{case.key}"
    with Live(pair, scratch, name, case.options) as live:
        layout = Layout(case.workload, seed)
        layout.make(live.master)
        live.start()
        tracker = Tracker(live.replica, layout)
        writer = Writer(live.master, case.rate, layout, seed, on_write=tracker.add)
        sampler = Sampler(live, STATUS_S)
        time.sleep(1.0)
        try:
            with cpu_window(pair, live) as cpu:
                tracker.start()
                sampler.start()
                writer.start()
                time.sleep(seconds)
                writer.stop()
                written_until = time.perf_counter()
                tracker.wait_all(120)
                live.wait_idle(120)
                sampler.stop()
                cpu.status_requests = len(sampler.samples) + 2
        finally:  # idempotent: stop whatever still runs
            for stop in (writer.stop, tracker.stop, sampler.stop):
                with suppress(BenchError, OSError):
                    stop()
        pair.check_alive()
        live.verify()
        lag = sampler.values("lag_s", until=written_until)
        dirty = sampler.values("dirty_paths", until=written_until)
        all_ms = tracker.latencies_ms()
        result: dict[str, Any] = {
            "case": asdict(case), "title": case.title, "seconds": seconds,
            "writes": writer.writes, "written_mb": writer.bytes / MB,
            "achieved_mb_s": writer.achieved / MB, "writer_late_s": writer.late_s,
            "covered_by_later_write": tracker.covered,
            "visible_ms": summarize(all_ms),
            "append_ms": summarize(tracker.latencies_ms(appends=True)),
            "overwrite_ms": summarize(tracker.latencies_ms(appends=False)),
            "timeline": tracker.timeline(writer.started),
            "lag_s": summarize(lag), "dirty_paths_max": max(dirty, default=None),
            "poller": {"polls": tracker.polls, "marker_reads": tracker.reads},
            "cpu": asdict(cpu),
        }
        mb = cpu.raw_bytes / MB
        result["cpu"].update(alpha_ms_per_mb=cpu.alpha_s * 1000 / mb if mb else None,
                             beta_ms_per_mb=cpu.beta_s * 1000 / mb if mb else None)
        v = result["visible_ms"]
        log(f"[latency {case.key}] {writer.writes} writes, {writer.achieved / MB:.1f} MB/s; "
            f"visible p50 {fmt(v['p50'])} ms p99 {fmt(v['p99'])} ms max {fmt(v['max'])} ms; "
            f"lag_s p99 {fmt(result['lag_s']['p99'], 3)}; master CPU {cpu.alpha_s:.1f} s "
            f"for {mb:.0f} MB")
        return result


# --- 2. catch-up ----------------------------------------------------------------------------------


def run_catchup(pair: Pair, scratch: Path, outage: float, rate: float,
                seed: int) -> dict[str, Any]:
    proxy_class = load_proxy_class()
    proxy = proxy_class(("127.0.0.1", pair.beta.listen_port))
    pair.beta_address(proxy.address)
    try:
        with Live(pair, scratch, "catchup", {}) as live:
            layout = Layout(MIXED, seed)
            layout.make(live.master)
            live.start()
            writer = Writer(live.master, rate, layout, seed)
            try:
                writer.start()
                time.sleep(5.0)  # steady state first
                before = live.status()
                proxy.cut()
                cut_at = time.monotonic()
                log(f"[catch-up] link cut for {outage:.0f} s, writer at {rate / MB:g} MB/s")
                time.sleep(outage)
                at_restore = live.status()
                cpu_restore = (pair.alpha.cpu_seconds(), pair.beta.cpu_seconds(),
                               own_cpu_seconds(), system_busy_seconds())
                proxy.restore()
                restored = time.monotonic()
                target = at_restore["last_seq"]
                link_up: float | None = None
                polls = 0
                while True:  # every 0.2 s: each status request costs the master CPU
                    now = time.monotonic()
                    if now - restored > 1800:
                        raise BenchError("the backlog did not drain within 30 minutes")
                    status = live.status()
                    polls += 1
                    if link_up is None and status.get("link_up") \
                            and status["durable_seq"] > at_restore["durable_seq"]:
                        link_up = now
                    if status["durable_seq"] >= target:
                        drained, at_drained = now, status
                        cpu_drained = (pair.alpha.cpu_seconds(), pair.beta.cpu_seconds(),
                                       own_cpu_seconds(), system_busy_seconds())
                        break
                    time.sleep(0.2)
                writer.stop()
                stopped = time.monotonic()
                quiet = live.wait_idle(600)
            finally:
                with suppress(BenchError, OSError):
                    writer.stop()
            pair.check_alive()
            live.verify()
    finally:
        proxy.close()
        pair.beta_address(pair.beta.peer_address)
    spooled = at_restore["spool_bytes"]
    link_up = link_up if link_up is not None else drained
    sent_raw = at_drained["sent_raw_bytes"] - at_restore["sent_raw_bytes"]
    drain_s = drained - restored
    result = {
        "outage_s": restored - cut_at, "writer_mb_s": writer.achieved / MB,
        "spool_bytes": spooled, "spool_records": at_restore["spool_records"],
        "spool_bytes_before_cut": before["spool_bytes"],
        "reconnect_s": link_up - restored, "drain_s": drain_s,
        "drain_after_reconnect_s": drained - link_up,
        "sent_raw_during_drain": sent_raw,
        "sent_wire_during_drain": at_drained["sent_bytes"] - at_restore["sent_bytes"],
        "link_mb_s_during_drain": sent_raw / MB / max(1e-9, drained - link_up),
        "alpha_cpu_during_drain": cpu_drained[0] - cpu_restore[0] - polls * pair.api_cpu,
        "beta_cpu_during_drain": cpu_drained[1] - cpu_restore[1],
        "bench_cpu_during_drain": cpu_drained[2] - cpu_restore[2],  # writer, proxy, polling
        "other_cpu_during_drain": max(0.0, cpu_drained[3] - cpu_restore[3] - sum(
            cpu_drained[i] - cpu_restore[i] for i in range(3))),
        "idle_after_writer_stop_s": quiet, "writer_stopped_after_restore_s": stopped - restored,
        "drain_mb_s": spooled / MB / drain_s,
        "drain_mb_s_after_reconnect": spooled / MB / max(1e-9, drained - link_up),
    }
    log(f"[catch-up] {spooled / MB:.0f} MB spooled; reconnected after "
        f"{result['reconnect_s']:.1f} s, drained after {drain_s:.1f} s "
        f"({result['drain_mb_s']:.0f} MB/s); CPU during the drain: master "
        f"{result['alpha_cpu_during_drain']:.1f} s, replica "
        f"{result['beta_cpu_during_drain']:.1f} s")
    return result


def reference_copies(scratch: Path, size: int, seed: int, runs: int = 3) -> dict[str, Any]:
    """Copy a random file of ``size`` bytes with cp and with rsync (local, whole file), each
    followed by `sync FILE` (an fsync of the copy); median time and CPU (both sides) per MB."""
    directory = scratch / "reference"
    directory.mkdir(parents=True, exist_ok=True)
    source = directory / "source.bin"
    noise = Noise(seed, "reference")
    with source.open("wb") as f:
        for left in range(size, 0, -4 * MiB):
            f.write(noise.read(min(left, 4 * MiB)))
    os.sync()
    tools: dict[str, list[str]] = {"cp": ["cp", "--sparse=never"]}
    if shutil.which("rsync"):
        tools["rsync"] = ["rsync", "--whole-file"]
    result: dict[str, Any] = {"size": size}
    try:
        for tool, argv in tools.items():
            times, cpus = [], []
            for i in range(runs):
                target = directory / f"{tool}-{i}.bin"
                usage = resource.getrusage(resource.RUSAGE_CHILDREN)
                started = time.perf_counter()
                run([*argv, source, target], what=tool)
                run(["sync", target], what="sync")
                times.append(time.perf_counter() - started)
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                cpus.append(after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime)
                target.unlink()
            seconds = statistics.median(times)
            result[tool] = {"seconds": times, "mb_s": size / MB / seconds,
                            "cpu_ms_per_mb": statistics.median(cpus) * 1000 / (size / MB)}
            log(f"[reference] {tool} + fsync of {size / MB:.0f} MB: {seconds:.2f} s "
                f"({size / MB / seconds:.0f} MB/s), CPU {result[tool]['cpu_ms_per_mb']:.2f} "
                "ms/MB")
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    if "rsync" in result:
        result["rsync_version"] = run(["rsync", "--version"]).splitlines()[0].strip()
    return result


# --- 4. compression and bandwidth limit -------------------------------------------------------------


def run_compression(pair: Pair, scratch: Path, total: int, seed: int) -> list[dict[str, Any]]:
    files = 4
    text = Text(seed, "compression").read(total)
    results = []
    for compression in (True, False):
        name = f"text-{'zstd' if compression else 'plain'}"
        with Live(pair, scratch, name, {"compression": compression}) as live:
            live.start()
            with cpu_window(pair, live) as cpu:
                started = time.perf_counter()
                per_file = total // files
                for i in range(files):
                    with (live.master / f"text{i}.txt").open("wb") as f:
                        for offset in range(i * per_file, (i + 1) * per_file, MiB):
                            f.write(text[offset:min(offset + MiB, (i + 1) * per_file)])
                written = time.perf_counter() - started
                live.wait_idle(600)
                seconds = time.perf_counter() - started
            pair.check_alive()
            live.verify()
            result = {"compression": compression, "bytes": total, "write_s": written,
                      "seconds": seconds, "raw_bytes": cpu.raw_bytes,
                      "wire_bytes": cpu.wire_bytes, "wire_ratio": cpu.wire_bytes / cpu.raw_bytes,
                      "alpha_cpu_s": cpu.alpha_s, "beta_cpu_s": cpu.beta_s}
            log(f"[compression {compression}] {cpu.raw_bytes / MB:.0f} MB raw -> "
                f"{cpu.wire_bytes / MB:.0f} MB on the wire in {seconds:.1f} s")
            results.append(result)
    return results


def run_bandwidth(pair: Pair, scratch: Path, limit: int, seconds: float,
                  seed: int) -> dict[str, Any]:
    total = int(limit * (seconds + 4))
    options: dict[str, str | int | bool] = {"bandwidth_limit": f"{limit // MiB}MiB",
                                           "compression": False}
    with Live(pair, scratch, "bandwidth", options) as live:
        live.start()
        noise = Noise(seed, "bandwidth")
        before = live.status()
        started = time.perf_counter()
        with (live.master / "random.bin").open("wb") as f:
            for left in range(total, 0, -MiB):
                f.write(noise.read(min(left, MiB)))
        samples: list[tuple[float, int]] = []
        while time.perf_counter() - started < seconds:
            samples.append((time.perf_counter() - started,
                            live.status()["sent_bytes"] - before["sent_bytes"]))
            time.sleep(0.5)
        live.wait_idle(600)
        elapsed = time.perf_counter() - started
        pair.check_alive()
        live.verify()
        after = live.status()
    window = [(t, b) for t, b in samples if t >= 2.0]
    slope = statistics.linear_regression([t for t, _ in window],
                                         [float(b) for _, b in window]).slope
    one_second = [(b2 - b1) / (t2 - t1) for (t1, b1) in samples for (t2, b2) in samples
                  if 0.95 <= t2 - t1 <= 1.05]
    wire = after["sent_bytes"] - before["sent_bytes"]
    result = {"limit": limit, "bytes": total, "measured_bytes_s": slope,
              "ratio": slope / limit, "max_1s_bytes_s": max(one_second, default=None),
              "whole_run_bytes_s": wire / elapsed, "wire_bytes": wire, "seconds": elapsed,
              "sampled_s": seconds}
    log(f"[bandwidth] limit {limit / MiB:g} MiB/s: measured {slope / MiB:.2f} MiB/s "
        f"({result['ratio']:.3f} of the limit)")
    return result


# --- report -----------------------------------------------------------------------------------------


def report(results: dict[str, Any]) -> str:
    meta = results["meta"]
    lines = [
        f"### replication ({'quick' if meta['quick'] else 'full'})",
        "",
        f"- {meta['date']}, standby {meta['commit']} (from {meta['source']}), Linux {meta['kernel']}, {meta['cores']} "
        f"cores, load average {meta['load_before']:.1f} before and "
        f"{meta.get('load_after', 0):.1f} after; the rest of the machine (other processes, "
        f"kernel writeback and network work) used {meta.get('other_cores', 0):.2f} cores on "
        "average during the run",
        "- two engines on 127.0.0.1 (TLS 1.3), default options unless stated; each case a new "
        "scenario; every replica compared with its master afterwards",
    ]
    latency = results.get("latency")
    if latency:
        lines += [
            "",
            f"Latency, write returned -> visible on the replica; 64 KiB writes for "
            f"{latency[0]['seconds']:g} s each (target p99 <= {LATENCY_TARGET_MS:g} ms):",
            "",
            "| case | MB/s done | visible p50 | p99 | max | appends p50 / p99 | overwrites p50 / "
            "p99 | lag_s p50 / p99 / max | p99 target |",
            "|---|--:|--:|--:|--:|--:|--:|--:|---|",
        ]
        for row in latency:
            v, a, o, lag = row["visible_ms"], row["append_ms"], row["overwrite_ms"], row["lag_s"]
            met = v["p99"] is not None and v["p99"] <= LATENCY_TARGET_MS
            lines.append(
                f"| {row['title']} | {row['achieved_mb_s']:.1f} | {fmt(v['p50'])} ms "
                f"| {fmt(v['p99'])} ms | {fmt(v['max'])} ms | {fmt(a['p50'])} / {fmt(a['p99'])} "
                f"| {fmt(o['p50'])} / {fmt(o['p99'])} | {fmt(lag['p50'], 2)} / "
                f"{fmt(lag['p99'], 2)} / {fmt(lag['max'], 2)} s | {'ok' if met else 'MISSED'} |")
    reference = results.get("reference", {})
    if latency:
        rsync_cpu = reference.get("rsync", {}).get("cpu_ms_per_mb")
        cp_cpu = reference.get("cp", {}).get("cpu_ms_per_mb")
        lines += [
            "",
            "CPU per MB the master sent (`sent_raw_bytes`), from the writer's start to an idle "
            "replica; reference: local `rsync --whole-file` "
            f"{fmt(rsync_cpu, 2)} ms/MB and `cp` {fmt(cp_cpu, 2)} ms/MB (both sides, same "
            "size as the catch-up spool):",
            "",
            "| case | MB sent | wire MB | master CPU s | master ms/MB | replica ms/MB "
            "| master / rsync | bench process CPU s | rest of the machine, cores |",
            "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
        ]
        for row in latency:
            cpu = row["cpu"]
            ratio = (cpu["alpha_ms_per_mb"] / rsync_cpu
                     if rsync_cpu and cpu["alpha_ms_per_mb"] else None)
            lines.append(
                f"| {row['title']} | {cpu['raw_bytes'] / MB:.0f} | {cpu['wire_bytes'] / MB:.0f} "
                f"| {cpu['alpha_s']:.1f} | {fmt(cpu['alpha_ms_per_mb'], 2)} "
                f"| {fmt(cpu['beta_ms_per_mb'], 2)} | {fmt(ratio, 1)} | {cpu['bench_s']:.1f} "
                f"| {cpu['other_s'] / max(1e-9, cpu['seconds']):.2f} |")
    catchup = results.get("catchup")
    if catchup:
        cp = reference.get("cp", {}).get("mb_s")
        rsync = reference.get("rsync", {}).get("mb_s")
        window = max(1e-9, catchup["drain_s"])
        lines += [
            "",
            f"Catch-up: link cut for {catchup['outage_s']:.0f} s under a "
            f"{catchup['writer_mb_s']:.0f} MB/s writer (which goes on during the drain); "
            "drained = every record spooled before the restore durable on the replica; CPU "
            "from restore to drained (bench: this process: writer, proxy, status requests); "
            "reference: local copy of a random file of the spooled size, then fsync:",
            "",
            "| spooled | reconnect | drained after | drain MB/s | from reconnect "
            "| link MB/s (with new writes) | CPU master / replica / bench / rest | cp + fsync "
            "| rsync + fsync "
            "| drain / cp | drain / rsync | idle after writer stop |",
            "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
            f"| {catchup['spool_bytes'] / MB:.0f} MB ({catchup['spool_records']:,} records) "
            f"| {catchup['reconnect_s']:.1f} s | {catchup['drain_s']:.1f} s "
            f"| {catchup['drain_mb_s']:.0f} | {catchup['drain_mb_s_after_reconnect']:.0f} MB/s "
            f"| {catchup['link_mb_s_during_drain']:.0f} "
            f"| {catchup['alpha_cpu_during_drain'] / window * 100:.0f} % / "
            f"{catchup['beta_cpu_during_drain'] / window * 100:.0f} % / "
            f"{catchup.get('bench_cpu_during_drain', 0) / window * 100:.0f} % / "
            f"{catchup.get('other_cpu_during_drain', 0) / window * 100:.0f} % of a core "
            f"| {fmt(cp, 0)} MB/s | {fmt(rsync, 0)} MB/s "
            f"| {fmt(catchup['drain_mb_s'] / cp if cp else None, 2)} "
            f"| {fmt(catchup['drain_mb_s'] / rsync if rsync else None, 2)} "
            f"| {catchup['idle_after_writer_stop_s']:.1f} s |",
        ]
    compression = results.get("compression")
    if compression:
        lines += [
            "",
            f"Compression: {compression[0]['bytes'] / MiB:.0f} MiB of text-like data in 4 new "
            "files, written at once:",
            "",
            "| compression | raw MB | wire MB | wire / raw | seconds to an idle replica "
            "| master CPU s | replica CPU s |",
            "|---|--:|--:|--:|--:|--:|--:|",
        ]
        for row in compression:
            lines.append(
                f"| {'zstd level 1' if row['compression'] else 'off'} "
                f"| {row['raw_bytes'] / MB:.0f} | {row['wire_bytes'] / MB:.0f} "
                f"| {row['wire_ratio']:.2f} | {row['seconds']:.1f} | {row['alpha_cpu_s']:.1f} "
                f"| {row['beta_cpu_s']:.1f} |")
    bandwidth = results.get("bandwidth")
    if bandwidth:
        lines += [
            "",
            f"Bandwidth limit, random data, compression off, sampled for "
            f"{bandwidth['sampled_s']:g} s:",
            "",
            "| limit | measured (slope after 2 s) | measured / limit | highest 1 s | whole run |",
            "|--:|--:|--:|--:|--:|",
            f"| {bandwidth['limit'] / MiB:g} MiB/s | {bandwidth['measured_bytes_s'] / MiB:.2f} "
            f"MiB/s | {bandwidth['ratio']:.3f} "
            f"| {fmt((bandwidth['max_1s_bytes_s'] or 0) / MiB, 2)} MiB/s "
            f"| {bandwidth['whole_run_bytes_s'] / MiB:.2f} MiB/s |",
        ]
    failures = results.get("failures")
    if failures:
        lines += ["", "Failures:", *(f"- {f}" for f in failures)]
    return "\n".join(lines) + "\n"


# --- main -------------------------------------------------------------------------------------------


PARTS = ("latency", "catchup", "compression", "bandwidth")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="10 s latency runs, a 30 s outage, 64 MiB of text")
    parser.add_argument("--parts", default=",".join(PARTS),
                        help=f"comma-separated parts to run (default: all of {', '.join(PARTS)})")
    parser.add_argument("--cases", help="comma-separated latency case keys (default: all: "
                        + ", ".join(c.key for c in LATENCY_CASES) + ")")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out",
                        help="directory for the report (.md) and raw numbers (.json)")
    parser.add_argument("--scratch", type=Path,
                        default=Path("/var/tmp/standby-bench/replication"),
                        help="where the data and engine homes live (removed at the end)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(args.parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown part(s) {sorted(unknown)}")
    cases = {c.key: c for c in LATENCY_CASES}
    wanted = [k.strip() for k in args.cases.split(",")] if args.cases else list(cases)
    if set(wanted) - set(cases):
        parser.error(f"unknown case(s) {sorted(set(wanted) - set(cases))}")
    args.latency_cases = [cases[k] for k in wanted]
    return args


@contextmanager
def scratch_dir(path: Path, keep: bool) -> Iterator[Path]:
    """Create ``path`` afresh; refuse a non-empty directory that we did not create."""
    path = path.resolve()
    if path.exists() and any(path.iterdir()):
        if not (path / SCRATCH_MARKER).exists():
            raise BenchError(f"{path} is not empty and not a scratch directory of ours")
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / SCRATCH_MARKER).touch()
    try:
        yield path
    finally:
        if keep:
            log(f"kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)
            with suppress(OSError):
                path.parent.rmdir()  # /var/tmp/standby-bench, if nothing else is in it


def standby_source() -> tuple[str, str]:
    """The directory the engines import standby from (PYTHONPATH may point elsewhere than
    this checkout, e.g. at a clean `git worktree`), and its commit, marked when modified."""
    found = subprocess.run([*STANDBY[:1], "-c", "import os, standby; "
                            "print(os.path.dirname(os.path.dirname(standby.__file__)))"],
                           capture_output=True, text=True, check=False).stdout.strip()
    if not found:
        return "?", "?"

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", found, *args], capture_output=True, text=True,
                              check=False).stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "?"
    if git("status", "--porcelain", "--", "."):
        commit += " (modified)"
    return found, commit


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # so that SIGTERM, too, stops the engines and removes the data


def run_parts(args: argparse.Namespace, pair: Pair, scratch: Path,
              results: dict[str, Any]) -> None:
    quick = args.quick
    seconds = 10.0 if quick else 20.0
    failures: list[str] = results["failures"]

    def attempt(what: str, step: Callable[[], Any]) -> Any:
        try:
            return step()
        except BenchError as error:
            failures.append(f"{what}: {error}")
            log(f"{what}: FAILED: {error}\n{pair.logs()}")
            pair.check_alive()  # a dead engine ends the run
            return None

    with Live(pair, scratch, "api-cost", {}) as live:
        live.start()
        pair.measure_api_cpu(live.name)
    if "latency" in args.parts:
        rows = []
        for case in args.latency_cases:
            row = attempt(f"latency {case.key}", functools.partial(
                run_latency, pair, scratch, case, seconds, args.seed))
            if row is not None:
                rows.append(row)
        results["latency"] = rows
    if "catchup" in args.parts:
        catchup = attempt("catch-up", lambda: run_catchup(
            pair, scratch, 30.0 if quick else 60.0, 20 * MB, args.seed))
        if catchup is not None:
            results["catchup"] = catchup
    if "latency" in args.parts or "catchup" in args.parts:
        size = results.get("catchup", {}).get("spool_bytes") or (600 if quick else 1200) * MB
        results["reference"] = reference_copies(scratch, size, args.seed)
    if "compression" in args.parts:
        results["compression"] = attempt("compression", lambda: run_compression(
            pair, scratch, (64 if quick else 256) * MiB, args.seed))
    if "bandwidth" in args.parts:
        results["bandwidth"] = attempt("bandwidth", lambda: run_bandwidth(
            pair, scratch, 5 * MiB, 10.0 if quick else 20.0, args.seed))


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    source, commit = standby_source()
    results: dict[str, Any] = {
        "meta": {"quick": args.quick, "date": time.strftime("%Y-%m-%d %H:%M"),
                 "commit": commit, "source": source, "kernel": platform.release(),
                 "cores": os.cpu_count(), "load_before": os.getloadavg()[0],
                 "parts": args.parts},
        "failures": [],
    }
    busy0, ours0, started = system_busy_seconds(), own_and_children_cpu(), time.monotonic()
    try:
        with ExitStack() as stack:
            scratch = stack.enter_context(scratch_dir(args.scratch, args.keep))
            pair = stack.enter_context(Pair(scratch))
            try:
                run_parts(args, pair, scratch, results)
            except BenchError:
                log(pair.logs())
                raise
            results["meta"]["api_cpu_ms_per_request"] = pair.api_cpu * 1000
            results["meta"]["load_after"] = os.getloadavg()[0]
    except BenchError as error:
        log(f"error: {error}")
        return 1
    except KeyboardInterrupt:
        log("interrupted: the engines were stopped and the scratch directory removed")
        return 130
    elapsed = time.monotonic() - started
    results["meta"]["other_cores"] = max(0.0, system_busy_seconds() - busy0
                                         - (own_and_children_cpu() - ours0)) / elapsed
    text = report(results)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / ("replication-quick" if args.quick else "replication")
    stem.with_suffix(".md").write_text(text)
    stem.with_suffix(".json").write_text(json.dumps(results, indent=2, default=str) + "\n")
    log(f"wrote {stem}.md and .json")
    print(text, end="")
    return 1 if results["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
