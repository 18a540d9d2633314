"""ChangeBuilder: the records that bring the replica to the master's state, and the index entry
that follows them. Real files in tmp_path; records gathered in a list; where the effect matters
more than the exact records, they are applied to a replica and the two trees compared."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from standby.blocks import block_digests, zero_digest
from standby.config import PathFilter
from standby.engine.changes import _UNKNOWN, MAX_RUN, entry_matches, forget_blocks
from standby.engine.file_index import STALE, IndexEntry
from standby.protocol import (
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
from standby.storage.hashing import FileChangedError
from tests.treeutil import snapshot

from .mirror import BS, PAST_NS, Mirror, age, rand


@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[Mirror]:
    m = Mirror(tmp_path)
    yield m
    m.close()


def kinds(records: list[Message]) -> list[str]:
    return [type(r).__name__ for r in records]


def writes(records: list[Message]) -> list[tuple[int, int]]:
    """(offset, length) of each RecWrite."""
    return [(r.offset, len(r.payload)) for r in records if isinstance(r, RecWrite)]


def zeros(records: list[Message]) -> list[tuple[int, int]]:
    return [(r.offset, r.length) for r in records if isinstance(r, RecZero)]


def put_file(path: Path, data: bytes, *, mtime_ns: int = PAST_NS) -> None:
    """Write a file with an mtime in the past (pass another one for a rewrite)."""
    path.write_bytes(data)
    age(path, mtime_ns)


def overwrite(path: Path, offset: int, data: bytes, *, aged: bool = True) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)
    if aged:
        age(path, PAST_NS + 10**9)  # another mtime, still in the past


def punch(path: Path, offset: int, length: int) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        from standby.replica.confine import punch_hole

        punch_hole(fd, offset, length)
    finally:
        os.close(fd)


# --- new files ----------------------------------------------------------------------------------


def test_new_file(mirror: Mirror) -> None:
    data = rand(2 * BS + 100)
    put_file(mirror.m("f"), data)
    st = os.lstat(mirror.m("f"))
    records = mirror.reconcile("f")
    assert records == [
        RecTruncate(root=0, path=b"f", size=0),
        RecWrite(root=0, path=b"f", offset=0, digests=block_digests(data, BS), payload=data),
        RecTruncate(root=0, path=b"f", size=len(data)),
        RecAttrs(root=0, path=b"f", mode=0o644, mtime_ns=PAST_NS),
    ]
    assert mirror.index.get(b"f") == IndexEntry(EntryKind.FILE, len(data), PAST_NS, 0o644,
                                                st.st_ino, digests=block_digests(data, BS))
    assert mirror.builder.counters.files == 1
    assert mirror.builder.counters.bytes == len(data)
    mirror.sync()


def test_new_empty_file(mirror: Mirror) -> None:
    put_file(mirror.m("e"), b"")
    records = mirror.reconcile("e")
    assert not writes(records)
    assert not zeros(records)
    assert mirror.index.get(b"e").digests == b""  # type: ignore[union-attr]
    mirror.sync()
    assert mirror.r("e").read_bytes() == b""


def test_new_file_zero_blocks_are_not_sent_and_holes_not_read(mirror: Mirror) -> None:
    """A written zero block and a hole both read as zeros after the first RecTruncate(0):
    neither is sent, and the holes are not even read."""
    size = 300 * BS + 7
    with open(mirror.m("sparse"), "wb") as f:
        f.truncate(size)
        f.seek(10 * BS)
        f.write(rand(BS, 1))  # block 10: data
        f.write(bytes(BS))  # block 11: zeros, written
        f.write(rand(BS, 2))  # block 12: data
        f.seek(size - 5)
        f.write(b"tail!")  # the short last block
    age(mirror.m("sparse"))
    records = mirror.reconcile("sparse")
    assert zeros(records) == []
    assert writes(records) == [(10 * BS, BS), (12 * BS, BS), (300 * BS, 7)]
    assert mirror.builder.counters.blocks_read <= 8  # the data extents only, not 301 blocks
    entry = mirror.index.get(b"sparse")
    assert entry is not None
    expected = block_digests(mirror.m("sparse").read_bytes(), BS)
    assert entry.digests == expected
    mirror.sync()


# --- changed files ------------------------------------------------------------------------------


def test_unchanged_file_sends_nothing_and_reads_nothing(mirror: Mirror) -> None:
    put_file(mirror.m("f"), rand(5 * BS))
    mirror.reconcile("f")
    read = mirror.builder.counters.blocks_read
    assert mirror.reconcile("f") == []
    assert mirror.builder.counters.blocks_read == read


def test_same_content_new_mtime_sends_only_attrs(mirror: Mirror) -> None:
    put_file(mirror.m("f"), rand(5 * BS))
    mirror.reconcile("f")
    age(mirror.m("f"), PAST_NS + 5)
    assert mirror.reconcile("f") == [RecAttrs(root=0, path=b"f", mode=0o644,
                                              mtime_ns=PAST_NS + 5)]
    assert mirror.index.get(b"f").mtime_ns == PAST_NS + 5  # type: ignore[union-attr]


def test_mode_change_alone_is_an_attrs_record(mirror: Mirror) -> None:
    put_file(mirror.m("f"), rand(5 * BS))
    mirror.reconcile("f")
    read = mirror.builder.counters.blocks_read
    os.chmod(mirror.m("f"), 0o600)
    assert mirror.reconcile("f") == [RecAttrs(root=0, path=b"f", mode=0o600,
                                              mtime_ns=PAST_NS)]
    assert mirror.builder.counters.blocks_read == read
    assert mirror.index.get(b"f").mode == 0o600  # type: ignore[union-attr]
    mirror.sync()


def test_only_differing_blocks_are_written(mirror: Mirror) -> None:
    data = bytearray(rand(10 * BS + 50))
    put_file(mirror.m("f"), bytes(data))
    mirror.sync("f")
    overwrite(mirror.m("f"), 2 * BS + 1, b"x")  # block 2
    overwrite(mirror.m("f"), 5 * BS, b"y" * (2 * BS))  # blocks 5 and 6: one run
    overwrite(mirror.m("f"), 10 * BS + 49, b"z")  # the short last block
    new = mirror.m("f").read_bytes()
    records = mirror.reconcile("f")
    assert writes(records) == [(2 * BS, BS), (5 * BS, 2 * BS), (10 * BS, 50)]
    for record in records:
        if isinstance(record, RecWrite):
            assert record.payload == new[record.offset:record.offset + len(record.payload)]
            assert record.digests == block_digests(record.payload, BS)
    assert kinds(records)[-1] == "RecAttrs"
    assert not any(isinstance(r, RecTruncate) for r in records)  # same size
    assert mirror.index.get(b"f").digests == block_digests(new, BS)  # type: ignore[union-attr]
    mirror.sync()


def test_runs_are_cut_at_max_run(mirror: Mirror) -> None:
    size = 2 * MAX_RUN + 3 * BS
    put_file(mirror.m("f"), rand(size, 1))
    mirror.sync("f")
    put_file(mirror.m("f"), rand(size, 2), mtime_ns=PAST_NS + 1)  # every block differs
    got = writes(mirror.reconcile("f"))
    assert all(length <= MAX_RUN for _, length in got)
    covered = 0
    for offset, length in got:  # contiguous, in order, the whole file
        assert offset == covered
        covered += length
    assert covered == size
    mirror.sync()


def test_zeroed_and_punched_blocks_become_zero_records(mirror: Mirror) -> None:
    put_file(mirror.m("f"), rand(8 * BS))
    mirror.sync("f")
    overwrite(mirror.m("f"), 1 * BS, bytes(BS))  # zeros written over data
    punch(mirror.m("f"), 4 * BS, 2 * BS)  # a hole punched
    age(mirror.m("f"), PAST_NS + 7)
    read = mirror.builder.counters.blocks_read
    records = mirror.reconcile("f")
    assert writes(records) == []
    assert zeros(records) == [(1 * BS, BS), (4 * BS, 2 * BS)]
    assert mirror.builder.counters.blocks_read - read <= 6  # the hole is not read
    digests = mirror.index.get(b"f").digests  # type: ignore[union-attr]
    assert digests is not None
    assert digests[4 * BLOCK_DIGEST_SIZE:5 * BLOCK_DIGEST_SIZE] == zero_digest(BS)
    mirror.sync()


def test_shrink_truncates_first(mirror: Mirror) -> None:
    put_file(mirror.m("f"), rand(6 * BS))
    mirror.sync("f")
    with open(mirror.m("f"), "r+b") as f:
        f.truncate(2 * BS + 10)
        f.seek(BS)
        f.write(b"changed")
    age(mirror.m("f"), PAST_NS + 3)
    records = mirror.reconcile("f")
    assert records[0] == RecTruncate(root=0, path=b"f", size=2 * BS + 10)
    assert writes(records) == [(BS, BS + 10)]  # blocks 1 and 2 (short now): one run
    entry = mirror.index.get(b"f")
    assert entry is not None
    assert entry.size == 2 * BS + 10
    assert entry.digests == block_digests(mirror.m("f").read_bytes(), BS)
    mirror.sync()


def test_growth_sets_the_size_at_the_end(mirror: Mirror) -> None:
    put_file(mirror.m("f"), rand(2 * BS + 10))
    mirror.sync("f")
    with open(mirror.m("f"), "ab") as f:
        f.write(rand(BS, 3))
        f.truncate(20 * BS)  # and a zero tail: reads as zeros once the size is set
    age(mirror.m("f"), PAST_NS + 3)
    records = mirror.reconcile("f")
    assert writes(records) == [(2 * BS, 2 * BS)]  # the old short block and the new one
    assert zeros(records) == []
    assert records[-2:] == [RecTruncate(root=0, path=b"f", size=20 * BS),
                            RecAttrs(root=0, path=b"f", mode=0o644, mtime_ns=PAST_NS + 3)]
    mirror.sync()


def test_a_change_within_one_clock_tick_is_not_missed(mirror: Mirror) -> None:
    """File times come from a coarse clock: a write just after the comparison can leave size
    and mtime as they were. An entry compared while its mtime was that recent is kept stale,
    so the next change notification compares the content again."""
    path = mirror.m("db")
    path.write_bytes(rand(4 * BS, 1))
    mtime = os.lstat(path).st_mtime_ns
    mirror.sync("db")
    overwrite(path, BS, rand(BS, 2), aged=False)  # in place, the same size...
    age(path, mtime)  # ...and within the same tick: the same mtime
    records = mirror.reconcile("db")
    assert writes(records) == [(BS, BS)]
    mirror.sync()


# --- tail mode ----------------------------------------------------------------------------------


def test_tail_sends_from_the_old_end_and_marks_the_entry_stale(mirror: Mirror) -> None:
    old = rand(3 * BS + 100)
    put_file(mirror.m("log"), old)
    mirror.sync("log")
    overwrite(mirror.m("log"), 0, b"early change")  # before the old end: not sent yet
    with open(mirror.m("log"), "ab") as f:
        f.write(rand(2 * BS, 4))
    age(mirror.m("log"), PAST_NS + 9)
    new = mirror.m("log").read_bytes()
    records = mirror.reconcile("log", tail=True)
    assert writes(records) == [(3 * BS, 2 * BS + 100)]  # from the old end's block
    entry = mirror.index.get(b"log")
    assert entry is not None
    assert entry.mtime_ns == STALE
    assert entry.size == len(new)
    assert entry.digests is not None
    assert entry.digests[:BLOCK_DIGEST_SIZE] == block_digests(old, BS)[:BLOCK_DIGEST_SIZE]
    assert entry.digests[3 * BLOCK_DIGEST_SIZE:] == block_digests(new, BS)[3 * BLOCK_DIGEST_SIZE:]
    mirror.finish()
    mirror.apply()
    assert mirror.r("log").read_bytes()[:12] == old[:12]  # the early change is still owed
    # The full comparison that follows sends the rest.
    assert writes(mirror.reconcile("log")) == [(0, BS)]
    assert mirror.index.get(b"log").mtime_ns == PAST_NS + 9  # type: ignore[union-attr]
    mirror.sync()


def test_tail_from_the_first_block_is_a_full_comparison(mirror: Mirror) -> None:
    put_file(mirror.m("log"), b"short")
    mirror.sync("log")
    with open(mirror.m("log"), "ab") as f:
        f.write(rand(BS, 4))
    age(mirror.m("log"), PAST_NS + 9)
    records = mirror.reconcile("log", tail=True)
    assert writes(records) == [(0, BS + 5)]
    assert mirror.index.get(b"log").mtime_ns == PAST_NS + 9  # type: ignore[union-attr]
    mirror.sync()


def test_tail_of_a_file_that_shrank_compares_everything(mirror: Mirror) -> None:
    put_file(mirror.m("log"), rand(5 * BS))
    mirror.sync("log")
    put_file(mirror.m("log"), rand(3 * BS, 8), mtime_ns=PAST_NS + 1)
    records = mirror.reconcile("log", tail=True)
    assert records[0] == RecTruncate(root=0, path=b"log", size=3 * BS)
    assert writes(records) == [(0, 3 * BS)]
    assert mirror.index.get(b"log").mtime_ns == PAST_NS + 1  # type: ignore[union-attr]
    mirror.sync()


# --- a file that changes while it is read, an emit that fails -----------------------------------


def test_a_file_that_shrinks_while_read(mirror: Mirror) -> None:
    size = 3 * MAX_RUN  # three reads
    put_file(mirror.m("f"), rand(size, 1))
    mirror.sync("f")
    put_file(mirror.m("f"), rand(size, 2), mtime_ns=PAST_NS + 1)
    sent: list[Message] = []

    def emit(record: Message) -> None:
        mirror.emit(record)
        sent.append(record)
        if isinstance(record, RecWrite):  # shrinks under the read that follows
            os.truncate(mirror.m("f"), MAX_RUN + 10)

    with pytest.raises(FileChangedError):
        mirror.builder.reconcile(b"f", emit)
    assert writes(sent) == [(0, MAX_RUN)]
    entry = mirror.index.get(b"f")
    assert entry is not None
    assert entry.mtime_ns == STALE
    assert entry.digests is not None
    first = MAX_RUN // BS * BLOCK_DIGEST_SIZE
    assert entry.digests[:first] == block_digests(mirror.m("f").read_bytes()[:MAX_RUN], BS)
    # The records sent so far and a new comparison make the replica right.
    mirror.apply()
    mirror.sync("f")


class Boom(Exception):
    pass


def _failing_emit(mirror: Mirror,
                  fail_at: int) -> tuple[list[Message], Callable[[Message], None]]:
    sent: list[Message] = []

    def emit(record: Message) -> None:
        if len(sent) == fail_at:
            raise Boom
        sent.append(record)
        mirror.emit(record)

    return sent, emit


def test_a_failed_emit_leaves_the_digests_of_what_was_sent(mirror: Mirror) -> None:
    old = rand(6 * BS)
    put_file(mirror.m("f"), old)
    mirror.sync("f")
    overwrite(mirror.m("f"), 1 * BS, b"one")
    overwrite(mirror.m("f"), 4 * BS, b"four")
    new = mirror.m("f").read_bytes()
    sent, emit = _failing_emit(mirror, 1)  # the second RecWrite fails
    with pytest.raises(Boom):
        mirror.builder.reconcile(b"f", emit)
    assert writes(sent) == [(BS, BS)]
    entry = mirror.index.get(b"f")
    assert entry is not None
    assert entry.mtime_ns == STALE
    d = BLOCK_DIGEST_SIZE
    assert entry.digests is not None
    assert entry.digests[d:2 * d] == block_digests(new, BS)[d:2 * d]  # sent
    assert entry.digests[4 * d:5 * d] == block_digests(old, BS)[4 * d:5 * d]  # not sent
    mirror.apply()
    mirror.sync("f")


def _scenario_new(mirror: Mirror) -> None:
    with open(mirror.m("f"), "wb") as f:
        f.write(rand(2 * BS, 1))
        f.truncate(6 * BS + 100)  # a zero tail


def _scenario_change(mirror: Mirror) -> None:
    with open(mirror.m("f"), "wb") as f:
        f.write(rand(3 * BS, 1) + bytes(BS) + rand(2 * BS, 2))
    mirror.sync("f")
    with open(mirror.m("f"), "r+b") as f:
        f.write(bytes(BS))  # block 0 zeroed
        f.seek(3 * BS)
        f.write(rand(BS, 3))  # block 3: zeros to data
        f.seek(5 * BS)
        f.write(rand(BS, 4))


def _scenario_grow(mirror: Mirror) -> None:
    mirror.m("f").write_bytes(rand(BS + 10, 1))
    mirror.sync("f")
    with open(mirror.m("f"), "r+b") as f:
        f.seek(BS)
        f.write(rand(2 * BS, 5))
        f.truncate(8 * BS)  # ends in zeros


def _scenario_shrink(mirror: Mirror) -> None:
    mirror.m("f").write_bytes(rand(8 * BS, 1))
    mirror.sync("f")
    with open(mirror.m("f"), "r+b") as f:
        f.truncate(3 * BS - 5)
        f.write(rand(10, 7))


def _scenario_unknown(mirror: Mirror) -> None:
    """The replica holds something the index knows nothing about (digests None)."""
    mirror.m("f").write_bytes(rand(3 * BS, 1))
    mirror.sync("f")
    entry = mirror.index.get(b"f")
    assert entry is not None
    mirror.index.put(b"f", IndexEntry(EntryKind.FILE, entry.size, entry.mtime_ns, entry.mode,
                                      entry.ino, digests=None))
    mirror.r("f").write_bytes(rand(9 * BS, 9))  # longer, and different
    with open(mirror.m("f"), "r+b") as f:
        f.truncate(4 * BS)  # a zero tail


@pytest.mark.parametrize("scenario", [_scenario_new, _scenario_change, _scenario_grow,
                                      _scenario_shrink, _scenario_unknown])
@pytest.mark.parametrize("fail_at", range(8))
def test_an_interrupted_comparison_is_completed_by_the_next(
        tmp_path: Path, scenario: Callable[[Mirror], None], fail_at: int) -> None:
    """Whatever record the failure hits, the index never believes more than was sent: the
    records emitted so far plus a later comparison bring the replica to the master."""
    mirror = Mirror(tmp_path)
    try:
        scenario(mirror)
        mirror.finish()
        mirror.apply()
        _, emit = _failing_emit(mirror, fail_at)
        try:
            mirror.builder.reconcile(b"f", emit)
        except Boom:
            entry = mirror.index.get(b"f")
            assert entry is None or entry.mtime_ns == STALE
        mirror.apply()
        mirror.sync("f")
    finally:
        mirror.close()


# --- kinds --------------------------------------------------------------------------------------


def test_new_directory_returns_its_children(mirror: Mirror) -> None:
    (mirror.m("d") / "sub").mkdir(parents=True)
    (mirror.m("d") / "b").write_bytes(b"b")
    (mirror.m("d") / "a").write_bytes(b"a")
    os.chmod(mirror.m("d"), 0o750)
    children = mirror.builder.reconcile(b"d", mirror.emit)
    assert children == [b"d/a", b"d/b", b"d/sub"]
    assert mirror.records[-1] == RecMakeDir(root=0, path=b"d", mode=0o750,
                                            mtime_ns=os.lstat(mirror.m("d")).st_mtime_ns)
    # Known now: no children returned, nothing sent.
    assert mirror.builder.reconcile(b"d", mirror.emit) == []
    os.chmod(mirror.m("d"), 0o700)
    start = len(mirror.records)
    assert mirror.builder.reconcile(b"d", mirror.emit) == []
    assert kinds(mirror.records[start:]) == ["RecAttrs"]
    mirror.sync("d/a", "d/b", "d/sub")


def test_missing_parents_are_created_first_and_their_children_returned(mirror: Mirror) -> None:
    """A path whose parents the replica lacks (their own notifications not handled yet):
    the parents are made first, and as with any directory new to the replica, what else they
    hold comes back to be reconciled."""
    (mirror.m("a") / "b").mkdir(parents=True)
    (mirror.m("a") / "b" / "f").write_bytes(b"f")
    (mirror.m("a") / "b" / "g").write_bytes(b"g")
    (mirror.m("a") / "other").write_bytes(b"o")
    children = mirror.builder.reconcile(b"a/b/f", mirror.emit)
    assert kinds(mirror.records[:3]) == ["RecMakeDir", "RecMakeDir", "RecTruncate"]
    assert [r.path for r in mirror.records[:3]] == [b"a", b"a/b", b"a/b/f"]  # type: ignore[attr-defined]
    assert b"a/other" in children
    assert b"a/b/g" in children
    for child in children:
        mirror.reconcile(child, may_remove=False)
    # Reconciling the parents later changes nothing.
    assert mirror.reconcile("a") == []
    mirror.sync()


@pytest.mark.parametrize("before", ["file", "dir", "link"])
@pytest.mark.parametrize("after", ["file", "dir", "link"])
def test_kind_changes(mirror: Mirror, before: str, after: str) -> None:
    def make(kind: str, seed: int) -> None:
        path = mirror.m("p")
        if kind == "file":
            path.write_bytes(rand(3 * BS, seed))
        elif kind == "dir":
            path.mkdir()
            (path / "inner").write_bytes(rand(10, seed))
        else:
            os.symlink(f"target-{seed}", path)

    make(before, 1)
    mirror.sync("p")
    if before == "dir":
        (mirror.m("p") / "inner").unlink()
        mirror.m("p").rmdir()
    else:
        mirror.m("p").unlink()
    make(after, 2)
    records = mirror.reconcile("p")
    if before != after:
        assert records[0] == RecRemove(root=0, path=b"p")
    if after == "dir":
        mirror.reconcile("p/inner")  # its own notification
        # The runtime notes the directory's entries changed when p/inner is reported removed
        # and created (the new p may well reuse the old one's inode number).
        mirror.builder.touched_dirs.add(b"p")
    else:
        assert mirror.index.get(b"p/inner") is None
    mirror.sync()
    kind = {"file": EntryKind.FILE, "dir": EntryKind.DIRECTORY, "link": EntryKind.SYMLINK}
    assert mirror.index.get(b"p").kind is kind[after]  # type: ignore[union-attr]


def test_symlinks(mirror: Mirror) -> None:
    os.symlink(b"/somewhere/\xff", mirror.m("l"))
    records = mirror.reconcile("l")
    assert records == [RecSymlink(root=0, path=b"l", target=b"/somewhere/\xff",
                                  mtime_ns=os.lstat(mirror.m("l")).st_mtime_ns)]
    assert mirror.reconcile("l") == []
    mirror.m("l").unlink()
    os.symlink("elsewhere", mirror.m("l"))
    assert kinds(mirror.reconcile("l")) == ["RecSymlink"]
    mirror.sync()
    assert os.readlink(mirror.r("l")) == "elsewhere"


def test_special_files_are_not_replicated(mirror: Mirror) -> None:
    mirror.m("p").write_bytes(b"x")
    mirror.sync("p")
    mirror.m("p").unlink()
    os.mkfifo(mirror.m("p"))
    assert mirror.reconcile("p") == [RecRemove(root=0, path=b"p")]
    assert mirror.index.get(b"p") is None
    assert mirror.reconcile("p") == []
    mirror.sync()  # the checker leaves special files out


# --- hard links ---------------------------------------------------------------------------------


def test_a_second_name_becomes_a_hard_link(mirror: Mirror) -> None:
    put_file(mirror.m("a"), rand(3 * BS))
    os.link(mirror.m("a"), mirror.m("b"))
    mirror.reconcile("a")
    records = mirror.reconcile("b")
    assert records == [RecHardLink(root=0, path=b"b", existing=b"a")]
    assert mirror.index.get(b"b") == mirror.index.get(b"a")
    mirror.sync()
    assert os.lstat(mirror.r("a")).st_ino == os.lstat(mirror.r("b")).st_ino
    # A write through one name is noticed through that name only: the replica follows.
    overwrite(mirror.m("a"), BS, b"through a")
    mirror.sync("a")
    assert mirror.r("b").read_bytes() == mirror.m("b").read_bytes()


def test_a_hard_linked_name_replaced_by_a_new_file(mirror: Mirror) -> None:
    """``a`` and ``b`` are one file; then a new file is renamed over ``a`` (an editor's
    save). Writing the differences into the replica's ``a`` in place would change its ``b``."""
    put_file(mirror.m("a"), rand(3 * BS, 1))
    os.link(mirror.m("a"), mirror.m("b"))
    mirror.sync("a", "b")
    new = bytearray(mirror.m("a").read_bytes())
    new[:5] = b"saved"
    put_file(mirror.m("tmp"), bytes(new), mtime_ns=PAST_NS + 1)
    os.replace(mirror.m("tmp"), mirror.m("a"))
    mirror.rename("tmp", "a")  # the replica never had tmp: a is reconciled
    mirror.sync()


