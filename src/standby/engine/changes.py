"""Turning a changed path into replication records: compare the master's file system with the
index of what the replica holds, emit the records that close the difference, update the index.

Events from inotify are only hints ("something happened at this path"); the truth is the file
system at the moment a path is looked at. So every change, whatever its cause, goes through one
function, :meth:`ChangeBuilder.reconcile`, which is also what a rescan calls for each path whose
size, mtime, mode or inode no longer matches the index. Renames are the exception: they travel
as a rename (:meth:`ChangeBuilder.rename`) so a moved file is not sent again.

A regular file is compared block by block: the file is read once, each block's xxh3-128 digest
is compared with the index, and only differing blocks become RecWrite records (all-zero blocks
become RecZero, holes are never read). An append can be sent alone (``tail=True``): only the
blocks from the old end on are read, and the entry is marked stale so the full comparison that
the runtime schedules later (at a bounded rate) catches any write before the old end.

Records are handed to ``emit`` one at a time, in order, and the index entry of a file follows
the records already emitted: if ``emit`` raises (the spool is full) or the file changes under
the read, the entry holds the digests of the blocks sent so far and is marked stale, so nothing
is ever believed sent that was not.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass

from ..blocks import block_count, block_digests, zero_digest
from ..config import PathFilter
from ..protocol import (
    BLOCK_DIGEST_SIZE,
    EntryKind,
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
)
from ..storage.hashing import FileChangedError, WritableBuffer, data_extents
from .file_index import STALE, IndexEntry, RootIndex, is_under, parent_of

#: Largest RecWrite payload: a run of differing blocks is cut here (as sync's BlockData).
MAX_RUN = 1024 * 1024

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK

Emit = Callable[[Message], None]


@dataclass(slots=True)
class Counters:
    """What reconciling found: data and files changed (the bytes of the records' payloads)."""

    files: int = 0
    bytes: int = 0
    blocks_read: int = 0


class ChangeBuilder:
    """Reconciles paths of one root. Not thread-safe: the capture thread owns it."""

    def __init__(self, root_number: int, root_path: str, index: RootIndex, block_size: int,
                 path_filter: PathFilter, buffer: WritableBuffer) -> None:
        self.root_number = root_number
        self.root_path = os.fsencode(root_path)
        self.index = index
        self.block_size = block_size
        self.filter = path_filter
        self.view = memoryview(buffer)[: max(MAX_RUN, block_size)]
        self.counters = Counters()
        self._by_inode: dict[int, bytes] = {}  # ino -> a path, for files with several links
        # Directories whose entries changed: their mtime is sent after (see finish_round).
        self.touched_dirs: set[bytes] = set()

    def _abs(self, path: bytes) -> bytes:
        return self.root_path + b"/" + path if path else self.root_path

    def excluded(self, path: bytes, is_dir: bool) -> bool:
        return bool(path) and self.filter.active and self.filter.excluded(path, is_dir)

    # --- namespace ------------------------------------------------------------------------------

    def remove(self, path: bytes, emit: Emit, *, force: bool = False) -> None:
        """The path is gone on the master: remove it (and what is below) on the replica.
        ``force``: even if the index does not know it (after a crash, the replica may hold
        paths created by records whose index changes were lost)."""
        if self.index.get(path) is None and not force:
            return
        emit(RecRemove(root=self.root_number, path=path))
        self.index.remove_tree(path)
        self.touched_dirs.add(parent_of(path))

    def rename(self, src: bytes, dst: bytes, emit: Emit) -> bool:
        """Replay a rename within the root. False when the replica does not hold ``src`` (it
        was never sent): the caller reconciles ``dst`` as a new path instead."""
        entry = self.index.get(src)
        if entry is None or is_under(dst, src) or (self.index.get(parent_of(dst)) is None \
                and parent_of(dst)):
            return False
        if self.index.get(dst) is not None:
            self.index.remove_tree(dst)
        emit(RecRename(root=self.root_number, path=src, target=dst))
        self.index.rename_tree(src, dst)
        self.touched_dirs.update((parent_of(src), parent_of(dst)))
        return True

    def finish_round(self, emit: Emit) -> None:
        """Send the mtime of every directory whose entries changed since the last round (the
        replica's own changes to them moved their mtime), so directories match too."""
        touched, self.touched_dirs = self.touched_dirs, set()
        for directory in sorted(touched):
            entry = self.index.get(directory)
            if not directory or entry is None or entry.kind is not EntryKind.DIRECTORY:
                continue
            try:
                st = os.lstat(self._abs(directory))
            except OSError:
                continue
            if not stat.S_ISDIR(st.st_mode):
                continue
            emit(RecAttrs(root=self.root_number, path=directory, mode=stat.S_IMODE(st.st_mode),
                          mtime_ns=st.st_mtime_ns))

    # --- reconcile ------------------------------------------------------------------------------

    def reconcile(self, path: bytes, emit: Emit, *, tail: bool = False,
                  may_remove: bool = True, force_remove: bool = False) -> list[bytes]:
        """Bring the replica's ``path`` to the master's current state. Returns the children to
        reconcile next when ``path`` turned out to be a directory new to the replica (a
        directory moved in from elsewhere arrives with its contents and no event for them).

        ``tail=True``: for a file that grew, send only the blocks from the old end on.

        ``may_remove=False``: a path that is gone is left alone. A change notification for a
        path that has disappeared since is usually followed by the notification that explains
        it: a rename of the path or of a directory above it, which must travel as a rename
        (removing now would lose the renamed files on the replica). Removals found by a rescan
        have no such notification to wait for."""
        try:
            st = os.lstat(self._abs(path))
        except (FileNotFoundError, NotADirectoryError):
            if may_remove or force_remove:
                self.remove(path, emit, force=force_remove)
            return []
        current = self.index.get(path)
        kind = _kind(st.st_mode)
        if kind is EntryKind.OTHER or self.excluded(path, kind is EntryKind.DIRECTORY):
            if current is not None:  # it was something we replicate; now it is not
                self.remove(path, emit)
            return []
        if path and self.index.get(parent_of(path)) is None:
            self._ensure_parent(parent_of(path), emit)
        if current is not None and current.kind is not kind:
            self.remove(path, emit)
            current = None
        mode = stat.S_IMODE(st.st_mode)
        if kind is EntryKind.DIRECTORY:
            return self._directory(path, st, mode, current, emit)
        if kind is EntryKind.SYMLINK:
            self._symlink(path, st, current, emit)
            return []
        self._file(path, st, mode, current, emit, tail=tail)
        return []

    def _ensure_parent(self, parent: bytes, emit: Emit) -> None:
        """A path's parent must exist on the replica before the path: create missing ones."""
        missing = []
        while parent and self.index.get(parent) is None:
            missing.append(parent)
            parent = parent_of(parent)
        for directory in reversed(missing):
            self.reconcile(directory, emit)

    def _directory(self, path: bytes, st: os.stat_result, mode: int,
                   current: IndexEntry | None, emit: Emit) -> list[bytes]:
        if not path:  # the root itself: the replica's root is its own (owner, mode), only noted
            if current is None:
                self.index.put(path, IndexEntry(EntryKind.DIRECTORY, 0, st.st_mtime_ns, mode,
                                                st.st_ino))
            return []
        if current is None:
            emit(RecMakeDir(root=self.root_number, path=path, mode=mode,
                            mtime_ns=st.st_mtime_ns))
            self.touched_dirs.update((parent_of(path), path))
            self.index.put(path, IndexEntry(EntryKind.DIRECTORY, 0, st.st_mtime_ns, mode,
                                            st.st_ino))
            self.counters.files += 1
            try:
                names = os.listdir(self._abs(path))
            except OSError:
                return []
            return [path + b"/" + name for name in sorted(names)]
        if current.mode != mode or current.ino != st.st_ino:
            emit(RecAttrs(root=self.root_number, path=path, mode=mode, mtime_ns=st.st_mtime_ns))
            self.index.put(path, IndexEntry(EntryKind.DIRECTORY, 0, st.st_mtime_ns, mode,
                                            st.st_ino))
        return []

    def _symlink(self, path: bytes, st: os.stat_result, current: IndexEntry | None,
                 emit: Emit) -> None:
        try:
            target = os.readlink(self._abs(path))
        except OSError:
            return  # gone or replaced since lstat: its own event follows
        if current is not None and current.target == target:
            return
        emit(RecSymlink(root=self.root_number, path=path, target=target,
                        mtime_ns=st.st_mtime_ns))
        self.touched_dirs.add(parent_of(path))
        self.index.put(path, IndexEntry(EntryKind.SYMLINK, len(target), st.st_mtime_ns, 0,
                                        st.st_ino, target))
        self.counters.files += 1

    def _file(self, path: bytes, st: os.stat_result, mode: int, current: IndexEntry | None,
              emit: Emit, *, tail: bool) -> None:
        if current is not None and current.size == st.st_size \
                and current.mtime_ns == st.st_mtime_ns and current.ino == st.st_ino:
            if current.mode != mode:
                emit(RecAttrs(root=self.root_number, path=path, mode=mode,
                              mtime_ns=st.st_mtime_ns))
                self.index.put(path, IndexEntry(EntryKind.FILE, current.size, current.mtime_ns,
                                                mode, current.ino, digests=current.digests))
            return
        if current is None and st.st_nlink > 1 and self._hard_link(path, st, emit):
            return
        try:
            fd = os.open(self._abs(path), _OPEN_FLAGS)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR, errno.ENXIO):
                return  # replaced or removed since lstat: its own event follows
            raise
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return
            self._compare_and_send(path, fd, st, stat.S_IMODE(st.st_mode), current, emit,
                                   tail=tail)
        finally:
            os.close(fd)
        if st.st_nlink > 1:
            self._by_inode[st.st_ino] = path

    def _hard_link(self, path: bytes, st: os.stat_result, emit: Emit) -> bool:
        """A new name of a file the replica already has (``ln a b``): link it there too, so
        that a later write through either name reaches both."""
        existing = self._by_inode.get(st.st_ino)
        if existing is None or existing == path:
            return False
        entry = self.index.get(existing)
        if entry is None or entry.ino != st.st_ino or entry.kind is not EntryKind.FILE:
            return False
        emit(RecHardLink(root=self.root_number, path=path, existing=existing))
        self.touched_dirs.add(parent_of(path))
        self.index.put(path, entry)
        self.counters.files += 1
        return True

    def _compare_and_send(self, path: bytes, fd: int, st: os.stat_result, mode: int,
                          current: IndexEntry | None, emit: Emit, *, tail: bool) -> None:
        bs = self.block_size
        size = st.st_size
        if current is not None and size < current.size:
            tail = False  # it shrank: not an append
        blocks = block_count(size, bs)
        old = current.digests if current is not None else None
        old_size = current.size if current is not None and old is not None else 0
        old_blocks = len(old) // BLOCK_DIGEST_SIZE if old is not None else 0
        # The new digests start as the old ones (for the blocks that stay): a block not yet
        # compared keeps its old digest, which is what the replica holds.
        digests = bytearray(old[: blocks * BLOCK_DIGEST_SIZE] if old is not None else b"")
        digests.extend(bytes(BLOCK_DIGEST_SIZE) * (blocks - len(digests) // BLOCK_DIGEST_SIZE))
        # Blocks past old_blocks are unknown until compared: make them differ from anything.
        root, written = self.root_number, 0
        complete = False
        self.counters.files += 1

        def old_digest(index: int) -> bytes | None:
            if old is None or index >= old_blocks:
                return None
            return old[index * BLOCK_DIGEST_SIZE:(index + 1) * BLOCK_DIGEST_SIZE]

        def entry(mtime_ns: int) -> IndexEntry:
            return IndexEntry(EntryKind.FILE, size, mtime_ns, mode, st.st_ino,
                              digests=bytes(digests))

        try:
            if old is None:
                emit(RecTruncate(root=root, path=path, size=0))  # a fresh file, whatever was there
                self.touched_dirs.add(parent_of(path))
                self.index.put(path, IndexEntry(EntryKind.FILE, 0, STALE, mode, st.st_ino,
                                                digests=b""))
            elif size < old_size:
                emit(RecTruncate(root=root, path=path, size=size))
            first = min(old_size // bs, blocks) if tail and old is not None else 0
            done = first
            for data, hole in data_extents(fd, first * bs, size):
                start = max(data // bs, done)
                end = -(-hole // bs)
                if start > done:
                    self._zero_blocks(path, done, start, size, old_digest, digests, emit)
                written += self._data_blocks(path, fd, start, end, size, old_digest, digests,
                                             emit)
                done = max(done, end)
            if done < blocks:
                self._zero_blocks(path, done, blocks, size, old_digest, digests, emit)
            if os.fstat(fd).st_size < size:
                raise FileChangedError("the file shrank while it was read")
            if old is None or size != old_size:
                emit(RecTruncate(root=root, path=path, size=size))
            emit(RecAttrs(root=root, path=path, mode=mode, mtime_ns=st.st_mtime_ns))
            complete = not tail or first == 0
        finally:
            self.index.put(path, entry(st.st_mtime_ns if complete else STALE))
            self.counters.bytes += written

    def _zero_blocks(self, path: bytes, first: int, stop: int, size: int,
                     old_digest: Callable[[int], bytes | None], digests: bytearray,
                     emit: Emit) -> None:
        """Blocks ``[first, stop)`` lie in a hole: zero the ones the replica holds data in."""
        bs = self.block_size
        run_start: int | None = None
        for index in range(first, stop + 1):
            differs = False
            if index < stop:
                length = min(bs, size - index * bs)
                zero = zero_digest(length)
                before = old_digest(index)
                differs = before is not None and before != zero
                digests[index * BLOCK_DIGEST_SIZE:(index + 1) * BLOCK_DIGEST_SIZE] = zero
            if differs and run_start is None:
                run_start = index
            elif not differs and run_start is not None:
                offset = run_start * bs
                emit(RecZero(root=self.root_number, path=path, offset=offset,
                             length=min(index * bs, size) - offset))
                run_start = None

    def _data_blocks(self, path: bytes, fd: int, first: int, stop: int, size: int,
                     old_digest: Callable[[int], bytes | None], digests: bytearray,
                     emit: Emit) -> int:
        """Read blocks ``[first, stop)``, compare, emit the differing ones; return bytes sent."""
        bs = self.block_size
        per_read = max(1, len(self.view) // bs)
        sent = 0
        index = first
        while index < stop:
            count = min(per_read, stop - index)
            offset = index * bs
            length = min(count * bs, size - offset)
            if length <= 0:
                break
            chunk = self.view[:length]
            got = os.preadv(fd, [chunk], offset)
            if got < length:
                raise FileChangedError("the file shrank while it was read")
            self.counters.blocks_read += count
            new = block_digests(chunk, bs)
            sent += self._emit_runs(path, index, chunk, new, old_digest, digests, emit)
            index += count
        return sent

    def _emit_runs(self, path: bytes, first: int, chunk: memoryview, new: bytes,
                   old_digest: Callable[[int], bytes | None], digests: bytearray,
                   emit: Emit) -> int:
        bs = self.block_size
        count = len(new) // BLOCK_DIGEST_SIZE
        sent = 0
        run: list[int] = []  # consecutive differing data blocks (relative indexes)
        zero_run: list[int] = []

        def flush_data() -> None:
            nonlocal sent
            if not run:
                return
            start, stop = run[0] * bs, min((run[-1] + 1) * bs, len(chunk))
            emit(RecWrite(root=self.root_number, path=path, offset=(first * bs) + start,
                          digests=new[run[0] * BLOCK_DIGEST_SIZE:(run[-1] + 1)
                                      * BLOCK_DIGEST_SIZE],
                          payload=bytes(chunk[start:stop])))
            sent += stop - start
            for rel in run:
                absolute = first + rel
                digests[absolute * BLOCK_DIGEST_SIZE:(absolute + 1) * BLOCK_DIGEST_SIZE] = \
                    new[rel * BLOCK_DIGEST_SIZE:(rel + 1) * BLOCK_DIGEST_SIZE]
            run.clear()

        def flush_zero() -> None:
            if not zero_run:
                return
            start, stop = zero_run[0] * bs, min((zero_run[-1] + 1) * bs, len(chunk))
            emit(RecZero(root=self.root_number, path=path, offset=(first * bs) + start,
                         length=stop - start))
            zero_run.clear()

        for rel in range(count):
            digest = new[rel * BLOCK_DIGEST_SIZE:(rel + 1) * BLOCK_DIGEST_SIZE]
            absolute = first + rel
            before = old_digest(absolute)
            length = min(bs, len(chunk) - rel * bs)
            is_zero = digest == zero_digest(length) and not any(
                chunk[rel * bs:rel * bs + length])
            if before == digest or (before is None and is_zero):
                # Unchanged, or a zero block past the replica's old end (reads as zeros there).
                flush_data()
                flush_zero()
                digests[absolute * BLOCK_DIGEST_SIZE:(absolute + 1) * BLOCK_DIGEST_SIZE] = digest
                continue
            if is_zero:
                flush_data()
                zero_run.append(rel)
                digests[absolute * BLOCK_DIGEST_SIZE:(absolute + 1) * BLOCK_DIGEST_SIZE] = digest
                continue
            flush_zero()
            run.append(rel)
            if (len(run) * bs) >= MAX_RUN:
                flush_data()
        flush_data()
        flush_zero()
        return sent


def forget_blocks(entry: IndexEntry, offset: int, length: int, block_size: int) -> IndexEntry:
    """The entry with the digests of the blocks of ``[offset, offset+length)`` made unknown
    (they match no block), so the next comparison sends those blocks whatever they hold."""
    if entry.digests is None or length <= 0:
        return entry
    digests = bytearray(entry.digests)
    first, stop = offset // block_size, -(-(offset + length) // block_size)
    for index in range(first, min(stop, len(digests) // BLOCK_DIGEST_SIZE)):
        digests[index * BLOCK_DIGEST_SIZE:(index + 1) * BLOCK_DIGEST_SIZE] = _UNKNOWN
    return IndexEntry(entry.kind, entry.size, STALE, entry.mode, entry.ino, entry.target,
                      bytes(digests))


#: A digest no block has (xxh3-128 of real data equal to this is astronomically unlikely).
_UNKNOWN = b"\xff" * BLOCK_DIGEST_SIZE


def _kind(mode: int) -> EntryKind:
    if stat.S_ISREG(mode):
        return EntryKind.FILE
    if stat.S_ISDIR(mode):
        return EntryKind.DIRECTORY
    if stat.S_ISLNK(mode):
        return EntryKind.SYMLINK
    return EntryKind.OTHER


def entry_matches(entry: IndexEntry, kind: EntryKind, size: int, mtime_ns: int, mode: int,
                  ino: int, target: bytes) -> bool:
    """Whether a listed entry still matches its index entry (a rescan skips it if so)."""
    if entry.kind is not kind:
        return False
    if kind is EntryKind.FILE:
        return (entry.size, entry.mtime_ns, entry.mode, entry.ino) == (size, mtime_ns, mode, ino)
    if kind is EntryKind.SYMLINK:
        return entry.target == target
    return entry.mode == mode
