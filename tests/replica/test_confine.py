"""ConfinedRoot: the replica writes only inside its root, whatever path or symlink it meets."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from standby.replica import confine
from standby.replica.confine import ConfinedRoot, PathRefused, punch_hole, split_relpath
from standby.storage.tree import scan_tree

Snapshot = dict[bytes, tuple[object, ...]]


def snapshot(top: Path, *, skip: Path | None = None) -> Snapshot:
    """Everything observable under ``top`` (never following symlinks): kind, mode, size, mtime,
    link count, content digest or link target. ``skip`` leaves out one subtree."""
    out: Snapshot = {}
    btop = os.fsencode(top)
    bskip = os.fsencode(skip) if skip is not None else None
    for dirpath, dirnames, filenames in os.walk(btop):
        if bskip is not None:
            dirnames[:] = [d for d in dirnames if dirpath + b"/" + d != bskip]
        for name in [*dirnames, *filenames, b""]:
            p = dirpath + b"/" + name if name else dirpath
            if bskip is not None and p == bskip:
                continue
            st = os.lstat(p)
            extra: object = None
            if stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    extra = hashlib.sha256(f.read()).hexdigest()
            elif stat.S_ISLNK(st.st_mode):
                extra = os.readlink(p)
            out[p] = (st.st_mode, st.st_size, st.st_mtime_ns, st.st_nlink, st.st_uid, extra)
    return out


@pytest.fixture
def sandbox(tmp_path: Path) -> Path:
    """tmp_path/root (the replica root, with a little content) and tmp_path/outside."""
    root = tmp_path / "root"
    (root / "inside").mkdir(parents=True)
    (root / "inside" / "file").write_bytes(b"inside")
    (root / "a" / "b").mkdir(parents=True)
    out = tmp_path / "outside"
    (out / "secret-dir" / "x").mkdir(parents=True)
    (out / "secret-dir" / "secret").write_bytes(b"secret")
    (out / "secret").write_bytes(b"secret")
    os.chmod(out / "secret", 0o600)
    os.utime(out / "secret", ns=(10**18, 10**18))
    return tmp_path


@pytest.fixture
def cr(sandbox: Path) -> Iterator[ConfinedRoot]:
    with ConfinedRoot(sandbox / "root") as r:
        yield r


def _create_temp(r: ConfinedRoot, p: bytes) -> None:
    fd, _ = r.create_temp(p)
    os.close(fd)


def _open_existing(r: ConfinedRoot, p: bytes) -> None:
    os.close(r.open_existing(p))


def _open_read(r: ConfinedRoot, p: bytes) -> None:
    fd = r.open_read(p)
    if fd is not None:
        os.close(fd)


def _commit_temp(r: ConfinedRoot, p: bytes) -> None:
    # A temp file really exists in the (valid) inside directory under this name.
    r.commit_temp(p, b".standby-tmp-0123456789abcdef", 0o644, 0)


# Every operation, as a function of the path under test.
OPS: dict[str, Callable[[ConfinedRoot, bytes], object]] = {
    "make_dir": lambda r, p: r.make_dir(p, 0o755),
    "make_dir_replace": lambda r, p: r.make_dir(p, 0o755, replace=True),
    "remove": lambda r, p: r.remove(p),
    "make_symlink": lambda r, p: r.make_symlink(p, b"inside/file", 10**9),
    "make_hardlink_at": lambda r, p: r.make_hardlink(p, b"inside/file"),
    "make_hardlink_of": lambda r, p: r.make_hardlink(b"inside/new-link", p),
    "set_attrs": lambda r, p: r.set_attrs(p, 0o777, 0),
    "create_temp": _create_temp,
    "commit_temp": _commit_temp,
    "discard_temp": lambda r, p: r.discard_temp(p, b".standby-tmp-0123456789abcdef"),
    "open_existing": _open_existing,
    "open_read": _open_read,
    "fsync_dir": lambda r, p: r.fsync_dir(p),
}

HOSTILE = [
    b"",
    b"/",
    b"/etc/passwd",
    b"//x",
    b".",
    b"..",
    b"../outside/secret",
    b"../../etc/passwd",
    b"a/..",
    b"a/../../outside/secret",
    b"a/b/../../../outside/secret",
    b"./a",
    b"a/./b",
    b"a//b",
    b"a/",
    b"inside/file/",
    b"a\x00b",
    b"\x00",
    b"inside/file\x00/../../outside",
    b".standby-tmp-0123456789abcdef",
    b"inside/.standby-tmp-0123456789abcdef",
]


# --- split_relpath and the exception ----------------------------------------------------------


@pytest.mark.parametrize("path", HOSTILE)
def test_split_relpath_refuses(path: bytes) -> None:
    with pytest.raises(PathRefused) as info:
        split_relpath(path)
    assert info.value.path == path


@pytest.mark.parametrize(
    ("path", "parts"),
    [
        (b"a", (b"a",)),
        (b"a/b/c", (b"a", b"b", b"c")),
        (b"...", (b"...",)),
        (b"..a/a..", (b"..a", b"a..")),
        (b"\xff/caf\xc3\xa9", (b"\xff", b"caf\xc3\xa9")),
        (b"back\\slash", (b"back\\slash",)),
        (b"x.standby-tmp-1", (b"x.standby-tmp-1",)),
    ],
)
def test_split_relpath_accepts(path: bytes, parts: tuple[bytes, ...]) -> None:
    assert split_relpath(path) == parts


def test_split_relpath_wants_bytes() -> None:
    with pytest.raises(TypeError):
        split_relpath("a/b")  # type: ignore[arg-type]


def test_path_refused_message() -> None:
    e = PathRefused(b"a/\xff\n/..", "component '..' is not allowed")
    assert str(e) == "path 'a/\\xff\\x0a/..' refused: component '..' is not allowed"
    assert str(e).isprintable()
    with pytest.raises(PathRefused, match="absolute path"):
        split_relpath(b"/etc")


# --- hostile paths, for every operation ---------------------------------------------------------


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("path", HOSTILE)
def test_hostile_path_refused_for_every_operation(
    sandbox: Path, cr: ConfinedRoot, op: str, path: bytes
) -> None:
    (sandbox / "root" / "inside" / ".standby-tmp-0123456789abcdef").write_bytes(b"tmp")
    before = snapshot(sandbox)
    with pytest.raises(PathRefused):
        OPS[op](cr, path)
    assert snapshot(sandbox) == before


# --- a symlink in the middle of a path ----------------------------------------------------------


def _plant(sandbox: Path, cr: ConfinedRoot, how: str) -> bytes:
    """Put a symlink leading out of (or around in) the root; return its relative name."""
    root, out = sandbox / "root", sandbox / "outside"
    if how == "planted-absolute":
        os.symlink(out, root / "link")
        return b"link"
    if how == "planted-deep":
        os.symlink(out, root / "a" / "b" / "link")
        return b"a/b/link"
    if how == "replicated-relative":  # the master itself sent it
        cr.make_symlink(b"link", b"../outside")
        return b"link"
    if how == "replicated-inside":  # even a link to a directory inside the root is not followed
        cr.make_symlink(b"link", b"inside")
        return b"link"
    raise AssertionError(how)


PLANTS = ["planted-absolute", "planted-deep", "replicated-relative", "replicated-inside"]


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("how", PLANTS)
@pytest.mark.parametrize("tail", [b"secret", b"secret-dir/x", b"new", b"secret-dir/new/deeper"])
def test_symlink_in_the_middle_refused_for_every_operation(
    sandbox: Path, cr: ConfinedRoot, op: str, how: str, tail: bytes
) -> None:
    link = _plant(sandbox, cr, how)
    before = snapshot(sandbox)
    with pytest.raises(PathRefused, match="is a symbolic link"):
        OPS[op](cr, link + b"/" + tail)
    assert snapshot(sandbox) == before


def test_symlink_swapped_in_after_caching(sandbox: Path, cr: ConfinedRoot) -> None:
    """A directory we walked (and cached) is replaced by a symlink to the outside: whatever the
    replica does next, nothing outside changes."""
    root = sandbox / "root"
    cr.make_dir(b"a/b/c", 0o755)
    fd, tmp = cr.create_temp(b"a/b/c/f")
    os.close(fd)
    cr.discard_temp(b"a/b/c/f", tmp)
    os.rename(root / "a", root / "a.old")
    os.symlink(sandbox / "outside", root / "a")
    os.symlink(sandbox / "outside", root / "a.old" / "b" / "c" / "secret-dir")
    outside_before = snapshot(sandbox / "outside")
    for op in OPS:
        for tail in (b"b/c/f", b"b/c/secret-dir/secret", b"secret"):
            with contextlib.suppress(PathRefused, OSError):
                OPS[op](cr, b"a/" + tail)
    assert snapshot(sandbox / "outside") == outside_before


# --- a symlink as the final name: operated on itself, never followed ----------------------------


def test_final_symlink_is_never_followed(sandbox: Path, cr: ConfinedRoot) -> None:
    root, out = sandbox / "root", sandbox / "outside"
    os.symlink(out / "secret", root / "to-file")
    os.symlink(out / "secret-dir", root / "to-dir")
    outside_before = snapshot(out)

    cr.set_attrs(b"to-file", 0o777, 123_456_789)
    assert os.lstat(root / "to-file").st_mtime_ns == 123_456_789
    with pytest.raises(PathRefused, match="symbolic link, not a regular file"):
        cr.open_existing(b"to-file")
    assert cr.open_read(b"to-file") is None
    with pytest.raises(FileExistsError, match="not a directory"):
        cr.make_dir(b"to-dir", 0o755)
    assert snapshot(out) == outside_before

    cr.remove(b"to-dir")
    assert not os.path.lexists(root / "to-dir")
    cr.make_dir(b"to-dir", 0o700)  # now a real directory
    assert stat.S_ISDIR(os.lstat(root / "to-dir").st_mode)
    os.symlink(out / "secret-dir", root / "to-dir2")
    cr.make_dir(b"to-dir2", 0o700, replace=True)
    assert stat.S_ISDIR(os.lstat(root / "to-dir2").st_mode)

    fd, tmp = cr.create_temp(b"to-file")
    os.write(fd, b"new")
    os.close(fd)
    cr.commit_temp(b"to-file", tmp, 0o644, 0)
    assert (root / "to-file").read_bytes() == b"new"
    assert not (root / "to-file").is_symlink()

    os.symlink(out / "secret", root / "to-file2")
    cr.make_symlink(b"to-file2", b"elsewhere")
    assert os.readlink(root / "to-file2") == "elsewhere"
    os.symlink(out / "secret", root / "to-file3")
    cr.make_hardlink(b"to-file3", b"inside/file")
    assert (root / "to-file3").read_bytes() == b"inside"
    # A hard link *of* a symlink links the symlink itself.
    os.symlink(out / "secret", root / "to-file4")
    cr.make_hardlink(b"inside/link-of-link", b"to-file4")
    assert os.readlink(root / "inside" / "link-of-link") == str(out / "secret")
    assert snapshot(out) == outside_before


def test_remove_tree_with_symlinks_out_leaves_outside_alone(
    sandbox: Path, cr: ConfinedRoot
) -> None:
    root, out = sandbox / "root", sandbox / "outside"
    (root / "t" / "u" / "v").mkdir(parents=True)
    (root / "t" / "u" / "v" / "f").write_bytes(b"x")
    os.symlink(out, root / "t" / "out")
    os.symlink(out / "secret-dir", root / "t" / "u" / "out")
    os.symlink(out / "secret", root / "t" / "u" / "v" / "secret")
    os.mkfifo(root / "t" / "fifo")
    outside_before = snapshot(out)
    cr.remove(b"t")
    assert not os.path.lexists(root / "t")
    assert snapshot(out) == outside_before
    cr.remove(b"t")  # missing is fine
    cr.remove(b"missing/parent/x")
    cr.remove(b"inside/file/x")  # a file where a directory would be: nothing to remove


# --- replacing one kind by another ------------------------------------------------------------


def test_file_replaced_by_directory_and_back(sandbox: Path, cr: ConfinedRoot) -> None:
    root = sandbox / "root"
    with pytest.raises(FileExistsError):
        cr.make_dir(b"inside/file", 0o755)
    assert (root / "inside" / "file").read_bytes() == b"inside"
    cr.make_dir(b"inside/file", 0o751, replace=True)
    assert stat.S_IMODE(os.lstat(root / "inside" / "file").st_mode) == 0o751
    cr.make_dir(b"inside/file/sub", 0o755)
    (root / "inside" / "file" / "sub" / "g").write_bytes(b"g")

    fd, tmp = cr.create_temp(b"inside/file")
    os.write(fd, b"a file again")
    os.close(fd)
    cr.commit_temp(b"inside/file", tmp, 0o640, 5_000_000_000)
    st = os.lstat(root / "inside" / "file")
    assert stat.S_ISREG(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o640
    assert st.st_mtime_ns == 5_000_000_000
    assert (root / "inside" / "file").read_bytes() == b"a file again"

    cr.make_dir(b"d", 0o755)
    cr.make_dir(b"d/e", 0o755)
    cr.make_symlink(b"d", b"target", 7)
    assert os.readlink(root / "d") == "target"
    assert os.lstat(root / "d").st_mtime_ns == 7
    cr.make_dir(b"h", 0o755)
    cr.make_dir(b"h/i", 0o755)
    cr.make_hardlink(b"h", b"inside/file")
    assert os.lstat(root / "h").st_ino == os.lstat(root / "inside" / "file").st_ino
    assert [p for p in os.listdir(root) if p.startswith(".standby-tmp-")] == []


def test_cached_directories_follow_removal(sandbox: Path) -> None:
    """After a directory is removed and made again (through us, or behind our back), new files
    land in the new directory, not in a deleted one we still held open."""
    root = sandbox / "root"
    with ConfinedRoot(root) as r:
        r.make_dir(b"a/b/c", 0o755)
        _write(r, b"a/b/c/f", b"one")
        r.remove(b"a")
        assert _deleted_dirs_held(root) == []
        r.make_dir(b"a", 0o755)
        r.make_dir(b"a/b", 0o755)
        r.make_dir(b"a/b/c", 0o755)
        _write(r, b"a/b/c/f", b"two")
        assert (root / "a" / "b" / "c" / "f").read_bytes() == b"two"

        _write(r, b"a", b"file over dir")  # commit over a directory tree
        assert _deleted_dirs_held(root) == []
        r.make_dir(b"a", 0o755, replace=True)
        r.make_dir(b"a/b", 0o755)
        r.make_dir(b"a/b/c", 0o755)
        _write(r, b"a/b/c/f", b"three")
        assert (root / "a" / "b" / "c" / "f").read_bytes() == b"three"

        shutil.rmtree(root / "a")  # behind our back
        (root / "a" / "b" / "c").mkdir(parents=True)
        _write(r, b"a/b/c/f", b"four")
        assert (root / "a" / "b" / "c" / "f").read_bytes() == b"four"


def _write(r: ConfinedRoot, path: bytes, data: bytes, mode: int = 0o644, mtime_ns: int = 0) -> None:
    fd, tmp = r.create_temp(path)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    r.commit_temp(path, tmp, mode, mtime_ns)


def _deleted_dirs_held(root: Path) -> list[str]:
    """Descriptors this process holds on deleted entries below ``root``."""
    out = []
    for n in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{n}")
            if target.startswith(str(root)) and target.endswith(" (deleted)"):
                out.append(target)
    return out


# --- temporary files --------------------------------------------------------------------------


def test_create_temp_commit_and_discard(sandbox: Path, cr: ConfinedRoot) -> None:
    root = sandbox / "root"
    old_umask = os.umask(0o022)
    try:
        fd, tmp = cr.create_temp(b"inside/new")
    finally:
        os.umask(old_umask)
    try:
        assert tmp.startswith(b".standby-tmp-")
        assert b"/" not in tmp
        st = os.lstat(os.fsencode(root / "inside") + b"/" + tmp)
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert os.fstat(fd).st_ino == st.st_ino
        assert not (root / "inside" / "new").exists()
        assert [e.path for e in scan_tree(root) if b"standby-tmp" in e.path] == []
        os.write(fd, b"content")
        os.lseek(fd, 0, os.SEEK_SET)
        assert os.read(fd, 100) == b"content"  # read/write: the applier re-reads to verify
    finally:
        os.close(fd)
    cr.commit_temp(b"inside/new", tmp, 0o4750, 42)
    st = os.lstat(root / "inside" / "new")
    assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (0o4750, 42)
    assert (root / "inside" / "new").read_bytes() == b"content"
    assert not os.path.lexists(os.fsencode(root / "inside") + b"/" + tmp)

    fd, tmp = cr.create_temp(b"inside/other")
    os.close(fd)
    cr.discard_temp(b"inside/other", tmp)
    assert sorted(os.listdir(root / "inside")) == ["file", "new"]
    cr.discard_temp(b"inside/other", tmp)  # missing is fine
    for bad in (b"../x", b"x", b".standby-tmp-a/../../b", b"", b".standby-tmp-\x00"):
        with pytest.raises(PathRefused, match="not a temporary name"):
            cr.commit_temp(b"inside/new", bad, 0o644, 0)
        with pytest.raises(PathRefused, match="not a temporary name"):
            cr.discard_temp(b"inside/new", bad)


def test_commit_refuses_a_temp_replaced_by_a_symlink(sandbox: Path, cr: ConfinedRoot) -> None:
    root, out = sandbox / "root", sandbox / "outside"
    fd, tmp = cr.create_temp(b"inside/f")
    os.close(fd)
    btmp = os.fsencode(root / "inside") + b"/" + tmp
    os.unlink(btmp)
    os.symlink(out / "secret", btmp)
    before = snapshot(out)
    with pytest.raises(PathRefused, match="temporary file became a symbolic link"):
        cr.commit_temp(b"inside/f", tmp, 0o777, 0)
    assert snapshot(out) == before
    assert not (root / "inside" / "f").exists()


def test_commit_is_atomic_for_readers(sandbox: Path, cr: ConfinedRoot) -> None:
    """A reader that keeps opening the final name sees whole versions only, while the writer
    writes each new version slowly (in many chunks) into a temp file and commits it."""
    root = sandbox / "root"
    versions = [bytes([v]) * (256 * 1024) for v in range(1, 9)]
    _write(cr, b"inside/atomic", versions[0])
    stop = threading.Event()
    seen: list[bytes] = []
    bad: list[tuple[int, bytes]] = []

    def reader() -> None:
        final = root / "inside" / "atomic"
        while not stop.is_set():
            data = final.read_bytes()
            if data in versions:
                if not seen or seen[-1] != data[:1]:
                    seen.append(data[:1])
            else:
                bad.append((len(data), data[:1]))

    t = threading.Thread(target=reader)
    t.start()
    try:
        for v in versions[1:]:
            fd, tmp = cr.create_temp(b"inside/atomic")
            try:
                for off in range(0, len(v), 4096):
                    os.write(fd, v[off : off + 4096])
                    if off == len(v) // 2:
                        assert (root / "inside" / "atomic").read_bytes() != v  # not yet visible
            finally:
                os.close(fd)
            cr.commit_temp(b"inside/atomic", tmp, 0o644, 0)
    finally:
        stop.set()
        t.join()
    assert bad == []
    assert len(seen) >= 2  # the reader did observe commits happen
    assert (root / "inside" / "atomic").read_bytes() == versions[-1]


# --- directories, symlinks, attributes --------------------------------------------------------


def test_make_dir_mode_is_exact_and_existing_is_kept(sandbox: Path, cr: ConfinedRoot) -> None:
    root = sandbox / "root"
    old_umask = os.umask(0o077)
    try:
        cr.make_dir(b"m", 0o2775)
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(os.lstat(root / "m").st_mode) == 0o2775
    (root / "m" / "kept").write_bytes(b"k")
    cr.make_dir(b"m", 0o700)
    assert stat.S_IMODE(os.lstat(root / "m").st_mode) == 0o700
    assert (root / "m" / "kept").read_bytes() == b"k"
    with pytest.raises(FileNotFoundError):
        cr.make_dir(b"no/parent", 0o755)
    with pytest.raises(NotADirectoryError, match="inside/file"):
        cr.make_dir(b"inside/file/x", 0o755)
    with pytest.raises(OSError, match="too long") as info:  # errors name the whole path
        cr.make_dir(b"a/b/" + b"n" * 300, 0o755)
    assert info.value.filename == "a/b/" + "n" * 300


def test_make_symlink_stores_target_verbatim(sandbox: Path, cr: ConfinedRoot) -> None:
    root = sandbox / "root"
    for i, target in enumerate([b"/etc/passwd", b"../../..", b"\xff\xfe", b"a/./b//c/"]):
        name = b"l%d" % i
        cr.make_symlink(name, target, -5)
        assert os.readlink(os.fsencode(root) + b"/" + name) == target
        assert os.lstat(os.fsencode(root) + b"/" + name).st_mtime_ns == -5
    cr.make_symlink(b"l0", b"replaced")
    assert os.readlink(root / "l0") == "replaced"
    for bad in (b"", b"a\x00b"):
        with pytest.raises(PathRefused, match="symlink target"):
            cr.make_symlink(b"l9", bad)
    assert not os.path.lexists(root / "l9")


def test_set_attrs(sandbox: Path, cr: ConfinedRoot) -> None:
    root = sandbox / "root"
    cr.set_attrs(b"inside/file", 0o600, 1_234_567_890_123_456_789)
    st = os.lstat(root / "inside" / "file")
    assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (0o600, 1_234_567_890_123_456_789)
    cr.set_attrs(b"a", 0o1777, 99)
    st = os.lstat(root / "a")
    assert (stat.S_IMODE(st.st_mode), st.st_mtime_ns) == (0o1777, 99)
    with pytest.raises(FileNotFoundError):
        cr.set_attrs(b"missing", 0o600, 0)


# --- names ------------------------------------------------------------------------------------


def test_non_ascii_and_non_utf8_names(sandbox: Path, cr: ConfinedRoot) -> None:
    root = os.fsencode(sandbox / "root")
    names = [b"caf\xc3\xa9", b"\xff\xfe", b"\xe4\xb8\xad\xe6\x96\x87", b"line\nbreak"]
    for n in names:
        cr.make_dir(n, 0o755)
        _write(cr, n + b"/" + n, n)
        cr.make_symlink(n + b"/link", n)
        cr.make_hardlink(n + b"/hard", n + b"/" + n)
        cr.set_attrs(n + b"/" + n, 0o600, 77)
    for n in names:
        with open(root + b"/" + n + b"/" + n, "rb") as f:
            assert f.read() == n
        assert os.readlink(root + b"/" + n + b"/link") == n
    listed = {e.path for e in cr.scan()}
    for n in names:
        assert {n, n + b"/" + n, n + b"/link", n + b"/hard"} <= listed
    with pytest.raises(PathRefused) as info:
        cr.make_dir(b"\xff/../x", 0o755)
    assert "'\\xff/../x'" in str(info.value)
    for n in names:
        cr.remove(n)
        assert not os.path.lexists(root + b"/" + n)


@pytest.mark.parametrize("cache_size", [1, 2, 256])
def test_paths_longer_than_path_max(sandbox: Path, cache_size: int) -> None:
    root = sandbox / "root"
    comp = b"x" * 250
    parts = [comp + b"%02d" % i for i in range(20)]
    deep = b"/".join(parts)
    assert len(deep) > 4096
    with ConfinedRoot(root, cache_size=cache_size) as r:
        for i in range(1, len(parts) + 1):
            r.make_dir(b"/".join(parts[:i]), 0o755)
        with pytest.raises(OSError, match="too long"):
            os.lstat(os.fsencode(root) + b"/" + deep)  # beyond PATH_MAX for path-based calls
        _write(r, deep + b"/f", b"deep", 0o640, 11)
        r.make_symlink(deep + b"/l", b"f", 12)
        r.make_hardlink(deep + b"/h", deep + b"/f")
        r.make_hardlink(b"shallow-h", deep + b"/f")
        r.make_hardlink(parts[0] + b"/" + parts[1] + b"/h2", deep + b"/f")
        r.set_attrs(deep, 0o700, 13)
        fd = r.open_existing(deep + b"/f")
        try:
            os.pwrite(fd, b"DE", 0)
        finally:
            os.close(fd)
        fd2 = r.open_read(deep + b"/h")
        assert fd2 is not None
        try:
            assert os.read(fd2, 10) == b"DEep"
        finally:
            os.close(fd2)
        r.set_attrs(deep + b"/f", 0o640, 11)  # the write above changed the mtime
        r.fsync_dir(deep)
        by = {e.path: e for e in r.scan()}
        assert by[deep + b"/f"].nlink == 4
        assert by[deep + b"/f"].mtime_ns == 11
        assert by[deep + b"/l"].target == b"f"
        assert by[deep].mode == 0o700
        assert by[deep].mtime_ns == 13
        assert (root / "shallow-h").read_bytes() == b"DEep"
        r.remove(parts[0])
        assert sorted(os.listdir(root)) == ["a", "inside", "shallow-h"]


# --- hard links -------------------------------------------------------------------------------


def test_hard_links(sandbox: Path, cr: ConfinedRoot) -> None:
    root = sandbox / "root"
    cr.make_hardlink(b"a/b/h", b"inside/file")
    st1, st2 = os.lstat(root / "inside" / "file"), os.lstat(root / "a" / "b" / "h")
    assert st1.st_ino == st2.st_ino
    assert st1.st_nlink == 2
    cr.make_hardlink(b"a/b/h", b"inside/file")  # already so: nothing changes, no temp left
    assert os.lstat(root / "inside" / "file").st_nlink == 2
    assert os.listdir(root / "a" / "b") == ["h"]
    (root / "a" / "other").write_bytes(b"other")
    cr.make_hardlink(b"a/other", b"inside/file")  # replaces an existing file atomically
    assert os.lstat(root / "a" / "other").st_ino == st1.st_ino
    with pytest.raises(FileNotFoundError, match="inside/missing"):
        cr.make_hardlink(b"a/x", b"inside/missing")
    with pytest.raises(PermissionError, match="'a/x'"):
        cr.make_hardlink(b"a/x", b"inside")  # directories cannot be hard linked
    assert [n for n in os.listdir(root / "a") if n.startswith(".standby")] == []
    entries = {e.path: e for e in cr.scan()}
    assert entries[b"a/other"].ino == entries[b"inside/file"].ino == entries[b"a/b/h"].ino
    assert entries[b"a/other"].nlink == 3


# --- opening files ----------------------------------------------------------------------------


@pytest.mark.timeout(20)
def test_open_existing_and_open_read(sandbox: Path, cr: ConfinedRoot) -> None:
    root = sandbox / "root"
    os.mkfifo(root / "fifo")  # opening it for reading would block: it must not be opened
    os.symlink(sandbox / "outside" / "secret", root / "link")
    fd = cr.open_existing(b"inside/file")
    try:
        assert os.get_blocking(fd)
        os.pwrite(fd, b"IN", 0)
        assert os.pread(fd, 10, 0) == b"INside"
    finally:
        os.close(fd)
    for path, what in [(b"fifo", "FIFO"), (b"link", "symbolic link"), (b"a", "directory")]:
        with pytest.raises(PathRefused, match=f"is a {what}, not a regular file"):
            cr.open_existing(path)
        assert cr.open_read(path) is None
    with pytest.raises(FileNotFoundError):
        cr.open_existing(b"missing")
    assert cr.open_read(b"missing") is None
    assert cr.open_read(b"missing/deeper") is None
    assert cr.open_read(b"inside/file/deeper") is None
    fd2 = cr.open_read(b"inside/file")
    assert fd2 is not None
    try:
        assert os.read(fd2, 10) == b"INside"
        with pytest.raises(OSError, match="Bad file descriptor"):
            os.write(fd2, b"x")
    finally:
        os.close(fd2)
    assert (sandbox / "outside" / "secret").read_bytes() == b"secret"


# --- holes and durability ---------------------------------------------------------------------


def test_punch_hole_deallocates(sandbox: Path, cr: ConfinedRoot) -> None:
    mib = 1024 * 1024
    data = os.urandom(4 * mib)
    _write(cr, b"inside/sparse", data)
    fd = cr.open_existing(b"inside/sparse")
    try:
        os.fsync(fd)
        blocks_before = os.fstat(fd).st_blocks
        cr.punch_hole(fd, mib, 2 * mib)
        os.fsync(fd)
        st = os.fstat(fd)
        assert st.st_size == 4 * mib
        assert blocks_before - st.st_blocks >= 2 * mib // 512  # st_blocks counts 512-byte units
        assert os.pread(fd, 2 * mib, mib) == bytes(2 * mib)
        assert os.pread(fd, mib, 0) == data[:mib]
        assert os.pread(fd, mib, 3 * mib) == data[3 * mib :]
        punch_hole(fd, 4 * mib - 10, mib)  # past the end: the size is kept
        assert os.fstat(fd).st_size == 4 * mib
        assert os.pread(fd, 20, 4 * mib - 20) == data[4 * mib - 20 : 4 * mib - 10] + bytes(10)
    finally:
        os.close(fd)


def test_punch_hole_falls_back_to_zeros(
    sandbox: Path, cr: ConfinedRoot, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Simulation: fallocate reports EOPNOTSUPP (as on file systems without hole punching)."""

    def unsupported(fd: int, mode: int, offset: int, length: int) -> None:
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

    monkeypatch.setattr(confine, "_fallocate", unsupported)
    data = b"\xaa" * 3_000_000
    _write(cr, b"inside/z", data)
    fd = cr.open_existing(b"inside/z")
    try:
        punch_hole(fd, 1000, 2_000_000)
        punch_hole(fd, 2_999_000, 5_000_000)  # runs past the end: no growth
        punch_hole(fd, 10_000_000, 10)  # wholly past the end: nothing
        assert os.fstat(fd).st_size == 3_000_000
        got = os.pread(fd, 3_000_000, 0)
    finally:
        os.close(fd)
    assert got == b"\xaa" * 1000 + bytes(2_000_000) + b"\xaa" * 998_000 + bytes(1000)