def test_a_renamed_name_is_still_found_for_a_new_link(mirror: Mirror) -> None:
    put_file(mirror.m("a"), rand(3 * BS, 1))
    os.link(mirror.m("a"), mirror.m("b"))
    mirror.sync("a", "b")
    os.rename(mirror.m("a"), mirror.m("c"))
    assert mirror.rename("a", "c")
    os.unlink(mirror.m("b"))
    mirror.remove("b")
    os.link(mirror.m("c"), mirror.m("d"))
    assert mirror.reconcile("d") == [RecHardLink(root=0, path=b"d", existing=b"c")]
    mirror.sync()
    overwrite(mirror.m("c"), 0, b"through c")
    mirror.sync("c")


def test_a_new_name_of_a_file_sent_with_one_link(mirror: Mirror) -> None:
    """``ln a b`` reports only b; a was sent when it had one link. b is still linked."""
    put_file(mirror.m("a"), rand(3 * BS))
    mirror.sync("a")
    os.link(mirror.m("a"), mirror.m("b"))
    assert mirror.changed("b") == [RecHardLink(root=0, path=b"b", existing=b"a")]
    mirror.sync()
    overwrite(mirror.m("b"), 0, b"through b")
    mirror.sync("b")
    assert mirror.r("a").read_bytes() == mirror.m("a").read_bytes()


