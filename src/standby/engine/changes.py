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
the runtime schedules later (at a bounded rate) catches any write before the old end. A file
whose mtime is recent when it is compared (:data:`RACY_NS`) keeps a stale entry too: a write
in the same clock tick would leave its size and mtime as they were.

Records are handed to ``emit`` one at a time, in order, and the index entry of a file follows
the records already emitted: if ``emit`` raises (the spool is full) or the file changes under
the read, the entry holds the digests of the blocks sent so far and the size the replica's
file has, and is marked stale, so nothing is ever believed sent that was not.

Hard links: a new name of a file the replica has becomes a link there too (RecHardLink), and
the entries of the names of one file follow each other, since records sent through one name
changed the replica's file under all of them. A notification names the path a change came
through; when that name goes (removed, or replaced by a rename) before it is looked at, the
other names are compared at the end of the round (:attr:`ChangeBuilder.recheck`).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import time
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

#: A file whose mtime is this recent when it is compared may be written again without its
#: mtime changing (file times come from a coarse clock, 1 s on some file systems): its entry
#: is kept stale, so the next change notification compares the content again.
RACY_NS = 2_000_000_000

Emit = Callable[[Message], None]

log = logging.getLogger("standby.changes")


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
        # Files with several links: ino -> their names we know of (see _share).
        self._links: dict[int, set[bytes]] = {}
        self._looked_up: dict[int, int] = {}  # ino -> its link count when names were looked up
        self._inodes: dict[int, list[bytes]] | None = None  # every indexed file, by ino
        # The replica's size of the file being compared, once the records emitted so far are
        # applied (None: unknown until the first record).
        self._replica_size: int | None = None
        # Directories whose entries changed: their mtime is sent after (see finish_round).
        self.touched_dirs: set[bytes] = set()
        # Paths to compare at the end of the round (see _recheck_other_names).
        self.recheck: set[bytes] = set()

    def absolute(self, path: bytes) -> bytes:
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
        self._recheck_other_names(path)
        emit(RecRemove(root=self.root_number, path=path))
        self.index.remove_tree(path)
        self.touched_dirs.add(parent_of(path))

    def _recheck_other_names(self, top: bytes) -> None:
        """``top`` goes from the replica: the files with several links at or below it have
        other names, to be compared at the end of the round (a change made through a name
        that is gone before it was looked at is theirs too, and nothing else reports it)."""
        if not self._links:
            return
        for path in self.index.subtree(top):
            entry = self.index.get(path)
            if entry is not None and entry.kind is EntryKind.FILE and entry.ino in self._links:
                self.recheck.update(name for name in self._links[entry.ino]
                                    if not is_under(name, top)
                                    and self._linkable(name, path, entry.ino))

    def rename(self, src: bytes, dst: bytes, emit: Emit) -> bool:
        """Replay a rename within the root. False when the replica does not hold ``src`` (it
        was never sent): the caller reconciles ``dst`` as a new path instead."""
        entry = self.index.get(src)
        if entry is None or is_under(dst, src) or not self._has_dir(parent_of(dst)):
            return False
        if self.index.get(dst) is not None:
            self._recheck_other_names(dst)
            self.index.remove_tree(dst)
        emit(RecRename(root=self.root_number, path=src, target=dst))
        self.index.rename_tree(src, dst)
        # Paths noted for the end of the round move too (directories whose mtime is owed).
        self.touched_dirs = _moved(self.touched_dirs, src, dst)
        self.recheck = _moved(self.recheck, src, dst)
        for names in self._links.values():  # a moved file keeps its other names
            for name in [name for name in names if is_under(name, src)]:
                names.discard(name)
                names.add(dst + name[len(src):])
        self.touched_dirs.update((parent_of(src), parent_of(dst)))
        return True

    def finish_round(self, emit: Emit) -> None:
        """Compare the paths to look at again (:attr:`recheck`; one that fails to compare
        stays for the next round), then send the mtime of every directory whose entries
        changed since the last round (the replica's own changes to them moved their mtime),
        so directories match too."""
        for path in sorted(self.recheck):
            try:
                for child in self.reconcile(path, emit, may_remove=False):
                    self.recheck.add(child)
            except (FileChangedError, OSError) as exc:
                log.debug("%r compared again next round: %s", path, exc)
                continue
            self.recheck.discard(path)
        touched, self.touched_dirs = self.touched_dirs, set()
        self._inodes = None
        for directory in sorted(touched):
            entry = self.index.get(directory)
            if not directory or entry is None or entry.kind is not EntryKind.DIRECTORY:
                continue
            try:
                st = os.lstat(self.absolute(directory))
            except OSError:
                continue
            if not stat.S_ISDIR(st.st_mode):
                continue
            emit(RecAttrs(root=self.root_number, path=directory, mode=stat.S_IMODE(st.st_mode),
                          mtime_ns=st.st_mtime_ns))
            self.index.put(directory, IndexEntry(EntryKind.DIRECTORY, 0, st.st_mtime_ns,
                                                 stat.S_IMODE(st.st_mode), st.st_ino))

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
            st = os.lstat(self.absolute(path))
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
        children: list[bytes] = []
        if not self._has_dir(parent_of(path)):
            children = self._ensure_parent(path, emit)
            if not self._has_dir(parent_of(path)):
                return []  # below an excluded directory (or gone meanwhile): not replicated
        if current is not None and current.kind is not kind:
            self.remove(path, emit)
            current = None
        mode = stat.S_IMODE(st.st_mode)
        if kind is EntryKind.DIRECTORY:
            return children + self._directory(path, st, mode, current, emit)
        if kind is EntryKind.SYMLINK:
            self._symlink(path, st, current, emit)
            return children
        self._file(path, st, mode, current, emit, tail=tail)
        return children

    def _ensure_parent(self, path: bytes, emit: Emit) -> list[bytes]:
        """A path's parent must exist on the replica before the path: create missing ones.
        Returns what else they hold (directories new to the replica, see reconcile)."""
        missing = []
        parent = parent_of(path)
        while not self._has_dir(parent):
            missing.append(parent)
            parent = parent_of(parent)
        children = []
        for directory in reversed(missing):
            children.extend(self.reconcile(directory, emit))
        return [child for child in children if child != path and child not in missing]

    def _has_dir(self, path: bytes) -> bool:
        """Whether the replica has a directory at ``path`` (the root always)."""
        entry = self.index.get(path)
        return not path or (entry is not None and entry.kind is EntryKind.DIRECTORY)

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
                names = os.listdir(self.absolute(path))
            except OSError:
                return []
            return [path + b"/" + name for name in sorted(names)]
        if (current.mode, current.ino, current.mtime_ns) != (mode, st.st_ino, st.st_mtime_ns):
            # A new mode, or a new mtime (`touch dir`, or entries that came and went unseen
            # while the engine was stopped: a rescan finds the mtime moved).
            emit(RecAttrs(root=self.root_number, path=path, mode=mode, mtime_ns=st.st_mtime_ns))
            self.index.put(path, IndexEntry(EntryKind.DIRECTORY, 0, st.st_mtime_ns, mode,
                                            st.st_ino))
        return []

    def _symlink(self, path: bytes, st: os.stat_result, current: IndexEntry | None,
                 emit: Emit) -> None:
        try:
            target = os.readlink(self.absolute(path))
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
        if current is not None and current.ino != st.st_ino and any(
                self._linkable(name, path, current.ino)
                for name in self._links.get(current.ino, ())):
            # Another file now has this name, and the replica's file here has other names
            # (hard links): writing the differences into it would change them too.
            self.remove(path, emit)
            current = None
        if st.st_nlink > 1:
            self._learn(path, st)
            if current is None and self._hard_link(path, st, emit):
                # Linked there: now compared as any name (it may have changed through this one).
                current = self.index.get(path)
        if current is not None and current.size == st.st_size \
                and current.mtime_ns == st.st_mtime_ns and current.ino == st.st_ino:
            if current.mode != mode:
                emit(RecAttrs(root=self.root_number, path=path, mode=mode,
                              mtime_ns=st.st_mtime_ns))
                self.index.put(path, IndexEntry(EntryKind.FILE, current.size, current.mtime_ns,
                                                mode, current.ino, digests=current.digests))
                self._share(path, st.st_ino)
            return
        try:
            fd = os.open(self.absolute(path), _OPEN_FLAGS)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR, errno.ENXIO):
                return  # replaced or removed since lstat: its own event follows
            raise
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                return
            if st.st_nlink > 1:
                self._learn(path, st)
            else:  # when it has several again, the number may be another file's
                self._looked_up.pop(st.st_ino, None)
            try:
                self._compare_and_send(path, fd, st, stat.S_IMODE(st.st_mode), current, emit,
                                       tail=tail)
            finally:
                self._share(path, st.st_ino)
                if self._inodes is not None:  # built earlier this round: keep it whole
                    self._inodes.setdefault(st.st_ino, []).append(path)
        finally:
            os.close(fd)

    def _learn(self, path: bytes, st: os.stat_result) -> None:
        """Note ``path`` as a name of the file ``st``, which has several; when it has more
        than when we last looked, look for the others in the index (``ln a b`` reports only b,
        and a's entry, made when it had one link, does not say it has company now)."""
        names = self._links.setdefault(st.st_ino, set())
        names.add(path)
        if st.st_nlink > self._looked_up.get(st.st_ino, 0):
            self._looked_up[st.st_ino] = st.st_nlink
            names.update(self._inode_names().get(st.st_ino, ()))

    def _share(self, path: bytes, ino: int) -> None:
        """The replica holds one file under all the names of ``ino``: their entries follow
        the one of ``path`` (the records sent through one name changed them all), so that a
        comparison through another name starts from what the replica holds."""
        names = self._links.get(ino)
        entry = self.index.get(path)
        if not names or entry is None or entry.ino != ino:
            return
        for name in list(names):
            other = self.index.get(name)
            if other is None or other.ino != ino or other.kind is not EntryKind.FILE:
                names.discard(name)  # gone, or another file now
            elif other != entry:
                self.index.put(name, entry)
        if not names:
            del self._links[ino]

    def _hard_link(self, path: bytes, st: os.stat_result, emit: Emit) -> bool:
        """A new name of a file the replica already has (``ln a b``): link it there too, so
        that a later write through either name reaches both."""
        names = self._links.setdefault(st.st_ino, set())
        entry = existing = None
        for _ in range(2):
            for existing in sorted(names):
                entry = self._linkable(existing, path, st.st_ino)
                if entry is not None:
                    break
            if entry is not None:
                break
            names.update(self._inode_names().get(st.st_ino, ()))  # the number was reused
        if entry is None or existing is None:
            return False
        emit(RecHardLink(root=self.root_number, path=path, existing=existing))
        self.touched_dirs.add(parent_of(path))
        self.index.put(path, entry)
        self.counters.files += 1
        return True

    def _linkable(self, existing: bytes | None, path: bytes, ino: int) -> IndexEntry | None:
        """The entry of ``existing`` if it is another name of the file ``ino``."""
        if existing is None or existing == path:
            return None
        entry = self.index.get(existing)
        if entry is None or entry.ino != ino or entry.kind is not EntryKind.FILE:
            return None
        return entry

    def _inode_names(self) -> dict[int, list[bytes]]:
        """The names of every indexed file, by inode: built at most once a round (so a tree
        of new links, ``cp -al``, costs one pass over the index per round, not one per link)."""
        if self._inodes is None:
            self._inodes = {}
            for name, entry in self.index.items():
                if entry.kind is EntryKind.FILE:
                    self._inodes.setdefault(entry.ino, []).append(name)
        return self._inodes

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
        started = time.time_ns()
        self._replica_size = old_size if old is not None else None
        self.counters.files += 1

        def old_digest(index: int) -> bytes | None:
            if old is None or index >= old_blocks:
                return None
            return old[index * BLOCK_DIGEST_SIZE:(index + 1) * BLOCK_DIGEST_SIZE]

        def entry(mtime_ns: int, replica_size: int) -> IndexEntry:
            return IndexEntry(EntryKind.FILE, replica_size, mtime_ns, mode, st.st_ino,
                              digests=bytes(digests))

        try:
            if old is None:
                emit(RecTruncate(root=root, path=path, size=0))  # a fresh file, whatever was there
                self._replica_size = 0
                self.touched_dirs.add(parent_of(path))
                self.index.put(path, IndexEntry(EntryKind.FILE, 0, STALE, mode, st.st_ino,
                                                digests=b""))
            elif size < old_size:
                emit(RecTruncate(root=root, path=path, size=size))
                self._replica_size = size
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
                self._replica_size = size
            emit(RecAttrs(root=root, path=path, mode=mode, mtime_ns=st.st_mtime_ns))
            complete = (not tail or first == 0) and st.st_mtime_ns < started - RACY_NS
        finally:
            # Cut short: the entry has the size the replica's file will have (the size record
            # may not be sent yet), and only the digests of the blocks sent. Nothing sent at
            # all for a file the replica may hold anything at: the entry stays as it was.
            if self._replica_size is not None:
                self.index.put(path, entry(st.st_mtime_ns if complete else STALE,
                                           self._replica_size))
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
                if not differs:  # zeros there already (or once the size is set)
                    digests[index * BLOCK_DIGEST_SIZE:(index + 1) * BLOCK_DIGEST_SIZE] = zero
            if differs and run_start is None:
                run_start = index
            elif not differs and run_start is not None:
                offset = run_start * bs
                emit(RecZero(root=self.root_number, path=path, offset=offset,
                             length=min(index * bs, size) - offset))
                for done in range(run_start, index):  # sent: now the index may say so
                    digests[done * BLOCK_DIGEST_SIZE:(done + 1) * BLOCK_DIGEST_SIZE] = \
                        zero_digest(min(bs, size - done * bs))
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
            end = first * bs + stop
            if self._replica_size is not None and end > self._replica_size:
                self._replica_size = end  # a write past the end extends the file
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
            for rel in zero_run:  # sent: now the index may say so
                absolute = first + rel
                digests[absolute * BLOCK_DIGEST_SIZE:(absolute + 1) * BLOCK_DIGEST_SIZE] = \
                    new[rel * BLOCK_DIGEST_SIZE:(rel + 1) * BLOCK_DIGEST_SIZE]
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
                continue
            flush_zero()
            run.append(rel)
            if (len(run) * bs) >= MAX_RUN:
                flush_data()
        flush_data()
        flush_zero()
        return sent


def _moved(paths: set[bytes], src: bytes, dst: bytes) -> set[bytes]:
    """``paths`` with those at or below ``src`` moved to ``dst``."""
    if not any(is_under(path, src) for path in paths):
        return paths
    return {dst + path[len(src):] if is_under(path, src) else path for path in paths}


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
    return (entry.mode, entry.mtime_ns) == (mode, mtime_ns)
