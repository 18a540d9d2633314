"""The replica's applier: replication records applied to the scenario's roots, in order.

Every operation goes through :class:`~standby.replica.confine.ConfinedRoot`, so a record can
never write outside a root whatever its path says. Block writes are checked against the
digests the master computed before they touch the disk.

Idempotence. Records are applied again after a crash of either engine (everything after the
last sequence number the replica made durable is sent once more). Replaying a write, a zero
range, a truncate, a mode change, a removal, a directory or a symlink is harmless: each sets a
state. A rename is not (replayed after a later record re-created its source, it would move
the new file), nor is a hard link (replayed after a later record put another file at its
``existing`` name, it would link that one), so the stream handler makes the replica durable
and records their sequence number before applying anything after them
(:attr:`Applier.needs_barrier`). A record whose path is missing on the replica, or leads
through a symlink (a later record, already applied before the crash, removed or replaced a
parent) is skipped and counted. A malformed path is a protocol error.

Durability: :meth:`Applier.flush` fdatasyncs every file written since the last flush and
fsyncs every directory whose entries changed, or makes one ``syncfs`` when more than
SYNCFS_THRESHOLD files were touched (cheaper than many fsyncs, see docs/design.md).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass

from ..blocks import block_digests
from ..protocol import (
    Message,
    RecAttrs,
    RecHardLink,
    RecMakeDir,
    RecRemove,
    RecRename,
    RecSymlink,
    RecTruncate,
    RecWrite,
    RecZero,
    RemoteProtocolError,
)
from ..replica.confine import ConfinedRoot, PathRefused, punch_hole, split_relpath
from .file_index import is_under, parent_of

log = logging.getLogger("standby.apply")

#: Files kept open between records (a file being written is usually written again soon).
OPEN_FILES = 64
#: Past this many touched files in one flush, one syncfs is cheaper than an fsync each.
SYNCFS_THRESHOLD = 64


@dataclass(slots=True)
class ApplyCounters:
    records: int = 0
    files: int = 0
    bytes: int = 0
    skipped: int = 0


class Applier:
    """Applies records to the roots of one scenario. Not thread-safe: one session owns it."""

    def __init__(self, roots: list[str], block_size: int) -> None:
        self.block_size = block_size
        self._roots: list[ConfinedRoot] = []
        try:
            for root in roots:
                self._roots.append(ConfinedRoot(root))
        except BaseException:
            self.close()
            raise
        self._files: OrderedDict[tuple[int, bytes], int] = OrderedDict()
        self._dirty_files: set[tuple[int, bytes]] = set()
        self._dirty_fds: list[int] = []  # evicted while dirty: fdatasync'd at flush, then closed
        self._dirty_dirs: set[tuple[int, bytes]] = set()
        self.counters = ApplyCounters()
        self.needs_barrier = False  # set after a rename or a hard link: flush, record the seq

    def close(self) -> None:
        for fd in self._files.values():
            os.close(fd)
        self._files.clear()
        for fd in self._dirty_fds:
            os.close(fd)
        self._dirty_fds.clear()
        for root in self._roots:
            root.close()

    # --- records --------------------------------------------------------------------------------

    def apply(self, record: Message) -> None:
        """Apply one record (any of the Rec* messages)."""
        self.counters.records += 1
        root_number = getattr(record, "root", -1)
        if not 0 <= root_number < len(self._roots):
            raise RemoteProtocolError(f"record names root {root_number}; the scenario has "
                                      f"{len(self._roots)}")
        root = self._roots[root_number]
        self._check_paths(record)
        try:
            self._apply(root_number, root, record)
        except (FileNotFoundError, NotADirectoryError, PathRefused) as exc:
            # A later record (already applied before a crash) removed or replaced the parent
            # (PathRefused, the paths being well formed: by a symlink, which is not followed).
            self.counters.skipped += 1
            log.debug("skipped %s: %s", type(record).__name__, exc)

    @staticmethod
    def _check_paths(record: Message) -> None:
        """Malformed paths are the master's error, not a state of the replica to skip."""
        names = [getattr(record, "path", None), getattr(record, "existing", None)]
        if isinstance(record, RecRename):
            names.append(record.target)
            if is_under(record.target, record.path) or is_under(record.path, record.target):
                raise RemoteProtocolError(f"RecRename of {record.path!r} to {record.target!r}: "
                                          "a directory cannot move into itself or onto a parent")
        for name in names:
            if name is not None:
                try:
                    split_relpath(name)
                except PathRefused as exc:
                    raise RemoteProtocolError(f"{type(record).__name__}: {exc}") from None

    def _apply(self, number: int, root: ConfinedRoot, record: Message) -> None:
        if isinstance(record, RecWrite):
            self._write(number, root, record)
        elif isinstance(record, RecZero):
            fd = self._file(number, root, record.path)
            punch_hole(fd, record.offset, record.length)
        elif isinstance(record, RecTruncate):
            fd = self._file(number, root, record.path)
            if record.size == 0:
                self.counters.files += 1
            os.ftruncate(fd, record.size)
        elif isinstance(record, RecAttrs):
            if record.path:
                root.set_attrs(record.path, record.mode, record.mtime_ns)
        elif isinstance(record, RecMakeDir):
            self._close_under(number, record.path)  # a file it replaces may be open
            root.make_dir(record.path, record.mode, replace=True)
            self._namespace(number, record.path)
            self.counters.files += 1
        elif isinstance(record, RecRemove):
            self._close_under(number, record.path)
            root.remove(record.path)
            self._namespace(number, record.path)
        elif isinstance(record, RecRename):
            self._close_under(number, record.path)
            self._close_under(number, record.target)
            root.rename(record.path, record.target)
            self._namespace(number, record.path)
            self._namespace(number, record.target)
            self.needs_barrier = True
        elif isinstance(record, RecSymlink):
            self._close_under(number, record.path)
            root.make_symlink(record.path, record.target, record.mtime_ns)
            self._namespace(number, record.path)
            self.counters.files += 1
        elif isinstance(record, RecHardLink):
            self._close_under(number, record.path)
            root.make_hardlink(record.path, record.existing)
            self._namespace(number, record.path)
            self.counters.files += 1
            # Not idempotent either: replayed after a later record put another file at
            # ``existing``, it would link that one.
            self.needs_barrier = True
        else:
            raise RemoteProtocolError(f"{type(record).__name__} is not a replication record")

    def _write(self, number: int, root: ConfinedRoot, record: RecWrite) -> None:
        payload = record.payload
        if block_digests(payload, self.block_size) != record.digests:
            raise RemoteProtocolError(
                f"block digests of a write to {record.path!r} at {record.offset} do not match "
                "its data (corrupted in transit or a different block size)")
        fd = self._file(number, root, record.path)
        view = memoryview(payload)
        offset = record.offset
        while view:
            written = os.pwrite(fd, view, offset)
            view, offset = view[written:], offset + written
        self.counters.bytes += len(payload)

    def _file(self, number: int, root: ConfinedRoot, path: bytes) -> int:
        key = (number, path)
        fd = self._files.get(key)
        if fd is not None:
            self._files.move_to_end(key)
        else:
            fd = root.open_write(path)
            self._files[key] = fd
            if len(self._files) > OPEN_FILES:
                old_key, old_fd = self._files.popitem(last=False)
                if old_key in self._dirty_files:
                    self._dirty_files.discard(old_key)
                    self._dirty_fds.append(old_fd)
                else:
                    os.close(old_fd)
            self._dirty_dirs.add((number, parent_of(path)))  # it may have been created
        self._dirty_files.add(key)
        return fd

    def _close_under(self, number: int, top: bytes) -> None:
        """Forget open files at or below ``top`` (about to be removed, moved or replaced)."""
        for key in [k for k in self._files if k[0] == number and is_under(k[1], top)]:
            fd = self._files.pop(key)
            if key in self._dirty_files:
                self._dirty_files.discard(key)
                self._dirty_fds.append(fd)
            else:
                os.close(fd)

    def _namespace(self, number: int, path: bytes) -> None:
        self._dirty_dirs.add((number, parent_of(path)))

    # --- durability -----------------------------------------------------------------------------

    def flush(self) -> None:
        """Make everything applied so far durable."""
        touched = len(self._dirty_files) + len(self._dirty_fds)
        if touched > SYNCFS_THRESHOLD:
            for root in self._roots:  # roots on one file system: the later calls find nothing
                root.syncfs()
        else:
            for key in self._dirty_files:
                os.fdatasync(self._files[key])
            for fd in self._dirty_fds:
                os.fdatasync(fd)
            for number, directory in self._dirty_dirs:
                # Gone, or a symlink now: the parent's fsync covers it.
                with contextlib.suppress(FileNotFoundError, NotADirectoryError, PathRefused):
                    self._roots[number].fsync_dir(directory or None)
        for fd in self._dirty_fds:
            os.close(fd)
        self._dirty_fds.clear()
        self._dirty_files.clear()
        self._dirty_dirs.clear()
        self.needs_barrier = False