def test_a_new_name_is_compared_once_linked(mirror: Mirror) -> None:
    """The change notification for the new name may also be the only one for a write made
    through it: after the link, the content is compared."""
    put_file(mirror.m("a"), rand(3 * BS))
    mirror.sync("a")
    os.link(mirror.m("a"), mirror.m("b"))
    overwrite(mirror.m("b"), BS, b"written through b")
    records = mirror.changed("b")
    assert records[0] == RecHardLink(root=0, path=b"b", existing=b"a")
    assert writes(records) == [(BS, BS)]
    mirror.sync()


def test_the_names_of_one_file_share_its_entry(mirror: Mirror) -> None:
    """What is sent through one name changed the replica's file under every name: a later
    comparison through another name starts from there (here: the write is undone through b,
    which b's own old entry would take for no change)."""
    put_file(mirror.m("a"), rand(3 * BS, 1))
    os.link(mirror.m("a"), mirror.m("b"))
    mirror.sync("a", "b")
    original = mirror.m("a").read_bytes()
    overwrite(mirror.m("a"), 0, b"changed", aged=False)
    mirror.sync("a")
    assert mirror.index.get(b"b") == mirror.index.get(b"a")
    put_file(mirror.m("b"), original, mtime_ns=PAST_NS + 5)  # back as it was, through b
    mirror.sync("b")


