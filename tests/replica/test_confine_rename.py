"""ConfinedRoot.rename and ConfinedRoot.open_write: what real-time replication adds to the
confined operations. Neither ever follows a symlink or reaches outside the root."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from standby.replica.confine import ConfinedRoot, PathRefused


def _outside_state(out: Path) -> dict[str, tuple[int, str]]:
    state = {}
    for dirpath, _, filenames in os.walk(out):
        for name in filenames:
            p = os.path.join(dirpath, name)
            with open(p, "rb") as f:
                state[p] = (os.lstat(p).st_mtime_ns, hashlib.sha256(f.read()).hexdigest())
    return state


@pytest.fixture
def sandbox(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "f").write_bytes(b"a/b/f")
    (root / "a" / "g").write_bytes(b"a/g")
    (root / "full" / "deep").mkdir(parents=True)
    (root / "full" / "deep" / "x").write_bytes(b"x")
    (root / "full" / "y").write_bytes(b"y")
    (root / "empty").mkdir()
    (root / "file").write_bytes(b"file")
    out = tmp_path / "outside"
    (out / "dir").mkdir(parents=True)
    (out / "dir" / "secret").write_bytes(b"secret")
    (out / "secret").write_bytes(b"secret")
    os.symlink(out, root / "link-out")
    os.symlink(out / "dir", root / "link-out-dir")
    os.symlink(out / "secret", root / "link-out-file")
    return tmp_path


@pytest.fixture
def cr(sandbox: Path) -> Iterator[ConfinedRoot]:
    with ConfinedRoot(sandbox / "root") as c:
        yield c


@pytest.fixture
def outside(sandbox: Path) -> Iterator[Path]:
    before = _outside_state(sandbox / "outside")
    yield sandbox / "outside"
    assert _outside_state(sandbox / "outside") == before


# --- rename -------------------------------------------------------------------------------------


def test_rename_a_file_and_a_directory(sandbox: Path, cr: ConfinedRoot, outside: Path) -> None:
    root = sandbox / "root"
    ino = os.lstat(root / "file").st_ino
    assert cr.rename(b"file", b"a/b/moved") is True
    assert not (root / "file").exists()
    assert (root / "a" / "b" / "moved").read_bytes() == b"file"
    assert os.lstat(root / "a" / "b" / "moved").st_ino == ino
    assert cr.rename(b"a", b"empty/a2") is True
    assert (root / "empty" / "a2" / "b" / "f").read_bytes() == b"a/b/f"
    assert not (root / "a").exists()


def test_rename_replaces_a_file(sandbox: Path, cr: ConfinedRoot, outside: Path) -> None:
    root = sandbox / "root"
    assert cr.rename(b"file", b"a/g")
    assert (root / "a" / "g").read_bytes() == b"file"


@pytest.mark.parametrize("src", [b"a", b"file"])
def test_rename_onto_a_non_empty_directory(sandbox: Path, cr: ConfinedRoot, outside: Path,
                                           src: bytes) -> None:
    """What stands in the way goes, whatever it holds."""
    root = sandbox / "root"
    assert cr.rename(src, b"full")
    if src == b"a":
        assert sorted(os.listdir(root / "full")) == ["b", "g"]
        assert (root / "full" / "b" / "f").read_bytes() == b"a/b/f"
    else:
        assert (root / "full").read_bytes() == b"file"
    assert not (root / os.fsdecode(src)).exists()


def test_rename_a_directory_onto_an_empty_one_and_onto_a_file(
        sandbox: Path, cr: ConfinedRoot, outside: Path) -> None:
    root = sandbox / "root"
    assert cr.rename(b"a", b"empty")
    assert (root / "empty" / "g").read_bytes() == b"a/g"
    assert cr.rename(b"empty", b"file")
    assert (root / "file" / "b" / "f").read_bytes() == b"a/b/f"


@pytest.mark.parametrize("target", [b"link-out", b"link-out-dir", b"link-out-file"])
@pytest.mark.parametrize("src", [b"a", b"file"])
def test_rename_onto_a_symlink_replaces_the_link(
        sandbox: Path, cr: ConfinedRoot, outside: Path, src: bytes, target: bytes) -> None:
    root = sandbox / "root"
    assert cr.rename(src, target)
    st = os.lstat(root / os.fsdecode(target))
    assert stat.S_ISDIR(st.st_mode) if src == b"a" else stat.S_ISREG(st.st_mode)


def test_rename_a_symlink_moves_the_link(sandbox: Path, cr: ConfinedRoot,
                                         outside: Path) -> None:
    root = sandbox / "root"
    assert cr.rename(b"link-out-dir", b"a/l")
    assert os.readlink(root / "a" / "l") == str(outside / "dir")
    assert (outside / "dir" / "secret").exists()


def test_rename_of_a_missing_source_changes_nothing(sandbox: Path, cr: ConfinedRoot,
                                                   outside: Path) -> None:
    """A rename replayed after it was applied finds no source: False, and the target (what
    the first application put there) stays."""
    root = sandbox / "root"
    assert cr.rename(b"file", b"moved")
    assert cr.rename(b"file", b"moved") is False
    assert (root / "moved").read_bytes() == b"file"
    assert cr.rename(b"nodir/file", b"moved") is False
    assert cr.rename(b"moved/below", b"a/g") is False  # the parent is a file
    assert (root / "a" / "g").read_bytes() == b"a/g"
    with pytest.raises(FileNotFoundError):
        cr.rename(b"moved", b"nodir/x")  # the target's parent must exist
    assert (root / "moved").read_bytes() == b"file"


@pytest.mark.parametrize(("src", "target"), [
    (b"a", b"a"),
    (b"a", b"a/b/inside"),
    (b"a", b"a/new"),
    (b"a/b", b"a"),  # onto its own parent: removing the target would remove the source
    (b"a/b/f", b"a"),
])
def test_rename_into_itself_or_onto_an_ancestor_is_refused(
        sandbox: Path, cr: ConfinedRoot, outside: Path, src: bytes, target: bytes) -> None:
    root = sandbox / "root"
    with pytest.raises(PathRefused):
        cr.rename(src, target)
    assert (root / "a" / "b" / "f").read_bytes() == b"a/b/f"
    assert (root / "a" / "g").read_bytes() == b"a/g"


@pytest.mark.parametrize(("src", "target"), [
    (b"link-out/secret", b"stolen"),
    (b"link-out-dir/secret", b"stolen"),
    (b"file", b"link-out/planted"),
    (b"a", b"link-out-dir/planted"),
])
def test_rename_through_a_symlink_is_refused(sandbox: Path, cr: ConfinedRoot, outside: Path,
                                             src: bytes, target: bytes) -> None:
    root = sandbox / "root"
    with pytest.raises(PathRefused, match="symbolic link"):
        cr.rename(src, target)
    assert not (root / "stolen").exists()
    assert not (outside / "planted").exists()
    assert not (outside / "dir" / "planted").exists()
    assert (root / "file").exists()
    assert (root / "a").is_dir()


@pytest.mark.parametrize(("src", "target"), [
    (b"../outside/secret", b"stolen"),
    (b"file", b"../outside/planted"),
    (b"/etc/passwd", b"x"),
    (b"file", b"a//b"),
    (b"file", b""),
])
def test_rename_of_malformed_paths_is_refused(sandbox: Path, cr: ConfinedRoot, outside: Path,
                                              src: bytes, target: bytes) -> None:
    with pytest.raises(PathRefused):
        cr.rename(src, target)
    assert (sandbox / "root" / "file").read_bytes() == b"file"


def test_rename_forgets_cached_directories(sandbox: Path, cr: ConfinedRoot) -> None:
    """Descriptors cached under the old name (and under a replaced target) are dropped: a
    later path through the old name does not land in the moved directory."""
    root = sandbox / "root"
    os.close(cr.open_write(b"a/b/new"))  # caches a and a/b
    os.close(cr.open_write(b"full/deep/new"))  # caches full and full/deep
    assert cr.rename(b"a", b"full")
    with pytest.raises(FileNotFoundError):
        cr.open_write(b"a/b/again")
    os.close(cr.open_write(b"full/b/again"))
    assert (root / "full" / "b" / "again").exists()
    assert not (root / "full" / "deep").exists()
    with pytest.raises(FileNotFoundError):
        cr.open_write(b"full/deep/again")
    os.mkdir(root / "a")
    os.close(cr.open_write(b"a/fresh"))  # a new directory by the old name
    assert (root / "a" / "fresh").exists()


def test_rename_names_with_any_bytes(sandbox: Path, cr: ConfinedRoot) -> None:
    root = os.fsencode(sandbox / "root")
    assert cr.rename(b"file", b"\xff\xfe \n name")
    with open(root + b"/\xff\xfe \n name", "rb") as f:
        assert f.read() == b"file"


# --- open_write ---------------------------------------------------------------------------------


def test_open_write_creates_a_private_file(sandbox: Path, cr: ConfinedRoot) -> None:
    root = sandbox / "root"
    fd = cr.open_write(b"a/new")
    try:
        assert os.pwrite(fd, b"data", 10) == 4
        st = os.fstat(fd)
        assert stat.S_ISREG(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert os.pread(fd, 14, 0) == bytes(10) + b"data"  # read/write
    finally:
        os.close(fd)
    assert (root / "a" / "new").read_bytes() == bytes(10) + b"data"


def test_open_write_opens_an_existing_file_as_it_is(sandbox: Path, cr: ConfinedRoot) -> None:
    root = sandbox / "root"
    os.chmod(root / "a" / "g", 0o444)
    os.link(root / "a" / "g", root / "other-name")
    ino = os.lstat(root / "a" / "g").st_ino
    fd = cr.open_write(b"a/g")
    try:
        assert os.fstat(fd).st_ino == ino
        assert os.pread(fd, 10, 0) == b"a/g"  # not truncated
        os.pwrite(fd, b"A", 0)
    finally:
        os.close(fd)
    assert (root / "other-name").read_bytes() == b"A/g"  # the same file, written in place
    assert stat.S_IMODE(os.lstat(root / "a" / "g").st_mode) == 0o444  # mode untouched


@pytest.mark.parametrize("name", [b"link-out-file", b"link-out", b"link-out-dir", b"dangling"])
def test_open_write_replaces_a_symlink_and_never_follows_it(
        sandbox: Path, cr: ConfinedRoot, outside: Path, name: bytes) -> None:
    root = sandbox / "root"
    if name == b"dangling":
        os.symlink(outside / "not-yet", root / "dangling")
    fd = cr.open_write(name)
    try:
        os.write(fd, b"mine")
    finally:
        os.close(fd)
    path = root / os.fsdecode(name)
    assert stat.S_ISREG(os.lstat(path).st_mode)
    assert path.read_bytes() == b"mine"
    assert not (outside / "not-yet").exists()


def test_open_write_replaces_a_directory_tree(sandbox: Path, cr: ConfinedRoot,
                                              outside: Path) -> None:
    root = sandbox / "root"
    os.symlink(outside, root / "full" / "deep" / "link-out")  # removed, never followed
    os.close(cr.open_write(b"full/deep/cached"))  # full/deep is cached: dropped with the tree
    fd = cr.open_write(b"full")
    os.close(fd)
    assert stat.S_ISREG(os.lstat(root / "full").st_mode)
    assert (root / "full").read_bytes() == b""
    with pytest.raises(NotADirectoryError):
        cr.open_write(b"full/deep/cached")


def test_open_write_replaces_a_fifo_without_opening_it(sandbox: Path, cr: ConfinedRoot) -> None:
    root = sandbox / "root"
    os.mkfifo(root / "fifo")  # opening it for writing would block
    os.close(cr.open_write(b"fifo"))
    assert stat.S_ISREG(os.lstat(root / "fifo").st_mode)


def test_open_write_refuses_a_symlink_on_the_way(sandbox: Path, cr: ConfinedRoot,
                                                 outside: Path) -> None:
    for path in (b"link-out/planted", b"link-out-dir/secret", b"link-out/dir/secret"):
        with pytest.raises(PathRefused, match="symbolic link"):
            cr.open_write(path)
    assert not (outside / "planted").exists()


def test_open_write_needs_the_parent(sandbox: Path, cr: ConfinedRoot) -> None:
    with pytest.raises(FileNotFoundError):
        cr.open_write(b"nodir/f")
    with pytest.raises(NotADirectoryError):
        cr.open_write(b"file/f")
    with pytest.raises(PathRefused):
        cr.open_write(b"../outside/secret")


def test_rename_between_two_names_of_one_file(sandbox: Path, cr: ConfinedRoot) -> None:
    """rename(2) between two links of one file does nothing; the replica wants the source
    gone, as on a master where the target was another file."""
    root = sandbox / "root"
    os.link(root / "file", root / "a" / "other-name")
    assert cr.rename(b"a/other-name", b"file")
    assert not (root / "a" / "other-name").exists()
    assert (root / "file").read_bytes() == b"file"
    assert os.lstat(root / "file").st_nlink == 1
