"""A master directory and its replica joined by a ChangeBuilder and an Applier: what the
replication runtime does, minus the spool, the link and inotify (the tests say which paths
changed, the way the capture would)."""

from __future__ import annotations

import os
import random
from pathlib import Path

from standby.config import PathFilter
from standby.engine.apply import Applier
from standby.engine.changes import ChangeBuilder
from standby.engine.file_index import RootIndex, is_under, parent_of
from standby.protocol import Message, decode_records, encode_record
from standby.storage.hashing import new_buffer
from tests.treeutil import assert_trees_equal

BS = 4096  # the smallest block size the protocol allows: many blocks in small files
PAST_NS = 1_600_000_000 * 10**9  # an mtime safely in the past (not "racy")


def rand(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def age(path: Path | bytes | str, mtime_ns: int = PAST_NS) -> None:
    """Set an mtime well in the past: an entry compared now is then not racily clean."""
    os.utime(path, ns=(mtime_ns, mtime_ns), follow_symlinks=False)


class Mirror:
    def __init__(self, tmp: Path, *, path_filter: PathFilter | None = None,
                 block_size: int = BS) -> None:
        self.master = tmp / "master"
        self.replica = tmp / "replica"
        self.master.mkdir()
        self.replica.mkdir()
        self.index = RootIndex()
        self.builder = ChangeBuilder(0, str(self.master), self.index, block_size,
                                     path_filter or PathFilter((), ()), new_buffer())
        self.applier = Applier([str(self.replica)], block_size)
        self.records: list[Message] = []  # everything emitted, in order
        self.applied = 0  # how many of them were applied
        self.builder.reconcile(b"", self.emit)  # the runtime indexes the root itself

    def close(self) -> None:
        self.applier.close()

    def emit(self, record: Message) -> None:
        # Through the wire encoding, as the spool and the link carry them.
        (decoded,) = decode_records(encode_record(record), 1)
        self.records.append(decoded)

    def m(self, path: str) -> Path:
        return self.master / path

    def r(self, path: str) -> Path:
        return self.replica / path

    # --- the master side ------------------------------------------------------------------------

    def reconcile(self, path: bytes | str, **kwargs: bool) -> list[Message]:
        """Reconcile ``path``, then the children it returns (as the runtime marks them)."""
        start = len(self.records)
        path = os.fsencode(path)
        todo = self.builder.reconcile(path, self.emit, **kwargs)
        while todo:
            todo.extend(self.builder.reconcile(todo.pop(0), self.emit, may_remove=False))
        return self.records[start:]

    def reconcile_all(self) -> list[Message]:
        """Every path of the master tree, parents first (what a rescan would compare)."""
        start = len(self.records)
        root = os.fsencode(self.master)
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(dirnames + filenames):
                self.reconcile(os.path.relpath(os.path.join(dirpath, name), root))
        return self.records[start:]

    def remove(self, path: bytes | str, *, force: bool = False) -> list[Message]:
        start = len(self.records)
        self.builder.remove(os.fsencode(path), self.emit, force=force)
        return self.records[start:]

    def changed(self, path: bytes | str) -> list[Message]:
        """A change notification, handled as the runtime does."""
        path = os.fsencode(path)
        if self.index.get(path) is None:  # an entry came: the directory's mtime moved
            self.builder.touched_dirs.add(parent_of(path))
        return self.reconcile(path, may_remove=False)

    def removed(self, path: bytes | str) -> list[Message]:
        """A removal notification, handled as the runtime does."""
        path = os.fsencode(path)
        self.builder.touched_dirs.add(parent_of(path))
        return self.remove(path)

    def rename(self, src: bytes | str, dst: bytes | str) -> bool:
        """A rename notification: replayed as a rename, or (when the replica lacks ``src``)
        both names reconciled, as the runtime does."""
        src, dst = os.fsencode(src), os.fsencode(dst)
        self.builder.touched_dirs.update((parent_of(src), parent_of(dst)))
        if self.builder.rename(src, dst, self.emit):
            return True
        self.reconcile(src)
        self.reconcile(dst)
        return False

    def finish(self) -> list[Message]:
        start = len(self.records)
        self.builder.finish_round(self.emit)
        return self.records[start:]

    # --- the replica side -----------------------------------------------------------------------

    def apply(self, *, flush: bool = True) -> None:
        for record in self.records[self.applied:]:
            self.applier.apply(record)
        self.applied = len(self.records)
        if flush:
            self.applier.flush()

    def sync(self, *paths: bytes | str) -> None:
        """Reconcile ``paths``, finish the round, apply, compare the trees."""
        for path in paths:
            self.reconcile(path)
        self.finish()
        self.apply()
        self.check()

    def check(self) -> None:
        assert_trees_equal(self.master, self.replica)


class DelayedMirror(Mirror):
    """Change notifications wait (the runtime's window) and are handled at the end of the
    round, in the order they came; removals and renames are handled at once, and a rename
    carries the waiting changes below its source along, as the runtime does."""

    def __init__(self, tmp: Path, **kwargs: object) -> None:
        super().__init__(tmp, **kwargs)  # type: ignore[arg-type]
        self.dirty: dict[bytes, bool] = {}  # path -> may_remove

    def changed(self, path: bytes | str) -> list[Message]:
        path = os.fsencode(path)
        if self.index.get(path) is None:
            self.builder.touched_dirs.add(parent_of(path))
        self.dirty[path] = self.dirty.get(path, False)
        return []

    def removed(self, path: bytes | str) -> list[Message]:
        path = os.fsencode(path)
        for key in [key for key in self.dirty if is_under(key, path)]:
            del self.dirty[key]
        return super().removed(path)

    def rename(self, src: bytes | str, dst: bytes | str) -> bool:
        src, dst = os.fsencode(src), os.fsencode(dst)
        self.builder.touched_dirs.update((parent_of(src), parent_of(dst)))
        for key in [key for key in self.dirty if is_under(key, src)]:
            self.dirty[dst + key[len(src):]] = self.dirty.pop(key)
        if self.builder.rename(src, dst, self.emit):
            return True
        self.dirty[src] = self.dirty[dst] = True
        return False

    def finish(self) -> list[Message]:
        start = len(self.records)
        while self.dirty:
            path = next(iter(self.dirty))
            children = self.builder.reconcile(path, self.emit, may_remove=self.dirty.pop(path))
            for child in children:
                self.dirty.setdefault(child, False)
        super().finish()
        return self.records[start:]
