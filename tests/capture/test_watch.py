"""Watcher: real inotify on a temporary tree; every change below the root comes out as an event
on its relative path, in order, and lost events come out as Overflow.

Most tests end with :func:`drain`: it creates a fresh sentinel file and reads until the sentinel
is reported. inotify keeps order, so everything done before is in the list, without sleeping.
"""

from __future__ import annotations

import errno
import fcntl
import itertools
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from standby.capture import (
    PAIR_WAIT,
    Changed,
    Event,
    Moved,
    Overflow,
    Removed,
    Watcher,
    WatchError,
)
from standby.capture.watch import _WatchMap

_SENTINEL = b"zz-sentinel-"
_counter = itertools.count()


def collect(watcher: Watcher, done: Callable[[list[Event]], bool],
            timeout: float = 5.0) -> list[Event]:
    """Read until ``done(events)`` holds; fail after ``timeout`` seconds."""
    events: list[Event] = []
    deadline = time.monotonic() + timeout
    while not done(events):
        left = deadline - time.monotonic()
        if left <= 0:
            pytest.fail(f"timed out; events so far: {events}")
        events += watcher.read(min(left, 0.5))
    return events


def _is_sentinel(event: Event) -> bool:
    paths = (event.src, event.dst) if isinstance(event, Moved) else (
        () if isinstance(event, Overflow) else (event.path,))
    return any(p.startswith(_SENTINEL) for p in paths)


def drain(watcher: Watcher, root: Path) -> list[Event]:
    """Every event caused by what was done so far (sentinel events left out)."""
    name = _SENTINEL + str(next(_counter)).encode()
    (root / os.fsdecode(name)).touch()
    events = collect(watcher, lambda evs: Changed(name, False) in evs)
    return [e for e in events if not _is_sentinel(e)]


