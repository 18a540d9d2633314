"""Confinement: the replica writes only inside its root directory.

Every path that arrives from the wire is validated by :func:`split_relpath` (relative, no ``.``,
``..``, empty component or NUL) and then resolved one component at a time from a descriptor of
the root, with ``openat(O_NOFOLLOW | O_DIRECTORY)`` for each directory and ``*at`` calls for the
final name. A symbolic link anywhere in the middle of a path is refused (:class:`PathRefused`),
whoever put it there; a symbolic link as the final name is operated on itself (removed,
replaced, its mtime set) and never followed. Nothing depends on ``PATH_MAX``.

Descriptors of intermediate directories are cached (LRU) so that many files in one directory do
not re-walk the tree. A cached descriptor names a directory *inode*: whatever this object
removes or replaces is dropped from the cache at once, and a cached directory that was deleted
behind our back (link count 0) is reopened. A directory *moved* by another process keeps its
descriptor; see the class docstring.

Needs Linux with ``/proc`` mounted (``/proc/self/fd`` re-opens an ``O_PATH`` descriptor for
``chmod`` and for reading or writing a file that was checked to be regular).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import os
import secrets
import stat
from collections import OrderedDict
from collections.abc import Callable
from types import TracebackType
from typing import Concatenate, ParamSpec, Self, TypeVar

from standby.storage.tree import (
    STAGING_PREFIX,
    LocalEntry,
    RootPath,
    display_path,
    scan_dir_fd,
)

__all__ = ["ConfinedRoot", "PathRefused", "punch_hole", "split_relpath"]

_PATH_DIR = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_PATH_ANY = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC

_FALLOC_FL_KEEP_SIZE = 0x01
_FALLOC_FL_PUNCH_HOLE = 0x02
_ZERO_CHUNK = 1 << 20

_libc = ctypes.CDLL(None, use_errno=True)
_libc_syncfs = _libc.syncfs
_libc_syncfs.argtypes = [ctypes.c_int]
_libc_syncfs.restype = ctypes.c_int
_libc_fallocate = _libc.fallocate64
_libc_fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
_libc_fallocate.restype = ctypes.c_int


class PathRefused(Exception):
    """A path the replica will not touch: malformed, hostile, or leading through a symlink."""

    def __init__(self, path: bytes, reason: str) -> None:
        super().__init__(path, reason)
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return f"path '{display_path(self.path)}' refused: {self.reason}"


def split_relpath(path: bytes) -> tuple[bytes, ...]:
    """Validate a relative wire path and return its components.

    Refused (:class:`PathRefused`): empty, absolute, a NUL byte, an empty component (``a//b``,
    a trailing ``/``), ``.`` or ``..``, and our reserved staging names (``.standby-tmp-*``).
    """
    if not isinstance(path, bytes):
        raise TypeError(f"a path must be bytes, not {type(path).__name__}")
    if not path:
        raise PathRefused(path, "empty path")
    if b"\0" in path:
        raise PathRefused(path, "contains a NUL byte")
    if path[:1] == b"/":
        raise PathRefused(path, "absolute path")
    parts = tuple(path.split(b"/"))
    for part in parts:
        if not part:
            raise PathRefused(path, "empty component (doubled or trailing '/')")
        if part == b"." or part == b"..":
            raise PathRefused(path, f"component '{part.decode()}' is not allowed")
        if part.startswith(STAGING_PREFIX):
            raise PathRefused(path, f"names starting with '{STAGING_PREFIX.decode()}' are reserved")
    return parts


def punch_hole(fd: int, offset: int, length: int) -> None:
    """Make ``[offset, offset+length)`` of an open file read as zeros without changing its size:
    deallocate it (``fallocate(PUNCH_HOLE | KEEP_SIZE)``), or, where the file system cannot,
    write zeros over the part that lies inside the file."""
    if offset < 0 or length < 0:
        raise ValueError("punch_hole: offset and length must be >= 0")
    if length == 0:
        return
    try:
        _fallocate(fd, _FALLOC_FL_PUNCH_HOLE | _FALLOC_FL_KEEP_SIZE, offset, length)
        return
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.ENOSYS):
            raise
    end = min(offset + length, os.fstat(fd).st_size)
    zeros = bytes(min(_ZERO_CHUNK, max(end - offset, 0)))
    while offset < end:
        n = os.pwrite(fd, memoryview(zeros)[: end - offset], offset)
        offset += n


def _fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    if _libc_fallocate(fd, mode, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _names_path(
    method: Callable[Concatenate[ConfinedRoot, bytes, _P], _R],
) -> Callable[Concatenate[ConfinedRoot, bytes, _P], _R]:
    """Errors of ``*at`` calls name only the last component (as bytes): name the whole relative
    path instead. Errors we raise ourselves already carry it (as str) and pass through."""

    @functools.wraps(method)
    def wrapper(self: ConfinedRoot, path: bytes, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(self, path, *args, **kwargs)
        except OSError as e:
            if e.errno is None or isinstance(e.filename, str):
                raise
            raise OSError(e.errno, e.strerror, os.fsdecode(path)) from e

    return wrapper


def _temp_name() -> bytes:
    return STAGING_PREFIX + secrets.token_hex(8).encode()


class ConfinedRoot:
    """Operations on a replica root that never reach outside it.

    Open it on an existing directory (the configured root may itself be a symlink: that is the
    administrator's choice; nothing below it is followed). Use it as a context manager, or call
    :meth:`close`. Not thread-safe: use one object per thread.

    Paths are relative wire paths (bytes, ``/``-separated), validated by :func:`split_relpath`.
    Ordinary file system errors (a missing parent, a file where a directory is needed) raise
    the usual :class:`OSError` subclasses naming the relative path.

    Known limit: a process that *moves* a directory of the replica while we hold a cached
    descriptor of it makes later writes land in the moved directory, wherever it now is on this
    file system. Without caching the same race exists, only narrower; the replica tree is meant
    to be written only by the applier.
    """

    def __init__(self, root: RootPath, *, cache_size: int = 256) -> None:
        if cache_size < 1:
            raise ValueError("cache_size must be >= 1")
        self.root = os.fsencode(root)
        self._cache_size = cache_size
        self._cache: OrderedDict[tuple[bytes, ...], int] = OrderedDict()
        self._root_fd = -1
        if not os.path.isdir("/proc/self/fd"):
            raise OSError(errno.ENOENT, "ConfinedRoot needs /proc mounted", "/proc/self/fd")
        self._root_fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    # --- lifetime ------------------------------------------------------------------------------

    def close(self) -> None:
        """Close every descriptor; idempotent."""
        while self._cache:
            os.close(self._cache.popitem()[1])
        if self._root_fd >= 0:
            fd, self._root_fd = self._root_fd, -1
            os.close(fd)

    @property
    def closed(self) -> bool:
        return self._root_fd < 0

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- namespace -----------------------------------------------------------------------------

    @_names_path
    def make_dir(self, path: bytes, mode: int, *, replace: bool = False) -> None:
        """Make ``path`` a directory with exactly ``mode`` (umask does not apply). An existing
        directory is kept (its mode set); any other entry in the way raises
        :class:`FileExistsError`, or is removed first when ``replace``."""
        fd, name, comps = self._parent(path)
        try:
            os.mkdir(name, 0o700, dir_fd=fd)
        except FileExistsError:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode):
                if not replace:
                    raise FileExistsError(
                        errno.EEXIST,
                        "exists and is not a directory (use replace=True to replace it)",
                        os.fsdecode(path),
                    ) from None
                self._remove_name(fd, name, comps)
                os.mkdir(name, 0o700, dir_fd=fd)
        self._set_attrs_at(fd, name, path, mode, None)

    @_names_path
    def remove(self, path: bytes) -> None:
        """Remove a file, symlink, other entry or a whole directory tree; never follows a
        symlink; a missing entry is fine."""
        try:
            fd, name, comps = self._parent(path)
        except (FileNotFoundError, NotADirectoryError):
            return  # no parent directory, so nothing to remove
        self._remove_name(fd, name, comps)

    @_names_path
    def make_symlink(self, path: bytes, target: bytes, mtime_ns: int | None = None) -> None:
        """Create or atomically replace ``path`` with a symlink holding ``target`` verbatim (it is
        data: never followed, may be absolute). A directory in the way is removed first."""
        if not isinstance(target, bytes) or not target or b"\0" in target:
            raise PathRefused(path, "a symlink target must be non-empty bytes without NUL")
        fd, name, comps = self._parent(path)
        for _ in range(8):
            tmp = _temp_name()
            try:
                os.symlink(target, tmp, dir_fd=fd)
                break
            except FileExistsError:
                continue
        else:
            raise FileExistsError(errno.EEXIST, "no free temporary name", os.fsdecode(path))
        try:
            if mtime_ns is not None:
                os.utime(tmp, ns=(mtime_ns, mtime_ns), dir_fd=fd, follow_symlinks=False)
            self._rename_into_place(fd, tmp, name, comps)
        except BaseException:
            _unlink_quietly(fd, tmp)
            raise

    @_names_path
    def make_hardlink(self, path: bytes, existing: bytes) -> None:
        """Make ``path`` another name of the entry at ``existing`` (atomically replacing what is
        at ``path``; a directory in the way is removed first). ``existing`` is not followed if
        it is a symlink."""
        ecomps = split_relpath(existing)
        efd = os.dup(self._dir(existing, ecomps[:-1]))  # survives cache evictions below
        try:
            fd, name, comps = self._parent(path)
            for _ in range(8):
                tmp = _temp_name()
                try:
                    os.link(ecomps[-1], tmp, src_dir_fd=efd, dst_dir_fd=fd, follow_symlinks=False)
                    break
                except FileExistsError:
                    continue
                except FileNotFoundError:
                    raise FileNotFoundError(
                        errno.ENOENT, "hard link source does not exist", os.fsdecode(existing)
                    ) from None
            else:
                raise FileExistsError(errno.EEXIST, "no free temporary name", os.fsdecode(path))
            try:
                self._rename_into_place(fd, tmp, name, comps)
            finally:
                # rename() between two names of one inode does nothing: the temp name remains.
                _unlink_quietly(fd, tmp)
        finally:
            os.close(efd)

    @_names_path
    def rename(self, path: bytes, target: bytes) -> bool:
        """Rename ``path`` to ``target`` (both inside the root), replacing what is at
        ``target``; a directory in the way is removed first, whatever it holds. Returns False
        (and changes nothing) when ``path`` does not exist: replaying a rename that was already
        applied is then harmless. When both are names of one file, the source name goes
        (rename(2) would leave both). Moving a directory into itself, or an entry onto a
        directory above it, is refused (:class:`PathRefused`)."""
        tcomps = split_relpath(target)
        scomps = split_relpath(path)
        if tcomps[: len(scomps)] == scomps:
            raise PathRefused(target, "cannot move a directory into itself")
        if scomps[: len(tcomps)] == tcomps:  # removing the target would remove the source
            raise PathRefused(target, "cannot move an entry onto a directory above it")
        tfd = os.dup(self._dir(target, tcomps[:-1]))  # survives cache evictions below
        try:
            try:
                fd, name, comps = self._parent(path)
            except (FileNotFoundError, NotADirectoryError):
                return False
            if _same_file(fd, name, tfd, tcomps[-1]):
                # Two names of one file: rename(2) would do nothing and leave both.
                _unlink_quietly(fd, name)
                return True
            try:
                os.rename(name, tcomps[-1], src_dir_fd=fd, dst_dir_fd=tfd)
            except FileNotFoundError:
                return False
            except OSError as exc:  # a different kind of entry, or a non-empty directory
                if exc.errno not in (errno.EISDIR, errno.ENOTDIR, errno.ENOTEMPTY, errno.EEXIST):
                    raise
                self._remove_name(tfd, tcomps[-1], tcomps)  # what stands in the way
                os.rename(name, tcomps[-1], src_dir_fd=fd, dst_dir_fd=tfd)
            self._forget(comps)  # cached descriptors below the old name now live elsewhere
            self._forget(tcomps)
            return True
        finally:
            os.close(tfd)

    @_names_path
    def open_write(self, path: bytes) -> int:
        """Open the regular file at ``path`` read/write, creating it (mode 0600, the mode is
        set later) when missing. Anything else in the way (a symlink, a directory) is removed
        first: the master says a regular file is there."""
        fd, name, comps = self._parent(path)
        for _ in range(3):
            opened, mode = _open_regular(fd, name, os.O_RDWR)
            if opened >= 0:
                return opened
            if mode:
                self._remove_name(fd, name, comps)
            try:
                return os.open(name, _NEW_FILE, 0o600, dir_fd=fd)
            except FileExistsError:
                continue  # created behind our back: open that one
        raise FileExistsError(errno.EEXIST, "the entry keeps changing", os.fsdecode(path))

    @_names_path
    def set_attrs(self, path: bytes, mode: int, mtime_ns: int) -> None:
        """Set permission bits and mtime of ``path`` itself; never follows a symlink (on a symlink
        only the mtime is set: Linux links have no mode)."""
        fd, name, _ = self._parent(path)
        self._set_attrs_at(fd, name, path, mode, mtime_ns)

    # --- whole files through a temporary name --------------------------------------------------

    @_names_path
    def create_temp(self, path: bytes) -> tuple[int, bytes]:
        """Create an empty temporary file (mode 0600, O_EXCL) in the directory of ``path``, to be
        written and then committed or discarded. Returns (read/write fd, temp name)."""
        fd, _, _ = self._parent(path)
        for _ in range(8):
            tmp = _temp_name()
            try:
                return os.open(tmp, _NEW_FILE, 0o600, dir_fd=fd), tmp
            except FileExistsError:
                continue
        raise FileExistsError(errno.EEXIST, "no free temporary name", os.fsdecode(path))

    @_names_path
    def commit_temp(self, path: bytes, temp_name: bytes, mode: int, mtime_ns: int) -> None:
        """Set mode and mtime on the temporary file and rename it over ``path`` atomically (the
        final name shows the old or the new file, never a partial one). A directory in the way
        is removed first. The caller still owns (and closes) the temp file's descriptor."""
        _check_temp_name(path, temp_name)
        fd, name, comps = self._parent(path)
        self._set_attrs_at(fd, temp_name, path, mode, mtime_ns, regular_only=True)
        self._rename_into_place(fd, temp_name, name, comps)

    @_names_path
    def discard_temp(self, path: bytes, temp_name: bytes) -> None:
        """Remove a temporary file made by :meth:`create_temp` for ``path``; missing is fine."""
        _check_temp_name(path, temp_name)
        try:
            fd, _, _ = self._parent(path)
        except (FileNotFoundError, NotADirectoryError):
            return
        _unlink_quietly(fd, temp_name)

    # --- file contents -------------------------------------------------------------------------

    def remove_staging(self, path: bytes) -> None:
        """Remove a staging file (``.standby-tmp-*``) left by an interrupted synchronization;
        ``path`` names it, as ``scan_tree(..., staging=...)`` reports it."""
        parent, _, name = path.rpartition(b"/")
        self.discard_temp(parent + b"/_" if parent else b"_", name)

    @_names_path
    def open_existing(self, path: bytes) -> int:
        """Open the regular file at ``path`` read/write for in-place updates. Anything else
        (symlink, directory, FIFO, device) is refused without being opened for I/O."""
        fd, name, _ = self._parent(path)
        opened, mode = _open_regular(fd, name, os.O_RDWR)
        if opened >= 0:
            return opened
        if not mode:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), os.fsdecode(path))
        raise PathRefused(path, f"is a {_kind_name(mode)}, not a regular file")

    @_names_path
    def open_read(self, path: bytes) -> int | None:
        """Open the regular file at ``path`` read-only (to hash it), or None when it is missing or
        is not a regular file. A symlink in the middle of the path is still refused."""
        try:
            fd, name, _ = self._parent(path)
        except (FileNotFoundError, NotADirectoryError):
            return None
        opened, _ = _open_regular(fd, name, os.O_RDONLY)
        return opened if opened >= 0 else None

    punch_hole = staticmethod(punch_hole)

    # --- durability and listing ----------------------------------------------------------------

    def syncfs(self) -> None:
        """Make every write on the root's file system durable (one ``syncfs(2)`` call)."""
        self._check_open()
        if _libc_syncfs(self._root_fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), os.fsdecode(self.root))

    def fsync_dir(self, path: bytes | None = None) -> None:
        """fsync a directory (its entries: creations, renames, removals); None is the root."""
        self._check_open()
        if path is None:
            os.fsync(self._root_fd)
            return
        fd, name, _ = self._parent(path)
        try:
            dfd = os.open(name, _READ_DIR, dir_fd=fd)
        except OSError as e:
            raise self._walk_error(e, path, len(split_relpath(path)) - 1, fd) from None
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)

    def scan(self) -> list[LocalEntry]:
        """List the root (see :func:`standby.storage.tree.scan_dir_fd`), never following a
        symlink. Raises :class:`standby.storage.tree.ListingError`."""
        self._check_open()
        return scan_dir_fd(self._root_fd, label=self.root)

    # --- internals -----------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._root_fd < 0:
            raise ValueError("ConfinedRoot is closed")

    def _parent(self, path: bytes) -> tuple[int, bytes, tuple[bytes, ...]]:
        """Validate ``path``; return (descriptor of its directory, final name, components). The
        descriptor belongs to the cache: use it before the next cache lookup."""
        comps = split_relpath(path)
        return self._dir(path, comps[:-1]), comps[-1], comps

    def _dir(self, path: bytes, comps: tuple[bytes, ...]) -> int:
        """Descriptor of the directory ``comps`` (a prefix of ``path``), walked without
        following symlinks from the longest cached prefix."""
        self._check_open()
        cache = self._cache
        fd = self._root_fd
        i = len(comps)
        while i:
            key = comps[:i]
            cached = cache.get(key)
            if cached is not None:
                if os.fstat(cached).st_nlink:
                    cache.move_to_end(key)
                    fd = cached
                    break
                self._forget(key)  # deleted behind our back: walk again from above
            i -= 1
        for j in range(i, len(comps)):
            try:
                child = os.open(comps[j], _PATH_DIR, dir_fd=fd)
            except OSError as e:
                raise self._walk_error(e, path, j, fd) from None
            cache[comps[: j + 1]] = child
            if len(cache) > self._cache_size:
                os.close(cache.popitem(last=False)[1])  # never ``child``: it is the newest
            fd = child
        return fd

    def _walk_error(self, e: OSError, path: bytes, j: int, parent_fd: int) -> Exception:
        """Turn a failed open of component ``j`` of ``path`` into a clear exception."""
        comps = split_relpath(path)
        at = b"/".join(comps[: j + 1])
        if e.errno in (errno.ENOTDIR, errno.ELOOP):
            try:
                st = os.stat(comps[j], dir_fd=parent_fd, follow_symlinks=False)
            except OSError:
                st = None
            if st is not None and stat.S_ISLNK(st.st_mode):
                return PathRefused(path, f"'{display_path(at)}' is a symbolic link")
        where = "" if at == path else f" (at '{display_path(at)}')"
        return OSError(e.errno, f"{e.strerror}{where}", os.fsdecode(path))

    def _forget(self, comps: tuple[bytes, ...]) -> None:
        """Drop cached descriptors of ``comps`` and everything below it."""
        n = len(comps)
        stale = [key for key in self._cache if key[:n] == comps]
        for key in stale:
            os.close(self._cache.pop(key))

    def _remove_name(self, fd: int, name: bytes, comps: tuple[bytes, ...]) -> None:
        try:
            os.unlink(name, dir_fd=fd)
            return
        except FileNotFoundError:
            return
        except IsADirectoryError:
            pass
        try:
            _remove_tree(fd, name)
        finally:
            self._forget(comps)

    def _rename_into_place(
        self, fd: int, tmp: bytes, name: bytes, comps: tuple[bytes, ...]
    ) -> None:
        try:
            os.rename(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
        except IsADirectoryError:  # a directory is in the way
            self._remove_name(fd, name, comps)
            os.rename(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)

    def _set_attrs_at(
        self,
        dir_fd: int,
        name: bytes,
        path: bytes,
        mode: int,
        mtime_ns: int | None,
        *,
        regular_only: bool = False,
    ) -> None:
        try:
            pfd = os.open(name, _PATH_ANY, dir_fd=dir_fd)
        except OSError as e:
            raise OSError(e.errno, e.strerror, os.fsdecode(path)) from None
        try:
            st = os.fstat(pfd)
            if regular_only and not stat.S_ISREG(st.st_mode):
                raise PathRefused(path, f"temporary file became a {_kind_name(st.st_mode)}")
            if not stat.S_ISLNK(st.st_mode):
                # The magic link re-opens exactly the inode we checked; it is not a symlink.
                os.chmod(f"/proc/self/fd/{pfd}", mode & 0o7777)
        finally:
            os.close(pfd)
        if mtime_ns is not None:
            os.utime(name, ns=(st.st_atime_ns, mtime_ns), dir_fd=dir_fd, follow_symlinks=False)


def _open_regular(dir_fd: int, name: bytes, flags: int) -> tuple[int, int]:
    """Open ``name`` with ``flags`` only if it is a regular file, never following a symlink and
    never opening anything else for I/O (a FIFO could block, a device could act).

    Returns ``(fd, st_mode)``; ``fd`` is -1 when it is not a regular file (``st_mode`` says
    what it is) or is missing (``st_mode`` 0).
    """
    try:
        pfd = os.open(name, _PATH_ANY, dir_fd=dir_fd)
    except FileNotFoundError:
        return -1, 0
    try:
        mode = os.fstat(pfd).st_mode
        if not stat.S_ISREG(mode):
            return -1, mode
        # Re-open exactly the inode we checked.
        return os.open(f"/proc/self/fd/{pfd}", flags | os.O_CLOEXEC | os.O_NOCTTY), mode
    finally:
        os.close(pfd)


def _same_file(dir_fd: int, name: bytes, other_dir_fd: int, other: bytes) -> bool:
    """Whether two names (never followed) are links of one file."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        other_st = os.stat(other, dir_fd=other_dir_fd, follow_symlinks=False)
    except OSError:
        return False
    return os.path.samestat(st, other_st)


def _check_temp_name(path: bytes, temp_name: bytes) -> None:
    if (
        not isinstance(temp_name, bytes)
        or not temp_name.startswith(STAGING_PREFIX)
        or b"/" in temp_name
        or b"\0" in temp_name
    ):
        raise PathRefused(path, f"'{display_path(bytes(temp_name))}' is not a temporary name")


def _unlink_quietly(dir_fd: int, name: bytes) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=dir_fd)


def _kind_name(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "symbolic link"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "special file"


def _remove_tree(parent_fd: int, name: bytes) -> None:
    """Remove the directory ``name`` and everything below it, through descriptors, never
    following a symlink. Holds one descriptor per level of depth."""
    top = _open_for_removal(parent_fd, name)
    if top is None:
        return
    # (fd, parent fd, name in parent, subdirectories left)
    subdirs: list[str] = []
    stack: list[tuple[int, int, bytes | str, list[str]]] = [(top, parent_fd, name, subdirs)]
    try:
        subdirs.extend(_unlink_non_dirs(top))
        while stack:
            fd, pfd, nm, subdirs = stack[-1]
            if subdirs:
                child_name = subdirs.pop()
                child = _open_for_removal(fd, child_name)
                if child is not None:
                    grandchildren: list[str] = []
                    stack.append((child, fd, child_name, grandchildren))
                    grandchildren.extend(_unlink_non_dirs(child))
                continue
            stack.pop()
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.rmdir(nm, dir_fd=pfd)
    finally:
        for fd, _, _, _ in stack:
            os.close(fd)


def _open_for_removal(parent_fd: int, name: bytes | str) -> int | None:
    """Open a directory to empty it; None when it is gone, or was not a directory any more (then
    it is unlinked here)."""
    try:
        return os.open(name, _READ_DIR, dir_fd=parent_fd)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno not in (errno.ENOTDIR, errno.ELOOP):
            raise
    _unlink_quietly(parent_fd, os.fsencode(name))
    return None


def _unlink_non_dirs(fd: int) -> list[str]:
    """Unlink every non-directory in the directory ``fd``; return the subdirectory names."""
    subdirs: list[str] = []
    with os.scandir(fd) as it:
        for entry in it:
            if entry.is_dir(follow_symlinks=False):
                subdirs.append(entry.name)
                continue
            try:
                os.unlink(entry.name, dir_fd=fd)
            except FileNotFoundError:
                pass
            except IsADirectoryError:  # became a directory since readdir
                subdirs.append(entry.name)
    return subdirs