def test_a_change_through_a_name_removed_before_it_was_looked_at(mirror: Mirror) -> None:
    """a and b are one file; b is written, then removed before its notification is handled:
    a is compared at the end of the round (nothing else reports the change)."""
    put_file(mirror.m("a"), rand(3 * BS, 1))
    os.link(mirror.m("a"), mirror.m("b"))
    mirror.sync("a", "b")
    overwrite(mirror.m("b"), BS, b"through b")
    mirror.m("b").unlink()
    mirror.removed("b")
    assert mirror.builder.recheck == {b"a"}
    assert writes(mirror.finish()) == [(BS, BS)]
    assert mirror.builder.recheck == set()
    mirror.apply()
    mirror.check()


def test_a_change_through_a_name_replaced_by_a_rename(mirror: Mirror) -> None:
    put_file(mirror.m("a"), rand(3 * BS, 1))
    os.link(mirror.m("a"), mirror.m("d"))
    put_file(mirror.m("c"), rand(BS, 2))
    mirror.sync("a", "c", "d")
    overwrite(mirror.m("d"), 0, b"through d")
    os.replace(mirror.m("c"), mirror.m("d"))
    assert mirror.rename("c", "d")
    os.rename(mirror.m("a"), mirror.m("e"))  # the name to compare moves before the round ends
    mirror.rename("a", "e")
    assert mirror.builder.recheck == {b"e"}
    mirror.sync()


