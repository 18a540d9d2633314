"""The master's index of what the replica holds: per path, kind, size, mtime, mode, inode and
the digest of every block.

Real-time replication compares a changed file with its entry here and sends only the blocks
whose digests differ; an incremental rescan (after an engine restart, an inotify overflow or a
degraded spool) compares every file's size, mtime, mode and inode with its entry and looks
only at those that differ.

The invariant that makes this safe: **the index describes the replica as it will be once every
record already in the spool is applied**. The runtime updates an entry only while (or after)
appending the records that bring the replica there, and the on-disk copy is committed only
after the spool is durable, so after a crash the persisted index is never *ahead* of the spool.
Behind is harmless: a file whose entry is stale is compared again and its differing blocks are
sent once more (applying a block write twice changes nothing).

``mtime_ns == STALE`` marks an entry whose blocks were only partly compared (an append sent
ahead of a rate-limited full comparison, or a comparison cut short): the next rescan looks at
that file whatever its mtime. ``digests is None`` means the blocks are unknown: the next change
sends the file whole.

The whole index lives in memory (about 100 bytes per file plus 16 bytes per block: 4 GiB in
64 KiB blocks is 1 MiB) and in one SQLite file beside the spool. Only one thread (the capture
thread) touches it.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from ..protocol import EntryKind

#: mtime_ns of an entry whose content must be compared at the next rescan whatever its mtime.
STALE = -1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    root INTEGER NOT NULL, path BLOB NOT NULL, kind INTEGER NOT NULL, size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL, mode INTEGER NOT NULL, ino INTEGER NOT NULL,
    target BLOB NOT NULL, digests BLOB,
    PRIMARY KEY (root, path)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True, slots=True)
class IndexEntry:
    kind: EntryKind
    size: int
    mtime_ns: int
    mode: int
    ino: int
    target: bytes = b""
    digests: bytes | None = None

    def stale(self) -> IndexEntry:
        return replace(self, mtime_ns=STALE)


def parent_of(path: bytes) -> bytes:
    return path.rpartition(b"/")[0]


def is_under(path: bytes, top: bytes) -> bool:
    """``path`` is ``top`` or lies below it."""
    return path == top or path.startswith(top + b"/")


class RootIndex:
    """The entries of one root, with a children map so a subtree is found without a scan."""

    def __init__(self) -> None:
        self.entries: dict[bytes, IndexEntry] = {}
        self._children: dict[bytes, set[bytes]] = {}
        self.pending: dict[bytes, IndexEntry | None] = {}  # changes not yet committed to disk
        # Values before the first change since the last checkpoint (see FileIndex.rollback).
        self._undo: dict[bytes, IndexEntry | None] = {}

    def clear(self) -> None:
        self.entries.clear()
        self._children.clear()
        self.pending.clear()
        self._undo.clear()

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, path: bytes) -> IndexEntry | None:
        return self.entries.get(path)

    def put(self, path: bytes, entry: IndexEntry) -> None:
        if path not in self._undo:
            self._undo[path] = self.entries.get(path)
        if path not in self.entries and path:  # the root (b"") is nobody's child
            self._children.setdefault(parent_of(path), set()).add(path)
        self.entries[path] = entry
        self.pending[path] = entry

    def load(self, path: bytes, entry: IndexEntry) -> None:
        """Put without marking the entry as a change to commit (reading the index from disk)."""
        self.put(path, entry)
        del self.pending[path]
        del self._undo[path]

    def checkpoint(self) -> None:
        """The records behind every change so far are in the spool: keep them."""
        self._undo.clear()

    def rollback(self) -> list[bytes]:
        """Undo every change since the last checkpoint (their records never reached the
        spool); return the paths concerned, to be reconciled again later."""
        undo, self._undo = self._undo, {}
        for path, entry in undo.items():
            if entry is None:
                if path in self.entries:
                    self._drop(path)
            else:
                self.put(path, entry)
        self._undo.clear()
        return list(undo)

    def _drop(self, path: bytes) -> None:
        del self.entries[path]
        siblings = self._children.get(parent_of(path))
        if siblings is not None:
            siblings.discard(path)
            if not siblings:
                del self._children[parent_of(path)]
        self.pending[path] = None

    def subtree(self, top: bytes) -> list[bytes]:
        """``top`` (if indexed) and every indexed path below it, parents first."""
        out = [top] if top in self.entries else []
        stack = [top]
        while stack:
            for child in sorted(self._children.get(stack.pop(), ())):
                out.append(child)
                stack.append(child)
        return out

    def remove_tree(self, top: bytes) -> int:
        """Forget ``top`` and everything below it; return how many entries went."""
        paths = self.subtree(top)
        for path in reversed(paths):
            if path not in self._undo:
                self._undo[path] = self.entries[path]
            self._drop(path)
        return len(paths)

    def rename_tree(self, src: bytes, dst: bytes) -> None:
        """Move the entries of ``src`` and below to ``dst`` (whose old entries must be gone)."""
        moved = [(path, self.entries[path]) for path in self.subtree(src)]
        self.remove_tree(src)
        for path, entry in moved:
            self.put(dst + path[len(src):], entry)

    def items(self) -> Iterator[tuple[bytes, IndexEntry]]:
        return iter(self.entries.items())


class FileIndex:
    """The index of every root of a scenario, persisted in ``path`` (SQLite)."""

    def __init__(self, path: Path, roots: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self.roots = [RootIndex() for _ in range(roots)]
        for root, rel, kind, size, mtime_ns, mode, ino, target, digests in self._db.execute(
                "SELECT root, path, kind, size, mtime_ns, mode, ino, target, digests "
                "FROM entries ORDER BY root, path"):
            if root < roots:
                self.roots[root].load(rel, IndexEntry(EntryKind(kind), size, mtime_ns, mode,
                                                      ino, target, digests))

    def close(self) -> None:
        self._db.close()

    def get_meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def checkpoint(self) -> None:
        for root in self.roots:
            root.checkpoint()

    def rollback(self) -> list[tuple[int, bytes]]:
        return [(number, path) for number, root in enumerate(self.roots)
                for path in root.rollback()]

    @property
    def pending(self) -> int:
        return sum(len(r.pending) for r in self.roots)

    def commit(self, committed_seq: int | None = None) -> None:
        """Write the changes since the last commit, in one transaction. Call it only once the
        spool records behind those changes are durable (see the module docstring).
        ``committed_seq``: the last spool record whose index changes this commit holds; the
        sender sends no record past it, and a restart recovers the records after it."""
        if not self.pending and committed_seq is None:
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            if committed_seq is not None:
                self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                                 ("committed_seq", str(committed_seq)))
            for number, root in enumerate(self.roots):
                for rel, entry in root.pending.items():
                    if entry is None:
                        self._db.execute("DELETE FROM entries WHERE root = ? AND path = ?",
                                         (number, rel))
                    else:
                        self._db.execute(
                            "INSERT OR REPLACE INTO entries VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            (number, rel, int(entry.kind), entry.size, entry.mtime_ns,
                             entry.mode, entry.ino, entry.target, entry.digests))
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        for root in self.roots:
            root.pending.clear()

    def clear(self) -> None:
        """Forget everything (a synchronization is about to rebuild the index), durably."""
        self._db.execute("BEGIN IMMEDIATE")
        self._db.execute("DELETE FROM entries")
        self._db.execute("DELETE FROM meta WHERE key = 'valid'")
        self._db.execute("COMMIT")
        for root in self.roots:  # in place: the change builders hold these objects
            root.clear()

    @property
    def committed_seq(self) -> int:
        return int(self.get_meta("committed_seq") or 0)

    @property
    def valid(self) -> bool:
        """Whether a synchronization completed and the index describes the replica."""
        return self.get_meta("valid") == "1"

    def mark_valid(self) -> None:
        self.commit()
        self.set_meta("valid", "1")
