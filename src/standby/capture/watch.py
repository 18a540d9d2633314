"""Watching a root directory with inotify: what changed below it, as path events, in kernel order.

inotify watches one directory, not a tree, and names what changed by *watch descriptor + name*.
This module turns that into events on paths relative to the root (bytes, ``/``-separated, as
:mod:`standby.storage.tree` lists them), keeping one watch per directory of the tree:

- Events come out in the order the kernel queued them. The consumer treats them as hints
  ("look at this path"), so a duplicate is harmless and a missed one is not: whenever in doubt
  we report more, never less.
- A rename inside the root is one :class:`Moved`, so a moved file is not sent again. The kernel
  queues its two halves (``IN_MOVED_FROM``, ``IN_MOVED_TO``, same cookie) from the same
  ``rename()`` call, so they are almost always in the same read; when a read ends with a
  ``MOVED_FROM`` still unpaired we wait up to :data:`PAIR_WAIT` for its partner before calling
  it a move out of the root (:class:`Removed`). A partner that arrives later still gives a
  correct picture: the source :class:`Removed`, the destination :class:`Changed` (moved in).
- A new directory (created, or moved in) is watched at once, together with everything below
  it; files made in it before its watch existed would raise no event, so it is also listed,
  and every entry found is reported :class:`Changed`, directories before their contents.
- A directory renamed within the root keeps its watches (they follow the inode); we rewrite the
  paths we hold for it and its subdirectories. A directory deleted or moved out is forgotten,
  with everything below it.
- Events are read after the fact, so the file system may have moved on: a directory created
  in ``a/`` may be gone from ``a/`` by the time we come to watch it, because ``a`` was renamed
  since (an event still in the queue). Such a directory is kept aside (*stranded*) until that
  rename is read, then watched and listed where it went (see ``Watcher._strand``).
- Lost events are never silent: a kernel queue overflow, a watch the kernel refused (out of
  watches, permission), a directory that could not be listed, or an unmounted file system
  becomes an :class:`Overflow`, telling the consumer to rescan the whole root. We keep running
  with what is watched. After a queue overflow we also re-walk the tree and rebuild the
  watches, since directory creations (and ``IN_IGNORED``) may have been among the lost events.
- Losing the root itself (deleted, moved, its file system unmounted) is fatal: :meth:`read`
  raises :class:`WatchError`, and keeps raising it. A moved root still delivers events, but for
  a directory that is no longer the one configured; rescanning cannot fix that, only the
  operator can, so we stop rather than report an Overflow that would be rescanned in vain.
- Symbolic links are reported (as non-directories) and never followed, neither by a watch
  (``IN_DONT_FOLLOW``) nor by a listing (``O_NOFOLLOW``). The root itself may be a symbolic
  link, as :func:`standby.storage.tree.scan_tree` allows.
- Excluded paths are neither watched nor reported, and neither are our own staging files
  (``.standby-tmp-*``), which :func:`~standby.storage.tree.scan_tree` never lists either.

A :class:`Watcher` is not thread-safe: one thread (the capture thread) owns it.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import select
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import Enum
from types import TracebackType
from typing import Any, Final, NamedTuple

from inotify_simple import INotify, flags  # type: ignore[import-untyped]

from standby.storage.tree import STAGING_PREFIX, display_path


@dataclass(frozen=True, slots=True)
class Changed:
    """Something at ``path`` was created, written, closed after writing, had its attributes
    changed, or was moved in from outside the root. Never the root itself (``path`` is never
    empty)."""

    path: bytes
    is_dir: bool


@dataclass(frozen=True, slots=True)
class Moved:
    """``src`` was renamed to ``dst``, both inside the root. For a directory, everything below
    it moved along (and is not reported one by one).

    A consumer that holds nothing at ``src`` takes this as ``Changed(dst)``: a directory is
    listed when it is created or moved in, which can show it as it is *after* renames that the
    queue reports later (and an entry made and renamed within that window was never reported
    at ``src``). For a directory whose ``src`` we did not watch, its contents follow as
    Changed events."""

    src: bytes
    dst: bytes
    is_dir: bool


@dataclass(frozen=True, slots=True)
class Removed:
    """``path`` was deleted or moved out of the root. For a directory, so was everything below
    it."""

    path: bytes
    is_dir: bool


@dataclass(frozen=True, slots=True)
class Overflow:
    """Events were lost, or part of the tree is not watched: the consumer must rescan the
    whole root. ``reason`` is for the operator, and names the limit to raise when there is
    one."""

    reason: str


Event = Changed | Moved | Removed | Overflow

ExcludedFn = Callable[[bytes, bool], bool]
"""``excluded(path, is_dir)``: True to ignore that path (for a directory: everything below it
too). :meth:`standby.config.PathFilter.excluded` has this signature."""


class WatchError(Exception):
    """The root cannot be watched (missing, not a directory, inotify unavailable) or is no
    longer watched (deleted, moved, unmounted). Fatal for this watcher: start again, with a
    full rescan, once the cause is fixed."""


#: How long :meth:`Watcher.read` waits for the ``IN_MOVED_TO`` of an unpaired
#: ``IN_MOVED_FROM`` before calling it a move out of the root. Both halves come from one
#: ``rename()`` call, microseconds apart; 10 ms covers a renaming thread preempted between them
#: on a busy machine. watchdog holds *every* event 0.5 s to pair renames (``InotifyBuffer.delay``);
#: we only wait when a rename is actually unpaired, since a late partner is still reported
#: correctly (as Removed + Changed), just less cheaply.
PAIR_WAIT: Final = 0.010

#: Most directories that may be *stranded* at once (see ``Watcher._strand``): each is explained
#: by an event still to come, so more than this many means events were lost, and we rescan.
MAX_STRANDED: Final = 10_000

_IN_MODIFY: Final = int(flags.MODIFY)
_IN_ATTRIB: Final = int(flags.ATTRIB)
_IN_CLOSE_WRITE: Final = int(flags.CLOSE_WRITE)
_IN_MOVED_FROM: Final = int(flags.MOVED_FROM)
_IN_MOVED_TO: Final = int(flags.MOVED_TO)
_IN_CREATE: Final = int(flags.CREATE)
_IN_DELETE: Final = int(flags.DELETE)
_IN_DELETE_SELF: Final = int(flags.DELETE_SELF)
_IN_MOVE_SELF: Final = int(flags.MOVE_SELF)
_IN_UNMOUNT: Final = int(flags.UNMOUNT)
_IN_Q_OVERFLOW: Final = int(flags.Q_OVERFLOW)
_IN_IGNORED: Final = int(flags.IGNORED)
_IN_ONLYDIR: Final = int(flags.ONLYDIR)
_IN_DONT_FOLLOW: Final = int(flags.DONT_FOLLOW)
_IN_EXCL_UNLINK: Final = int(flags.EXCL_UNLINK)
_IN_ISDIR: Final = int(flags.ISDIR)

#: Events that only say "look at this path again".
_IN_CHANGE: Final = _IN_MODIFY | _IN_ATTRIB | _IN_CLOSE_WRITE
#: What every watch asks for. ``IN_EXCL_UNLINK``: no events for writes to files already
#: unlinked (still open somewhere), whose names are gone.
_WATCH_EVENTS: Final = (
    _IN_CREATE | _IN_MODIFY | _IN_CLOSE_WRITE | _IN_ATTRIB | _IN_DELETE | _IN_MOVED_FROM
    | _IN_MOVED_TO | _IN_DELETE_SELF | _IN_MOVE_SELF | _IN_EXCL_UNLINK
)
#: The root may be a symbolic link to a directory (the administrator's choice), so it is
#: followed; nothing below it is.
_ROOT_MASK: Final = _WATCH_EVENTS | _IN_ONLYDIR
_DIR_MASK: Final = _WATCH_EVENTS | _IN_ONLYDIR | _IN_DONT_FOLLOW
#: Any of these on the root's own watch means the root is gone as configured.
_ROOT_LOST: Final = _IN_DELETE_SELF | _IN_MOVE_SELF | _IN_UNMOUNT | _IN_IGNORED

_DIR_OPEN: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_ROOT_OPEN: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_GONE_ERRNOS: Final = (errno.ENOENT, errno.ENOTDIR, errno.ELOOP)
_SYSCTL_DIR: Final = "/proc/sys/fs/inotify"


class _RawEvent(NamedTuple):
    """One inotify event as the kernel gave it, with the name back in bytes."""

    wd: int
    mask: int
    cookie: int
    name: bytes


class _WatchMap:
    """Watch descriptors and the directories (relative paths, ``b""`` for the root) they watch.

    Pure bookkeeping, no system calls. A descriptor may briefly share its path with a newer
    one (a directory replaced before the old watch's ``IN_IGNORED`` arrived); the path then
    leads to the newer descriptor, and forgetting the old one leaves the newer alone.
    """

    __slots__ = ("_path_of", "_wd_of")

    def __init__(self) -> None:
        self._path_of: dict[int, bytes] = {}
        self._wd_of: dict[bytes, int] = {}

    def __len__(self) -> int:
        return len(self._path_of)

    def __iter__(self) -> Iterator[int]:
        return iter(list(self._path_of))

    def path(self, wd: int) -> bytes | None:
        return self._path_of.get(wd)

    def wd(self, path: bytes) -> int | None:
        return self._wd_of.get(path)

    def add(self, wd: int, path: bytes) -> None:
        """Record that ``wd`` watches ``path`` (inotify returns the existing descriptor when a
        directory is watched again, possibly under a new path)."""
        self._unlink_path(wd)
        self._path_of[wd] = path
        self._wd_of[path] = wd

    def forget(self, wd: int) -> None:
        self._unlink_path(wd)
        self._path_of.pop(wd, None)

    def forget_tree(self, path: bytes) -> list[int]:
        """Forget ``path`` and every directory below it; return their descriptors."""
        wds = self._tree(path)
        for wd in wds:
            self.forget(wd)
        return wds

    def move_tree(self, src: bytes, dst: bytes) -> None:
        """``src`` was renamed to ``dst``: rewrite its path and those below it. Whatever we held
        at ``dst`` was replaced by the rename (an empty directory), so it is forgotten."""
        moving = self._tree(src)
        self.forget_tree(dst)
        cut = len(src)
        for wd in moving:
            self.add(wd, dst + self._path_of[wd][cut:])

    def _tree(self, path: bytes) -> list[int]:
        if not path:
            return list(self._path_of)
        prefix = path + b"/"
        return [wd for wd, p in self._path_of.items() if p == path or p.startswith(prefix)]

    def _unlink_path(self, wd: int) -> None:
        old = self._path_of.get(wd)
        if old is not None and self._wd_of.get(old) == wd:
            del self._wd_of[old]


class _Sink:
    """The events of one :meth:`Watcher.read`, in order. An event equal to the one just before
    it (a write's ``IN_MODIFY`` then its ``IN_CLOSE_WRITE``) carries nothing new and is
    dropped."""

    __slots__ = ("events",)

    def __init__(self) -> None:
        self.events: list[Event] = []

    def add(self, event: Event) -> None:
        if not (self.events and self.events[-1] == event):
            self.events.append(event)


class _Watched(Enum):
    """What adding a watch on a directory came to."""

    YES = "watched"
    GONE = "gone"  # vanished or replaced by a non-directory: later events will say so
    REFUSED = "refused"  # an Overflow was reported; the directory is still listed
    FULL = "full"  # out of watches (fs.inotify.max_user_watches); still listed


def _join(parent: bytes, name: bytes) -> bytes:
    return parent + b"/" + name if parent else name


def _sysctl(name: str) -> str:
    """An inotify limit as the operator sets it (``fs.inotify.<name>``), for messages."""
    try:
        with open(f"{_SYSCTL_DIR}/{name}", "rb") as f:
            return f.read().strip().decode("ascii", "replace")
    except OSError:
        return "unknown"


def _pop_tree(paths: set[bytes], top: bytes) -> list[bytes]:
    """Remove ``top`` and the paths below it from ``paths``; return them."""
    prefix = top + b"/"
    found = [p for p in paths if p == top or p.startswith(prefix)]
    paths.difference_update(found)
    return found


def _unpaired_rename(raw: Iterable[_RawEvent]) -> bool:
    """Whether some ``IN_MOVED_FROM`` has no ``IN_MOVED_TO`` with its cookie (yet)."""
    sources: set[int] = set()
    targets: set[int] = set()
    for ev in raw:
        if ev.mask & _IN_MOVED_FROM:
            sources.add(ev.cookie)
        elif ev.mask & _IN_MOVED_TO:
            targets.add(ev.cookie)
    return not sources <= targets


class Watcher:
    """Watches a directory tree and reports what changed below it.

    Usage::

        with Watcher(root, excluded=path_filter.excluded) as watcher:
            watcher.start()
            while running:
                for event in watcher.read(timeout=1.0):
                    ...

    ``excluded(path, is_dir)`` returning True hides a path, and for a directory everything
    below it (it is not even watched). The inotify instance is created here, so its queue
    limit (``fs.inotify.max_queued_events``) is the one in force now.

    Raises:
        WatchError: inotify is unavailable (for example out of instances).
    """

    def __init__(self, root: str | os.PathLike[str], excluded: ExcludedFn | None = None) -> None:
        self._root = os.fsencode(root).rstrip(b"/") or b"/"
        self._excluded = excluded
        try:
            self._inotify: Any = INotify(nonblocking=True)
        except OSError as e:
            raise WatchError(
                f"cannot start inotify: {e.strerror} (fs.inotify.max_user_instances="
                f"{_sysctl('max_user_instances')})"
            ) from e
        self._fd: int = self._inotify.fileno()
        self._queue_limit = _sysctl("max_queued_events")
        self._poller = select.poll()
        self._poller.register(self._fd, select.POLLIN)
        self._map = _WatchMap()
        self._stranded: set[bytes] = set()  # see _strand()
        self._root_wd = -1
        self._pending = _Sink()  # reported by start(), handed out by the next read()
        self._state = "new"  # new -> watching -> (failed) -> closed
        self._failure = ""

    def __repr__(self) -> str:
        return f"<Watcher {display_path(self._root)!r} {self._state} watches={len(self._map)}>"

    def __enter__(self) -> Watcher:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def watch_count(self) -> int:
        """Directories watched now, the root included (each costs one of the user's
        ``fs.inotify.max_user_watches``)."""
        return len(self._map)

    def fileno(self) -> int:
        """The inotify descriptor, readable when events wait: for ``select``/``poll`` by the
        caller, who then calls :meth:`read`."""
        self._check_open()
        return self._fd

    def start(self) -> None:
        """Watch the root and every directory below it (not following symbolic links).

        A directory the kernel refuses to watch (out of watches) does not stop the start: it
        becomes an :class:`Overflow` that the next :meth:`read` returns at once, without
        waiting (the descriptor is not readable for it, so call :meth:`read` once after
        starting even when waiting with ``select``).

        Raises:
            WatchError: the root is missing or is not a directory, or cannot be watched.
        """
        self._check_open()
        if self._state != "new":
            raise RuntimeError("Watcher.start() called twice")
        try:
            self._root_wd = self._add_watch(self._root, _ROOT_MASK)
        except OSError as e:
            raise WatchError(self._root_error(e)) from e
        self._map.add(self._root_wd, b"")
        self._state = "watching"
        self._watch_tree(b"", self._pending, report=False)

    def read(self, timeout: float) -> list[Event]:
        """The events that happened since the last call, in order; ``[]`` when none came within
        ``timeout`` seconds.

        Waits at most ``timeout`` for the first event; after that, at most :data:`PAIR_WAIT`
        more, and only when a rename is half-read. Translating events can take longer than
        that: a directory created or moved in is listed (and watched) right here.

        Raises:
            WatchError: the root was deleted, moved or unmounted (this watcher is finished;
                every later call raises it again).
        """
        self._check_open()
        if self._state == "new":
            raise RuntimeError("Watcher.read() called before start()")
        if self._failure:
            raise WatchError(self._failure)
        out, self._pending = self._pending, _Sink()
        raw = self._gather(0.0 if out.events else timeout)
        self._translate(raw, out)
        return out.events

    def close(self) -> None:
        """Release the inotify descriptor and with it every watch. Idempotent."""
        if self._state != "closed":
            self._state = "closed"
            self._poller.unregister(self._fd)
            self._inotify.close()

    # The only call of inotify_add_watch, so that tests can simulate the kernel refusing one.
    def _add_watch(self, path: bytes, mask: int) -> int:
        return int(self._inotify.add_watch(path, mask))

    def _check_open(self) -> None:
        if self._state == "closed":
            raise RuntimeError("the watcher is closed")

    def _root_error(self, e: OSError) -> str:
        where = display_path(self._root)
        if e.errno == errno.ENOENT:
            return f"cannot watch root '{where}': it does not exist"
        if e.errno == errno.ENOTDIR:
            return f"cannot watch root '{where}': it is not a directory"
        if e.errno == errno.ENOSPC:
            return (f"cannot watch root '{where}': out of inotify watches "
                    f"(fs.inotify.max_user_watches={_sysctl('max_user_watches')})")
        return f"cannot watch root '{where}': {e.strerror}"

    # -- reading -------------------------------------------------------------------------

    def _gather(self, timeout: float) -> list[_RawEvent]:
        """Read what the kernel has queued, waiting up to ``timeout`` for something, and up to
        PAIR_WAIT more while a rename's second half is missing."""
        if not self._wait(timeout):
            return []
        raw = self._read_queued()
        deadline = time.monotonic() + PAIR_WAIT
        while _unpaired_rename(raw):
            left = deadline - time.monotonic()
            if left <= 0 or not self._wait(left):
                break
            raw += self._read_queued()
        return raw

    def _wait(self, seconds: float) -> bool:
        return bool(self._poller.poll(max(0, math.ceil(seconds * 1000))))

    def _read_queued(self) -> list[_RawEvent]:
        # inotify_simple reads all queued bytes at once (FIONREAD), IN_Q_OVERFLOW included,
        # and decodes names with os.fsdecode; os.fsencode gives back the exact bytes.
        return [
            _RawEvent(int(e.wd), int(e.mask), int(e.cookie), os.fsencode(e.name))
            for e in self._inotify.read(timeout=0)
        ]

    # -- translating ---------------------------------------------------------------------

    def _translate(self, raw: list[_RawEvent], out: _Sink) -> None:
        # Cookies of renames whose second half was read: their MOVED_FROM is not a move out.
        paired = {e.cookie for e in raw if e.mask & _IN_MOVED_TO}
        # Their sources, from MOVED_FROM to MOVED_TO: (path, is_dir), None when hidden.
        sources: dict[int, tuple[bytes, bool] | None] = {}
        unmounted = False
        for ev in raw:
            if ev.mask & _IN_Q_OVERFLOW:
                out.add(Overflow(f"inotify queue overflow "
                                 f"(fs.inotify.max_queued_events={self._queue_limit})"))
                self._rebuild_watches(out)
                continue
            parent = self._map.path(ev.wd)
            if parent is None:  # a watch we forgot (deleted or moved out): outside the root
                source = sources.pop(ev.cookie, None) if ev.mask & _IN_MOVED_TO else None
                if source is not None:  # so a rename from ours to there is a move out
                    self._gone(*source, out, moved_out=True)
                continue
            if ev.wd == self._root_wd and ev.mask & _ROOT_LOST:
                self._lose_root(ev.mask)
            if ev.mask & _IN_IGNORED:
                self._map.forget(ev.wd)
            elif ev.mask & _IN_UNMOUNT:
                unmounted = True
            elif ev.name:  # events on a directory itself come from its parent's watch too
                self._translate_one(ev, _join(parent, ev.name), paired, sources, out)
        if unmounted:
            out.add(Overflow(f"a file system below '{display_path(self._root)}' was unmounted"))
            self._rebuild_watches(out)

    def _translate_one(self, ev: _RawEvent, path: bytes, paired: set[int],
                       sources: dict[int, tuple[bytes, bool] | None], out: _Sink) -> None:
        is_dir = bool(ev.mask & _IN_ISDIR)
        hidden = self._hidden(path, is_dir)
        if ev.mask & _IN_MOVED_FROM:
            if ev.cookie in paired:
                sources[ev.cookie] = None if hidden else (path, is_dir)
            elif not hidden:
                self._gone(path, is_dir, out, moved_out=True)
        elif ev.mask & _IN_MOVED_TO:
            source = sources.pop(ev.cookie, None)
            if source is not None and not hidden:
                self._moved(source[0], path, is_dir, out)
            elif source is not None:  # renamed to an excluded name: gone, as far as we know
                self._gone(source[0], is_dir, out, moved_out=True)
            elif not hidden:  # moved in from outside, or from an excluded name
                self._appeared(path, is_dir, out)
        elif hidden:
            pass
        elif ev.mask & _IN_DELETE:
            self._gone(path, is_dir, out, moved_out=False)
        elif ev.mask & _IN_CREATE:
            self._appeared(path, is_dir, out)
        elif ev.mask & _IN_CHANGE:
            out.add(Changed(path, is_dir))

    def _hidden(self, path: bytes, is_dir: bool) -> bool:
        name = path.rpartition(b"/")[2]
        if name.startswith(STAGING_PREFIX):
            return True
        return self._excluded is not None and self._excluded(path, is_dir)

    def _appeared(self, path: bytes, is_dir: bool, out: _Sink) -> None:
        out.add(Changed(path, is_dir))
        if is_dir:
            self._watch_tree(path, out, report=True)

    def _gone(self, path: bytes, is_dir: bool, out: _Sink, *, moved_out: bool) -> None:
        out.add(Removed(path, is_dir))
        if not is_dir:
            return
        _pop_tree(self._stranded, path)
        for wd in self._map.forget_tree(path):
            if moved_out:  # a deleted directory's watch is ended by the kernel itself
                self._remove_watch(wd)

    def _moved(self, src: bytes, dst: bytes, is_dir: bool, out: _Sink) -> None:
        out.add(Moved(src, dst, is_dir))
        if not is_dir:
            return
        stranded = _pop_tree(self._stranded, src)
        wd = self._map.wd(src)
        if wd is not None:
            self._map.move_tree(src, dst)
            if self._still_watched(dst, wd):
                for path in stranded:  # found at last: watch and list them where they are
                    self._watch_tree(dst + path[len(src):], out, report=True)
                return
        self._watch_tree(dst, out, report=True)

    def _still_watched(self, path: bytes, wd: int) -> bool:
        """Whether the directory at ``path`` is the one ``wd`` watches. It is not when the file
        system moved on since (``path`` replaced, or the source re-created before we watched
        it); a directory moved on again counts as watched: later events say where it went."""
        try:
            return self._add_watch(self._abs(path), _DIR_MASK) == wd
        except OSError as e:
            return e.errno in _GONE_ERRNOS

    def _lose_root(self, mask: int) -> None:
        if mask & _IN_DELETE_SELF:
            what = "was deleted"
        elif mask & _IN_MOVE_SELF:
            what = "was moved or renamed"
        elif mask & _IN_UNMOUNT:
            what = "was unmounted"
        else:
            what = "is no longer watched"
        self._failure = f"root '{display_path(self._root)}' {what}: stopped watching it"
        self._state = "failed"
        raise WatchError(self._failure)

    # -- watching ------------------------------------------------------------------------

    def _abs(self, rel: bytes) -> bytes:
        return _join(self._root, rel) if rel else self._root

    def _watch_tree(self, top: bytes, out: _Sink, *, report: bool) -> None:
        """Watch ``top`` and every directory below it, then list each (after its watch is in
        place, so nothing created in between is missed). With ``report``, every entry found
        becomes a Changed, a directory before its contents.

        Out of watches, we go on: a directory already watched is still found (inotify returns
        its descriptor without using up a watch), and with ``report`` every entry is still
        reported. One Overflow then says how many directories are not watched."""
        unwatched: list[bytes] = []
        stack = [top]
        while stack:
            rel = stack.pop()
            result = self._watch_dir(rel, out)
            if result is _Watched.FULL:
                unwatched.append(rel)
            entries = None if result is _Watched.GONE else self._list_dir(rel, out)
            if entries is None:
                self._strand(rel, out)
                continue
            for name, is_dir in entries:
                path = _join(rel, name)
                if self._hidden(path, is_dir):
                    continue
                if report:
                    out.add(Changed(path, is_dir))
                if is_dir:
                    stack.append(path)
        if unwatched:
            out.add(Overflow(self._full_reason(unwatched)))

    def _strand(self, rel: bytes, out: _Sink) -> None:
        """``rel`` was not there when we came to watch or list it. Deleted, or moved: by itself
        or with an ancestor, later in the queue than the event that sent us there. Until an
        event says which, it is *stranded*: a rename of it or an ancestor finds it again and
        watches it where it went; a removal forgets it."""
        self._stranded.add(rel)
        if len(self._stranded) > MAX_STRANDED:  # events that never came: lost, so rescan
            out.add(Overflow(f"lost track of {len(self._stranded)} new directories"))
            self._rebuild_watches(out)

    def _watch_dir(self, rel: bytes, out: _Sink) -> _Watched:
        where = self._abs(rel)
        try:
            wd = self._add_watch(where, _DIR_MASK if rel else _ROOT_MASK)
        except OSError as e:
            if e.errno in _GONE_ERRNOS:
                return _Watched.GONE
            if e.errno == errno.ENOSPC:
                return _Watched.FULL
            out.add(Overflow(f"cannot watch '{display_path(where)}': {e.strerror}"))
            return _Watched.REFUSED
        self._map.add(wd, rel)
        return _Watched.YES

    def _full_reason(self, unwatched: list[bytes]) -> str:
        first = display_path(self._abs(unwatched[0]))
        more = f" (and {len(unwatched) - 1} more directories)" if len(unwatched) > 1 else ""
        return (f"out of inotify watches (fs.inotify.max_user_watches="
                f"{_sysctl('max_user_watches')}): '{first}'{more} is not watched")

    def _list_dir(self, rel: bytes, out: _Sink) -> list[tuple[bytes, bool]] | None:
        """The entries of one directory as (name, is_dir), sorted; never follows a link. None
        when it is gone (or no longer a directory)."""
        where = self._abs(rel)
        try:
            fd = os.open(where, _DIR_OPEN if rel else _ROOT_OPEN)
        except OSError as e:
            if e.errno in _GONE_ERRNOS:
                return None
            out.add(Overflow(f"cannot list '{display_path(where)}': {e.strerror}"))
            return []
        try:
            with os.scandir(fd) as it:
                entries = [(os.fsencode(e.name), e.is_dir(follow_symlinks=False)) for e in it]
        except OSError as e:
            out.add(Overflow(f"cannot list '{display_path(where)}': {e.strerror}"))
            return []
        finally:
            os.close(fd)
        entries.sort()
        return entries

    def _remove_watch(self, wd: int) -> None:
        with contextlib.suppress(OSError):  # EINVAL: already ended by the kernel
            self._inotify.rm_watch(wd)

    def _rebuild_watches(self, out: _Sink) -> None:
        """Watch the whole tree afresh, after events were lost: directories created meanwhile
        get their watch, and descriptors whose IN_IGNORED was lost are dropped. Adding a watch
        that exists returns its descriptor, so nothing already watched is disturbed."""
        old = self._map
        self._map = _WatchMap()
        self._stranded = set()
        self._watch_tree(b"", out, report=False)
        if self._map.wd(b"") is None:  # the root could not be watched again: keep what we had
            self._map = old
            return
        for wd in old:
            if self._map.path(wd) is None:
                self._remove_watch(wd)