# --- excluded paths -----------------------------------------------------------------------------


def test_excluded_paths_are_not_sent(tmp_path: Path) -> None:
    mirror = Mirror(tmp_path, path_filter=PathFilter((), ("*.tmp", "cache/", "logs/*.log")))
    try:
        (mirror.m("cache")).mkdir()
        (mirror.m("cache") / "x").write_bytes(b"x")
        (mirror.m("logs")).mkdir()
        (mirror.m("logs") / "a.log").write_bytes(b"log")
        (mirror.m("logs") / "keep").write_bytes(b"keep")
        mirror.m("f.tmp").write_bytes(b"tmp")
        mirror.m("f").write_bytes(b"f")
        mirror.reconcile_all()
        for path in (b"cache", b"cache/x", b"logs/a.log", b"f.tmp"):
            assert mirror.index.get(path) is None, path
            assert not any(getattr(r, "path", None) == path for r in mirror.records), path
        # A change notification for a path below an excluded directory sends nothing either.
        (mirror.m("cache") / "x").write_bytes(b"changed")
        assert mirror.reconcile("cache/x") == []
        mirror.finish()
        mirror.apply()
        master = {k: v for k, v in snapshot(mirror.master).items()
                  if k not in (b"cache", b"cache/x", b"logs/a.log", b"f.tmp")}
        replica = snapshot(mirror.replica)
        master[b"logs"] = replica[b"logs"]  # its mtime moved when the excluded log came
        assert replica == master
    finally:
        mirror.close()


