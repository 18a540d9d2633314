"""Listing a directory tree: what a synchronization compares.

The listing is walked through directory file descriptors (``openat`` with ``O_NOFOLLOW``), so it
never follows a symbolic link, in or out of the tree, nor depends on ``PATH_MAX``. It is all or
nothing: a directory that cannot be listed raises :class:`ListingError`, because a partial
listing would make the master delete replica files that merely went unlisted.

Entries that vanish while we list (a live master) are left out: they no longer exist. An entry
that changes kind between ``readdir`` and our ``open`` is listed as what it is now.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from dataclasses import dataclass
from operator import attrgetter

from standby.protocol._messages import Entry, EntryKind

#: Name prefix of our own staging files (temporary files, links); never listed or replicated.
STAGING_PREFIX = b".standby-tmp-"
_STAGING_PREFIX_STR = os.fsdecode(STAGING_PREFIX)

#: A root directory as configured: any path form ``os.fsencode`` takes.
RootPath = str | bytes | os.PathLike[str] | os.PathLike[bytes]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CONTROL_CHARS = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F)}


def display_path(path: bytes) -> str:
    """A path for humans: undecodable bytes and control characters as ``\\xNN`` escapes."""
    return path.decode(sys.getfilesystemencoding(), "backslashreplace").translate(_CONTROL_CHARS)


class ListingError(Exception):
    """A directory of the tree could not be listed, so there is no listing at all."""

    def __init__(self, path: bytes, reason: str) -> None:
        super().__init__(path, reason)
        self.path = path
        self.reason = reason

    def __str__(self) -> str:
        return (
            f"cannot list '{display_path(self.path)}': {self.reason} "
            "(no partial listing is returned; fix the directory and synchronize again)"
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class LocalEntry:
    """One entry of a local listing: the wire fields of :class:`Entry` plus identity for
    hard-link detection (entries with equal ``(dev, ino)`` are names of one file)."""

    path: bytes  # relative to the root, '/'-separated
    kind: EntryKind
    size: int  # 0 for directories and OTHER; the target length for symlinks
    mtime_ns: int
    mode: int  # permission bits only (S_IMODE)
    target: bytes = b""  # symlink target, as stored
    dev: int
    ino: int
    nlink: int

    def to_wire(self) -> Entry:
        return Entry(
            path=self.path,
            kind=self.kind,
            size=self.size,
            mtime_ns=self.mtime_ns,
            mode=self.mode,
            target=self.target,
        )


def scan_tree(root: RootPath, *, staging: list[bytes] | None = None) -> list[LocalEntry]:
    """List everything below ``root`` (not ``root`` itself), sorted by path bytes (so parents
    come before their children). ``root`` itself may be a symlink (the administrator's choice);
    nothing below it is followed. Our staging files are left out of the listing; when
    ``staging`` is a list, their paths are appended to it (leftovers of an interrupted
    synchronization, for the replica to remove). Raises :class:`ListingError`."""
    broot = os.fsencode(root)
    try:
        fd = os.open(broot, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise ListingError(broot, _reason(e)) from e
    try:
        return scan_dir_fd(fd, label=broot, staging=staging)
    finally:
        os.close(fd)


def scan_dir_fd(dir_fd: int, *, label: bytes = b".",
                staging: list[bytes] | None = None) -> list[LocalEntry]:
    """Like :func:`scan_tree`, below an open directory descriptor (left open). ``label`` names
    the directory in error messages."""
    out: list[LocalEntry] = []
    subdirs = _list_dir(dir_fd, b"", out, label, staging)
    # Depth-first, holding one descriptor per level: (fd, prefix, subdirectories left).
    stack: list[tuple[int, bytes, list[str]]] = []
    try:
        while True:
            if not subdirs:
                if not stack:
                    break
                fd, prefix, subdirs = stack.pop()
                os.close(fd)
                continue
            parent_fd = stack[-1][0] if stack else dir_fd
            parent_prefix = stack[-1][1] if stack else b""
            name = subdirs.pop()
            child = _open_subdir(parent_fd, parent_prefix, name, out, label)
            if child is None:
                continue
            prefix = parent_prefix + os.fsencode(name) + b"/"
            stack.append((child, prefix, subdirs))
            subdirs = _list_dir(child, prefix, out, label, staging)
    finally:
        for fd, _, _ in stack:
            os.close(fd)
    out.sort(key=attrgetter("path"))
    return out


def _list_dir(fd: int, prefix: bytes, out: list[LocalEntry], label: bytes,
              staging: list[bytes] | None = None) -> list[str]:
    """Append the non-directories of one directory to ``out``; return its subdirectory names
    (as ``os.scandir`` on a descriptor gives them: str with surrogate escapes)."""
    subdirs: list[str] = []
    append = out.append
    encoding = sys.getfilesystemencoding()
    s_isreg, s_isdir, s_imode = stat.S_ISREG, stat.S_ISDIR, stat.S_IMODE
    file_kind = EntryKind.FILE
    try:
        with os.scandir(fd) as it:
            for entry in it:
                name = entry.name
                if name.startswith(_STAGING_PREFIX_STR):
                    if staging is not None:
                        staging.append(prefix + os.fsencode(name))
                    continue
                if entry.is_dir(follow_symlinks=False):
                    subdirs.append(name)
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue  # vanished since readdir
                mode = st.st_mode
                path = prefix + name.encode(encoding, "surrogateescape")
                if s_isreg(mode):  # the common case, inlined
                    append(
                        LocalEntry(
                            path=path,
                            kind=file_kind,
                            size=st.st_size,
                            mtime_ns=st.st_mtime_ns,
                            mode=s_imode(mode),
                            dev=st.st_dev,
                            ino=st.st_ino,
                            nlink=st.st_nlink,
                        )
                    )
                elif s_isdir(mode):  # replaced by a directory since readdir
                    subdirs.append(name)
                else:
                    local = _make_entry(fd, name, path, st, label)
                    if local is not None:
                        append(local)
    except OSError as e:
        raise ListingError(_join(label, prefix), _reason(e)) from e
    return subdirs


def _open_subdir(
    parent_fd: int, prefix: bytes, name: str, out: list[LocalEntry], label: bytes
) -> int | None:
    """Open a subdirectory and list its own entry; None when it is gone or no longer a
    directory (then it is listed as what it is now)."""
    path = prefix + os.fsencode(name)
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except FileNotFoundError:
        return None
    except OSError as e:
        if e.errno in (errno.ENOTDIR, errno.ELOOP):
            try:
                st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
            except FileNotFoundError:
                return None
            except OSError as e2:
                raise ListingError(_join(label, path), _reason(e2)) from e2
            if not stat.S_ISDIR(st.st_mode):
                local = _make_entry(parent_fd, name, path, st, label)
                if local is not None:
                    out.append(local)
                return None
        raise ListingError(_join(label, path), _reason(e)) from e
    try:
        st = os.fstat(fd)
    except OSError as e:
        os.close(fd)
        raise ListingError(_join(label, path), _reason(e)) from e
    out.append(
        LocalEntry(
            path=path,
            kind=EntryKind.DIRECTORY,
            size=0,
            mtime_ns=st.st_mtime_ns,
            mode=stat.S_IMODE(st.st_mode),
            dev=st.st_dev,
            ino=st.st_ino,
            nlink=st.st_nlink,
        )
    )
    return fd


def _make_entry(
    dir_fd: int, name: str, path: bytes, st: os.stat_result, label: bytes
) -> LocalEntry | None:
    mode = st.st_mode
    target = b""
    if stat.S_ISREG(mode):
        kind, size = EntryKind.FILE, st.st_size
    elif stat.S_ISLNK(mode):
        try:
            target = os.fsencode(os.readlink(name, dir_fd=dir_fd))
        except FileNotFoundError:
            return None
        except OSError as e:
            raise ListingError(_join(label, path), _reason(e)) from e
        kind, size = EntryKind.SYMLINK, len(target)
    else:  # sockets, FIFOs, devices (directories are listed by _open_subdir)
        kind, size = EntryKind.OTHER, 0
    return LocalEntry(
        path=path,
        kind=kind,
        size=size,
        mtime_ns=st.st_mtime_ns,
        mode=stat.S_IMODE(mode),
        target=target,
        dev=st.st_dev,
        ino=st.st_ino,
        nlink=st.st_nlink,
    )


def _join(label: bytes, rel: bytes) -> bytes:
    rel = rel.rstrip(b"/")
    if not rel:
        return label
    return label.rstrip(b"/") + b"/" + rel


def _reason(e: OSError) -> str:
    return f"[Errno {e.errno}] {e.strerror}" if e.errno else str(e)
