"""The master side of a synchronization: compare both trees, send what differs.

For each root: both hosts list their tree at the same time; the master plans removals, new
directories, files, links and attributes; then it streams the work over one session:

- file method: a file whose size or mtime differs is sent whole;
- block method: the master asks the replica for the coarse digests of a file (a few files
  ahead, so both hosts hash at the same time and no round trip is waited for), compares them
  with its own, asks for the block digests of the differing ranges only, and sends the
  differing blocks. Past ``whole_file_threshold`` of differing blocks it sends the file whole.

Whole files are read once: holes (SEEK_DATA/SEEK_HOLE) are skipped, all-zero blocks are not
sent (the replica's new file reads as zeros there), and block digests are computed on the way
for the end-to-end check. A reader thread gathers the replica's replies; the file results come
back asynchronously and a mismatch is sent again whole, once.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..blocks import (
    block_digests,
    file_digest,
    plan_transfer,
    ranges_to_compare,
    select_ranges,
    zero_blocks,
    zero_digest,
)
from ..config import PathFilter, Root, Scenario, SyncOptions
from ..protocol import (
    BLOCK_DIGEST_SIZE,
    BlockData,
    BlockDigests,
    BlockRequest,
    Entries,
    EntriesEnd,
    EntryKind,
    FileBegin,
    FileEnd,
    FileResult,
    HashRequest,
    MakeDir,
    MakeHardLink,
    MakeSymlink,
    Message,
    ProtocolError,
    RangeDigests,
    RemoteProtocolError,
    Remove,
    SetAttrs,
    SyncBegin,
    SyncDone,
    SyncEnd,
    SyncMethod,
    ZeroRange,
)
from ..storage.hashing import data_extents, hash_file, new_buffer, read_runs
from ..storage.tree import ListingError, LocalEntry, scan_tree
from . import events as ev
from .channel import LinkError
from .jobs import Cancelled, JobFailed, Progress
from .session import PeerFailure, Session
from .sync_replica import DIGEST_MISMATCH

if TYPE_CHECKING:
    from ..protocol import Entry
    from .engine import Engine

log = logging.getLogger("standby.sync")

#: Largest BlockData payload: large enough to amortize per-frame costs, small enough to keep
#: the pipeline responsive. Matches DRBD's maximum BIO size.
MAX_RUN = 1024 * 1024
#: Files whose digests the replica computes ahead of the master (count and bytes): hides the
#: round trip for small files and lets both hosts hash large ones at the same time.
HASH_WINDOW_FILES = 64
HASH_WINDOW_BYTES = 512 * 1024 * 1024
#: Files opened ahead of the one being sent, with the kernel asked to read them already
#: (POSIX_FADV_WILLNEED): a cold tree of small files is then read with many requests in flight
#: instead of one file at a time. Bytes counted up to READ_AHEAD_FILE_BYTES per file (the
#: kernel's own readahead serves the rest of a large file).
READ_AHEAD_FILES = 32
READ_AHEAD_BYTES = 64 * 1024 * 1024
READ_AHEAD_FILE_BYTES = 4 * 1024 * 1024
#: Errors kept in a report (the count is always exact).
MAX_REPORTED_ERRORS = 100
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


class _Mailbox:
    """Replies gathered by the reader thread, taken by the sender; failures wake everyone."""

    def __init__(self, cancelled: threading.Event) -> None:
        self._cond = threading.Condition()
        self._items: dict[tuple[int, type[Message]], Message] = {}
        self._results: deque[FileResult] = deque()
        self._forgotten: set[int] = set()
        self._error: BaseException | None = None
        self._cancelled = cancelled

    def put(self, key: int, message: Message) -> None:
        with self._cond:
            if key in self._forgotten:
                return
            if isinstance(message, FileResult):
                self._results.append(message)
            else:
                self._items[(key, type(message))] = message
            self._cond.notify_all()

    def fail(self, error: BaseException) -> None:
        with self._cond:
            self._error = error
            self._cond.notify_all()

    def forget(self, key: int) -> None:
        """Drop a reply that will not be taken (the local file could not be read)."""
        with self._cond:
            self._forgotten.add(key)
            self._items.pop((key, RangeDigests), None)

    def _check(self) -> None:
        if self._error is not None:
            raise self._error
        if self._cancelled.is_set():
            raise Cancelled()

    def take(self, key: int, kind: type[Message]) -> Message:
        with self._cond:
            while (key, kind) not in self._items:
                self._check()
                self._cond.wait(0.5)
            return self._items.pop((key, kind))

    def results(self, wait_for: int) -> list[FileResult]:
        """Wait until ``wait_for`` results are in, and take them all."""
        with self._cond:
            while len(self._results) < wait_for:
                self._check()
                self._cond.wait(0.5)
            out = list(self._results)
            self._results.clear()
            return out

    def results_nowait(self) -> list[FileResult]:
        with self._cond:
            self._check()
            out = list(self._results)
            self._results.clear()
            return out


class _OpenAhead:
    """Opens the files to read a little ahead of the sender and asks the kernel to start
    reading them. ``take`` hands an open descriptor over to the caller (who closes it), or
    raises the OSError that opening raised."""

    def __init__(self, root: bytes, files: list[_FileWork]) -> None:
        self._root = root
        self._pending = deque(w for w in files if w.action in ("whole", "compare"))
        self._open: dict[int, int | OSError] = {}
        self._bytes = 0

    def take(self, work: _FileWork) -> int:
        self._fill(work)
        fd = self._open.pop(work.file_id, None)
        if fd is None:  # not planned ahead (a file sent again): open it now
            return os.open(os.path.join(self._root, work.path), _OPEN_FLAGS)
        if isinstance(fd, OSError):
            raise fd
        self._bytes -= min(work.entry.size, READ_AHEAD_FILE_BYTES)
        return fd

    def _fill(self, current: _FileWork) -> None:
        """Open files in plan order until the window is full and ``current`` is open."""
        while self._pending and (
                (len(self._open) < READ_AHEAD_FILES and self._bytes < READ_AHEAD_BYTES)
                or (current.file_id not in self._open
                    and self._pending[0].file_id <= current.file_id)):  # ids follow the plan
            work = self._pending.popleft()
            try:
                fd = os.open(os.path.join(self._root, work.path), _OPEN_FLAGS)
            except OSError as exc:
                self._open[work.file_id] = exc
                continue
            ahead = min(work.entry.size, READ_AHEAD_FILE_BYTES)
            if ahead:
                os.posix_fadvise(fd, 0, ahead, os.POSIX_FADV_WILLNEED)
            self._open[work.file_id] = fd
            self._bytes += ahead

    def close(self) -> None:
        for fd in self._open.values():
            if isinstance(fd, int):
                os.close(fd)
        self._open.clear()


@dataclass
class _Counters:
    """What one synchronization did; becomes the report."""

    files_compared: int = 0
    files_differing: int = 0
    files_created: int = 0
    files_updated: int = 0
    files_redone: int = 0
    files_vanished: int = 0
    entries_removed: int = 0
    dirs_created: int = 0
    symlinks: int = 0
    hardlinks: int = 0
    special_skipped: int = 0
    bytes_total: int = 0
    bytes_compared: int = 0
    bytes_sent: int = 0
    errors: list[str] = field(default_factory=list)
    error_count: int = 0
    replica: dict[str, int] = field(default_factory=dict)

    def error(self, message: str) -> None:
        self.error_count += 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append(message)


@dataclass(slots=True)
class _FileWork:
    file_id: int
    path: bytes
    entry: LocalEntry
    action: str  # "whole", "compare", "attrs" (and after comparing: "same")
    theirs: Entry | None  # the replica's entry, when it has this file


def _show(path: bytes) -> str:
    return os.fsdecode(path).encode("utf-8", "backslashreplace").decode("utf-8")


class MasterSync:
    """One synchronization job of a scenario (all its roots, one after the other)."""

    def __init__(self, engine: Engine, scenario: Scenario, options: SyncOptions) -> None:
        self.engine = engine
        self.scenario = scenario
        self.options = options
        self.progress = Progress()
        self.counters = _Counters()
        # One page-aligned read buffer, reused for hashing, whole files and block runs.
        self.buffer = new_buffer(max(8 * 1024 * 1024, 2 * options.block_size))

    def run(self, cancelled: threading.Event) -> dict[str, Any]:
        name = self.scenario.name
        started = time.time()
        self.engine.emit(ev.SYNC_STARTED, f"synchronization of {name} started "
                         f"({self.options.method} method)", name)
        self.engine.store.update_scenario(name, consistent=False)
        try:
            for index, root in enumerate(self.scenario.roots):
                _RootSync(self, index, root, cancelled).run()
        except Cancelled:
            self.engine.emit(ev.SYNC_FAILED, f"synchronization of {name} cancelled", name)
            raise
        except JobFailed as exc:
            exc.report = self._report(started, ok=False, failure=str(exc))
            self.engine.emit(ev.SYNC_FAILED, f"synchronization of {name} failed: {exc}", name)
            raise
        report = self._report(started, ok=self.counters.error_count == 0, failure=None)
        if self.counters.error_count:
            message = (f"{self.counters.error_count} file(s) could not be synchronized; first: "
                       f"{self.counters.errors[0]}")
            self.engine.emit(ev.SYNC_FAILED, f"synchronization of {name} failed: {message}",
                             name)
            raise JobFailed(message, report)
        self.engine.emit(ev.SYNC_COMPLETED, f"synchronization of {name} completed in "
                         f"{report['duration_s']:.1f} s: {report['files_differing']} file(s) "
                         f"differed, {report['bytes_sent']} bytes sent", name)
        return report

    def _report(self, started: float, ok: bool, failure: str | None) -> dict[str, Any]:
        c = self.counters
        finished = time.time()
        master_stats = {"files_compared": c.files_compared, "bytes_compared": c.bytes_compared,
                        "files_sent": c.files_created + c.files_updated, "bytes_sent": c.bytes_sent}
        return {
            "scenario": self.scenario.name, "ok": ok, "failure": failure,
            "method": self.options.method,
            "ignore_same_size_time": self.options.ignore_same_size_time,
            "started_at": started, "finished_at": finished,
            "duration_s": round(finished - started, 3),
            "files_compared": c.files_compared, "files_differing": c.files_differing,
            "files_created": c.files_created, "files_updated": c.files_updated,
            "files_redone": c.files_redone, "files_vanished": c.files_vanished,
            "files_deleted": c.entries_removed, "dirs_created": c.dirs_created,
            "symlinks": c.symlinks, "hardlinks": c.hardlinks,
            "special_skipped": c.special_skipped, "bytes_total": c.bytes_total,
            "bytes_compared": c.bytes_compared, "bytes_sent": c.bytes_sent,
            "error_count": c.error_count, "errors": c.errors,
            "hosts": _per_host(self.scenario.master, master_stats, self.scenario.replica,
                               dict(c.replica)),
        }


def _per_host(master: str, master_stats: dict[str, int], replica: str,
              replica_stats: dict[str, int]) -> dict[str, dict[str, int]]:
    """Statistics by host; one engine playing both roles gets both sets of counters."""
    if master != replica:
        return {master: master_stats, replica: replica_stats}
    return {master: {**replica_stats, **master_stats}}


class _RootSync:
    """Synchronizes one root over one session."""

    def __init__(self, job: MasterSync, index: int, root: Root,
                 cancelled: threading.Event) -> None:
        self.job = job
        self.engine = job.engine
        self.index = index
        self.root = root
        self.options = job.options
        self.bs = job.options.block_size
        self.rb = job.options.range_blocks
        self.cancelled = cancelled
        self.c = job.counters
        self.progress = job.progress
        self.buffer = job.buffer
        self.root_bytes = os.fsencode(root.master)
        self.mail = _Mailbox(cancelled)
        self.session: Session | None = None
        self.touched_dirs: set[bytes] = set()
        self.outstanding = 0  # files sent whose FileResult has not arrived
        self.redo: list[_FileWork] = []
        self._sent: dict[int, _FileWork] = {}  # files sent, by file_id, until their result
        self._next_id = 0

    # --- driver ---------------------------------------------------------------------------------

    def run(self) -> None:
        from .engine import EngineError

        name = self.job.scenario.name
        try:
            self.session = self.engine.open_session(self.job.scenario.replica, "sync")
        except EngineError as exc:
            raise JobFailed(exc.message) from None
        reader: threading.Thread | None = None
        try:
            epoch, _ = self.engine.epoch_record(name)
            self.session.send(SyncBegin(
                scenario=name, epoch=epoch, root=self.index,
                method=SyncMethod.BLOCK if self.options.method == "block" else SyncMethod.FILE,
                block_size=self.bs, range_blocks=self.rb))
            self.progress.phase = "listing"
            master, replica = self._listings()
            reader = threading.Thread(target=self._read_replies, name="sync-replies",
                                      daemon=True)
            reader.start()
            self._execute(master, replica)
        except (LinkError, OSError) as exc:
            raise JobFailed(f"link to {self.job.scenario.replica} failed: {exc}") from None
        except PeerFailure as exc:
            raise JobFailed(f"the replica ended the session: {exc.message} ({exc.code})") \
                from None
        except ProtocolError as exc:
            self.engine.emit(ev.PROTOCOL_ERROR, f"sync of {name}: {exc}", name)
            self.session.fail(ev.PROTOCOL_ERROR.code, str(exc))
            raise JobFailed(f"protocol error: {exc}") from None
        except Cancelled:
            self.session.fail("SB2103", "cancelled by the operator")
            raise
        finally:
            self.session.close()
            if reader is not None:
                reader.join(5)

    def _read_replies(self) -> None:
        assert self.session is not None
        try:
            while True:
                message = self.session.recv()
                if isinstance(message, (RangeDigests, BlockDigests, FileResult)):
                    self.mail.put(message.file_id, message)
                elif isinstance(message, SyncDone):
                    self.mail.put(-1, message)
                    return
                else:
                    raise RemoteProtocolError(f"unexpected {type(message).__name__} from the "
                                              "replica during sync")
        except BaseException as exc:
            self.mail.fail(exc)

    # --- listing and plan -----------------------------------------------------------------------

    def _listings(self) -> tuple[dict[bytes, LocalEntry], dict[bytes, Entry]]:
        assert self.session is not None
        name = self.job.scenario.name
        try:
            master_list = scan_tree(self.root_bytes)
        except ListingError as exc:
            message = f"master root {self.root.master} cannot be listed: {exc}"
            self.engine.emit(ev.DELETION_GUARD, f"{name}: {message}", name)
            self.session.fail(ev.DELETION_GUARD.code, message)
            raise JobFailed(f"deletion guard: {message}") from None
        replica_list: list[Entry] = []
        while True:
            reply = self.session.recv()
            if isinstance(reply, Entries):
                replica_list.extend(reply.entries)
            elif isinstance(reply, EntriesEnd):
                if reply.error is not None:
                    raise JobFailed(f"replica root {self.root.replica} cannot be listed: "
                                    f"{reply.error}")
                break
            else:
                raise RemoteProtocolError(f"unexpected {type(reply).__name__} in listing")
        flt = PathFilter(self.root.include, self.root.exclude)
        master = _filtered(master_list, flt)
        replica = _filtered(replica_list, flt)
        specials = [p for p, e in master.items() if e.kind == EntryKind.OTHER]
        for path in specials:
            del master[path]
        if specials:
            self.c.special_skipped += len(specials)
            shown = ", ".join(_show(p) for p in specials[:5])
            self.engine.emit(ev.SPECIAL_SKIPPED, f"{name}: {len(specials)} special file(s) "
                             f"skipped under {self.root.master}: {shown}", name)
        if not master and replica:
            message = (f"master root {self.root.master} is empty while the replica root "
                       f"{self.root.replica} holds {len(replica)} entries")
            self.engine.emit(ev.DELETION_GUARD, f"{name}: {message}", name)
            self.session.fail(ev.DELETION_GUARD.code, message)
            raise JobFailed(f"deletion guard: {message}")
        return master, replica

    def _execute(self, master: dict[bytes, LocalEntry], replica: dict[bytes, Entry]) -> None:
        assert self.session is not None
        send = self.session.send
        removed = self._removals(master, replica)
        present = {p: e for p, e in replica.items() if p not in removed}

        self.progress.phase = "directories"
        new_dirs = [e for p, e in master.items()
                    if e.kind == EntryKind.DIRECTORY and p not in present]
        for entry in new_dirs:
            send(MakeDir(path=entry.path, mode=entry.mode | 0o700))
            self.touched_dirs.add(_parent(entry.path))
            self.c.dirs_created += 1

        links, files = self._classify_files(master, present)
        self.progress.phase = "files"
        self._transfer(files)

        self.progress.phase = "links"
        for entry in master.values():
            if entry.kind == EntryKind.SYMLINK:
                theirs = present.get(entry.path)
                if theirs is None or theirs.target != entry.target or \
                        theirs.mtime_ns != entry.mtime_ns:
                    send(MakeSymlink(path=entry.path, target=entry.target,
                                     mtime_ns=entry.mtime_ns))
                    self.touched_dirs.add(_parent(entry.path))
                    self.c.symlinks += 1
        for path, existing in links:
            send(MakeHardLink(path=path, existing=existing))
            self.touched_dirs.add(_parent(path))
            self.c.hardlinks += 1

        self.progress.phase = "attributes"
        for work in files:
            if work.action == "attrs":
                send(SetAttrs(path=work.path, mode=work.entry.mode,
                              mtime_ns=work.entry.mtime_ns))
        new_dir_paths = {e.path for e in new_dirs}
        for entry in reversed(list(master.values())):
            if entry.kind != EntryKind.DIRECTORY:
                continue
            theirs = present.get(entry.path)
            if entry.path in new_dir_paths or entry.path in self.touched_dirs or theirs is None \
                    or theirs.mode != entry.mode or theirs.mtime_ns != entry.mtime_ns:
                send(SetAttrs(path=entry.path, mode=entry.mode, mtime_ns=entry.mtime_ns))

        self.progress.phase = "finishing"
        send(SyncEnd())
        done = self.mail.take(-1, SyncDone)
        assert isinstance(done, SyncDone)
        for key, value in done.stats.items():
            if isinstance(value, int):
                self.c.replica[key] = self.c.replica.get(key, 0) + value

    def _removals(self, master: dict[bytes, LocalEntry], replica: dict[bytes, Entry]) -> set[bytes]:
        """Remove what the master lacks, or has as another kind; return every path removed."""
        assert self.session is not None
        removed: set[bytes] = set()
        for path, theirs in replica.items():  # parents come before their children
            if _parent(path) in removed:
                removed.add(path)  # gone with its parent
                continue
            ours = master.get(path)
            if ours is None or ours.kind != theirs.kind:
                self.session.send(Remove(path=path))
                removed.add(path)
                self.touched_dirs.add(_parent(path))
                self.c.entries_removed += 1
        return removed

    def _classify_files(self, master: dict[bytes, LocalEntry], present: dict[bytes, Entry]
                        ) -> tuple[list[tuple[bytes, bytes]], list[_FileWork]]:
        """Decide per file: send whole, compare blocks, fix attributes, or nothing."""
        block = self.options.method == "block"
        quick = not block or self.options.ignore_same_size_time
        first_name: dict[tuple[int, int], bytes] = {}
        links: list[tuple[bytes, bytes]] = []
        work: list[_FileWork] = []
        for path, entry in master.items():
            if entry.kind != EntryKind.FILE:
                continue
            if entry.nlink > 1:
                key = (entry.dev, entry.ino)
                if key in first_name:
                    links.append((path, first_name[key]))
                    continue
                first_name[key] = path
            self.progress.files_total += 1
            theirs = present.get(path)
            if theirs is None:
                action = "whole"
            elif (quick and theirs.size == entry.size and theirs.mtime_ns == entry.mtime_ns) or (
                    block and entry.size == theirs.size == 0):
                if (theirs.mode, theirs.mtime_ns) == (entry.mode, entry.mtime_ns):
                    self.progress.files_done += 1
                    continue
                action = "attrs"
            elif not block or entry.size == 0 or theirs.size == 0:
                action = "whole"
            else:
                action = "compare"
            self._next_id += 1
            work.append(_FileWork(self._next_id, path, entry, action, theirs))
            if action != "attrs":
                self.progress.bytes_total += entry.size
                self.c.bytes_total += entry.size
        return links, work

    # --- file transfer --------------------------------------------------------------------------

    def _transfer(self, files: list[_FileWork]) -> None:
        assert self.session is not None
        self.opener = _OpenAhead(self.root_bytes, files)
        try:
            self._transfer_files(files)
        finally:
            self.opener.close()

    def _transfer_files(self, files: list[_FileWork]) -> None:
        assert self.session is not None
        compares = [w for w in files if w.action == "compare"]
        ahead = 0  # HashRequests sent so far, in compare order
        window_bytes = 0
        position = 0  # compares processed
        for work in files:
            if self.cancelled.is_set():
                raise Cancelled()
            if work.action == "attrs":
                self.c.files_compared += 1
                continue
            if work.action == "compare":
                while ahead < len(compares) and (ahead == position or (
                        ahead - position < HASH_WINDOW_FILES
                        and window_bytes < HASH_WINDOW_BYTES)):
                    nxt = compares[ahead]
                    self.session.send(HashRequest(file_id=nxt.file_id, path=nxt.path))
                    window_bytes += nxt.entry.size
                    ahead += 1
                window_bytes -= work.entry.size
                position += 1
            self._sync_file(work)
            self._collect(wait=False)
        self._collect(wait=True)
        for work in self.redo:
            self.c.files_redone += 1
            self.engine.emit(ev.FILE_REDONE, f"{self.job.scenario.name}: "
                             f"{_show(work.path)}: sent again whole", self.job.scenario.name)
            self._next_id += 1
            work.file_id, work.action = self._next_id, "whole"
            self._sync_file(work, redo=True)
        self.redo = []
        self._collect(wait=True, final=True)

    def _collect(self, wait: bool, final: bool = False) -> None:
        results = self.mail.results(self.outstanding) if wait else self.mail.results_nowait()
        self.outstanding -= len(results)
        for result in results:
            if result.ok:
                continue
            work = self._sent.pop(result.file_id, None)
            if result.message == DIGEST_MISMATCH and work is not None and not final:
                self.redo.append(work)
            else:
                path = _show(work.path) if work else f"file #{result.file_id}"
                self._file_error(f"{path}: replica: {result.message}")
        if wait:
            self._sent.clear()

    def _file_error(self, message: str) -> None:
        name = self.job.scenario.name
        self.c.error(message)
        self.engine.emit(ev.FILE_FAILED, f"{name}: {message}", name)

    def _sync_file(self, work: _FileWork, redo: bool = False) -> None:
        try:
            fd = self.opener.take(work)
        except FileNotFoundError:
            self.c.files_vanished += 1
            self.mail.forget(work.file_id)
            return
        except OSError as exc:
            self.mail.forget(work.file_id)
            self._file_error(f"{_show(work.path)}: cannot open on the master: {exc.strerror}")
            return
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                self.mail.forget(work.file_id)
                self.c.files_vanished += 1
                return
            if work.action == "compare":
                sent = self._compare_and_send(work, fd)
            else:
                sent = self._send_whole(work, fd, st.st_size)
        except OSError as exc:
            self._file_error(f"{_show(work.path)}: read failed on the master: {exc.strerror}")
            raise JobFailed(f"reading {_show(work.path)} failed in mid-transfer: "
                            f"{exc.strerror}") from None
        finally:
            os.close(fd)
        self.c.files_compared += 1
        self.progress.files_done += 1
        self.progress.bytes_done += work.entry.size
        if sent and not redo:
            self.c.files_differing += 1
            if work.theirs is None:
                self.c.files_created += 1
            else:
                self.c.files_updated += 1

    def _send_file_end(self, work: _FileWork, size: int, digest: bytes,
                       before: list[Message] | None = None) -> None:
        """Send FileEnd, after ``before`` in the same write (a small file is then one write)."""
        assert self.session is not None
        entry = work.entry
        self.session.send(*(before or ()), FileEnd(file_id=work.file_id, size=size,
                                                   mode=entry.mode, mtime_ns=entry.mtime_ns,
                                                   digest=digest))
        self._sent[work.file_id] = work
        self.outstanding += 1

    def _send_whole(self, work: _FileWork, fd: int, size: int) -> bool:
        """Stream a file whole: holes skipped, zero blocks implied, digests on the way.

        Messages are gathered and written together, at the latest before the read buffer they
        point into is refilled.
        """
        assert self.session is not None
        bs = self.bs
        batch: list[Message] = [FileBegin(file_id=work.file_id, path=work.path, size=size,
                                          whole=True)]
        full, rest = divmod(size, bs)
        digests = bytearray(zero_digest(bs) * full + (zero_digest(rest) if rest else b""))
        buffer = memoryview(self.buffer)
        buffer = buffer[:len(buffer) - len(buffer) % bs]
        for start, end in _block_extents(fd, size, bs):
            offset = start
            while offset < end:
                if batch and isinstance(batch[-1], BlockData):
                    self.session.send(*batch)  # before the buffer is read into again
                    batch = []
                want = min(len(buffer), end - offset)
                got = os.preadv(fd, [buffer[:want]], offset)
                if got <= 0:
                    raise OSError(5, f"file shrank while read (at {offset})")
                chunk = buffer[:got]
                self.c.bytes_compared += got
                chunk_digests = block_digests(chunk, bs)
                first_block = offset // bs
                span = first_block * BLOCK_DIGEST_SIZE
                digests[span:span + len(chunk_digests)] = chunk_digests
                zeros = zero_blocks(chunk, bs, chunk_digests)
                for lo, hi in _data_runs(-(-got // bs), zeros, max(1, MAX_RUN // bs)):
                    view = chunk[lo * bs:hi * bs]
                    batch.append(BlockData(
                        file_id=work.file_id, offset=offset + lo * bs, payload=view,
                        digests=chunk_digests[lo * BLOCK_DIGEST_SIZE:hi * BLOCK_DIGEST_SIZE]))
                    self.c.bytes_sent += len(view)
                    self.progress.bytes_sent += len(view)
                offset += got
        self._send_file_end(work, size, file_digest(bytes(digests), size), before=batch)
        return True

    def _compare_and_send(self, work: _FileWork, fd: int) -> bool:
        """Two-level block comparison; send only what differs. Returns whether it did."""
        assert self.session is not None
        ours = hash_file(fd, self.bs, buffer=self.buffer, range_blocks=self.rb)
        self.c.bytes_compared += ours.bytes_read
        reply = self.mail.take(work.file_id, RangeDigests)
        assert isinstance(reply, RangeDigests)
        if reply.missing:
            work.theirs = None
            return self._send_whole(work, fd, ours.size)
        ranges = ranges_to_compare(ours.coarse_digests, reply.digests)
        if not ranges and ours.size == reply.size:
            # Equal content: attributes, if they differ, are set with the other files' at the end.
            old = work.theirs
            differ = old is None or (old.mode, old.mtime_ns) != (work.entry.mode,
                                                                 work.entry.mtime_ns)
            work.action = "attrs" if differ else "same"
            return False
        theirs = b""
        if ranges:
            self.session.send(BlockRequest(file_id=work.file_id, ranges=tuple(ranges)))
            fine = self.mail.take(work.file_id, BlockDigests)
            assert isinstance(fine, BlockDigests)
            theirs = fine.digests
        try:
            plan = plan_transfer(
                size=ours.size, block_size=self.bs, range_blocks=self.rb, zeros=ours.zeros,
                replica_size=reply.size, ranges=ranges,
                master_digests=select_ranges(ours.block_digests, self.rb, ranges),
                replica_digests=theirs, max_run=max(MAX_RUN, self.bs),
                whole_threshold=self.options.whole_file_threshold)
        except ValueError as exc:  # the replica's digests do not fit what it was asked
            raise RemoteProtocolError(f"the replica's digests of {_show(work.path)} do not "
                                      f"fit: {exc}") from None
        if plan.whole:
            return self._send_whole(work, fd, ours.size)
        send = self.session.send
        send(FileBegin(file_id=work.file_id, path=work.path, size=ours.size, whole=False))
        for run in plan.zero_runs:
            send(ZeroRange(file_id=work.file_id, offset=run.offset, length=run.length))
        for offset, view in read_runs(fd, plan.data_runs, self.buffer):
            send(BlockData(file_id=work.file_id, offset=offset,
                           digests=block_digests(view, self.bs), payload=view))
            self.c.bytes_sent += len(view)
            self.progress.bytes_sent += len(view)
        self._send_file_end(work, ours.size, ours.file_digest)
        return True


def _data_runs(blocks: int, zeros: list[int], limit: int) -> Iterator[tuple[int, int]]:
    """Runs ``[lo, hi)`` of the ``blocks`` blocks of a chunk that are not in ``zeros`` (sorted
    indexes of all-zero blocks), each at most ``limit`` blocks long."""
    lo = 0
    for stop in [*zeros, blocks]:
        while lo < stop:
            hi = min(stop, lo + limit)
            yield lo, hi
            lo = hi
        lo = stop + 1


def _filtered(entries: list[Any], flt: PathFilter) -> dict[bytes, Any]:
    """Entries by path, without those the filter excludes (and anything below them)."""
    out: dict[bytes, Any] = {}
    excluded_dirs: set[bytes] = set()
    for entry in entries:
        is_dir = entry.kind == EntryKind.DIRECTORY
        if _parent(entry.path) in excluded_dirs or (flt.active and
                                                     flt.excluded(entry.path, is_dir)):
            if is_dir:
                excluded_dirs.add(entry.path)
            continue
        out[entry.path] = entry
    return out


def _parent(path: bytes) -> bytes:
    return path.rpartition(b"/")[0]


def _block_extents(fd: int, size: int, block_size: int) -> Iterator[tuple[int, int]]:
    """The data extents of a file widened to whole blocks, merged where they touch; holes
    between them are skipped without reading."""
    done = 0
    for start, end in data_extents(fd, 0, size):
        start = max(start - start % block_size, done)
        end = min(-(-end // block_size) * block_size, size)
        if start < end:
            yield start, end
            done = end