def test_a_replicated_path_that_becomes_excluded_is_removed(tmp_path: Path) -> None:
    mirror = Mirror(tmp_path, path_filter=PathFilter(("*.txt",), ()))
    try:
        mirror.m("d").mkdir()  # directories are always walked
        mirror.m("d/a.txt").write_bytes(b"a")
        mirror.m("d/b.bin").write_bytes(b"b")
        mirror.reconcile_all()
        assert mirror.index.get(b"d/a.txt") is not None
        assert mirror.index.get(b"d/b.bin") is None
        # a.txt becomes a directory (which the include filter does not touch); x.bin inside
        # it is not included.
        mirror.m("d/a.txt").unlink()
        mirror.m("d/a.txt").mkdir()
        mirror.m("d/a.txt/x.bin").write_bytes(b"x")
        records = mirror.reconcile("d/a.txt")
        assert records[0] == RecRemove(root=0, path=b"d/a.txt")
        assert mirror.index.get(b"d/a.txt/x.bin") is None
    finally:
        mirror.close()


# --- removal ------------------------------------------------------------------------------------


def test_may_remove_and_force_remove(mirror: Mirror) -> None:
    mirror.m("d").mkdir()
    mirror.m("d/f").write_bytes(b"f")
    mirror.m("g").write_bytes(b"g")
    mirror.sync("d", "g")
    (mirror.m("d") / "f").unlink()
    mirror.m("d").rmdir()
    # Gone, but a rename notification may explain it: left alone.
    assert mirror.reconcile("d", may_remove=False) == []
    assert mirror.index.get(b"d/f") is not None
    # Gone, and nothing more to wait for: removed, with everything below.
    assert mirror.reconcile("d") == [RecRemove(root=0, path=b"d")]
    assert mirror.index.get(b"d") is None
    assert mirror.index.get(b"d/f") is None
    assert b"" in mirror.builder.touched_dirs
    # Unknown to the index: nothing to remove, unless forced (records lost in a crash).
    assert mirror.reconcile("d") == []
    assert mirror.reconcile("d", may_remove=False, force_remove=True) == [
        RecRemove(root=0, path=b"d")]
    assert mirror.remove("nothing") == []
    assert mirror.remove("nothing", force=True) == [RecRemove(root=0, path=b"nothing")]
    # A path whose parent became a file is gone too.
    mirror.m("g").unlink()
    mirror.m("g").write_bytes(b"now a file")
    mirror.sync("g")
    mirror.builder.reconcile(b"g/below", mirror.emit, force_remove=True)
    mirror.sync()


