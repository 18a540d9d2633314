"""scan_tree: order, kinds, never following symlinks, and all-or-nothing listings."""

from __future__ import annotations

import errno
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from standby.protocol._messages import Entry, EntryKind
from standby.replica.confine import ConfinedRoot
from standby.storage.tree import ListingError, LocalEntry, scan_dir_fd, scan_tree


def _paths(entries: list[LocalEntry]) -> list[bytes]:
    return [e.path for e in entries]


def _by_path(entries: list[LocalEntry]) -> dict[bytes, LocalEntry]:
    return {e.path: e for e in entries}


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A sibling of the root, holding what a symlink might lead to."""
    out = tmp_path / "outside"
    (out / "secret-dir").mkdir(parents=True)
    (out / "secret-dir" / "secret").write_bytes(b"secret")
    (out / "secret-file").write_bytes(b"secret")
    return out


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "root"
    r.mkdir()
    return r


def test_order_kinds_and_fields(root: Path, outside: Path) -> None:
    (root / "b").mkdir(mode=0o750)
    (root / "b" / "file").write_bytes(b"12345")
    (root / "a").write_bytes(b"hello")
    os.chmod(root / "a", 0o640)
    os.utime(root / "a", ns=(1, -1_500_000_000))  # before 1970
    (root / "a-c").write_bytes(b"")
    (root / "a.d").mkdir()
    (root / "a.d" / "x").write_bytes(b"x")
    (root / "sub" / "deeper" / "deepest").mkdir(parents=True)
    (root / "sub" / "deeper" / "deepest" / "f").write_bytes(b"f")
    os.symlink("a", root / "link")
    os.symlink("/nonexistent/\xff", root / "dangling")
    os.symlink(outside, root / "out")
    os.mkfifo(root / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    cwd = os.getcwd()
    os.chdir(root)  # a short relative name: AF_UNIX paths are limited to 108 bytes
    try:
        sock.bind("sock")
    finally:
        os.chdir(cwd)
        sock.close()
    (root / "hard1").write_bytes(b"same")
    os.link(root / "hard1", root / "hard2")
    # Our own staging files and directories are skipped, at any depth.
    (root / ".standby-tmp-0123").write_bytes(b"partial")
    (root / "b" / ".standby-tmp-4567").write_bytes(b"partial")
    (root / ".standby-tmp-dir").mkdir()
    (root / ".standby-tmp-dir" / "inner").write_bytes(b"x")

    entries = scan_tree(root)

    assert _paths(entries) == [
        b"a",
        b"a-c",
        b"a.d",
        b"a.d/x",
        b"b",
        b"b/file",
        b"dangling",
        b"fifo",
        b"hard1",
        b"hard2",
        b"link",
        b"out",
        b"sock",
        b"sub",
        b"sub/deeper",
        b"sub/deeper/deepest",
        b"sub/deeper/deepest/f",
    ]
    by = _by_path(entries)
    a = by[b"a"]
    st = os.lstat(root / "a")
    assert (a.kind, a.size, a.mode, a.mtime_ns, a.target) == (
        EntryKind.FILE,
        5,
        0o640,
        -1_500_000_000,
        b"",
    )
    assert (a.dev, a.ino, a.nlink) == (st.st_dev, st.st_ino, 1)
    b = by[b"b"]
    assert (b.kind, b.size, b.mode) == (EntryKind.DIRECTORY, 0, 0o750)
    assert b.mtime_ns == os.lstat(root / "b").st_mtime_ns
    assert by[b"link"].kind == EntryKind.SYMLINK
    assert by[b"link"].target == b"a"
    assert by[b"link"].size == 1
    assert by[b"dangling"].target == b"/nonexistent/\xc3\xbf"
    assert by[b"out"].target == os.fsencode(outside)
    assert by[b"fifo"].kind == EntryKind.OTHER
    assert by[b"sock"].kind == EntryKind.OTHER
    assert by[b"fifo"].size == 0
    h1, h2 = by[b"hard1"], by[b"hard2"]
    assert (h1.dev, h1.ino) == (h2.dev, h2.ino)
    assert h1.nlink == h2.nlink == 2

    wire = a.to_wire()
    assert wire == Entry(
        path=b"a", kind=EntryKind.FILE, size=5, mtime_ns=-1_500_000_000, mode=0o640
    )
    assert by[b"link"].to_wire().target == b"a"


def test_sorted_by_bytes_and_parents_first(root: Path) -> None:
    names = [b"z", b"a", b"a b", b"a-b", b"a0", b"\xff", b"A", b"a.b", b"a_b"]
    for n in names:
        os.mkdir(os.fsencode(root) + b"/" + n)
        for m in names[:3]:
            open(os.fsencode(root) + b"/" + n + b"/" + m, "wb").close()
    paths = _paths(scan_tree(root))
    assert paths == sorted(paths)
    assert len(paths) == len(names) * 4
    seen: set[bytes] = set()
    for p in paths:
        parent = p.rpartition(b"/")[0]
        assert not parent or parent in seen
        seen.add(p)


def test_never_follows_symlinks(root: Path, outside: Path) -> None:
    (root / "real").mkdir()
    (root / "real" / "f").write_bytes(b"f")
    os.symlink(outside, root / "out")  # a directory outside
    os.symlink("real", root / "in")  # a directory inside
    os.symlink(outside / "secret-file", root / "file-out")
    entries = scan_tree(root)
    assert _paths(entries) == [b"file-out", b"in", b"out", b"real", b"real/f"]
    assert {e.kind for e in entries if e.path in (b"in", b"out", b"file-out")} == {
        EntryKind.SYMLINK
    }
    # The symlink's own size, not its target's.
    assert _by_path(entries)[b"file-out"].size == len(os.fsencode(outside / "secret-file"))


def test_root_may_be_a_symlink(tmp_path: Path, root: Path) -> None:
    (root / "f").write_bytes(b"x")
    os.symlink(root, tmp_path / "alias")
    assert _paths(scan_tree(tmp_path / "alias")) == [b"f"]
    assert _paths(scan_tree(os.fsencode(tmp_path / "alias"))) == [b"f"]


def test_non_utf8_and_control_names(root: Path) -> None:
    broot = os.fsencode(root)
    names = [b"caf\xc3\xa9", b"\xff\xfe-latin1-\xe9", b"new\nline", b"tab\there"]
    for n in names:
        os.mkdir(broot + b"/" + n)
        with open(broot + b"/" + n + b"/" + n, "wb") as f:
            f.write(n)
    paths = _paths(scan_tree(broot))
    assert sorted(paths) == paths
    assert set(paths) == {n for n in names} | {n + b"/" + n for n in names}
    by = _by_path(scan_tree(broot))
    assert by[b"\xff\xfe-latin1-\xe9/\xff\xfe-latin1-\xe9"].size == len(b"\xff\xfe-latin1-\xe9")


def test_deep_tree_beyond_path_max(root: Path) -> None:
    name = b"d" * 200
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(25):  # 25 * 201 bytes > PATH_MAX (4096)
            os.mkdir(name, dir_fd=fd)
            nfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        os.close(os.open(b"leaf", os.O_CREAT | os.O_WRONLY, 0o644, dir_fd=fd))
    finally:
        os.close(fd)
    deep = b"/".join([name] * 25) + b"/leaf"
    assert len(deep) > 4096
    with pytest.raises(OSError, match="too long"):
        os.lstat(os.fsencode(root) + b"/" + deep)  # the test really is beyond PATH_MAX
    entries = scan_tree(root)
    assert len(entries) == 26
    assert entries[-1].path == deep
    assert entries[-1].kind == EntryKind.FILE


def test_many_entries(root: Path) -> None:
    broot = os.fsencode(root)
    for d in range(20):
        os.mkdir(b"%s/d%02d" % (broot, d))
        for f in range(250):
            open(b"%s/d%02d/f%03d" % (broot, d, f), "wb").close()
    entries = scan_tree(root)
    assert len(entries) == 20 * 251
    assert _paths(entries) == sorted(_paths(entries))
    assert sum(e.kind == EntryKind.DIRECTORY for e in entries) == 20


def test_confined_root_scan_matches(root: Path, outside: Path) -> None:
    (root / "d").mkdir()
    (root / "d" / "f").write_bytes(b"x")
    os.symlink(outside, root / "d" / "out")
    with ConfinedRoot(root) as cr:
        assert cr.scan() == scan_tree(root)


def test_scan_dir_fd_leaves_descriptor_open(root: Path) -> None:
    (root / "f").write_bytes(b"x")
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert _paths(scan_dir_fd(fd)) == [b"f"]
        os.fstat(fd)  # still open
    finally:
        os.close(fd)


# --- all or nothing -------------------------------------------------------------------------------


def test_missing_root_or_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ListingError) as info:
        scan_tree(tmp_path / "missing")
    assert "missing" in str(info.value)
    assert "No such file" in str(info.value)
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(ListingError, match="Not a directory"):
        scan_tree(tmp_path / "file")


def test_unreadable_directory_really(tmp_path: Path) -> None:
    """A real permission failure: the scan runs in a forked child that dropped to uid 'nobody'
    when we are root (chmod does not stop root), or in-process otherwise."""
    base = Path(tempfile.mkdtemp(prefix="standby-tree-"))  # world-traversable, unlike tmp_path
    try:
        os.chmod(base, 0o755)
        r = base / "root"
        (r / "ok").mkdir(parents=True)
        (r / "ok" / "f").write_bytes(b"x")
        (r / "zlocked" / "inner").mkdir(parents=True)
        (r / "zlocked" / "inner" / "f").write_bytes(b"x")
        os.chmod(r / "zlocked", 0o000)
        try:
            if os.geteuid() != 0:
                with pytest.raises(ListingError) as info:
                    scan_tree(r)
                message = str(info.value)
            else:
                message = _scan_as_nobody(r)
        finally:
            os.chmod(r / "zlocked", 0o755)
        assert message.startswith(f"ListingError: cannot list '{r}/zlocked'") or message.startswith(
            f"cannot list '{r}/zlocked'"
        )
        assert "Permission denied" in message
    finally:
        shutil.rmtree(base)


def _scan_as_nobody(r: Path) -> str:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 1
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            try:
                entries = scan_tree(r)
                out = f"returned {len(entries)} entries"
            except ListingError as e:
                out = f"ListingError: {e}"
            os.write(write_end, out.encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as f:
        result = f.read().decode()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return result


class _FailingScandir:
    """Wraps os.scandir: listing the directory with inode ``ino`` fails after ``after`` entries."""

    def __init__(self, real: Any, ino: int, after: int, err: int) -> None:
        self.real, self.ino, self.after, self.err = real, ino, after, err

    def __call__(self, target: Any) -> Any:
        it = self.real(target)
        if isinstance(target, int) and os.fstat(target).st_ino == self.ino:
            return _FailingIterator(it, self.after, self.err)
        return it


class _FailingIterator:
    def __init__(self, it: Any, after: int, err: int) -> None:
        self.it, self.after, self.err = it, after, err

    def __enter__(self) -> _FailingIterator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.it.close()

    def __iter__(self) -> Iterator[os.DirEntry[str]]:
        for n, entry in enumerate(self.it):
            if n == self.after:
                raise OSError(self.err, os.strerror(self.err))
            yield entry
        if self.after < 0:
            raise OSError(self.err, os.strerror(self.err))


@pytest.mark.parametrize(("after", "err"), [(0, errno.EACCES), (2, errno.EIO), (-1, errno.EIO)])
def test_failure_mid_listing_is_an_error_not_a_partial_list(
    root: Path, monkeypatch: pytest.MonkeyPatch, after: int, err: int
) -> None:
    """Simulation: os.scandir is monkeypatched to fail (EACCES/EIO) on one directory, at its
    start, after two entries, or at its end."""
    (root / "a").mkdir()
    (root / "m").mkdir()
    for i in range(5):
        (root / "m" / f"f{i}").write_bytes(b"x")
    (root / "z").write_bytes(b"x")
    monkeypatch.setattr(
        os, "scandir", _FailingScandir(os.scandir, os.stat(root / "m").st_ino, after, err)
    )
    with pytest.raises(ListingError) as info:
        scan_tree(root)
    assert info.value.path == os.fsencode(root / "m")
    assert os.strerror(err) in str(info.value)


def test_directory_replaced_by_symlink_between_readdir_and_open(
    root: Path, outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Simulation of a race: os.open is wrapped so that, just before the scan opens 'victim',
    the directory is moved away and a symlink to the outside takes its place."""
    (root / "victim").mkdir()
    (root / "victim" / "f").write_bytes(b"x")
    real_open = os.open

    def racing_open(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        if path == "victim" and dir_fd is not None and not (root / "moved").exists():
            os.rename(root / "victim", root / "moved")
            os.symlink(outside, root / "victim")
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", racing_open)
    entries = scan_tree(root)
    by = _by_path(entries)
    assert by[b"victim"].kind == EntryKind.SYMLINK
    assert not [p for p in by if p.startswith(b"victim/")]
    assert b"moved" not in by  # created after the root was read


def test_directory_vanishing_between_readdir_and_open(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Simulation of a race: the directory is deleted just before the scan opens it; it no
    longer exists, so it is simply not listed."""
    (root / "gone").mkdir()
    (root / "kept").write_bytes(b"x")
    real_open = os.open

    def racing_open(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        if path == "gone" and dir_fd is not None and (root / "gone").exists():
            os.rmdir(root / "gone")
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", racing_open)
    assert _paths(scan_tree(root)) == [b"kept"]


def test_listing_error_message_escapes_bytes() -> None:
    e = ListingError(b"/srv/\xff\nx", "[Errno 13] Permission denied")
    assert str(e).startswith("cannot list '/srv/\\xff\\x0ax': [Errno 13] Permission denied")


def test_descriptors_are_not_leaked(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (root / "a" / "b" / "c").mkdir(parents=True)
    (root / "a" / "b" / "c" / "f").write_bytes(b"x")
    before = len(os.listdir("/proc/self/fd"))
    scan_tree(root)
    assert len(os.listdir("/proc/self/fd")) == before
    monkeypatch.setattr(
        os,
        "scandir",
        _FailingScandir(os.scandir, os.stat(root / "a" / "b" / "c").st_ino, 0, errno.EIO),
    )
    with pytest.raises(ListingError):
        scan_tree(root)
    monkeypatch.undo()
    assert len(os.listdir("/proc/self/fd")) == before


def test_mode_keeps_special_bits(root: Path) -> None:
    (root / "suid").write_bytes(b"x")
    os.chmod(root / "suid", 0o4755)
    (root / "sticky").mkdir()
    os.chmod(root / "sticky", 0o1777)
    by = _by_path(scan_tree(root))
    assert by[b"suid"].mode == 0o4755
    assert by[b"sticky"].mode == 0o1777


def test_staging_files_are_reported_when_asked(tmp_path: Path) -> None:
    """Staging files stay out of the listing; a caller that asks gets their paths."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / ".standby-tmp-1").write_bytes(b"x")
    (tmp_path / ".standby-tmp-2").write_bytes(b"x")
    (tmp_path / "keep").write_bytes(b"x")
    staging: list[bytes] = []
    listed = [e.path for e in scan_tree(tmp_path, staging=staging)]
    assert listed == [b"d", b"keep"]
    assert sorted(staging) == [b".standby-tmp-2", b"d/.standby-tmp-1"]
