"""Applier: the records a ChangeBuilder emits for a master tree, applied to a real replica
directory, make the replica equal to the master, after any sequence of changes; replaying
records already applied changes nothing; damaged or impossible records are refused or skipped."""

from __future__ import annotations

import errno
import os
import random
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from standby.blocks import block_digests
from standby.engine import apply as apply_module
from standby.engine.apply import Applier
from standby.protocol import (
    Ack,
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
from standby.replica.confine import ConfinedRoot, punch_hole

from .mirror import BS, DelayedMirror, Mirror, rand


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[Mirror]:
    m = Mirror(tmp_path)
    yield m
    m.close()


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


# --- whole trees --------------------------------------------------------------------------------


def test_a_whole_tree(mirror: Mirror) -> None:
    m = mirror.m
    (m("d") / "e" / "f").mkdir(parents=True)
    os.chmod(m("d") / "e", 0o700)
    m("d/file").write_bytes(rand(5 * BS + 3, 1))
    m("d/e/f/empty").write_bytes(b"")
    with open(m("sparse"), "wb") as f:
        f.truncate(100 * BS)
        f.seek(50 * BS)
        f.write(rand(BS + 1, 2))
        f.seek(80 * BS)
        f.write(bytes(2 * BS))  # zeros written, not a hole
    os.chmod(m("sparse"), 0o600)
    os.symlink("d/file", m("rel-link"))
    os.symlink("/etc/passwd", m("d/abs-link"))
    os.symlink("dangling", m("d/e/dangling"))
    os.link(m("d/file"), m("d/e/hard"))
    m("\xe9t\xe9 \U0001f600").write_bytes(b"unicode")
    m("exec").write_bytes(b"#!/bin/sh\n")
    os.chmod(m("exec"), 0o4755)
    mirror.reconcile_all()
    mirror.finish()
    mirror.apply()
    mirror.check()
    assert os.lstat(mirror.r("sparse")).st_blocks < 20 * BS // 512  # holes stay holes
    # Nothing changed: a second pass sends no data.
    before = mirror.builder.counters.bytes
    mirror.reconcile_all()
    mirror.finish()
    mirror.apply()
    mirror.check()
    assert mirror.builder.counters.bytes == before


def test_two_roots(tmp_path: Path) -> None:
    for name in ("r0", "r1"):
        (tmp_path / name).mkdir()
    applier = Applier([str(tmp_path / "r0"), str(tmp_path / "r1")], BS)
    try:
        for root in (0, 1):
            applier.apply(RecTruncate(root=root, path=b"f", size=0))
            applier.apply(RecWrite(root=root, path=b"f", offset=0,
                                   digests=block_digests(b"root %d" % root, BS),
                                   payload=b"root %d" % root))
        applier.flush()
    finally:
        applier.close()
    assert (tmp_path / "r0" / "f").read_bytes() == b"root 0"
    assert (tmp_path / "r1" / "f").read_bytes() == b"root 1"


# --- random operations --------------------------------------------------------------------------

_NAMES = ["a", "b", "c"]
_MODES = [0o600, 0o644, 0o755, 0o700, 0o640]


class RandomTree:
    """Random changes to the master, each followed by the notifications inotify would give."""

    OPS = ("create", "create", "write", "write", "zero", "punch", "truncate", "mkdir",
           "symlink", "chmod", "rename", "rename", "delete", "link", "replace", "swap",
           "same-size")

    def __init__(self, mirror: Mirror, rng: random.Random, ops: tuple[str, ...] = OPS) -> None:
        self.mirror = mirror
        self.rng = rng
        self.ops = ops
        self.tmp_count = 0

    def entries(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for dirpath, dirnames, filenames in os.walk(self.mirror.master):
            for name in dirnames + filenames:
                full = os.path.join(dirpath, name)
                rel = os.path.relpath(full, self.mirror.master)
                mode = os.lstat(full).st_mode
                out[rel] = ("link" if stat.S_ISLNK(mode) else "dir" if stat.S_ISDIR(mode)
                            else "file")
        return out

    def pick(self, kinds: str, entries: dict[str, str]) -> str | None:
        paths = sorted(p for p, k in entries.items() if k in kinds)
        return self.rng.choice(paths) if paths else None

    def new_path(self, entries: dict[str, str]) -> str:
        dirs = ["", *sorted(p for p, k in entries.items() if k == "dir" and p.count("/") < 2)]
        parent = self.rng.choice(dirs)
        name = self.rng.choice(_NAMES)
        return f"{parent}/{name}" if parent else name

    def content(self) -> bytes:
        size = self.rng.choice([0, 1, 100, BS - 1, BS, 3 * BS + 17, 9 * BS])
        style = self.rng.random()
        if style < 0.2:
            return bytes(size)
        data = bytearray(self.rng.randbytes(size))
        if style < 0.5 and size > BS:
            start = self.rng.randrange(0, size - BS)
            data[start:start + BS] = bytes(BS)  # a zero block inside
        return bytes(data)

    def write_file(self, path: Path, data: bytes, sparse_tail: int = 0) -> None:
        with open(path, "wb") as f:
            f.write(data)
            if sparse_tail:
                f.truncate(len(data) + sparse_tail)

    def step(self) -> str:
        rng, m = self.rng, self.mirror
        entries = self.entries()
        op = rng.choice(self.ops)
        path: str | None
        if op == "create":
            path = self.new_path(entries)
            if path in entries:
                return "skip"
            self.write_file(m.m(path), self.content(), rng.choice([0, 0, 5 * BS]))
            m.changed(path)
        elif op in ("write", "zero", "punch", "truncate", "same-size"):
            path = self.pick("file", entries)
            if path is None:
                return "skip"
            size = os.lstat(m.m(path)).st_size
            offset = rng.randrange(0, size + 2 * BS)
            length = rng.randrange(1, 3 * BS)
            fd = os.open(m.m(path), os.O_RDWR)
            try:
                if op == "write":
                    os.pwrite(fd, rng.randbytes(length), offset)
                elif op == "zero":
                    os.pwrite(fd, bytes(length), offset)
                elif op == "punch":
                    punch_hole(fd, offset, length)
                elif op == "truncate":
                    os.ftruncate(fd, rng.randrange(0, 2 * size + 2 * BS))
                else:  # in place, within the same mtime tick
                    st = os.fstat(fd)
                    os.pwrite(fd, rng.randbytes(min(length, max(size - 1, 1))),
                              rng.randrange(0, max(size - length, 1)))
                    os.ftruncate(fd, size)
                    os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
            finally:
                os.close(fd)
            m.changed(path)
        elif op == "mkdir":
            path = self.new_path(entries)
            if path in entries:
                return "skip"
            os.mkdir(m.m(path), rng.choice(_MODES))
            m.changed(path)
        elif op == "symlink":
            path = self.new_path(entries)
            if entries.get(path) == "link":
                os.unlink(m.m(path))
                m.removed(path)
            elif path in entries:
                return "skip"
            os.symlink(rng.choice(["a", "../b", "/abs/x", "a/b/c"]), m.m(path))
            m.changed(path)
        elif op == "chmod":
            path = self.pick("file dir", entries)
            if path is None:
                return "skip"
            os.chmod(m.m(path), rng.choice(_MODES))
            m.changed(path)
        elif op == "rename":
            src = self.pick("file dir link", entries)
            if src is None:
                return "skip"
            dst = self.new_path(entries)
            if dst == src or dst.startswith(src + "/"):
                return "skip"
            if dst in entries and os.path.samestat(os.lstat(m.m(src)), os.lstat(m.m(dst))):
                return "skip"  # two names of one file: rename does nothing, reports nothing
            try:
                os.rename(m.m(src), m.m(dst))
            except OSError as exc:
                if exc.errno in (errno.EISDIR, errno.ENOTDIR, errno.ENOTEMPTY, errno.EEXIST,
                                 errno.EINVAL):
                    return "skip"
                raise
            m.rename(src, dst)
        elif op == "delete":
            path = self.pick("file dir link", entries)
            if path is None:
                return "skip"
            if entries[path] == "dir":
                shutil.rmtree(m.m(path))
            else:
                os.unlink(m.m(path))
            m.removed(path)
        elif op == "link":
            src = self.pick("file", entries)
            dst = self.new_path(entries)
            if src is None or dst in entries:
                return "skip"
            os.link(m.m(src), m.m(dst))
            m.changed(dst)
        elif op == "replace":  # an editor's save: a new file renamed over the old one
            path = self.pick("file", entries)
            if path is None:
                return "skip"
            self.tmp_count += 1
            tmp = f"{os.path.dirname(path)}/tmp{self.tmp_count}".lstrip("/")
            data = bytearray(m.m(path).read_bytes())
            if data:
                data[rng.randrange(len(data))] ^= 0xFF
            self.write_file(m.m(tmp), bytes(data) + rng.randbytes(rng.choice([0, 10])))
            if rng.random() < 0.5:
                m.changed(tmp)  # reconciled before the rename: travels as a rename
            os.replace(m.m(tmp), m.m(path))
            m.rename(tmp, path)
        elif op == "swap":  # another kind of entry, and (but for a directory's contents) only
            path = self.pick("file dir link", entries)  # a change notification for it
            if path is None:
                return "skip"
            kind = entries[path]
            if kind == "dir":
                shutil.rmtree(m.m(path))
                m.removed(path)  # what was inside is reported gone, at least
            else:
                os.unlink(m.m(path))
            new = rng.choice([k for k in ("file", "dir", "link") if k != kind])
            if new == "file":
                self.write_file(m.m(path), self.content())
            elif new == "dir":
                os.mkdir(m.m(path))
            else:
                os.symlink("swapped", m.m(path))
            m.changed(path)
        return op


@pytest.mark.parametrize("seed", range(12))
def test_random_operations(tmp_path: Path, seed: int) -> None:
    """Random changes on the master; after each, the records of the notifications applied
    to the replica make it equal to the master (contents, modes, mtimes, links)."""
    rng = random.Random(seed)
    mirror = Mirror(tmp_path)
    try:
        tree = RandomTree(mirror, rng)
        done: list[str] = []
        for _ in range(100):
            done.append(tree.step())
            mirror.finish()
            mirror.apply(flush=rng.random() < 0.3)
            try:
                mirror.check()
            except AssertionError as exc:
                raise AssertionError(f"after {done}: {exc}") from None
        assert mirror.applier.counters.skipped == 0
        # A full pass over the master finds nothing left to send.
        before = mirror.builder.counters.bytes
        mirror.reconcile_all()
        assert mirror.builder.counters.bytes == before
    finally:
        mirror.close()


@pytest.mark.parametrize("seed", range(10))
def test_random_operations_with_delayed_notifications(tmp_path: Path, seed: int) -> None:
    """The same, with change notifications handled at the end of a round of several changes,
    as the runtime does: the path may have changed kind, moved or gone meanwhile. (Hard links
    left out: a change made through a name that is gone before it is looked at reaches the
    other names only at a rescan; nothing else reports it.)"""
    rng = random.Random(1000 + seed)
    mirror = DelayedMirror(tmp_path)
    try:
        tree = RandomTree(mirror, rng, tuple(op for op in RandomTree.OPS if op != "link"))
        done: list[str] = []
        for _ in range(60):
            for _ in range(rng.choice([1, 2, 4])):
                done.append(tree.step())
            mirror.finish()
            mirror.apply(flush=rng.random() < 0.3)
            try:
                mirror.check()
            except AssertionError as exc:
                raise AssertionError(f"after {done}: {exc}") from None
    finally:
        mirror.close()


# --- replays ------------------------------------------------------------------------------------


def _changes_without_renames(mirror: Mirror, rng: random.Random) -> None:
    m = mirror.m
    m("d").mkdir()
    m("d/f").write_bytes(rand(4 * BS, 1))
    m("g").write_bytes(rand(2 * BS, 2))
    mirror.sync("d", "g")
    for step in range(12):
        fd = os.open(m("d/f"), os.O_RDWR)
        try:
            os.pwrite(fd, rng.randbytes(BS), rng.randrange(0, 6 * BS))
            if step % 3 == 0:
                os.ftruncate(fd, rng.randrange(BS, 6 * BS))
            if step % 4 == 1:
                punch_hole(fd, rng.randrange(0, 4 * BS), BS)
        finally:
            os.close(fd)
        mirror.changed("d/f")
        if step == 4:
            m("g").unlink()
            mirror.removed("g")
            m("g").mkdir()
            m("g/inner").write_bytes(b"inner")
            mirror.changed("g")
        if step == 8:
            shutil.rmtree(m("g"))
            mirror.removed("g")
            os.symlink("d/f", m("g"))
            mirror.changed("g")
        if step == 10:
            os.chmod(m("d"), 0o700)
            mirror.changed("d")
        mirror.finish()
    mirror.apply()
    mirror.check()


def test_replaying_any_suffix_changes_nothing(mirror: Mirror) -> None:
    """After a crash, the records after the last durable one are applied again (renames
    aside, see below): whichever record that starts at, the replica ends the same."""
    _changes_without_renames(mirror, random.Random(1))
    assert not any(isinstance(r, RecRename | RecHardLink) for r in mirror.records)
    for start in range(len(mirror.records) - 1, -1, -1):
        for record in mirror.records[start:]:
            mirror.applier.apply(record)
        mirror.applier.flush()
        mirror.check()


def test_replay_through_a_parent_later_replaced_by_a_symlink(tmp_path: Path,
                                                             mirror: Mirror) -> None:
    """A record for d/f replayed after a later record made d a symlink: skipped (the symlink
    is never followed), and the replay goes on."""
    outside = tmp_path / "outside"
    outside.mkdir()
    mirror.m("d").mkdir()
    mirror.m("d/f").write_bytes(b"f")
    mirror.sync("d", "d/f")
    start = next(i for i, r in enumerate(mirror.records) if isinstance(r, RecTruncate))
    shutil.rmtree(mirror.m("d"))
    mirror.removed("d")
    os.symlink(outside, mirror.m("d"))
    mirror.sync("d")
    skipped = mirror.applier.counters.skipped
    for record in mirror.records[start:]:
        mirror.applier.apply(record)
    mirror.applier.flush()
    mirror.check()
    assert mirror.applier.counters.skipped > skipped
    assert list(outside.iterdir()) == []


def test_a_hostile_path_is_a_protocol_error(tmp_path: Path) -> None:
    applier = Applier([str(tmp_path)], BS)
    try:
        with pytest.raises(RemoteProtocolError):
            applier.apply(RecTruncate(root=0, path=b"../escape", size=0))
        with pytest.raises(RemoteProtocolError):
            applier.apply(RecRename(root=0, path=b"a", target=b"b/../../escape"))
        with pytest.raises(RemoteProtocolError):
            applier.apply(RecHardLink(root=0, path=b"a", existing=b"a//../b"))
        (tmp_path / "d" / "e").mkdir(parents=True)
        with pytest.raises(RemoteProtocolError, match="into itself"):
            applier.apply(RecRename(root=0, path=b"d", target=b"d/e/d"))
        with pytest.raises(RemoteProtocolError, match="onto a parent"):
            applier.apply(RecRename(root=0, path=b"d/e", target=b"d"))
        assert (tmp_path / "d" / "e").is_dir()
    finally:
        applier.close()
    assert not (tmp_path.parent / "escape").exists()


def test_renames_and_hard_links_ask_for_a_barrier(mirror: Mirror) -> None:
    """Replaying a rename or a hard link after later records is not harmless: the stream
    handler makes the replica durable right after each (needs_barrier), so a replay starts
    after it."""
    mirror.m("a").write_bytes(rand(BS, 1))
    mirror.sync("a")
    assert not mirror.applier.needs_barrier
    os.rename(mirror.m("a"), mirror.m("b"))
    mirror.rename("a", "b")
    mirror.apply(flush=False)
    assert mirror.applier.needs_barrier
    mirror.applier.flush()
    assert not mirror.applier.needs_barrier
    os.link(mirror.m("b"), mirror.m("c"))
    assert isinstance(mirror.changed("c")[0], RecHardLink)
    mirror.apply(flush=False)
    assert mirror.applier.needs_barrier
    mirror.applier.flush()
    barrier = len(mirror.records)
    # Why: c is linked to b; then b is replaced by another file. Replaying the link after
    # that would make c a name of the new b.
    os.unlink(mirror.m("b"))
    mirror.removed("b")
    mirror.m("b").write_bytes(rand(BS, 2))
    mirror.changed("b")
    mirror.sync()
    link = next(r for r in mirror.records if isinstance(r, RecHardLink))
    wrong = mirror.records.index(link)
    assert wrong < barrier
    for record in mirror.records[barrier:]:  # what a replay after the barrier sends
        mirror.applier.apply(record)
    mirror.applier.flush()
    mirror.check()


def test_a_replayed_rename_whose_source_is_gone_changes_nothing(mirror: Mirror) -> None:
    mirror.m("a").write_bytes(b"a")
    mirror.sync("a")
    os.rename(mirror.m("a"), mirror.m("b"))
    mirror.rename("a", "b")
    mirror.sync()
    (rename,) = [r for r in mirror.records if isinstance(r, RecRename)]
    mirror.applier.apply(rename)
    mirror.applier.flush()
    mirror.check()


# --- refused and skipped records ----------------------------------------------------------------


def test_a_digest_mismatch_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    applier = Applier([str(tmp_path)], BS)
    try:
        payload = rand(2 * BS)
        digests = bytearray(block_digests(payload, BS))
        digests[20] ^= 1  # the second block's digest
        with pytest.raises(RemoteProtocolError, match="do not match"):
            applier.apply(RecWrite(root=0, path=b"f", offset=0, digests=bytes(digests),
                                   payload=payload))
        assert not (tmp_path / "f").exists()
        # Digests of another block size do not match either.
        with pytest.raises(RemoteProtocolError):
            applier.apply(RecWrite(root=0, path=b"f", offset=0,
                                   digests=block_digests(payload, 2 * BS), payload=payload))
        assert not (tmp_path / "f").exists()
    finally:
        applier.close()


def test_records_the_applier_refuses(tmp_path: Path) -> None:
    applier = Applier([str(tmp_path)], BS)
    try:
        with pytest.raises(RemoteProtocolError, match="root 1"):
            applier.apply(RecTruncate(root=1, path=b"f", size=0))
        with pytest.raises(RemoteProtocolError):
            applier.apply(Ack(received_seq=1, durable_seq=1))
    finally:
        applier.close()
    assert list(tmp_path.iterdir()) == []


def test_records_for_missing_parents_are_skipped_and_counted(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"x")
    applier = Applier([str(tmp_path)], BS)
    try:
        records: list[Message] = [
            RecTruncate(root=0, path=b"gone/f", size=0),
            RecWrite(root=0, path=b"gone/f", offset=0, digests=block_digests(b"x", BS),
                     payload=b"x"),
            RecZero(root=0, path=b"gone/f", offset=0, length=1),
            RecAttrs(root=0, path=b"gone/f", mode=0o644, mtime_ns=1),
            RecAttrs(root=0, path=b"missing", mode=0o644, mtime_ns=1),
            RecMakeDir(root=0, path=b"gone/d", mode=0o755, mtime_ns=1),
            RecSymlink(root=0, path=b"gone/l", target=b"t", mtime_ns=1),
            RecHardLink(root=0, path=b"h", existing=b"gone/f"),
            RecHardLink(root=0, path=b"h", existing=b"missing"),
            RecTruncate(root=0, path=b"file/below", size=0),  # a file where a dir should be
        ]
        for record in records:
            applier.apply(record)
        assert applier.counters.skipped == len(records)
        assert applier.counters.records == len(records)
        # Removing or renaming what is not there is not even a skip.
        applier.apply(RecRemove(root=0, path=b"gone/f"))
        applier.apply(RecRename(root=0, path=b"missing", target=b"elsewhere"))
        assert applier.counters.skipped == len(records)
        applier.flush()
    finally:
        applier.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_a_directory_record_over_an_open_file(tmp_path: Path) -> None:
    """A file the applier holds open is replaced by a directory, then by a file again: the
    writes land in the new file, not in the one that was replaced."""
    applier = Applier([str(tmp_path)], BS)
    try:
        def write(data: bytes) -> None:
            applier.apply(RecTruncate(root=0, path=b"x", size=0))
            applier.apply(RecWrite(root=0, path=b"x", offset=0,
                                   digests=block_digests(data, BS), payload=data))

        write(b"first")
        applier.apply(RecMakeDir(root=0, path=b"x", mode=0o755, mtime_ns=1))
        assert (tmp_path / "x").is_dir()
        write(b"second")
        applier.flush()
    finally:
        applier.close()
    assert (tmp_path / "x").read_bytes() == b"second"


# --- durability ---------------------------------------------------------------------------------


def _write_files(applier: Applier, count: int, prefix: bytes = b"f") -> None:
    applier.apply(RecMakeDir(root=0, path=b"d", mode=0o755, mtime_ns=1))
    for i in range(count):
        data = b"%d" % i
        path = b"d/" + prefix + b"%d" % i
        applier.apply(RecTruncate(root=0, path=path, size=0))
        applier.apply(RecWrite(root=0, path=path, offset=0, digests=block_digests(data, BS),
                               payload=data))


def test_flush_syncs_each_file_and_directory(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    dirs: list[bytes | None] = []
    real_fdatasync = os.fdatasync
    real_fsync_dir = ConfinedRoot.fsync_dir

    def fdatasync(fd: int) -> None:
        synced.append(os.fstat(fd).st_ino)
        real_fdatasync(fd)

    def fsync_dir(self: ConfinedRoot, path: bytes | None = None) -> None:
        dirs.append(path)
        real_fsync_dir(self, path)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    monkeypatch.setattr(ConfinedRoot, "fsync_dir", fsync_dir)
    monkeypatch.setattr(ConfinedRoot, "syncfs", lambda self: pytest.fail("syncfs"))
    monkeypatch.setattr(apply_module, "OPEN_FILES", 3)  # some are evicted while dirty
    applier = Applier([str(tmp_path)], BS)
    fds = _open_fds()
    try:
        _write_files(applier, 6)
        applier.flush()
        inodes = {os.lstat(tmp_path / "d" / f"f{i}").st_ino for i in range(6)}
        assert set(synced) == inodes
        assert set(dirs) == {None, b"d"}
        assert _open_fds() <= fds + 4  # 3 open files, d: the evicted ones were closed
        synced.clear()
        dirs.clear()
        applier.flush()  # nothing new
        assert synced == []
        assert dirs == []
    finally:
        applier.close()
    assert _open_fds() < fds
    for i in range(6):
        assert (tmp_path / "d" / f"f{i}").read_bytes() == b"%d" % i


def test_flush_uses_syncfs_past_the_threshold(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[bytes] = []
    real_syncfs = ConfinedRoot.syncfs

    def syncfs(self: ConfinedRoot) -> None:
        calls.append(self.root)
        real_syncfs(self)

    monkeypatch.setattr(ConfinedRoot, "syncfs", syncfs)
    monkeypatch.setattr(os, "fdatasync", lambda fd: pytest.fail("fdatasync"))
    monkeypatch.setattr(apply_module, "SYNCFS_THRESHOLD", 4)
    monkeypatch.setattr(apply_module, "OPEN_FILES", 3)
    applier = Applier([str(tmp_path)], BS)
    fds = _open_fds()
    try:
        _write_files(applier, 6)
        applier.apply(RecRename(root=0, path=b"d/f0", target=b"d/g0"))
        assert applier.needs_barrier
        applier.flush()
        assert calls == [os.fsencode(tmp_path)]
        assert not applier.needs_barrier
        assert _open_fds() <= fds + 4
    finally:
        applier.close()


def test_flush_after_a_directory_became_a_symlink(tmp_path: Path) -> None:
    """A directory written into, then replaced by a symlink, before the flush: the flush
    syncs what is there and does not fail on the symlink."""
    applier = Applier([str(tmp_path)], BS)
    try:
        _write_files(applier, 2)
        applier.apply(RecRemove(root=0, path=b"d"))
        applier.apply(RecSymlink(root=0, path=b"d", target=b"/", mtime_ns=1))
        applier.flush()
        _write_files(applier, 1, b"x")  # d is a directory again
        applier.apply(RecRemove(root=0, path=b"d"))
        applier.apply(RecTruncate(root=0, path=b"d", size=3))  # and now a file
        applier.flush()
    finally:
        applier.close()
    assert (tmp_path / "d").read_bytes() == bytes(3)
