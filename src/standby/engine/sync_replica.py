"""The replica side of a synchronization: list, hash, and apply what the master sends.

Every path goes through :class:`~standby.replica.confine.ConfinedRoot`, so nothing is written
outside the replica root whatever the peer sends. Whole files are written to a temporary name
and renamed into place only after their digest matched and their data is durable; files
compared block by block are updated in place (a TB-sized image cannot be copied for every
resync), which is why a synchronization marks the replica inconsistent until it completes.

Durability is batched: instead of an fsync per file, staged files are made durable together
with one ``syncfs`` before their renames, and the renames with one more at the end. That gives
the same guarantee (data on disk before its name appears; everything on disk before the master
hears SyncDone) at two system calls per batch instead of two per file.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..blocks import block_digests, coarse_digests, file_digest, zero_digest
from ..config import parse_document
from ..protocol import (
    BLOCK_DIGEST_SIZE,
    BlockData,
    BlockDigests,
    BlockRequest,
    Entries,
    EntriesEnd,
    FileBegin,
    FileEnd,
    FileResult,
    Goodbye,
    HashRequest,
    MakeDir,
    MakeHardLink,
    MakeSymlink,
    Message,
    RangeDigests,
    RemoteProtocolError,
    Remove,
    SetAttrs,
    SyncBegin,
    SyncDone,
    SyncEnd,
    ZeroRange,
)
from ..replica.confine import ConfinedRoot
from ..storage.hashing import hash_file, new_buffer
from ..storage.tree import ListingError, scan_tree
from .events import STALE_EPOCH

if TYPE_CHECKING:
    from .engine import Engine
    from .session import Session

log = logging.getLogger("standby.replica")

#: Entries per listing message: keeps each frame well under the metadata limit (an entry with
#: a long path is a few hundred bytes) while amortizing per-frame costs.
LISTING_BATCH = 1000
#: Staged whole files are committed (made durable, then renamed) in batches of this many files
#: or bytes, whichever comes first: few syncfs calls, bounded work lost on a crash.
COMMIT_BATCH_FILES = 1000
COMMIT_BATCH_BYTES = 512 * 1024 * 1024
#: BlockData frames queued for the writer thread (up to 1 MiB each).
WRITE_QUEUE = 8
#: Smaller payloads (the files of a tree of small files) are written at once by the session
#: thread: disjoint ranges, so the order against queued writes does not matter.
WRITE_BEHIND_MIN = 256 * 1024
#: The messages that change the replica root (the others only read it).
_CHANGES = frozenset({Remove, MakeDir, MakeSymlink, MakeHardLink, SetAttrs, FileBegin})
#: FileResult message for a digest mismatch: the master sends the file again, whole.
DIGEST_MISMATCH = "digest mismatch"


@dataclass
class _File:
    """The file being written."""

    file_id: int
    path: bytes
    size: int
    whole: bool
    fd: int
    temp: bytes | None
    digests: bytearray
    error: str | None = None


@dataclass
class _Staged:
    path: bytes
    temp: bytes
    mode: int
    mtime_ns: int
    size: int


@dataclass
class _Stats:
    counters: dict[str, int] = field(default_factory=lambda: dict.fromkeys((
        "entries_listed", "files_hashed", "bytes_hashed", "files_received", "bytes_received",
        "entries_removed", "dirs_created", "symlinks_created", "hardlinks_created",
        "files_failed"), 0))

    def add(self, key: str, value: int = 1) -> None:
        self.counters[key] += value


class ReplicaSync:
    """Serves one synchronization session for one root."""

    def __init__(self, engine: Engine, session: Session, peer: str) -> None:
        self.engine = engine
        self.session = session
        self.peer = peer
        self.scenario_name: str | None = None
        self.block_size = 0
        self.range_blocks = 0
        self.stats = _Stats()
        self._root: ConfinedRoot | None = None
        self._hashes: dict[int, tuple[int, bytes]] = {}  # file_id -> (size, block digests)
        self._file: _File | None = None
        self._staged: list[_Staged] = []
        self._staged_bytes = 0
        self._replica_row = False  # the scenario is stored here as a replica (not a loop)
        self._changed = False  # a message that changes the replica arrived (_first_change)
        self._root_number = self._last_root = 0
        self.cancelled = False  # the scenario was taken over here: end at the next message
        self._buffer = new_buffer()

    # --- session --------------------------------------------------------------------------------

    def run(self) -> None:
        begin = self.session.expect(SyncBegin)
        root_path = self._authorize(begin)
        if root_path is None:
            return
        self.block_size, self.range_blocks = begin.block_size, begin.range_blocks
        assert self.scenario_name is not None
        row = self.engine.store.scenario(self.scenario_name)
        self._replica_row = row is not None and row.role == "replica"
        self.engine.incoming_syncs(self.scenario_name).add(self)
        try:
            self._run(root_path)
        finally:
            self.engine.incoming_syncs(self.scenario_name).discard(self)

    def _run(self, root_path: str) -> None:
        assert self.scenario_name is not None
        if self._replica_row:
            self.engine.store.update_scenario(self.scenario_name, state="syncing")
        try:
            root = ConfinedRoot(root_path)
        except OSError as exc:
            self.session.send(EntriesEnd(count=0, error=f"replica root {root_path}: {exc}"))
            return
        with root:
            self._root = root
            if not self._send_listing(root_path):
                return
            self._writer = _Writer(self.block_size)
            try:
                self._serve()
            finally:
                self._writer.close()

    def _authorize(self, begin: SyncBegin) -> str | None:
        row = self.engine.store.scenario(begin.scenario)
        reason = None
        if row is None:
            reason = f"this engine has no scenario {begin.scenario!r}"
        elif self.engine.name not in (row.document["replica"], *row.document.get("replicas", ())) \
                or row.document["master"] != self.peer:
            reason = (f"scenario {begin.scenario!r} does not replicate from {self.peer!r} to "
                      f"{self.engine.name!r}")
        elif not 0 <= begin.root < len(row.document["roots"]):
            reason = f"scenario {begin.scenario!r} has no root #{begin.root}"
        elif row.role == "replica" and self.engine.replica_target(begin.scenario).suspended:
            reason = (f"scenario {begin.scenario!r} is suspended on {self.engine.name}: run "
                      f"`standby resume {begin.scenario}` there first")
        elif (fenced := self.engine.fence(begin.scenario, self.peer, begin.epoch)) is not None:
            self.session.fail(STALE_EPOCH.code, fenced)
            return None
        if reason is not None or row is None:
            self.session.fail("SB2103", reason or "unknown scenario")
            return None
        self.scenario_name = begin.scenario
        scenario = parse_document(row.document)
        self._root_number, self._last_root = begin.root, len(scenario.roots) - 1
        return scenario.roots[begin.root].replica

    def _send_listing(self, root_path: str) -> bool:
        leftovers: list[bytes] = []
        try:
            entries = scan_tree(os.fsencode(root_path), staging=leftovers)
        except ListingError as exc:
            self.session.send(EntriesEnd(count=0, error=str(exc)))
            return False
        for path in leftovers:  # staged by a synchronization that was interrupted
            self.root.remove_staging(path)
        for start in range(0, len(entries), LISTING_BATCH):
            batch = tuple(e.to_wire() for e in entries[start:start + LISTING_BATCH])
            self.session.send(Entries(entries=batch))
        self.session.send(EntriesEnd(count=len(entries), error=None))
        self.stats.add("entries_listed", len(entries))
        return True

    def _serve(self) -> None:
        handlers: dict[type[Message], Any] = {
            Remove: self._remove, MakeDir: self._make_dir, MakeSymlink: self._make_symlink,
            MakeHardLink: self._make_hardlink, SetAttrs: self._set_attrs,
            HashRequest: self._hash_request, BlockRequest: self._block_request,
            FileBegin: self._file_begin, BlockData: self._block_data,
            ZeroRange: self._zero_range, FileEnd: self._file_end,
        }
        try:
            while True:
                message = self.session.recv()
                if isinstance(message, SyncEnd):
                    self._finish()
                    return
                if isinstance(message, Goodbye):
                    return
                handler = handlers.get(type(message))
                if handler is None:
                    raise RemoteProtocolError(f"unexpected {type(message).__name__} during sync")
                if self.cancelled:
                    raise RemoteProtocolError(f"{self.engine.name} took over scenario "
                                              f"{self.scenario_name}: it accepts no more writes")
                if not self._changed and type(message) in _CHANGES:
                    self._first_change()
                handler(message)
        finally:
            self._abandon()

    def _first_change(self) -> None:
        """The replica is about to change: from here until the synchronization completes it
        is a mix of old and new, so it is marked inconsistent. A synchronization that finds
        nothing to change (a switchover's reverse replication of an unchanged tree) leaves a
        consistent replica consistent."""
        self._changed = True
        if self._replica_row and self.scenario_name is not None:
            self.engine.store.update_scenario(self.scenario_name, consistent=False)

    def _finish(self) -> None:
        if self._file is not None:
            raise RemoteProtocolError("SyncEnd while a file is still open")
        self._commit_staged()
        assert self._root is not None
        self._root.syncfs()
        if self.scenario_name is not None:
            row = self.engine.store.scenario(self.scenario_name)
            if row is not None and row.role == "replica":
                self._mark_done(self.scenario_name)
        self.session.send(SyncDone(stats=dict(self.stats.counters)))

    def _mark_done(self, name: str) -> None:
        """A root is synchronized. The roots come in order, one session each: the replica is
        consistent again only at the end of the last, if no file failed in any of them."""
        failed_key = f"sync-failed:{name}"
        if self._root_number == 0:
            self.engine.store.delete_meta(failed_key)
        if self.stats.counters["files_failed"]:
            self.engine.store.set_meta(failed_key, str(self._root_number))
            self.engine.store.update_scenario(name, state="running", consistent=False)
        elif self._root_number == self._last_root:
            self.engine.store.update_scenario(
                name, state="running",
                consistent=self.engine.store.get_meta(failed_key) is None)
        else:
            self.engine.store.update_scenario(name, state="running")

    def _abandon(self) -> None:
        """On any exit: close the open file and drop staged files that were never committed."""
        assert self._root is not None
        self._writer.drain()
        current, self._file = self._file, None
        if current is not None:
            os.close(current.fd)
            if current.temp is not None:
                self._root.discard_temp(current.path, current.temp)
        for staged in self._staged:
            self._root.discard_temp(staged.path, staged.temp)
        self._staged.clear()

    # --- namespace operations -------------------------------------------------------------------

    @property
    def root(self) -> ConfinedRoot:
        assert self._root is not None
        return self._root

    def _remove(self, message: Remove) -> None:
        self.root.remove(message.path)
        self.stats.add("entries_removed")

    def _make_dir(self, message: MakeDir) -> None:
        self.root.make_dir(message.path, message.mode)
        self.stats.add("dirs_created")

    def _make_symlink(self, message: MakeSymlink) -> None:
        self.root.make_symlink(message.path, message.target, message.mtime_ns)
        self.stats.add("symlinks_created")

    def _make_hardlink(self, message: MakeHardLink) -> None:
        self._commit_staged()  # the existing name may still be staged
        self.root.make_hardlink(message.path, message.existing)
        self.stats.add("hardlinks_created")

    def _set_attrs(self, message: SetAttrs) -> None:
        self._commit_staged()  # renames into a directory would change its mtime again
        self.root.set_attrs(message.path, message.mode, message.mtime_ns)

    # --- comparison -----------------------------------------------------------------------------

    def _hash_request(self, message: HashRequest) -> None:
        fd = self.root.open_read(message.path)
        if fd is None:
            self.session.send(RangeDigests(file_id=message.file_id, size=0, missing=True,
                                           digests=b""))
            return
        try:
            hashes = hash_file(fd, self.block_size, buffer=self._buffer)
        finally:
            os.close(fd)
        self._hashes[message.file_id] = (hashes.size, bytes(hashes.block_digests))
        self.stats.add("files_hashed")
        self.stats.add("bytes_hashed", hashes.bytes_read)
        self.session.send(RangeDigests(
            file_id=message.file_id, size=hashes.size, missing=False,
            digests=coarse_digests(hashes.block_digests, self.range_blocks)))

    def _block_request(self, message: BlockRequest) -> None:
        known = self._hashes.get(message.file_id)
        if known is None:
            raise RemoteProtocolError(f"BlockRequest for file {message.file_id} never hashed")
        digests = known[1]
        span = self.range_blocks * BLOCK_DIGEST_SIZE
        out = b"".join(digests[r * span:(r + 1) * span] for r in message.ranges)
        self.session.send(BlockDigests(file_id=message.file_id, digests=out))

    # --- file data ------------------------------------------------------------------------------

    def _file_begin(self, message: FileBegin) -> None:
        if self._file is not None:
            raise RemoteProtocolError("FileBegin while another file is open")
        blocks = -(-message.size // self.block_size)
        if message.whole:
            fd, temp = self.root.create_temp(message.path)
            digests = bytearray(_zero_digests(message.size, self.block_size))
        else:
            known = self._hashes.get(message.file_id)
            if known is None:
                raise RemoteProtocolError(f"in-place FileBegin for file {message.file_id} that "
                                          "was never hashed")
            fd, temp = self.root.open_existing(message.path), None
            old = known[1][:blocks * BLOCK_DIGEST_SIZE]
            digests = bytearray(old) + _zero_digests(message.size, self.block_size)[len(old):]
        self._file = _File(message.file_id, message.path, message.size, message.whole, fd, temp,
                           digests)

    def _current(self, file_id: int, offset: int, length: int) -> _File:
        current = self._file
        if current is None or current.file_id != file_id:
            raise RemoteProtocolError(f"data for file {file_id}, which is not open")
        end = offset + length
        if offset % self.block_size or end > current.size or length <= 0 or (
                end < current.size and length % self.block_size):
            raise RemoteProtocolError(f"range {offset}+{length} does not fit file {file_id} "
                                      f"({current.size} bytes, blocks of {self.block_size})")
        return current

    def _block_data(self, message: BlockData) -> None:
        current = self._current(message.file_id, message.offset, len(message.payload))
        self.stats.add("bytes_received", len(message.payload))
        if current.error is None:
            if len(message.payload) >= WRITE_BEHIND_MIN:
                self._writer.submit(current, message)
            else:  # a thread hand-off would cost more than the write
                self._writer.write(current, message)

    def _zero_range(self, message: ZeroRange) -> None:
        current = self._current(message.file_id, message.offset, message.length)
        if current.error is not None:
            return
        if not current.whole:  # a new temporary file reads as zeros already
            try:
                self.root.punch_hole(current.fd, message.offset, message.length)
            except OSError as exc:
                current.error = f"cannot zero a range: {exc.strerror}"
                return
        bs = self.block_size
        zeros = _zero_digests(message.length, bs)  # the last piece is short only at EOF
        first = message.offset // bs * BLOCK_DIGEST_SIZE
        current.digests[first:first + len(zeros)] = zeros

    def _file_end(self, message: FileEnd) -> None:
        current = self._file
        if current is None or current.file_id != message.file_id:
            raise RemoteProtocolError(f"FileEnd for file {message.file_id}, which is not open")
        self._writer.drain()
        if message.size != current.size:
            raise RemoteProtocolError("FileEnd size differs from FileBegin")
        self._file = None
        self._hashes.pop(message.file_id, None)
        if current.error is None:
            try:
                os.ftruncate(current.fd, current.size)
            except OSError as exc:
                current.error = f"cannot set the size: {exc.strerror}"
        blocks = -(-current.size // self.block_size)
        del current.digests[blocks * BLOCK_DIGEST_SIZE:]
        if current.error is None and file_digest(bytes(current.digests), current.size) \
                != message.digest:
            current.error = DIGEST_MISMATCH
        os.close(current.fd)
        if current.error is not None:
            if current.temp is not None:
                self.root.discard_temp(current.path, current.temp)
            if current.error != DIGEST_MISMATCH:
                self.stats.add("files_failed")
            self.session.send_later(FileResult(file_id=message.file_id, ok=False,
                                         message=current.error))
            return
        self.stats.add("files_received")
        if current.temp is not None:
            self._staged.append(_Staged(current.path, current.temp, message.mode,
                                        message.mtime_ns, current.size))
            self._staged_bytes += current.size
            if len(self._staged) >= COMMIT_BATCH_FILES or \
                    self._staged_bytes >= COMMIT_BATCH_BYTES:
                self._commit_staged()
        else:
            self.root.set_attrs(current.path, message.mode, message.mtime_ns)
        self.session.send_later(FileResult(file_id=message.file_id, ok=True, message=""))

    def _commit_staged(self) -> None:
        """Make staged files durable, then give them their names."""
        if not self._staged:
            return
        self.root.syncfs()
        staged, self._staged, self._staged_bytes = self._staged, [], 0
        for item in staged:
            self.root.commit_temp(item.path, item.temp, item.mode, item.mtime_ns)


class _Writer:
    """Checks and writes received blocks in a thread of its own.

    Receiving and decrypting the next frames then overlap the write of this one: on hosts where
    fresh page-cache pages are slow to get (virtual machines), ``pwrite`` waits more than it
    computes. The queue is short (a few MiB) so memory stays bounded and a slow disk slows the
    master through TCP. Only this thread touches a file's blocks between ``submit`` and
    ``drain``; the digests it records are read by the session thread after ``drain``.
    """

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self._queue: queue.Queue[tuple[_File, BlockData] | None] = queue.Queue(WRITE_QUEUE)
        self._thread = threading.Thread(target=self._run, name="replica-writer", daemon=True)
        self._thread.start()

    def submit(self, file: _File, message: BlockData) -> None:
        self._queue.put((file, message))

    def drain(self) -> None:
        """Wait until everything submitted is written (or failed, in its file's ``error``)."""
        self._queue.join()

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                self.write(*item)
            finally:
                self._queue.task_done()

    def write(self, file: _File, message: BlockData) -> None:
        """Check and write one frame's blocks (in the writer thread, or the caller's)."""
        if file.error is not None:
            return
        if block_digests(message.payload, self.block_size) != message.digests:
            file.error = DIGEST_MISMATCH
            return
        try:
            _pwrite_all(file.fd, message.payload, message.offset)
        except OSError as exc:
            file.error = f"write failed: {exc.strerror}"
            return
        first = message.offset // self.block_size * BLOCK_DIGEST_SIZE
        file.digests[first:first + len(message.digests)] = message.digests


def _zero_digests(size: int, block_size: int) -> bytes:
    """Block digests of ``size`` bytes of zeros."""
    full, rest = divmod(size, block_size)
    out = zero_digest(block_size) * full
    return out + zero_digest(rest) if rest else out


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written
