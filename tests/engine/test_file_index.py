"""The master's index of the replica: RootIndex in memory (children map, undo since the last
checkpoint) and FileIndex, its SQLite copy (what is reloaded equals what was in memory)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from standby.engine.file_index import (
    STALE,
    FileIndex,
    IndexEntry,
    RootIndex,
    is_under,
    parent_of,
)
from standby.protocol import EntryKind


def _dir(ino: int = 1, mode: int = 0o755) -> IndexEntry:
    return IndexEntry(EntryKind.DIRECTORY, 0, 1_000 + ino, mode, ino)


def _file(ino: int = 1, size: int = 10, digests: bytes | None = b"\x01" * 16) -> IndexEntry:
    return IndexEntry(EntryKind.FILE, size, 2_000 + ino, 0o644, ino, digests=digests)


def _check_children(index: RootIndex) -> None:
    """The children map holds exactly the indexed paths, under their parents."""
    expected: dict[bytes, set[bytes]] = {}
    for path in index.entries:
        if path:
            expected.setdefault(parent_of(path), set()).add(path)
    assert index._children == expected


def _tree(index: RootIndex, paths: list[bytes]) -> None:
    for number, path in enumerate(paths, 1):
        index.put(path, _dir(number) if not path.endswith(b"f") else _file(number))


# --- path helpers --------------------------------------------------------------------------------


def test_parent_of_and_is_under() -> None:
    assert parent_of(b"a/b/c") == b"a/b"
    assert parent_of(b"a") == b""
    assert is_under(b"a", b"a")
    assert is_under(b"a/b", b"a")
    assert not is_under(b"ab", b"a")
    assert not is_under(b"a", b"a/b")


def test_stale_entry_keeps_everything_but_the_mtime() -> None:
    entry = _file(3)
    assert entry.stale() == IndexEntry(EntryKind.FILE, 10, STALE, 0o644, 3, digests=b"\x01" * 16)


# --- RootIndex ----------------------------------------------------------------------------------


def test_put_get_len_items() -> None:
    index = RootIndex()
    assert index.get(b"a") is None
    index.put(b"a", _dir(1))
    index.put(b"a/f", _file(2))
    index.put(b"a/f", _file(3))  # replaced, not added twice
    assert len(index) == 2
    assert index.get(b"a/f") == _file(3)
    assert dict(index.items()) == {b"a": _dir(1), b"a/f": _file(3)}
    assert index.pending == {b"a": _dir(1), b"a/f": _file(3)}
    _check_children(index)


def test_subtree_is_parents_first_and_stops_at_the_boundary() -> None:
    index = RootIndex()
    _tree(index, [b"a", b"a/b", b"a/b/f", b"a/c", b"a/c/d", b"ab", b"ab/f", b"z"])
    got = index.subtree(b"a")
    assert set(got) == {b"a", b"a/b", b"a/b/f", b"a/c", b"a/c/d"}
    for path in got:  # every path comes after its parent
        if path != b"a":
            assert got.index(parent_of(path)) < got.index(path)
    assert index.subtree(b"a/b/f") == [b"a/b/f"]
    assert index.subtree(b"nothing") == []
    assert index.subtree(b"a/b/f/deeper") == []


def test_subtree_of_an_unindexed_top_lists_what_is_below() -> None:
    index = RootIndex()
    index.put(b"a/b", _dir(1))  # the parent itself is not indexed
    assert index.subtree(b"a") == [b"a/b"]


def test_the_root_entry_is_not_its_own_child() -> None:
    """The runtime indexes the root itself (path b""): subtree(b"") must still terminate."""
    index = RootIndex()
    _tree(index, [b"", b"a", b"a/f", b"b"])
    _check_children(index)
    assert sorted(index.subtree(b"")) == [b"", b"a", b"a/f", b"b"]
    assert index.remove_tree(b"") == 4
    assert len(index) == 0
    _check_children(index)


def test_remove_tree() -> None:
    index = RootIndex()
    _tree(index, [b"a", b"a/b", b"a/b/f", b"ab", b"ab/f"])
    index.pending.clear()
    assert index.remove_tree(b"a") == 3
    assert sorted(index.entries) == [b"ab", b"ab/f"]
    assert index.pending == {b"a": None, b"a/b": None, b"a/b/f": None}
    _check_children(index)
    assert index.remove_tree(b"a") == 0
    assert index.remove_tree(b"ab/f") == 1
    assert sorted(index.entries) == [b"ab"]
    _check_children(index)


def test_rename_tree() -> None:
    index = RootIndex()
    _tree(index, [b"a", b"a/b", b"a/b/f", b"ab", b"x"])
    before = dict(index.items())
    index.rename_tree(b"a", b"x/y")
    assert sorted(index.entries) == [b"ab", b"x", b"x/y", b"x/y/b", b"x/y/b/f"]
    assert index.get(b"x/y/b/f") == before[b"a/b/f"]
    assert index.get(b"x/y") == before[b"a"]
    assert index.pending[b"a/b/f"] is None
    assert index.pending[b"x/y/b/f"] == before[b"a/b/f"]
    _check_children(index)
    index.rename_tree(b"x/y/b/f", b"f")  # a single file, to the top
    assert index.get(b"f") == before[b"a/b/f"]
    assert index.subtree(b"x/y") == [b"x/y", b"x/y/b"]
    _check_children(index)


def test_rollback_undoes_everything_since_the_checkpoint() -> None:
    index = RootIndex()
    _tree(index, [b"a", b"a/b", b"a/b/f", b"c", b"c/f", b"d"])
    index.checkpoint()
    kept = dict(index.items())
    index.put(b"d", _file(50))  # changed
    index.put(b"new", _dir(51))  # added
    index.put(b"new/f", _file(52))
    index.remove_tree(b"c")  # removed
    index.rename_tree(b"a", b"new/a")  # moved
    index.put(b"new/a/b/f", _file(53))  # changed after the move
    index.remove_tree(b"new/a/b")
    touched = index.rollback()
    assert dict(index.items()) == kept
    _check_children(index)
    assert set(touched) >= {b"d", b"new", b"new/f", b"c", b"c/f", b"a", b"a/b", b"a/b/f",
                            b"new/a", b"new/a/b", b"new/a/b/f"}
    # The rolled-back state is what the next commit writes.
    assert index.pending[b"d"] == kept[b"d"]
    assert index.pending[b"c/f"] == kept[b"c/f"]
    assert index.pending[b"new/a/b/f"] is None
    # A second rollback has nothing to undo.
    assert index.rollback() == []
    assert dict(index.items()) == kept


def test_checkpoint_keeps_earlier_changes() -> None:
    index = RootIndex()
    index.put(b"a", _file(1))
    index.checkpoint()
    index.put(b"a", _file(2))
    index.put(b"b", _file(3))
    index.checkpoint()
    index.put(b"a", _file(4))
    assert index.rollback() == [b"a"]
    assert dict(index.items()) == {b"a": _file(2), b"b": _file(3)}


def test_load_is_not_a_change() -> None:
    index = RootIndex()
    index.load(b"a", _dir(1))
    index.load(b"a/f", _file(2))
    assert index.pending == {}
    assert index.rollback() == []
    assert len(index) == 2
    _check_children(index)


def test_clear() -> None:
    index = RootIndex()
    _tree(index, [b"a", b"a/f"])
    index.clear()
    assert len(index) == 0
    assert index.pending == {}
    assert index.rollback() == []
    _check_children(index)


_NAMES = [b"a", b"b", b"a/x", b"a/y", b"b/x", b"a/x/f", b"a/y/f", b"b/x/f", b"ab", b"ab/f"]

_ops = st.lists(
    st.one_of(
        st.tuples(st.just("put"), st.sampled_from(_NAMES), st.integers(1, 5)),
        st.tuples(st.just("remove"), st.sampled_from(_NAMES), st.just(0)),
        st.tuples(st.just("rename"), st.sampled_from(_NAMES), st.sampled_from(range(len(_NAMES)))),
        st.tuples(st.just("checkpoint"), st.just(b""), st.just(0)),
        st.tuples(st.just("rollback"), st.just(b""), st.just(0)),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(_ops)
def test_root_index_against_a_model(ops: list[tuple[str, bytes, int]]) -> None:
    """Random puts, removals, renames, checkpoints and rollbacks against a plain dict. As the
    change builder does, a path is only added below an indexed parent."""
    index = RootIndex()
    model: dict[bytes, IndexEntry] = {}
    saved: dict[bytes, IndexEntry] = {}
    for op, path, arg in ops:
        if op == "put":
            if parent_of(path) and parent_of(path) not in model:
                continue
            index.put(path, _file(arg))
            model[path] = _file(arg)
        elif op == "remove":
            gone = [p for p in model if is_under(p, path)]
            assert index.remove_tree(path) == len(gone)
            for p in gone:
                del model[p]
        elif op == "rename":
            dst = _NAMES[arg]
            if path not in model or is_under(dst, path) or is_under(path, dst) \
                    or (parent_of(dst) and parent_of(dst) not in model):
                continue
            index.remove_tree(dst)
            for p in [p for p in model if is_under(p, dst)]:
                del model[p]
            moved = {p: e for p, e in model.items() if is_under(p, path)}
            index.rename_tree(path, dst)
            for p, e in moved.items():
                del model[p]
                model[dst + p[len(path):]] = e
        elif op == "checkpoint":
            index.checkpoint()
            saved = dict(model)
        else:
            index.rollback()
            model = dict(saved)
        assert dict(index.items()) == model
        _check_children(index)


# --- FileIndex ----------------------------------------------------------------------------------


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "spool" / "index.db"


def _reload(db: Path, roots: int = 2) -> FileIndex:
    return FileIndex(db, roots)


def _contents(index: FileIndex) -> list[dict[bytes, IndexEntry]]:
    return [dict(root.items()) for root in index.roots]


def test_commit_and_reload_equal_memory(db: Path) -> None:
    index = FileIndex(db, 2)
    assert db.parent.is_dir()
    r0, r1 = index.roots
    r0.put(b"", _dir(0))
    r0.put(b"d", _dir(1))
    r0.put(b"d/f", _file(2, size=5, digests=b"\x02" * 32))
    r0.put(b"d/empty", _file(3, size=0, digests=b""))
    r0.put(b"d/unknown", _file(4, digests=None))
    r0.put(b"d/stale", _file(5).stale())
    r0.put(b"d/link", IndexEntry(EntryKind.SYMLINK, 3, 7, 0, 6, b"/t\xff"))
    r1.put(b"\xff\xfe name", _file(7))
    r1.put(b"d", _file(8))  # the same path in another root is another entry
    assert index.pending == 9
    index.commit()
    assert index.pending == 0
    expected = _contents(index)
    index.close()

    again = _reload(db)
    try:
        assert _contents(again) == expected
        assert again.roots[0].get(b"d/empty") == _file(3, size=0, digests=b"")
        assert again.roots[0].get(b"d/unknown") == _file(4, digests=None)
        assert again.pending == 0
        _check_children(again.roots[0])
        assert sorted(again.roots[0].subtree(b"d")) == [
            b"d", b"d/empty", b"d/f", b"d/link", b"d/stale", b"d/unknown"]
        assert again.rollback() == []  # loading is not a change
    finally:
        again.close()


def test_uncommitted_changes_are_not_persisted(db: Path) -> None:
    index = FileIndex(db, 1)
    index.roots[0].put(b"a", _file(1))
    index.commit()
    index.roots[0].put(b"b", _file(2))
    index.roots[0].put(b"a", _file(3))
    index.close()
    again = _reload(db, 1)
    try:
        assert _contents(again) == [{b"a": _file(1)}]
    finally:
        again.close()


def test_removals_and_renames_are_persisted(db: Path) -> None:
    index = FileIndex(db, 1)
    root = index.roots[0]
    _tree(root, [b"a", b"a/b", b"a/b/f", b"c", b"c/f"])
    index.commit()
    root.remove_tree(b"c")
    root.rename_tree(b"a", b"z")
    index.commit()
    expected = _contents(index)
    index.close()
    again = _reload(db, 1)
    try:
        assert _contents(again) == expected
        assert sorted(expected[0]) == [b"z", b"z/b", b"z/b/f"]
    finally:
        again.close()


def test_rollback_then_commit_persists_the_rolled_back_state(db: Path) -> None:
    index = FileIndex(db, 2)
    index.roots[0].put(b"a", _file(1))
    index.roots[1].put(b"b", _file(2))
    index.commit()
    index.checkpoint()
    index.roots[0].put(b"a", _file(3))
    index.roots[0].put(b"new", _file(4))
    index.roots[1].remove_tree(b"b")
    assert sorted(index.rollback()) == [(0, b"a"), (0, b"new"), (1, b"b")]
    index.commit()
    index.close()
    again = _reload(db)
    try:
        assert _contents(again) == [{b"a": _file(1)}, {b"b": _file(2)}]
    finally:
        again.close()


def test_committed_seq(db: Path) -> None:
    index = FileIndex(db, 1)
    assert index.committed_seq == 0
    index.commit(17)  # nothing pending: the sequence number alone is written
    assert index.committed_seq == 17
    index.roots[0].put(b"a", _file(1))
    index.commit(18)
    index.commit()  # nothing to do
    index.close()
    again = _reload(db, 1)
    try:
        assert again.committed_seq == 18
        assert len(again.roots[0]) == 1
    finally:
        again.close()


def test_a_failed_commit_writes_nothing_and_can_be_retried(db: Path) -> None:
    index = FileIndex(db, 1)
    root = index.roots[0]
    root.put(b"a", _file(1))
    root.put(b"b", IndexEntry(EntryKind.FILE, 2**70, 0, 0o644, 1))  # too large for SQLite
    with pytest.raises(OverflowError):
        index.commit(5)
    assert index.pending == 2  # still to be written
    root.put(b"b", _file(2))
    index.commit(6)  # the failed transaction was rolled back: this one works
    index.close()
    again = _reload(db, 1)
    try:
        assert _contents(again) == [{b"a": _file(1), b"b": _file(2)}]
        assert again.committed_seq == 6
    finally:
        again.close()


def test_meta_and_valid_flag(db: Path) -> None:
    index = FileIndex(db, 1)
    assert not index.valid
    assert index.get_meta("targets") is None
    index.set_meta("targets", "r1,r2")
    index.roots[0].put(b"a", _file(1))
    index.mark_valid()  # commits pending changes first
    assert index.valid
    assert index.pending == 0
    index.close()
    again = _reload(db, 1)
    try:
        assert again.valid
        assert again.get_meta("targets") == "r1,r2"
        assert len(again.roots[0]) == 1
    finally:
        again.close()


def test_clear_in_place_and_durably(db: Path) -> None:
    index = FileIndex(db, 2)
    roots = list(index.roots)
    _tree(index.roots[0], [b"a", b"a/f"])
    index.roots[1].put(b"b", _file(3))
    index.commit(9)
    index.mark_valid()
    index.roots[0].put(b"uncommitted", _file(4))
    index.checkpoint()
    index.roots[0].put(b"undoable", _file(5))
    index.clear()
    assert index.roots == roots  # the same objects: change builders hold them
    assert all(a is b for a, b in zip(index.roots, roots, strict=True))
    assert _contents(index) == [{}, {}]
    assert index.pending == 0
    assert index.rollback() == []
    assert not index.valid
    _check_children(index.roots[0])
    index.close()
    again = _reload(db)
    try:
        assert _contents(again) == [{}, {}]
        assert not again.valid
        assert again.committed_seq == 9
    finally:
        again.close()


def test_reload_ignores_roots_beyond_the_scenario(db: Path) -> None:
    index = FileIndex(db, 3)
    index.roots[0].put(b"a", _file(1))
    index.roots[2].put(b"c", _file(3))
    index.commit()
    index.close()
    again = _reload(db, 1)
    try:
        assert _contents(again) == [{b"a": _file(1)}]
    finally:
        again.close()


def test_persisted_in_wal_mode(db: Path) -> None:
    index = FileIndex(db, 1)
    index.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


_entries = st.builds(
    IndexEntry,
    st.sampled_from([EntryKind.FILE, EntryKind.DIRECTORY, EntryKind.SYMLINK]),
    st.integers(0, 2**63 - 1),
    st.one_of(st.just(STALE), st.integers(-(2**63), 2**63 - 1)),
    st.integers(0, 0o7777),
    st.integers(0, 2**63 - 1),
    st.binary(max_size=20),
    st.one_of(st.none(), st.binary(max_size=64)),
)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1), st.sampled_from(_NAMES), st.one_of(st.none(),
                                                                               _entries)),
                max_size=30))
def test_reload_equals_memory(tmp_path_factory: pytest.TempPathFactory,
                              changes: list[tuple[int, bytes, IndexEntry | None]]) -> None:
    db = tmp_path_factory.mktemp("idx") / "index.db"
    index = FileIndex(db, 2)
    try:
        for step, (number, path, entry) in enumerate(changes):
            if entry is None:
                index.roots[number].remove_tree(path)
            else:
                index.roots[number].put(path, entry)
            if step % 7 == 0:
                index.commit(step)
        index.commit()
        expected = _contents(index)
    finally:
        index.close()
    again = FileIndex(db, 2)
    try:
        assert _contents(again) == expected
    finally:
        again.close()
