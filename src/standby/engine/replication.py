"""The master's side of real-time replication: one :class:`MasterReplication` per running
scenario, with two threads.

The **capture** thread owns the watchers, the dirty set, the index and the appending end of the
spool. Events mark paths dirty; a dirty path is looked at once no event has touched it for
``aggregate_ms`` (or at the latest ``MAX_DELAY_FACTOR`` times that after its first event), and
:class:`~standby.engine.changes.ChangeBuilder` turns it into records. A file that changes
without pause is compared in whole at most at ``rehash_rate`` bytes per second; in between, an
append is sent on its own. Renames and removals travel at once, in event order. Records are
appended to the spool and made durable (group commit) before the index changes behind them are
committed.

The **sender** thread owns the link: it connects, learns where the replica stands, streams
spooled records in Batches (compressed when that pays, within the bandwidth limit), and a
reader thread takes the replica's acknowledgements and trims the spool. A lost link is retried
with backoff; records wait in the spool meanwhile.

Phases: ``syncing`` (an initial synchronization runs; events only mark paths dirty),
``indexing`` (the index is built from the master's files that did not change since capture
started), ``replicating``, and ``degraded`` (the spool hit its limit: events only mark paths
dirty until the spool drains, then the dirty paths are reconciled against the index, which
sends only what differs).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import select
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..capture import Changed, Moved, Overflow, Removed, Watcher, WatchError
from ..config import PathFilter, Scenario
from ..journal import Spool, SpoolFull, SpoolGap
from ..protocol import (
    Ack,
    Batch,
    EntryKind,
    Heartbeat,
    Message,
    ProtocolError,
    RecRename,
    RecTruncate,
    RecWrite,
    RecZero,
    ReplicateBegin,
    ReplicateReady,
    compress_batch,
    decode_records,
    encode_record,
)
from ..storage.hashing import FileChangedError, hash_file, new_buffer
from ..storage.tree import ListingError, scan_tree
from . import events as ev
from .changes import RACY_NS, ChangeBuilder, entry_matches, forget_blocks
from .channel import LinkError
from .file_index import STALE, FileIndex, IndexEntry, is_under, parent_of
from .jobs import Job, JobState
from .ratelimit import TokenBucket, bandwidth_limit_at
from .session import PeerFailure, Session
from .spool_paths import spool_directory

if TYPE_CHECKING:
    from .engine import Engine

log = logging.getLogger("standby.replication")

#: A dirty path is looked at no later than this many aggregation windows after its first event,
#: even while events keep coming (a file appended to without pause still flows). Measured
#: (bench/replication.py): with 10, a log appended to at 10 MB/s was looked at every 200 ms
#: (p50 140 ms); with 2, every 40 ms. Re-reading more often costs little: large files are read
#: from their old end only between full comparisons, and small files are small.
MAX_DELAY_FACTOR = 2
#: Records gathered before they are appended to the spool in one go.
APPEND_BYTES = 4 * 1024 * 1024
#: Largest Batch the sender builds (raw, before compression).
BATCH_BYTES = 4 * 1024 * 1024
#: Bytes sent but not yet acknowledged as durable: bounds the replica's and the link's buffers.
IN_FLIGHT_BYTES = 64 * 1024 * 1024
#: Idle seconds after which the sender sends a Heartbeat (the replica answers with an Ack).
HEARTBEAT_INTERVAL = 1.0
#: Reconnect backoff after a lost link (seconds, doubling up to the maximum).
BACKOFF_MIN, BACKOFF_MAX = 0.2, 5.0
#: The degraded phase ends when the spool is back under this fraction of its limit.
RECOVER_FRACTION = 0.25
#: Seconds between retries of a failed initial synchronization: from the first, doubling up
#: to the last. A switchover's reverse replication may be refused once, for the moment the old
#: master takes to become a replica; a replica that stays down is asked every 10 s.
SYNC_RETRY_MIN, SYNC_RETRY = 1.0, 10.0
#: Files below this size are always compared in whole (the rate bound only matters for large).
SMALL_FILE = 4 * 1024 * 1024
#: Seconds of throughput history kept for the status.
THROUGHPUT_WINDOW = 10.0


class DrainError(Exception):
    """A drain did not finish; the message says what was missing."""


@dataclass(slots=True)
class _DrainWaiter:
    ready: threading.Event = field(default_factory=threading.Event)
    seq: int = 0


@dataclass(slots=True)
class _Dirty:
    first: float
    due: float
    may_remove: bool  # see ChangeBuilder.reconcile
    force_remove: bool = False


@dataclass(slots=True)
class _Link:
    """The state of the stream to one replica (fan-out: one per replica engine)."""

    replica: str
    bucket: TokenBucket
    up: bool = False
    up_since: float | None = None
    told_down: bool = False
    received_seq: int = 0
    durable_seq: int = 0
    sent_records: int = 0
    sent_bytes: int = 0  # on the wire, after compression
    total_raw: int = 0  # before compression, since the runtime started
    acked_records: int = 0
    acked_bytes: int = 0
    sent_raw: int = 0  # raw bytes sent on the current connection...
    acked_raw: int = 0  # ... and of those, acknowledged as durable
    sent: deque[tuple[int, int]] = field(default_factory=deque)  # (last seq, sent_raw)

    def status(self) -> dict[str, Any]:
        return {"link_up": self.up, "received_seq": self.received_seq,
                "durable_seq": self.durable_seq, "sent_records": self.sent_records,
                "sent_bytes": self.sent_bytes, "sent_raw_bytes": self.total_raw,
                "acknowledged_records": self.acked_records,
                "acknowledged_bytes": self.acked_bytes}


class MasterReplication:
    """Real-time replication of one scenario on its master engine."""

    def __init__(self, engine: Engine, scenario: Scenario) -> None:
        self.engine = engine
        self.scenario = scenario
        self.name = scenario.name
        self.options = scenario.replication
        self.directory = spool_directory(engine.home, scenario)
        self.spool = Spool(self.directory / "journal", max_bytes=self.options.spool_max,
                           min_free_bytes=self.options.spool_min_free)
        self.index = FileIndex(self.directory / "index.db", len(scenario.roots))
        self.block_size = scenario.sync.block_size
        self._buffer = new_buffer()
        self.builders = [
            ChangeBuilder(number, root.master, self.index.roots[number], self.block_size,
                          PathFilter(root.include, root.exclude), self._buffer)
            for number, root in enumerate(scenario.roots)]
        self.rescans = 0
        self.phase = "starting"
        self.error: str | None = None
        self._stop = threading.Event()
        self._dirty: OrderedDict[tuple[int, bytes], _Dirty] = OrderedDict()
        self._next_full: dict[tuple[int, bytes], float] = {}
        self._pending: list[bytes] = []
        self._pending_bytes = 0
        self._appended: deque[tuple[int, float]] = deque()  # (last seq of an append, time)
        self._ack_cond = threading.Condition()
        self._committed = threading.Condition()  # notified when _committed_seq advances
        self._highest_reported = 0  # the highest position a replica said it holds
        self.links = [_Link(replica, TokenBucket(None)) for replica in scenario.targets]
        self._synchronized_seq: int | None = None  # SB2202 once acknowledged up to here
        self._throughput: deque[tuple[float, int]] = deque()
        self._window = self.options.aggregate_ms / 1000.0
        self._rehash_rate = float(self.options.rehash_rate)
        self._assessment: dict[str, Any] | None = None
        self._threads: list[threading.Thread] = []
        self._watchers: list[Watcher] = []
        self._sync_job: Job | None = None
        self._sync_known = threading.Event()  # set once a sync job started, or none is needed
        self._sync_request: tuple[str | None, bool | None] | None = None
        self._drain_waiters: list[_DrainWaiter] = []  # see drain()
        self._retry = threading.Event()  # see retry_now()
        # The last spool record whose index changes are committed: nothing past it is sent.
        self._committed_seq = self.index.committed_seq if self.index.valid else 0

    # --- lifetime -------------------------------------------------------------------------------

    def start(self) -> None:
        self._threads = [threading.Thread(target=self._capture_main, name=f"capture-{self.name}",
                                          daemon=True)]
        if self.options.mode == "online":
            self._threads += [threading.Thread(target=self._sender_main, args=(link,),
                                               name=f"sender-{self.name}-{link.replica}",
                                               daemon=True) for link in self.links]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._ack_cond:
            self._ack_cond.notify_all()
        with self._committed:
            self._committed.notify_all()
        alive = False
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(timeout=30)
                alive = alive or thread.is_alive()
        if alive:  # e.g. hashing a huge file: it checks the stop flag next; leave it the files
            log.warning("scenario %s: a replication thread is still busy; its spool and index "
                        "close when the engine exits", self.name)
            return
        self.spool.close()
        self.index.close()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # --- capture --------------------------------------------------------------------------------

    def _capture_main(self) -> None:
        try:
            self._watchers = []
            for root in self.scenario.roots:
                path_filter = PathFilter(root.include, root.exclude)
                watcher = Watcher(root.master, excluded=path_filter.excluded
                                  if path_filter.active else None)
                watcher.start()
                self._watchers.append(watcher)
            if self.options.mode == "assessment":
                self._assessment_start()
            elif not self.index.valid or \
                    self.index.get_meta("targets") != ",".join(self.scenario.targets):
                self._initial_sync(None, None)  # first start, or the replicas changed
            else:
                self._sync_known.set()
                self.phase = "rescanning"
                self._recover_tail()
                for number in range(len(self.builders)):
                    self._rescan(number)
            if self.stopping:
                return
            if self.phase != "degraded":
                self.phase = "replicating" if self.options.mode == "online" else "assessing"
            self.engine.emit(ev.REPLICATION_STARTED, f"scenario {self.name}: "
                             f"{'assessment' if self.options.mode == 'assessment' else 'real-time replication'} "
                             f"started ({len(self._dirty)} path(s) to look at first)", self.name)
            self._capture_loop()
        except WatchError as exc:
            self._capture_failed(str(exc))
        except Exception as exc:
            log.exception("capture of %s failed", self.name)
            self._capture_failed(f"unexpected error, please report it as a bug: {exc!r}")
        finally:
            for watcher in self._watchers:
                watcher.close()

    def _capture_failed(self, reason: str) -> None:
        if self.stopping:
            return  # stop() closed what we were using: not a failure
        self.error = reason
        self.phase = "failed"
        self.engine.emit(ev.CAPTURE_FAILED, f"scenario {self.name}: {reason}", self.name)
        self.engine.store.update_scenario(self.name, state="failed")

    def _capture_loop(self) -> None:
        poller = select.poll()
        by_fd = {}
        for number, watcher in enumerate(self._watchers):
            poller.register(watcher.fileno(), select.POLLIN)
            by_fd[watcher.fileno()] = number
        drained_at = 0.0
        while not self.stopping:
            if self._drain_waiters and time.monotonic() - drained_at >= 0.05:
                drained_at = time.monotonic()  # a path that cannot be read is retried, not spun on
                self._drain_now()
            if self._sync_request is not None:
                method, ignore = self._sync_request
                self._sync_request = None
                self._flush_or_degrade()
                self._initial_sync(method, ignore)
                if self.stopping:
                    return
            timeout = self._next_due_in()
            ready = poller.poll(max(0.0, min(timeout, 0.5)) * 1000)
            for fd, _ in ready:
                self._take_events(by_fd[fd])
            self._process_due()
            self._finish_round()
            self._flush_or_degrade()
            self._periodic()

    def _drain_now(self) -> None:
        """For drain(): read every notification the kernel holds, look at every dirty path
        now (in whole, whatever the rehash rate), and commit; then the waiters learn the last
        record that holds a change made before they asked."""
        self._drain_events()
        for dirty in self._dirty.values():
            dirty.due = 0.0
        self._next_full.clear()
        self._process_due()
        self._finish_round()
        self._flush_or_degrade()
        if self._dirty or not self._streaming():
            return  # degraded, or a path could not be read yet: try again at the next turn
        waiters, self._drain_waiters = self._drain_waiters, []
        for waiter in waiters:
            waiter.seq = self._committed_seq
            waiter.ready.set()

    def drain(self, replica: str, timeout: float, link_grace: float | None = None) -> int:
        """Wait until every change made on the master before this call is durable on
        ``replica`` (a planned switchover: the workload has stopped, nothing may be lost).

        Returns:
            The last sequence number that had to be durable.

        Raises:
            DrainError: not done within ``timeout`` seconds (the link is down, the spool is
                degraded, a synchronization runs), or the runtime stopped meanwhile, or the
                link to ``replica`` stayed down ``link_grace`` seconds in a row.
        """
        link = next((link for link in self.links if link.replica == replica), None)
        if link is None:
            raise DrainError(f"{replica} is not a replica of scenario {self.name}")
        deadline = time.monotonic() + timeout
        waiter = _DrainWaiter()
        self._drain_waiters.append(waiter)
        while not waiter.ready.wait(0.1):
            if self.stopping or not self.capturing:
                raise DrainError(f"scenario {self.name}: replication stopped during the drain")
            if time.monotonic() > deadline:
                self._cancel_drain(waiter)
                raise DrainError(f"scenario {self.name}: changes could not all be read within "
                                 f"{timeout:g} s (phase {self.phase}, {len(self._dirty)} dirty "
                                 "path(s))")
        down_since: float | None = None
        with self._ack_cond:
            while link.durable_seq < waiter.seq:
                now = time.monotonic()
                down_since = None if link.up else (down_since or now)
                if link_grace is not None and down_since is not None \
                        and now - down_since > link_grace:
                    raise DrainError(f"scenario {self.name}: the link to {replica} has been "
                                     f"down for {now - down_since:.0f} s; {replica} made "
                                     f"changes durable up to {link.durable_seq}, not "
                                     f"{waiter.seq}")
                if self.stopping or now > deadline:
                    raise DrainError(
                        f"scenario {self.name}: {replica} made changes durable up to "
                        f"{link.durable_seq}, not {waiter.seq}, within {timeout:g} s "
                        f"(link {'up' if link.up else 'down'})")
                self._ack_cond.wait(0.1)
        return waiter.seq

    def _cancel_drain(self, waiter: _DrainWaiter) -> None:
        with contextlib.suppress(ValueError):
            self._drain_waiters.remove(waiter)

    def _age_of_first_above(self, seq: int, now: float) -> float:
        """Seconds since the first change after ``seq`` was appended (0: none is)."""
        for appended, appended_at in list(self._appended):
            if appended > seq:
                return now - appended_at
        return 0.0

    def durable_lag(self, now: float | None = None) -> float:
        """The age of the oldest change not yet durable on every replica, whatever the
        acknowledgement level (what an automatic failover must weigh)."""
        with self._ack_cond:
            durable = min(link.durable_seq for link in self.links)
        return self._age_of_first_above(durable, time.time() if now is None else now)

    @property
    def synchronizing(self) -> bool:
        """A synchronization runs, or what changed during it is not replicated yet: changes
        wait as dirty paths, counted in no sequence number, so the replica only looks caught
        up."""
        return self.phase in ("starting", "syncing", "indexing") or \
            self._synchronized_seq is not None

    def streams(self) -> list[tuple[str, bool, int]]:
        """(replica, link up, last change durable there) for each replica."""
        with self._ack_cond:
            return [(link.replica, link.up, link.durable_seq) for link in self.links]

    def _take_events(self, number: int, timeout: float = 0.0) -> None:
        for event in self._watchers[number].read(timeout):
            self._on_event(number, event)

    def _drain_events(self) -> None:
        for number in range(len(self._watchers)):
            self._take_events(number)

    def _streaming(self) -> bool:
        """Whether changes turn into records now (not only into dirty paths)."""
        return self.phase in ("replicating", "assessing", "rescanning")

    def _on_event(self, number: int, event: Changed | Moved | Removed | Overflow) -> None:
        try:
            self._handle_event(number, event)
        except SpoolFull as exc:  # a removal or rename could not be appended
            self._degrade(str(exc))
            if isinstance(event, Moved):
                self._mark(number, event.src, time.monotonic())
                self._mark(number, event.dst, time.monotonic())
            elif isinstance(event, Removed):
                self._mark(number, event.path, time.monotonic())

    def _handle_event(self, number: int, event: Changed | Moved | Removed | Overflow) -> None:
        now = time.monotonic()
        log.debug("event %r", event)
        builder = self.builders[number]
        if isinstance(event, Changed | Removed) and event.path:
            if isinstance(event, Removed) or builder.index.get(event.path) is None:
                builder.touched_dirs.add(parent_of(event.path))  # an entry came or went
        elif isinstance(event, Moved):
            builder.touched_dirs.update((parent_of(event.src), parent_of(event.dst)))
        if isinstance(event, Changed):
            self._mark(number, event.path, now, may_remove=False)
        elif isinstance(event, Removed):
            if self._streaming():
                self._forget_dirty(number, event.path)
                self.builders[number].remove(event.path, self._emit)
            else:
                self._mark(number, event.path, now)
        elif isinstance(event, Moved):
            self._moved(number, event, now)
        elif isinstance(event, Overflow):
            self.engine.emit(ev.RESCAN, f"scenario {self.name}, root "
                             f"{self.scenario.roots[number].master}: {event.reason}", self.name)
            self._rescan(number)

    def _moved(self, number: int, event: Moved, now: float) -> None:
        src, dst = event.src, event.dst
        moved = [(key, dirty) for key, dirty in self._dirty.items()
                 if key[0] == number and is_under(key[1], src)]
        for key, dirty in moved:  # changes waiting under the old name now wait under the new
            del self._dirty[key]
            self._dirty[(number, dst + key[1][len(src):])] = dirty
        if not self._streaming() or not self.builders[number].rename(src, dst, self._emit):
            self._mark(number, src, now, force_remove=True)  # the replica may hold it
            self._mark(number, dst, now)

    def _mark(self, number: int, path: bytes, now: float, *, at_once: bool = False,
              may_remove: bool = True, force_remove: bool = False) -> None:
        key = (number, path)
        due = now if at_once else now + self._window
        dirty = self._dirty.get(key)
        if dirty is None:
            self._dirty[key] = _Dirty(now, due, may_remove, force_remove)
        else:
            # Debounce: each event pushes the look a window later, but never past ten windows
            # after the first (a file written without pause still flows). A large file whose
            # full comparison is not yet due gets an append-only look then (_reconcile).
            dirty.may_remove = dirty.may_remove or may_remove
            dirty.force_remove = dirty.force_remove or force_remove
            dirty.due = min(due, dirty.first + self._window * MAX_DELAY_FACTOR)

    def _forget_dirty(self, number: int, top: bytes) -> None:
        for key in [k for k in self._dirty if k[0] == number and is_under(k[1], top)]:
            del self._dirty[key]

    def _next_due_in(self) -> float:
        if not self._dirty or not self._streaming():
            return 0.5
        now = time.monotonic()
        return max(0.0, min(d.due for d in self._dirty.values()) - now)

    def _process_due(self) -> None:
        if not self._streaming() or not self._dirty:
            return
        now = time.monotonic()
        for key in [k for k, d in self._dirty.items() if d.due <= now]:
            if self.stopping or not self._streaming():
                return
            dirty = self._dirty.get(key)
            if dirty is None or dirty.due > now:
                continue  # handled (or re-marked) meanwhile
            self._reconcile(key, now)

    def _reconcile(self, key: tuple[int, bytes], now: float) -> None:
        number, path = key
        builder = self.builders[number]
        entry = builder.index.get(path)
        next_full = self._next_full.get(key, 0.0)
        try:
            if entry is not None and entry.kind is EntryKind.FILE and now < next_full:
                # Compared in whole not long ago: send an append now, the rest at next_full
                # (sooner, for another append, if more events come).
                self._tail(builder, path, entry)
                dirty = self._dirty[key]
                dirty.first, dirty.due = now, next_full
                return
            dirty = self._dirty.pop(key)
            children = builder.reconcile(path, self._emit, may_remove=dirty.may_remove,
                                         force_remove=dirty.force_remove)
            for child in children:
                self._mark(number, child, now, at_once=True, may_remove=False)
            entry = builder.index.get(path)
            if entry is not None and entry.kind is EntryKind.FILE and entry.size > SMALL_FILE:
                self._next_full[key] = time.monotonic() + entry.size / self._rehash_rate
            else:
                self._next_full.pop(key, None)
        except SpoolFull as exc:
            self._degrade(str(exc))
        except FileChangedError:
            self._mark(number, path, time.monotonic())
        except OSError as exc:
            log.warning("scenario %s: %s: %s (will retry)", self.name, path, exc)
            self._mark(number, path, time.monotonic() + 1.0)

    def _tail(self, builder: ChangeBuilder, path: bytes, entry: IndexEntry) -> None:
        try:
            size = os.lstat(builder.absolute(path)).st_size
        except OSError:
            return
        if size > entry.size:
            builder.reconcile(path, self._emit, tail=True)

    def _finish_round(self) -> None:
        if not self._streaming():
            return
        try:
            for builder in self.builders:
                builder.finish_round(self._emit)
        except SpoolFull as exc:
            self._degrade(str(exc))

    # --- records into the spool -----------------------------------------------------------------

    def _emit(self, record: Message) -> None:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("record %s %r %r", type(record).__name__, getattr(record, "path", b""),
                      getattr(record, "target", b""))
        data = encode_record(record)
        if self.options.mode == "assessment":
            self._assess(data)
            return
        self._pending.append(data)
        self._pending_bytes += len(data)
        if self._pending_bytes >= APPEND_BYTES:
            self._flush(sync=False)

    def _flush(self, *, sync: bool) -> None:
        """Append the gathered records to the spool; with ``sync``, make the spool durable and
        commit the index changes behind it."""
        if self._pending:
            pending, self._pending, self._pending_bytes = self._pending, [], 0
            last = self.spool.append(pending)  # SpoolFull: nothing appended
            self.index.checkpoint()
            self._appended.append((last, time.time()))
        if sync and (self.index.pending or self.spool.last_seq > self._committed_seq):
            self.spool.sync()
            self.index.commit(self.spool.last_seq)
            with self._committed:
                self._committed_seq = self.spool.last_seq
                self._committed.notify_all()

    def _flush_or_degrade(self) -> None:
        try:
            self._flush(sync=True)
        except SpoolFull as exc:
            self._degrade(str(exc))

    def _degrade(self, reason: str) -> None:
        """The spool is full: forget the records not appended, and the index changes behind
        them; from now on, changes only mark paths dirty until the spool drains."""
        self._pending, self._pending_bytes = [], 0
        now = time.monotonic()
        for number, path in self.index.rollback():
            self._mark(number, path, now)
        if self.phase != "degraded":
            self.phase = "degraded"
            self.engine.emit(ev.SPOOL_FULL, f"scenario {self.name}: {reason}; "
                             f"{len(self._dirty)} path(s) marked dirty", self.name)

    def _periodic(self) -> None:
        now = time.time()
        self._throughput.append((now, sum(link.sent_bytes for link in self.links)))
        while self._throughput and self._throughput[0][0] < now - THROUGHPUT_WINDOW:
            self._throughput.popleft()
        if self.phase == "degraded" and \
                self.spool.size_bytes <= self.options.spool_max * RECOVER_FRACTION:
            self.phase = "replicating"
            count = len(self._dirty)
            for dirty in self._dirty.values():
                dirty.due = 0.0
            self.engine.emit(ev.SPOOL_RECOVERED, f"scenario {self.name}: spool at "
                             f"{self.spool.size_bytes} bytes; {count} dirty path(s) are "
                             "compared and their differences sent", self.name)
        if self._assessment is not None:
            self._assessment_tick(now)
        if self._synchronized_seq is not None and not self._dirty \
                and self._acknowledged() >= self._synchronized_seq:
            self._synchronized_seq = None
            self.engine.emit(ev.REPLICATION_SYNCHRONIZED, f"scenario {self.name}: the replica "
                             "holds every change made before and during the synchronization",
                             self.name)
            self.engine.store.update_scenario(self.name, consistent=True)

    # --- recovery after a crash ------------------------------------------------------------------

    def _recover_tail(self) -> None:
        """Records appended after the last index commit (the engine died in between) will be
        sent, but the index does not know what they did. Make it forget: their paths are
        compared again (and removed on the replica if gone here), their blocks sent again."""
        first = self._committed_seq + 1
        if self.spool.last_seq < first:
            return
        now = time.monotonic()
        count = 0
        seq = max(first, self.spool.base_seq + 1)
        while seq <= self.spool.last_seq:
            records = self.spool.read(seq, 8 * 1024 * 1024)
            if not records:
                break
            for _, data in records:
                (record,) = decode_records(data, 1)
                count += 1
                self._forget_record(record, now)
            seq = records[-1][0] + 1
        log.info("scenario %s: %d record(s) after the last index commit: their paths are "
                 "compared again", self.name, count)

    def _forget_record(self, record: Message, now: float) -> None:
        number = getattr(record, "root", 0)
        if not 0 <= number < len(self.builders):
            return
        index = self.builders[number].index
        path: bytes = getattr(record, "path", b"")
        if isinstance(record, RecWrite | RecZero):
            entry = index.get(path)
            length = len(record.payload) if isinstance(record, RecWrite) else record.length
            if entry is not None:
                index.put(path, forget_blocks(entry, record.offset, length, self.block_size))
        elif isinstance(record, RecTruncate):
            entry = index.get(path)
            if entry is not None:
                index.put(path, IndexEntry(entry.kind, entry.size, STALE, entry.mode, entry.ino))
        for name in (path, getattr(record, "target", None) if isinstance(record, RecRename)
                     else None):
            if name:
                self._mark(number, name, now, at_once=True, force_remove=True)

    # --- rescan ---------------------------------------------------------------------------------

    def _rescan(self, number: int) -> None:
        """Mark dirty every path whose size, mtime, mode or inode differs from the index (and
        every indexed path that is gone): what an incremental rescan compares."""
        self.rescans += 1
        root = self.scenario.roots[number]
        builder = self.builders[number]
        try:
            listing = scan_tree(root.master)
        except ListingError as exc:
            self._capture_failed(f"cannot list {root.master}: {exc}")
            self._stop.set()
            return
        if not listing and len(builder.index) > 1:
            # The sync's deletion guard, for rescans: an empty root where the replica holds
            # files is more likely an unmounted disk than a deliberate deletion (which arrives
            # as notifications, one path at a time, and is replicated).
            self.engine.emit(ev.DELETION_GUARD, f"scenario {self.name}: {root.master} is empty "
                             f"but the replica holds {len(builder.index) - 1} entries; nothing "
                             "deleted, replication stopped", self.name)
            self._capture_failed(f"{root.master} is empty (deletion guard)")
            self._stop.set()
            return
        now = time.monotonic()
        seen = set()
        excluded = _ExcludedTrees(builder)
        for item in listing:
            seen.add(item.path)
            if excluded(item.path, item.kind is EntryKind.DIRECTORY):
                continue
            entry = builder.index.get(item.path)
            if entry is None or not entry_matches(entry, item.kind, item.size, item.mtime_ns,
                                                  item.mode, item.ino, item.target):
                self._mark(number, item.path, now, at_once=True)
        for path, _ in list(builder.index.items()):
            if path and path not in seen:
                self._mark(number, path, now, at_once=True)

    # --- initial synchronization and index ------------------------------------------------------

    def request_sync(self, method: str | None, ignore_same_size_time: bool | None,
                     timeout: float) -> Job | None:
        """Run a synchronization now (``standby sync`` while replicating): the capture thread
        switches to it; returns its job once started."""
        self._sync_job = None
        self._sync_known.clear()
        self._sync_request = (method, ignore_same_size_time)
        return self.wait_for_sync_job(timeout)

    def wait_for_sync_job(self, timeout: float) -> Job | None:
        """The synchronization job this runtime started, or None when none was needed."""
        self._sync_known.wait(timeout)
        return self._sync_job

    @property
    def capturing(self) -> bool:
        """Whether the capture thread runs (it stops for good when capture fails)."""
        return bool(self._threads) and self._threads[0].is_alive()

    def _initial_sync(self, method: str | None, ignore: bool | None) -> None:
        """Synchronize while capture marks what changes meanwhile; then build the index from
        every file that did not change since capture started."""
        self.phase = "syncing"
        self.index.clear()
        pending = list(self.scenario.targets)  # fan-out: one synchronization per replica
        retry = SYNC_RETRY_MIN
        while pending and not self.stopping:
            try:
                job_id = self.engine.start_sync_job(self.name, method, ignore,
                                                    target=pending[0])["id"]
            except Exception as exc:  # EngineError: a sync already runs, a peer is down
                log.info("scenario %s: synchronization not started: %s", self.name, exc)
                self._sync_known.set()
                self._wait_with_events(retry)
                retry = min(retry * 2, SYNC_RETRY)
                continue
            job = self._sync_job = self.engine.job_object(job_id)
            self._sync_known.set()
            while not job.wait_done(0.2):
                self._drain_events()
                if self.stopping:
                    job.cancel()
            self._drain_events()
            if job.state is JobState.SUCCEEDED:
                pending.pop(0)
                continue
            if job.state is JobState.CANCELLED:
                self._stop.set()
                return
            self._wait_with_events(retry)
            retry = min(retry * 2, SYNC_RETRY)
        if self.stopping:
            return
        # The synchronization superseded older records. Number on above anything a replica
        # reported holding (a master whose spool was lost or restored is behind it).
        self.spool.reset(max(self.spool.last_seq, self._highest_reported))
        self.phase = "indexing"
        for number in range(len(self.builders)):
            self._build_index(number)
        self.index.set_meta("targets", ",".join(self.scenario.targets))
        self.index.mark_valid()
        self.index.commit(self.spool.last_seq)
        self._committed_seq = self.spool.last_seq
        self.phase = "replicating"
        self._synchronized_seq = self.spool.last_seq
        for dirty in self._dirty.values():
            dirty.due = 0.0

    def _wait_with_events(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while not self.stopping and time.monotonic() < end and not self._retry.is_set():
            self._drain_events()
            self._stop.wait(0.2)
        self._retry.clear()

    def retry_now(self) -> None:
        """Cut short the wait before the next attempt of a failed synchronization (the HA
        controller asks for it: the replica it was refused by has just become one)."""
        self._retry.set()

    def _build_index(self, number: int) -> None:
        builder = self.builders[number]
        root = self.scenario.roots[number]
        try:
            listing = scan_tree(root.master)
        except ListingError as exc:
            self._capture_failed(f"cannot list {root.master}: {exc}")
            self._stop.set()
            return
        index = builder.index
        excluded = _ExcludedTrees(builder)
        racy = time.time_ns() - RACY_NS  # a file changed since may change again unseen
        dirty_dirs = {path for (root, path) in self._dirty if root == number}
        for item in listing:
            if self.stopping:
                return
            key = (number, item.path)
            if key in self._dirty or excluded(item.path, item.kind is EntryKind.DIRECTORY) \
                    or _under_any(item.path, dirty_dirs):
                continue  # changed since capture started: compared (or sent whole) later
            if item.kind is EntryKind.DIRECTORY:
                index.put(item.path, IndexEntry(EntryKind.DIRECTORY, 0, item.mtime_ns,
                                                item.mode, item.ino))
            elif item.kind is EntryKind.SYMLINK:
                index.put(item.path, IndexEntry(EntryKind.SYMLINK, item.size, item.mtime_ns, 0,
                                                item.ino, item.target))
            elif item.kind is EntryKind.FILE:
                digests = self._hash(builder, item.path, item.size, item.mtime_ns)
                self._drain_events()
                if digests is not None and key not in self._dirty:
                    mtime = item.mtime_ns if item.mtime_ns < racy else STALE
                    index.put(item.path, IndexEntry(EntryKind.FILE, item.size, mtime,
                                                    item.mode, item.ino, digests=digests))
            if index.pending and len(index.pending) >= 1000:
                self.index.commit()
        index.put(b"", IndexEntry(EntryKind.DIRECTORY, 0, 0, 0, 0))
        self.index.commit()

    def _hash(self, builder: ChangeBuilder, path: bytes, size: int,
              mtime_ns: int) -> bytes | None:
        try:
            fd = os.open(builder.absolute(path), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            st = os.fstat(fd)
            if (st.st_size, st.st_mtime_ns) != (size, mtime_ns):
                return None
            hashes = hash_file(fd, self.block_size, buffer=self._buffer)
            st2 = os.fstat(fd)
            if (st2.st_size, st2.st_mtime_ns) != (size, mtime_ns):
                return None
            return hashes.block_digests
        except (OSError, FileChangedError):
            return None
        finally:
            os.close(fd)

    # --- sender ---------------------------------------------------------------------------------

    def _sender_main(self, link: _Link) -> None:
        """Keep one replica's link up and stream to it (one thread per replica)."""
        backoff = BACKOFF_MIN
        while not self.stopping:
            if self.phase not in ("replicating", "degraded", "rescanning"):
                self._stop.wait(0.1)
                continue
            try:
                session = self.engine.open_session(link.replica, "replicate")
            except Exception as exc:  # EngineError: unreachable, refused
                self._link_down(link, str(exc))
                self._stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            try:
                epoch, _ = self.engine.epoch_record(self.name)
                session.send(ReplicateBegin(scenario=self.name, epoch=epoch,
                                            base_seq=self.spool.base_seq))
                ready = session.expect(ReplicateReady)
                self._stream(link, session, ready)
            except (LinkError, OSError, PeerFailure, ProtocolError) as exc:
                self._link_down(link, str(exc))
                if link.up_since is not None and time.monotonic() - link.up_since > 10:
                    backoff = BACKOFF_MIN  # it worked for a while: reconnect quickly
                self._stop.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
            except Exception as exc:  # a spool error, or a bug: never lose the link for good
                log.exception("scenario %s: sending to %s failed", self.name, link.replica)
                self._link_down(link, f"unexpected error: {exc!r}")
                self._stop.wait(BACKOFF_MAX)
            finally:
                session.close()

    def _link_up(self, link: _Link) -> None:
        if not link.up:
            link.up = True
            link.up_since = time.monotonic()
            self.engine.emit(ev.LINK_RESTORED, f"scenario {self.name}: connected to "
                             f"{link.replica}; {self.spool.last_seq - link.durable_seq} "
                             "record(s) to send", self.name)

    def _link_down(self, link: _Link, reason: str) -> None:
        if self.stopping:
            return  # we closed it
        link.up_since = None
        if link.up or not link.told_down:
            link.told_down = True
            link.up = False
            self.engine.emit(ev.LINK_LOST, f"scenario {self.name}: replica "
                             f"{link.replica}: {reason}", self.name)

    def _stream(self, link: _Link, session: Session, ready: ReplicateReady) -> None:
        self._highest_reported = max(self._highest_reported, ready.received_seq)
        if ready.received_seq > self.spool.last_seq:
            self.engine.emit(ev.REPLICA_AHEAD, f"scenario {self.name}: replica {link.replica} "
                             f"holds records up to {ready.received_seq}, the spool ends at "
                             f"{self.spool.last_seq}: synchronizing", self.name)
            self._sync_request = (None, None)
            self._stop.wait(1.0)
            return
        link.sent.clear()
        link.sent_raw = link.acked_raw = 0
        self._on_ack(link, ready.received_seq, ready.durable_seq)
        failure: list[BaseException] = []
        reader = threading.Thread(target=self._read_acks, args=(link, session, failure),
                                  name=f"acks-{self.name}-{link.replica}", daemon=True)
        reader.start()
        next_seq = ready.received_seq + 1
        sent_at = time.monotonic()
        limit_checked = 0.0
        while not self.stopping and not failure and reader.is_alive():
            if self.phase not in ("replicating", "degraded", "rescanning"):
                return
            now = time.monotonic()
            if now - limit_checked > 10.0:
                link.bucket.set_rate(bandwidth_limit_at(self.options, datetime.datetime.now()))
                limit_checked = now
            with self._ack_cond:
                if link.sent_raw - link.acked_raw > IN_FLIGHT_BYTES:
                    self._ack_cond.wait(0.2)
                    continue
            # Under a bandwidth limit, batches of about a quarter second at that rate: the
            # bucket lets one batch pass in debt, so smaller batches keep the rate close.
            rate = link.bucket.rate
            batch_bytes = BATCH_BYTES if not rate else int(max(64 * 1024,
                                                               min(BATCH_BYTES, rate / 4)))
            try:
                allowed = self._committed_seq - next_seq + 1  # only what the index holds
                records = self.spool.read(next_seq, batch_bytes, min(allowed, 10_000)) \
                    if allowed > 0 else []
            except SpoolGap:
                self.engine.emit(ev.REPLICA_AHEAD, f"scenario {self.name}: replica "
                                 f"{link.replica} needs records from {next_seq}, the spool "
                                 f"starts after {self.spool.base_seq}: synchronizing",
                                 self.name)
                self._sync_request = (None, None)
                self._stop.wait(1.0)
                return
            if not records:
                if now - sent_at >= HEARTBEAT_INTERVAL:
                    session.send(Heartbeat(sent_at=time.time()))
                    sent_at = now
                with self._committed:  # woken when the capture thread commits records
                    if self._committed_seq < next_seq and not self.stopping:
                        self._committed.wait(0.2)
                continue
            raw = b"".join(data for _, data in records)
            compressed = (compress_batch(raw, self.options.compression_level)
                          if self.options.compression else None)
            payload = raw if compressed is None else compressed
            link.bucket.consume(len(payload), self._stop)
            session.send(Batch(first_seq=records[0][0], count=len(records),
                               compressed=compressed is not None, raw_size=len(raw),
                               payload=payload))
            with self._ack_cond:
                link.sent_records += len(records)
                link.sent_bytes += len(payload)
                link.sent_raw += len(raw)
                link.total_raw += len(raw)
                link.sent.append((records[-1][0], link.sent_raw))
            next_seq = records[-1][0] + 1
            sent_at = now
        if failure:
            raise failure[0]

    def _read_acks(self, link: _Link, session: Session, failure: list[BaseException]) -> None:
        try:
            while not self.stopping:
                message = session.recv()
                if isinstance(message, Ack):
                    self._link_up(link)  # the first Ack of a session: the replica applies
                    self._on_ack(link, message.received_seq, message.durable_seq)
                elif not isinstance(message, Heartbeat):
                    raise ProtocolError(f"unexpected {type(message).__name__} from the replica")
        except BaseException as exc:  # the sender re-raises it
            failure.append(exc)
        finally:
            with self._ack_cond:
                self._ack_cond.notify_all()

    def _on_ack(self, link: _Link, received: int, durable: int) -> None:
        with self._ack_cond:
            if durable > link.durable_seq:
                link.acked_records += durable - link.durable_seq
            link.received_seq = max(link.received_seq, received)
            link.durable_seq = max(link.durable_seq, durable)
            while link.sent and link.sent[0][0] <= link.durable_seq:
                _, acked_raw = link.sent.popleft()
                link.acked_bytes += acked_raw - link.acked_raw
                link.acked_raw = acked_raw
            self._ack_cond.notify_all()
            durable_everywhere = min(other.durable_seq for other in self.links)
        self.spool.trim(min(durable_everywhere, self.spool.last_seq))
        # Kept until durable everywhere (not only acknowledged): the HA lag is about durability.
        while self._appended and self._appended[0][0] <= durable_everywhere:
            self._appended.popleft()

    def _acknowledged(self) -> int:
        """The last change every replica acknowledged at the scenario's level (async,
        received, durable)."""
        if self.options.ack == "async":
            return self.spool.last_seq
        if self.options.ack == "received":
            return min(link.received_seq for link in self.links)
        return min(link.durable_seq for link in self.links)

    # --- assessment -----------------------------------------------------------------------------

    def _assessment_start(self) -> None:
        """Assessment: the index describes the master as it is now; changes are counted."""
        self.phase = "indexing"
        self.index.clear()
        for number in range(len(self.builders)):
            self._build_index(number)
        self.index.mark_valid()
        now = time.time()
        self._assessment = {"started_at": now, "sample_started_at": now,
                            "sample_seconds": float(self.options.sample_seconds),
                            "bytes": 0, "records": 0, "compressed": 0, "samples": []}
        self.phase = "assessing"

    def _assess(self, data: bytes) -> None:
        assert self._assessment is not None
        self._assessment["bytes"] += len(data)
        self._assessment["records"] += 1
        compressed = compress_batch(data, self.options.compression_level)
        self._assessment["compressed"] += len(data) if compressed is None else len(compressed)

    def _assessment_tick(self, now: float) -> None:
        state = self._assessment
        assert state is not None
        if now - state["sample_started_at"] < state["sample_seconds"]:
            return
        seconds = now - state["sample_started_at"]
        sample = {"start": state["sample_started_at"], "seconds": round(seconds, 3),
                  "changed_bytes": state["bytes"], "records": state["records"],
                  "compressed_bytes": state["compressed"],
                  "bandwidth_bytes_s": round(state["compressed"] / seconds)}
        state["samples"].append(sample)
        state.update(bytes=0, records=0, compressed=0, sample_started_at=now)
        self.engine.store.add_report(self.name, self.assessment_report())
        self.engine.emit(ev.ASSESSMENT_SAMPLE, f"scenario {self.name}: "
                         f"{sample['changed_bytes']} bytes changed in {seconds:.0f} s "
                         f"({sample['compressed_bytes']} compressed)", self.name)

    def assessment_report(self) -> dict[str, Any]:
        state = self._assessment or {"samples": [], "started_at": time.time()}
        samples = state["samples"]
        total = sum(s["changed_bytes"] for s in samples)
        compressed = sum(s["compressed_bytes"] for s in samples)
        seconds = sum(s["seconds"] for s in samples) or 1.0
        return {"kind": "assessment", "scenario": self.name, "started_at": state["started_at"],
                "samples": samples, "changed_bytes": total, "compressed_bytes": compressed,
                "compression_ratio": round(total / compressed, 2) if compressed else None,
                "bandwidth_average_bytes_s": round(compressed / seconds),
                "bandwidth_peak_bytes_s": max((s["bandwidth_bytes_s"] for s in samples),
                                              default=0),
                "changed_files": sum(b.counters.files for b in self.builders),
                "sent_bytes": 0}

    # --- status ---------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Statistics of the scenario as a whole (the slowest replica's positions) and per
        host: changed on the master; sent to and acknowledged by each replica."""
        now = time.time()
        acknowledged = self._acknowledged()
        lag = self._age_of_first_above(acknowledged, now)
        throughput = 0.0
        samples = list(self._throughput)
        if len(samples) >= 2 and samples[-1][0] > samples[0][0]:
            throughput = (samples[-1][1] - samples[0][1]) / (samples[-1][0] - samples[0][0])
        links = {link.replica: link.status() for link in self.links}
        changed_files = sum(b.counters.files for b in self.builders)
        changed_bytes = sum(b.counters.bytes for b in self.builders)
        hosts: dict[str, dict[str, Any]] = {self.scenario.master: {
            "changed_files": changed_files, "changed_bytes": changed_bytes,
            "sent_records": sum(link.sent_records for link in self.links),
            "sent_bytes": sum(link.sent_bytes for link in self.links),
            "spool_bytes": self.spool.size_bytes}}
        for link in self.links:
            hosts.setdefault(link.replica, {}).update(
                received_records=link.acked_records, received_bytes=link.acked_bytes)
        return {
            "phase": self.phase, "mode": self.options.mode, "ack": self.options.ack,
            "error": self.error, "link_up": all(link.up for link in self.links),
            "last_seq": self.spool.last_seq,
            "received_seq": min(link.received_seq for link in self.links),
            "durable_seq": min(link.durable_seq for link in self.links),
            "acknowledged_seq": acknowledged,
            "spool_bytes": self.spool.size_bytes, "spool_records": self.spool.record_count,
            "dirty_paths": len(self._dirty), "lag_s": round(lag, 3),
            "durable_lag_s": round(self.durable_lag(now), 3),
            "synchronizing": self.synchronizing,
            "throughput_bytes_s": round(throughput),
            "changed_files": changed_files, "changed_bytes": changed_bytes,
            "sent_records": hosts[self.scenario.master]["sent_records"],
            "sent_bytes": hosts[self.scenario.master]["sent_bytes"],
            "sent_raw_bytes": sum(link.total_raw for link in self.links),
            "rescans": self.rescans, "links": links, "hosts": hosts,
        }


class _ExcludedTrees:
    """Filter a listing (parents before children): an entry is excluded if it matches the
    root's filter or lies under a directory that did."""

    def __init__(self, builder: ChangeBuilder) -> None:
        self._builder = builder
        self._dirs: set[bytes] = set()

    def __call__(self, path: bytes, is_dir: bool) -> bool:
        parent = parent_of(path)
        while parent:
            if parent in self._dirs:
                return True
            parent = parent_of(parent)
        if self._builder.excluded(path, is_dir):
            if is_dir:
                self._dirs.add(path)
            return True
        return False


def _under_any(path: bytes, tops: set[bytes]) -> bool:
    """Whether a directory above ``path`` is in ``tops`` (a renamed directory's contents had
    no notifications of their own)."""
    parent = parent_of(path)
    while parent:
        if parent in tops:
            return True
        parent = parent_of(parent)
    return False