# --- renames ------------------------------------------------------------------------------------


def test_rename_moves_the_entries_and_sends_no_data(mirror: Mirror) -> None:
    mirror.m("d").mkdir()
    mirror.m("d/f").write_bytes(rand(3 * BS))
    mirror.m("e").mkdir()
    mirror.m("e/old").write_bytes(b"old")
    mirror.sync("d", "e")
    entry = mirror.index.get(b"d/f")
    os.rename(mirror.m("d"), mirror.m("e/d"))
    start = len(mirror.records)
    assert mirror.rename("d", "e/d")
    assert mirror.records[start:] == [RecRename(root=0, path=b"d", target=b"e/d")]
    assert mirror.index.get(b"d") is None
    assert mirror.index.get(b"e/d/f") == entry
    assert {b"", b"e"} <= mirror.builder.touched_dirs
    mirror.sync()
    # Over an existing name: its entries go.
    os.replace(mirror.m("e/d/f"), mirror.m("e/old"))
    assert mirror.rename("e/d/f", "e/old")
    assert mirror.index.get(b"e/old") == entry
    mirror.sync()


def test_rename_refused_when_the_replica_lacks_the_source_or_the_parent(mirror: Mirror) -> None:
    mirror.m("a").write_bytes(b"a")
    mirror.m("d").mkdir()
    os.symlink("d", mirror.m("l"))
    mirror.sync("a", "d", "l")
    emit = mirror.emit
    assert not mirror.builder.rename(b"unknown", b"x", emit)
    assert not mirror.builder.rename(b"d", b"d/inside", emit)
    assert not mirror.builder.rename(b"d", b"d", emit)
    assert not mirror.builder.rename(b"a", b"nodir/a", emit)
    # The replica has a file or a symlink there, not a directory (its change is not handled
    # yet): the rename could not be applied there.
    assert not mirror.builder.rename(b"d", b"a/d", emit)
    assert not mirror.builder.rename(b"a", b"l/a", emit)
    assert mirror.records[mirror.applied:] == []
    assert mirror.builder.rename(b"a", b"d/a", emit)