def kernel_watches(watcher: Watcher) -> int:
    """Watches the kernel holds for this inotify instance (one fdinfo line each)."""
    with open(f"/proc/self/fdinfo/{watcher.fileno()}") as f:
        return sum(line.startswith("inotify wd:") for line in f)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    r.mkdir()
    return r


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A sibling of the root: moves from here are moves in, moves to here are moves out."""
    o = tmp_path / "outside"
    o.mkdir()
    return o


@pytest.fixture
def start(root: Path) -> Iterator[Callable[..., Watcher]]:
    """Start a watcher on ``root`` (after the test prepared the tree); closed afterwards."""
    started: list[Watcher] = []

    def _start(excluded: Callable[[bytes, bool], bool] | None = None,
               cls: type[Watcher] = Watcher) -> Watcher:
        watcher = cls(root, excluded)
        started.append(watcher)
        watcher.start()
        return watcher

    yield _start
    for watcher in started:
        watcher.close()


# -- files -------------------------------------------------------------------------------

def _create(root: Path) -> None:
    (root / "f").write_bytes(b"new")


def _write(root: Path) -> None:
    with open(root / "f", "r+b") as f:
        f.write(b"X")


def _append(root: Path) -> None:
    with open(root / "f", "ab") as f:
        f.write(b"more")


def _truncate(root: Path) -> None:
    os.truncate(root / "f", 1)


def _chmod(root: Path) -> None:
    os.chmod(root / "f", 0o600)


def _symlink(root: Path) -> None:
    os.symlink("elsewhere", root / "f")


def _symlink_to_dir(root: Path) -> None:
    os.symlink(root / "d", root / "f")


@pytest.mark.parametrize("change", [_create, _write, _append, _truncate, _chmod, _symlink,
                                    _symlink_to_dir])
def test_file_change_is_reported(root: Path, start: Callable[..., Watcher],
                                 change: Callable[[Path], None]) -> None:
    """Each kind of change to a file (or a symlink) is a Changed on its path, nothing else;
    a symlink to a directory is a non-directory and is not followed (not watched)."""
    (root / "d").mkdir()
    if change not in (_create, _symlink, _symlink_to_dir):
        (root / "f").write_bytes(b"old content")
    watcher = start()
    change(root)
    events = drain(watcher, root)
    assert set(events) == {Changed(b"f", False)}
    assert watcher.watch_count == 2  # root and d


def test_deep_tree_made_at_once_is_reported_whole(root: Path,
                                                  start: Callable[..., Watcher]) -> None:
    """mkdir -p and files at every level, faster than the watcher can add watches: every
    directory and file is reported (a directory before its contents), and all are watched."""
    watcher = start()
    deep = root / "a" / "b" / "c" / "d" / "e"
    os.makedirs(deep)
    level = root
    expected: dict[bytes, bool] = {}
    for part in ("a", "b", "c", "d", "e"):
        level = level / part
        (level / "file").write_bytes(b"x")
        rel = os.fsencode(level.relative_to(root))
        expected[rel] = True
        expected[rel + b"/file"] = False
    events = drain(watcher, root)
    changed = [e for e in events if isinstance(e, Changed)]
    assert {c.path: c.is_dir for c in changed} == expected
    first: dict[bytes, int] = {}
    for i, c in enumerate(changed):
        first.setdefault(c.path, i)
    assert all(first[p.rpartition(b"/")[0]] < first[p] for p in first if b"/" in p)
    assert watcher.watch_count == kernel_watches(watcher) == 6
    (deep / "later").write_bytes(b"y")
    assert Changed(b"a/b/c/d/e/later", False) in drain(watcher, root)


def test_directory_made_and_renamed_before_read_is_watched_at_new_name(
        root: Path, start: Callable[..., Watcher]) -> None:
    """mkdir d; touch d/x; mv d e, all before the watcher reads: d could never be watched, so
    e is watched and listed when the rename is read."""
    watcher = start()
    (root / "d").mkdir()
    (root / "d" / "x").write_bytes(b"")
    os.rename(root / "d", root / "e")
    events = drain(watcher, root)
    assert Moved(b"d", b"e", True) in events
    assert Changed(b"e/x", False) in events
    (root / "e" / "y").write_bytes(b"")
    assert drain(watcher, root) == [Changed(b"e/y", False)]


def test_directory_made_in_a_directory_renamed_before_read_is_found(
        root: Path, start: Callable[..., Watcher]) -> None:
    """mkdir p/d; touch p/d/x; mv p q, before the watcher reads: when the creation of p/d is
    read, p/d is gone (p moved on), so d is watched and listed once the rename is read."""
    (root / "p").mkdir()
    watcher = start()
    (root / "p" / "d").mkdir()
    (root / "p" / "d" / "x").write_bytes(b"")
    os.rename(root / "p", root / "q")
    assert drain(watcher, root) == [Changed(b"p/d", True), Moved(b"p", b"q", True),
                                    Changed(b"q/d/x", False)]
    (root / "q" / "d" / "y").write_bytes(b"")
    assert drain(watcher, root) == [Changed(b"q/d/y", False)]
    assert watcher.watch_count == kernel_watches(watcher) == 3


# -- renames -----------------------------------------------------------------------------

def test_rename_file_within_directory(root: Path, start: Callable[..., Watcher]) -> None:
    (root / "f").write_bytes(b"x")
    watcher = start()
    os.rename(root / "f", root / "g")
    assert drain(watcher, root) == [Moved(b"f", b"g", False)]


def test_rename_file_across_directories(root: Path, start: Callable[..., Watcher]) -> None:
    (root / "a").mkdir()
    (root / "b").mkdir()
    (root / "a" / "f").write_bytes(b"x")
    watcher = start()
    os.rename(root / "a" / "f", root / "b" / "g")
    assert drain(watcher, root) == [Moved(b"a/f", b"b/g", False)]


def test_renamed_directory_reports_new_paths(root: Path, start: Callable[..., Watcher]) -> None:
    """After a/d moves to b/e, a write in (a subdirectory of) it is reported at b/e/..."""
    (root / "a" / "d" / "sub").mkdir(parents=True)
    (root / "b").mkdir()
    watcher = start()
    os.rename(root / "a" / "d", root / "b" / "e")
    (root / "b" / "e" / "y").write_bytes(b"1")
    (root / "b" / "e" / "sub" / "x").write_bytes(b"2")
    events = drain(watcher, root)
    assert events == [Moved(b"a/d", b"b/e", True), Changed(b"b/e/y", False),
                      Changed(b"b/e/sub/x", False)]
    assert watcher.watch_count == 5


def test_move_in_from_outside(root: Path, outside: Path, start: Callable[..., Watcher]) -> None:
    """A tree moved in is reported entry by entry and watched; a file moved in is Changed."""
    (outside / "tree" / "sub").mkdir(parents=True)
    (outside / "tree" / "a").write_bytes(b"1")
    (outside / "tree" / "sub" / "b").write_bytes(b"2")
    (outside / "file").write_bytes(b"3")
    watcher = start()
    os.rename(outside / "tree", root / "tree")
    os.rename(outside / "file", root / "file")
    events = drain(watcher, root)
    assert events == [Changed(b"tree", True), Changed(b"tree/a", False),
                      Changed(b"tree/sub", True), Changed(b"tree/sub/b", False),
                      Changed(b"file", False)]
    (root / "tree" / "sub" / "c").write_bytes(b"4")
    assert drain(watcher, root) == [Changed(b"tree/sub/c", False)]


def test_move_out(root: Path, outside: Path, start: Callable[..., Watcher]) -> None:
    """A file or tree moved out is Removed (after the pairing wait), its watches are dropped,
    and what happens to it outside is not reported."""
    (root / "tree" / "sub").mkdir(parents=True)
    (root / "file").write_bytes(b"x")
    watcher = start()
    assert watcher.watch_count == 3
    os.rename(root / "file", outside / "file")
    os.rename(root / "tree", outside / "tree")
    assert drain(watcher, root) == [Removed(b"file", False), Removed(b"tree", True)]
    assert watcher.watch_count == 1
    assert kernel_watches(watcher) == 1
    (outside / "tree" / "sub" / "x").write_bytes(b"y")
    assert drain(watcher, root) == []


def test_move_out_is_decided_after_a_short_wait(root: Path, outside: Path,
                                                start: Callable[..., Watcher]) -> None:
    """A MOVED_FROM alone at the end of a read costs the pairing wait, not more."""
    (root / "file").write_bytes(b"x")
    watcher = start()
    os.rename(root / "file", outside / "file")
    began = time.monotonic()
    events = watcher.read(1.0)
    elapsed = time.monotonic() - began
    assert events == [Removed(b"file", False)]
    assert PAIR_WAIT <= elapsed < PAIR_WAIT + 0.5


# -- deletions ---------------------------------------------------------------------------

def test_delete_file(root: Path, start: Callable[..., Watcher]) -> None:
    (root / "f").write_bytes(b"x")
    watcher = start()
    os.unlink(root / "f")
    assert drain(watcher, root) == [Removed(b"f", False)]


def test_delete_tree(root: Path, start: Callable[..., Watcher]) -> None:
    """rm -r reports every file and directory, each directory after its contents, and its
    watches are gone."""
    (root / "t" / "s").mkdir(parents=True)
    (root / "t" / "a").write_bytes(b"1")
    (root / "t" / "s" / "b").write_bytes(b"2")
    watcher = start()
    assert watcher.watch_count == 3
    shutil.rmtree(root / "t")
    events = drain(watcher, root)
    assert set(events) == {Removed(b"t", True), Removed(b"t/a", False), Removed(b"t/s", True),
                           Removed(b"t/s/b", False)}
    assert events.index(Removed(b"t/s/b", False)) < events.index(Removed(b"t/s", True))
    assert events[-1] == Removed(b"t", True)
    assert watcher.watch_count == 1
    assert kernel_watches(watcher) == 1


def test_events_keep_kernel_order(root: Path, outside: Path,
                                  start: Callable[..., Watcher]) -> None:
    """create, delete, create again; move out then create at the same name."""
    watcher = start()
    (root / "f").touch()
    os.unlink(root / "f")
    (root / "f").touch()
    os.rename(root / "f", outside / "f")
    (root / "f").touch()
    assert drain(watcher, root) == [
        Changed(b"f", False), Removed(b"f", False), Changed(b"f", False),
        Removed(b"f", False), Changed(b"f", False),
    ]


# -- what is not reported ----------------------------------------------------------------

def _no_tmp_no_cache(path: bytes, is_dir: bool) -> bool:
    return path.endswith(b".tmp") or (is_dir and path.rpartition(b"/")[2] == b"cache")


def test_excluded_paths_are_neither_watched_nor_reported(
        root: Path, start: Callable[..., Watcher]) -> None:
    (root / "cache").mkdir()
    (root / "y").write_bytes(b"")
    watcher = start(_no_tmp_no_cache)
    assert watcher.watch_count == 1
    (root / "cache" / "x").write_bytes(b"ignored")
    (root / "x.tmp").write_bytes(b"ignored")
    (root / "new" / "cache").mkdir(parents=True)
    (root / "new" / "cache" / "z").write_bytes(b"ignored")
    (root / "new" / "z.tmp").write_bytes(b"ignored")
    assert drain(watcher, root) == [Changed(b"new", True)]
    assert watcher.watch_count == 2
    # An editor's save: written under an excluded name, renamed into place.
    os.rename(root / "x.tmp", root / "x")
    os.rename(root / "y", root / "y.tmp")
    assert drain(watcher, root) == [Changed(b"x", False), Removed(b"y", False)]


def test_staging_files_are_not_reported(root: Path, start: Callable[..., Watcher]) -> None:
    watcher = start()
    (root / ".standby-tmp-123").write_bytes(b"staged")
    os.rename(root / ".standby-tmp-123", root / "f")
    assert drain(watcher, root) == [Changed(b"f", False)]


def test_root_itself_is_not_reported(root: Path, start: Callable[..., Watcher]) -> None:
    watcher = start()
    os.chmod(root, 0o700)
    assert drain(watcher, root) == []


def test_non_utf8_names_survive(root: Path, start: Callable[..., Watcher]) -> None:
    watcher = start()
    broot = os.fsencode(root)
    os.mkdir(broot + b"/d\xff")
    assert drain(watcher, root) == [Changed(b"d\xff", True)]
    with open(broot + b"/d\xff/caf\xe9", "wb") as f:
        f.write(b"x")
    os.rename(broot + b"/d\xff/caf\xe9", broot + b"/d\xff/\x80")
    assert drain(watcher, root) == [Changed(b"d\xff/caf\xe9", False),
                                    Moved(b"d\xff/caf\xe9", b"d\xff/\x80", False)]


# -- lost events -------------------------------------------------------------------------

_QUEUE_KNOB = Path("/proc/sys/fs/inotify/max_queued_events")
_KNOB_LOCK = "/tmp/standby-tests-inotify-knob.lock"


def test_queue_overflow_is_reported_and_watching_goes_on(root: Path) -> None:
    """With a 16-event queue, a burst overflows it: an Overflow naming the limit comes out, and
    a directory whose creation was lost in the overflow is watched anyway."""
    if os.geteuid() != 0:
        pytest.skip("lowering fs.inotify.max_queued_events needs root")
    # The knob is global: hold it for the instant the instance is created, under a lock so
    # that two test runs at once cannot take each other's 16 for the value to restore.
    with open(_KNOB_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        original = _QUEUE_KNOB.read_text()
        try:
            _QUEUE_KNOB.write_text("16")
        except OSError as e:  # a read-only /proc/sys in a container
            pytest.skip(f"cannot lower fs.inotify.max_queued_events here: {e}")
        try:
            watcher = Watcher(root)  # the queue limit is taken when the instance is created
        finally:
            _QUEUE_KNOB.write_text(original)
    with watcher:
        watcher.start()
        for i in range(64):
            (root / f"f{i}").write_bytes(b"x")
        (root / "late").mkdir()
        events = collect(watcher, lambda evs: any(isinstance(e, Overflow) for e in evs))
        assert Overflow("inotify queue overflow (fs.inotify.max_queued_events=16)") in events
        assert watcher.watch_count == 2
        (root / "late" / "x").write_bytes(b"")
        assert Changed(b"late/x", False) in drain(watcher, root)


class SimulatedOutOfWatches(Watcher):
    """A Watcher whose kernel (simulated) is out of inotify watches for every directory
    named ``full*``; a real one would need the global fs.inotify.max_user_watches lowered."""

    def _add_watch(self, path: bytes, mask: int) -> int:
        if os.path.basename(path).startswith(b"full"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super()._add_watch(path, mask)


def _out_of_watches(path: Path) -> Overflow:
    limit = Path("/proc/sys/fs/inotify/max_user_watches").read_text().strip()
    return Overflow(f"out of inotify watches (fs.inotify.max_user_watches={limit}): "
                    f"'{path}' is not watched")


def test_out_of_watches_at_start_is_reported_at_once(root: Path,
                                                     start: Callable[..., Watcher]) -> None:
    """Simulated ENOSPC: start() goes on, and the next read returns the Overflow without
    waiting; the rest of the tree is watched."""
    (root / "full").mkdir()
    (root / "ok").mkdir()
    watcher = start(cls=SimulatedOutOfWatches)
    began = time.monotonic()
    assert watcher.read(5.0) == [_out_of_watches(root / "full")]
    assert time.monotonic() - began < 1.0
    assert watcher.watch_count == 2
    (root / "ok" / "x").write_bytes(b"")
    assert drain(watcher, root) == [Changed(b"ok/x", False)]


def test_out_of_watches_for_new_directory(root: Path, start: Callable[..., Watcher]) -> None:
    """Simulated ENOSPC on a new directory: it and its contents are still reported, then one
    Overflow counts what is not watched."""
    watcher = start(cls=SimulatedOutOfWatches)
    (root / "full1" / "full2").mkdir(parents=True)
    (root / "full1" / "full2" / "x").write_bytes(b"")
    events = drain(watcher, root)
    limit = Path("/proc/sys/fs/inotify/max_user_watches").read_text().strip()
    assert events == [
        Changed(b"full1", True), Changed(b"full1/full2", True),
        Changed(b"full1/full2/x", False),
        Overflow(f"out of inotify watches (fs.inotify.max_user_watches={limit}): "
                 f"'{root / 'full1'}' (and 1 more directories) is not watched"),
    ]
    assert watcher.watch_count == 1


# -- the root ----------------------------------------------------------------------------

def _read_until_error(watcher: Watcher) -> WatchError:
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        try:
            watcher.read(0.5)
        except WatchError as e:
            return e
    pytest.fail("no WatchError")


def test_root_deleted_is_fatal(root: Path, start: Callable[..., Watcher]) -> None:
    (root / "d").mkdir()
    watcher = start()
    shutil.rmtree(root)
    error = _read_until_error(watcher)
    assert str(error) == f"root '{root}' was deleted: stopped watching it"
    with pytest.raises(WatchError, match="was deleted"):
        watcher.read(0)


def test_root_moved_is_fatal(root: Path, tmp_path: Path, start: Callable[..., Watcher]) -> None:
    watcher = start()
    os.rename(root, tmp_path / "elsewhere")
    assert str(_read_until_error(watcher)) == f"root '{root}' was moved or renamed: stopped watching it"


def test_root_may_be_a_symlink(tmp_path: Path, root: Path) -> None:
    (root / "d").mkdir()
    link = tmp_path / "link"
    link.symlink_to(root)
    with Watcher(link) as watcher:
        watcher.start()
        assert watcher.watch_count == 2
        (root / "d" / "x").write_bytes(b"")
        assert drain(watcher, root) == [Changed(b"d/x", False)]


@pytest.mark.parametrize(("make", "message"), [
    (lambda p: None, "does not exist"),
    (lambda p: p.write_bytes(b""), "is not a directory"),
])
def test_start_refuses_a_root_that_is_not_a_directory(
        tmp_path: Path, make: Callable[[Path], None], message: str) -> None:
    where = tmp_path / "r"
    make(where)
    with Watcher(where) as watcher, pytest.raises(WatchError, match=message):
        watcher.start()


# -- the reading interface ---------------------------------------------------------------

def test_read_times_out_empty_without_blocking_longer(root: Path,
                                                      start: Callable[..., Watcher]) -> None:
    watcher = start()
    began = time.monotonic()
    assert watcher.read(0.05) == []
    assert 0.04 <= time.monotonic() - began < 0.5
    assert watcher.read(0) == []


def test_fileno_becomes_readable_on_change(root: Path, start: Callable[..., Watcher]) -> None:
    import select

    watcher = start()
    assert select.select([watcher.fileno()], [], [], 0)[0] == []
    (root / "f").touch()
    assert select.select([watcher.fileno()], [], [], 5)[0] == [watcher.fileno()]
    assert watcher.read(0) == [Changed(b"f", False)]


def test_lifecycle_misuse_and_repr(root: Path) -> None:
    watcher = Watcher(root)
    with pytest.raises(RuntimeError, match="before start"):
        watcher.read(0)
    watcher.start()
    assert repr(watcher) == f"<Watcher '{root}' watching watches=1>"
    with pytest.raises(RuntimeError, match="twice"):
        watcher.start()
    watcher.close()
    watcher.close()
    assert repr(watcher) == f"<Watcher '{root}' closed watches=1>"
    with pytest.raises(RuntimeError, match="closed"):
        watcher.read(0)


# -- the watch map (pure) ----------------------------------------------------------------

def test_watch_map_moves_and_forgets_subtrees() -> None:
    m = _WatchMap()
    for wd, path in enumerate([b"", b"a", b"a/b", b"ab", b"c"], start=1):
        m.add(wd, path)
    m.move_tree(b"a", b"c")  # c was an empty directory, replaced by the rename
    assert [m.path(wd) for wd in (1, 2, 3, 4, 5)] == [b"", b"c", b"c/b", b"ab", None]
    assert m.wd(b"c/b") == 3
    assert m.wd(b"a") is None
    assert sorted(m.forget_tree(b"c")) == [2, 3]
    assert len(m) == 2


def test_watch_map_keeps_newer_descriptor_of_a_path() -> None:
    """A directory replaced before the old watch's IN_IGNORED: forgetting the old descriptor
    leaves the path to the new one."""
    m = _WatchMap()
    m.add(1, b"d")
    m.add(2, b"d")
    m.forget(1)
    assert m.wd(b"d") == 2
    assert m.path(2) == b"d"