def test_punch_hole_reports_other_errors(sandbox: Path, cr: ConfinedRoot) -> None:
    fd = cr.open_read(b"inside/file")
    assert fd is not None
    try:
        with pytest.raises(OSError, match="Bad file descriptor") as info:
            punch_hole(fd, 0, 4096)  # read-only descriptor
        assert info.value.errno == errno.EBADF
    finally:
        os.close(fd)
    with pytest.raises(ValueError, match=">= 0"):
        punch_hole(0, -1, 1)


def test_syncfs_and_fsync_dir(sandbox: Path, cr: ConfinedRoot) -> None:
    _write(cr, b"inside/durable", b"x")
    cr.syncfs()
    cr.fsync_dir()
    cr.fsync_dir(b"inside")
    cr.fsync_dir(b"a/b")
    with pytest.raises(NotADirectoryError):
        cr.fsync_dir(b"inside/durable")
    os.symlink(sandbox / "outside", sandbox / "root" / "out")
    with pytest.raises(PathRefused):
        cr.fsync_dir(b"out")
    with pytest.raises(FileNotFoundError):
        cr.fsync_dir(b"missing")


# --- lifetime ---------------------------------------------------------------------------------


def test_close_releases_every_descriptor(sandbox: Path) -> None:
    before = len(os.listdir("/proc/self/fd"))
    r = ConfinedRoot(os.fsencode(sandbox / "root"), cache_size=8)
    for i in range(20):
        r.make_dir(b"inside/d%d" % i, 0o755)
        r.make_dir(b"inside/d%d/e" % i, 0o755)
        _write(r, b"inside/d%d/e/f" % i, b"x")
    assert len(os.listdir("/proc/self/fd")) <= before + 1 + 8
    r.close()
    assert r.closed
    assert len(os.listdir("/proc/self/fd")) == before
    r.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        r.make_dir(b"x", 0o755)
    with pytest.raises(ValueError, match="closed"):
        r.syncfs()


def test_root_must_be_an_existing_directory(sandbox: Path) -> None:
    with pytest.raises(FileNotFoundError):
        ConfinedRoot(sandbox / "missing")
    with pytest.raises(NotADirectoryError):
        ConfinedRoot(sandbox / "root" / "inside" / "file")
    with pytest.raises(ValueError, match="cache_size"):
        ConfinedRoot(sandbox / "root", cache_size=0)