def test_directory_times_owed_move_with_a_rename(mirror: Mirror) -> None:
    """A directory whose entries changed is renamed before the round ends: its mtime is sent
    under its new name."""
    mirror.m("a").mkdir()
    mirror.m("a/x").mkdir()
    mirror.sync("a", "a/x")
    os.rename(mirror.m("a/x"), mirror.m("x"))
    mirror.rename("a/x", "x")
    os.rename(mirror.m("a"), mirror.m("b"))
    mirror.rename("a", "b")
    assert b"b" in mirror.builder.touched_dirs
    mirror.sync()


# --- directory times ----------------------------------------------------------------------------


def test_finish_round_sends_the_times_of_touched_directories(mirror: Mirror) -> None:
    mirror.m("d").mkdir()
    mirror.m("d/sub").mkdir()
    mirror.reconcile("d")
    mirror.m("gone").mkdir()
    mirror.reconcile("gone")
    mirror.m("gone").rmdir()
    records = mirror.finish()
    assert {r.path for r in records} == {b"d", b"d/sub"}  # type: ignore[attr-defined]
    for record in records:
        assert isinstance(record, RecAttrs)
        st = os.lstat(mirror.master / os.fsdecode(record.path))
        assert (record.mode, record.mtime_ns) == (stat.S_IMODE(st.st_mode), st.st_mtime_ns)
    assert mirror.builder.touched_dirs == set()
    assert mirror.finish() == []
    mirror.reconcile("gone")
    mirror.apply()
    mirror.check()


# --- helpers ------------------------------------------------------------------------------------


def test_forget_blocks() -> None:
    digests = b"".join(bytes([i]) * BLOCK_DIGEST_SIZE for i in range(1, 6))
    entry = IndexEntry(EntryKind.FILE, 5 * BS - 1, 123, 0o644, 7, digests=digests)
    forgotten = forget_blocks(entry, BS + 1, BS, BS)  # touches blocks 1 and 2
    assert forgotten.mtime_ns == STALE
    assert forgotten.digests is not None
    got = [forgotten.digests[i * 16:(i + 1) * 16] for i in range(5)]
    assert got == [digests[:16], _UNKNOWN, _UNKNOWN, digests[48:64], digests[64:]]
    assert (forgotten.size, forgotten.mode, forgotten.ino) == (entry.size, 0o644, 7)
    past_end = forget_blocks(entry, 4 * BS, 100 * BS, BS)
    assert past_end.digests == digests[:64] + _UNKNOWN
    assert forget_blocks(entry, 0, 0, BS) == entry
    unknown = IndexEntry(EntryKind.FILE, 10, 123, 0o644, 7, digests=None)
    assert forget_blocks(unknown, 0, 10, BS).digests is None


def test_forgotten_blocks_are_sent_again(mirror: Mirror) -> None:
    put_file(mirror.m("f"), rand(4 * BS))
    mirror.sync("f")
    entry = mirror.index.get(b"f")
    assert entry is not None
    mirror.index.put(b"f", forget_blocks(entry, 2 * BS, 10, BS))
    assert writes(mirror.reconcile("f")) == [(2 * BS, BS)]


def test_entry_matches() -> None:
    f = IndexEntry(EntryKind.FILE, 10, 5, 0o644, 9, digests=b"")
    assert entry_matches(f, EntryKind.FILE, 10, 5, 0o644, 9, b"")
    assert not entry_matches(f, EntryKind.FILE, 11, 5, 0o644, 9, b"")
    assert not entry_matches(f, EntryKind.FILE, 10, 6, 0o644, 9, b"")
    assert not entry_matches(f, EntryKind.FILE, 10, 5, 0o600, 9, b"")
    assert not entry_matches(f, EntryKind.FILE, 10, 5, 0o644, 8, b"")
    assert not entry_matches(f, EntryKind.DIRECTORY, 10, 5, 0o644, 9, b"")
    assert not entry_matches(f.stale(), EntryKind.FILE, 10, STALE + 1, 0o644, 9, b"")
    link = IndexEntry(EntryKind.SYMLINK, 1, 5, 0, 9, b"t")
    assert entry_matches(link, EntryKind.SYMLINK, 1, 99, 0o777, 1, b"t")
    assert not entry_matches(link, EntryKind.SYMLINK, 1, 5, 0, 9, b"u")
    d = IndexEntry(EntryKind.DIRECTORY, 0, 5, 0o755, 9)
    assert entry_matches(d, EntryKind.DIRECTORY, 4096, 5, 0o755, 9, b"")
    assert not entry_matches(d, EntryKind.DIRECTORY, 4096, 77, 0o755, 9, b"")  # entries moved
    assert not entry_matches(d, EntryKind.DIRECTORY, 0, 5, 0o700, 9, b"")
