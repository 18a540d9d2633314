"""The spool: an on-disk, segmented, append-only, checksummed journal of opaque records.

On the master, the engine appends captured changes and a sender thread reads them and sends them
to the replica; when the replica acknowledges sequence number N, the master trims everything up
to N. The replica uses the same class to hold received changes while apply is suspended. The
spool never interprets a record: it numbers it, checksums it, keeps it on disk until trimmed and
hands it back byte for byte, or says loudly that it cannot.

On-disk format, version 1 (integers little-endian)
--------------------------------------------------

::

    <directory>/                  mode 0700, locked (flock) by the one Spool that has it open
      state                       base_seq; replaced atomically (temp, fsync, rename, fsync dir)
      00000000000000000001.seg    segment files, named by the seq of their first record
      *.tmp                       a state or segment file being created; removed on open

    state (32 bytes) and segment header (the first 32 bytes of a segment file):
      magic      8 bytes   b"SBYSTATE" / b"SBYSPOOL"
      version    u32       1
      reserved   u32       0
      seq        u64       base_seq / the segment's first seq (which its name repeats)
      checksum   u64       xxh3_64 of the 24 bytes above

    record (a 32-byte header, then the data), one after the other after the segment header:
      checksum   u64       xxh3_64 of everything after it: the 24 header bytes below and the data
      magic      2 bytes   b"\\xa7R"
      reserved   u16       0
      length     u32       bytes of data, at most MAX_RECORD_BYTES
      seq        u64       one more than the record before it, across segments
      time_ns    u64       time.time_ns() when the batch holding the record was appended
      data       length bytes

The checksum comes first so that what it covers (header fields and data) is one contiguous
range of the file: a reader verifies a record with one hash call over one slice.

Durability
----------

* A segment file appears under its final name only with a complete, durable header (written
  to ``*.tmp``, fdatasync, rename, fsync of the directory).
* Before the writer moves on to a new segment, the segment it leaves is fdatasync'ed. Every
  segment but the last is therefore complete on disk: damage there is corruption, never a
  crash in the middle of an append.
* :meth:`Spool.sync` makes every record appended so far durable (fdatasync of the open segment,
  fsync of the directory when segment files came or went, the state file when base_seq moved).
  :attr:`Spool.durable_seq` says how far that holds. Records past it may vanish in a crash, and
  their sequence numbers be given again to other records: send to a peer only what is durable,
  or let the peer tell you what it has and treat ``SpoolAhead`` as "resynchronize".
* :meth:`Spool.trim` writes base_seq durably *before* it deletes a segment. A trim that deletes
  nothing only moves base_seq in memory (saved by the next sync or close): after a crash
  base_seq can be older than it was, and acknowledged records are offered again. Nothing that
  was not acknowledged is ever lost by a trim.
* :meth:`Spool.reset` is durable before it returns.
* A failed fsync or fdatasync leaves the kernel's copy of the file in an unknown state (the
  failed pages may be dropped and a later fsync succeed): the spool refuses all further
  appends, trims and syncs until it is closed and opened again.

Recovery (on open)
------------------

Every segment is read in order and every record verified: magic, length, checksum, and seq
continuity within and across segments. A torn or damaged tail of the *last* segment (a crash
in the middle of an append) is truncated away, with a warning naming the file, the offset and
the bytes dropped. Anything else (a bad header, a bad record in an earlier segment, a record
whose checksum is right but whose seq is not, a missing segment in the middle) raises
:class:`SpoolCorrupt`. Segments whose records are all at or below base_seq (an interrupted
trim) are deleted. If the first segment starts after base_seq + 1 (segments deleted behind our
back), base_seq is raised to match with a warning: readers of the missing records get
:class:`SpoolGap`, which means "resynchronize", never silently skipped records.

Threads
-------

One writer at a time (appends, trims, resets, syncs and close take the append lock; the disk
writes happen under it). Readers (:meth:`Spool.read`, :meth:`Spool.wait`,
:meth:`Spool.oldest_timestamp`) take the state lock only to look up where to read, and read
with ``os.pread`` on a cached per-segment descriptor outside it. A record becomes visible to
readers only when its whole batch is written; a segment deleted while a reader is in it stays
readable through the reader's descriptor until the reader is done.

Memory: an index entry (16 bytes) per ``_INDEX_STRIDE`` bytes of each segment, not per record;
a read holds at most ``_READ_CHUNK`` bytes plus the records it returns.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import fcntl
import logging
import os
import re
import struct
import threading
import time
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

import xxhash

__all__ = [
    "DEFAULT_SEGMENT_BYTES",
    "MAX_RECORD_BYTES",
    "RECORD_HEADER_BYTES",
    "SEGMENT_HEADER_BYTES",
    "Spool",
    "SpoolAhead",
    "SpoolClosed",
    "SpoolCorrupt",
    "SpoolError",
    "SpoolFull",
    "SpoolGap",
]

log = logging.getLogger("standby.journal")

#: A segment is the unit of deletion: a trim frees disk space one whole segment at a time, so
#: a smaller segment returns space sooner, a larger one means fewer files and fewer fsyncs at
#: rollover (each roll costs an fdatasync of the segment left behind). Precedents: PostgreSQL's
#: WAL segments are 16 MiB (wal_segment_size), Kafka's log segments 1 GiB (log.segment.bytes).
#: 64 MiB keeps a 1 TiB backlog in 16 Ki files and flushes 64 MiB at a time.
DEFAULT_SEGMENT_BYTES = 64 * 1024 * 1024

#: The largest record. A change record carries at most one block (protocol MAX_BLOCK_SIZE,
#: 4 MiB) plus its path and metadata; 64 MiB leaves room for that and bounds what one read
#: (which always returns at least one record) and recovery hold in memory. The format itself
#: allows 4 GiB - 1 (u32).
MAX_RECORD_BYTES = 64 * 1024 * 1024

FORMAT_VERSION = 1

_SEGMENT_MAGIC = b"SBYSPOOL"
_STATE_MAGIC = b"SBYSTATE"
_RECORD_MAGIC = b"\xa7R"
_FILE_PREFIX = struct.Struct("<8sIIQ")  # magic, version, reserved, seq
_FILE_HEADER = struct.Struct("<8sIIQQ")  # ... and checksum
_RECORD_FIELDS = struct.Struct("<2sHIQQ")  # magic, reserved, length, seq, time_ns
_RECORD_HEADER = struct.Struct("<Q2sHIQQ")  # checksum, then the fields
_CHECKSUM = struct.Struct("<Q")

#: Bytes before the first record of a segment.
SEGMENT_HEADER_BYTES = _FILE_HEADER.size
#: Bytes of a record's header (the data follows).
RECORD_HEADER_BYTES = _RECORD_HEADER.size
#: The checksum covers the record from this offset (after itself) to the end of its data.
_COVERED_FROM = _CHECKSUM.size

#: Sequence numbers are u64 on disk; we stay well below so that ``seq + 1`` never overflows.
_MAX_SEQ = 2**63 - 1

_STATE_NAME = "state"
_TMP_SUFFIX = ".tmp"
_SEGMENT_NAME = re.compile(r"\A(\d{20})\.seg\Z")

#: One sparse index entry per 64 KiB of segment: finding a record reads at most 64 KiB of
#: headers before it, and the index costs 16 bytes per 64 KiB (256 KiB per 1 GiB of spool)
#: whatever the record size. A per-record index would cost 16 bytes per record: 2.5 GiB for a
#: 20 GiB spool of 100-byte records.
_INDEX_STRIDE = 64 * 1024

#: Reads fetch this much at a time: large enough that small records cost one pread per few
#: thousand, small enough to keep a read's memory bounded. A record larger than this is read
#: on its own.
_READ_CHUNK = 256 * 1024
#: A read with a small max_bytes fetches max_bytes plus this much (room for the headers of
#: the records it returns and the first one it cannot), not a whole _READ_CHUNK.
_READ_SLACK = 16 * 1024

#: Recovery reads whole segments; larger reads than for serving records are cheaper per byte.
_SCAN_CHUNK = 1024 * 1024

#: Records up to this size are copied, with their headers, into one write buffer (copying
#: 16 KiB costs less than an iovec and a memoryview of its own); larger ones are written from
#: the caller's buffer without a copy.
_COPY_LIMIT = 16 * 1024

#: os.statvfs costs a system call: with min_free_bytes set, appends measure free space at most
#: every 16 MiB appended or every second, and in between subtract what they wrote from the
#: last measurement. The estimate misses what other processes write and the file system's
#: rounding (at least a block per file), so it is trusted only while it stays 16 MiB above
#: min_free_bytes: near the limit every append measures.
_STATVFS_EVERY_BYTES = 16 * 1024 * 1024
_STATVFS_EVERY_SECONDS = 1.0
_STATVFS_MARGIN = 16 * 1024 * 1024

#: Readers keep descriptors of the segments they read open; a sender walking a long backlog
#: needs one or two at a time, so eight cached descriptors cover several readers.
_MAX_READ_FDS = 8

#: os.pwritev takes at most IOV_MAX buffers per call (1024 on Linux).
_IOV_MAX = os.sysconf("SC_IOV_MAX") if "SC_IOV_MAX" in os.sysconf_names else 1024

_xxh3 = xxhash.xxh3_64_intdigest
_xxh3_stream = xxhash.xxh3_64

Buffer = bytes | bytearray | memoryview


# --- errors ------------------------------------------------------------------------------------


class SpoolError(Exception):
    """Base of the spool's errors; also raised, with the cause chained, when the disk fails."""


class SpoolFull(SpoolError):
    """The batch would pass ``max_bytes``, or leave less than ``min_free_bytes`` free on the file
    system, or the file system is full. Nothing of the batch was appended."""


class SpoolCorrupt(SpoolError):
    """Damage that a crash in the middle of an append cannot explain. The spool cannot be
    trusted: the message names the file and the offset, and what to do."""


class SpoolGap(SpoolError):
    """The records asked for were trimmed or discarded: the reader must resynchronize."""


class SpoolAhead(SpoolError):
    """The reader asked for records past the last one plus one: it has records this spool does
    not (for instance ones lost with an unsynced tail in a crash). Resynchronize."""


class SpoolClosed(SpoolError):
    """*We* closed the spool; nothing more can be read or written."""


def _corrupt(path: Path, offset: int, what: str) -> SpoolCorrupt:
    return SpoolCorrupt(
        f"{path}: {what} at offset {offset}. The spool is damaged beyond a torn last append "
        f"(disk or file system error, or a file changed by something else). Move the spool "
        f"directory aside for inspection; the engine then starts an empty spool, which needs "
        f"a full synchronization."
    )


# --- file headers ------------------------------------------------------------------------------


def _file_header(magic: bytes, seq: int) -> bytes:
    prefix = _FILE_PREFIX.pack(magic, FORMAT_VERSION, 0, seq)
    return prefix + _CHECKSUM.pack(_xxh3(prefix))


def _parse_file_header(raw: bytes, magic: bytes) -> tuple[int, str | None]:
    """The seq a state file or segment header holds, and what is wrong with it (None if
    nothing)."""
    if len(raw) < _FILE_HEADER.size:
        return 0, f"header is {len(raw)} bytes, expected {_FILE_HEADER.size}"
    got_magic, version, reserved, seq, checksum = _FILE_HEADER.unpack_from(raw)
    if got_magic != magic:
        return 0, f"bad magic {got_magic!r}, expected {magic!r}"
    if _xxh3(raw[: _FILE_PREFIX.size]) != checksum:
        return 0, "header checksum mismatch"
    if version != FORMAT_VERSION:
        return 0, f"format version {version}; this program reads version {FORMAT_VERSION}"
    if reserved:
        return 0, f"reserved header field is {reserved}, expected 0"
    return seq, None


def _segment_name(first_seq: int) -> str:
    return f"{first_seq:020d}.seg"


# --- segments ----------------------------------------------------------------------------------


@dataclass(eq=False, slots=True)
class _Segment:
    """One segment file as readers see it. ``last_seq`` and ``size`` are what is published:
    records a running append has written past ``size`` are not there yet for readers."""

    first_seq: int
    name: str
    #: seq of the last published record; first_seq - 1 while the segment is empty.
    last_seq: int
    #: Published bytes (segment header included).
    size: int
    #: Sparse index: (seq, offset) of a record at least every _INDEX_STRIDE bytes; the first
    #: record is always there.
    index_seqs: array[int] = field(default_factory=lambda: array("Q"))
    index_offsets: array[int] = field(default_factory=lambda: array("Q"))
    #: Appender only: offset from which the next record gets an index entry.
    next_index_at: int = 0
    read_fd: int = -1
    readers: int = 0
    #: Trimmed, reset or closed: its read descriptor closes when the last reader leaves.
    retired: bool = False
    #: Where the last read stopped, so that a sequential reader does not search again.
    hint_seq: int = 0
    hint_offset: int = 0

    def locate(self, seq: int) -> tuple[int, int]:
        """(seq, offset) of a published record at or before ``seq`` (first_seq <= seq <=
        last_seq), to walk forward from."""
        i = bisect.bisect_right(self.index_seqs, seq) - 1
        found = self.index_seqs[i], self.index_offsets[i]
        if found[0] < self.hint_seq <= seq:
            return self.hint_seq, self.hint_offset
        return found

    def add_index(self, seqs: array[int], offsets: array[int]) -> None:
        self.index_seqs.extend(seqs)
        self.index_offsets.extend(offsets)


@dataclass(slots=True)
class _Chunk:
    """Records ``[start, stop)`` of a batch, written to one segment (a new one if
    ``new_segment``)."""

    new_segment: bool
    start: int
    stop: int


@dataclass(slots=True)
class _Run:
    """What one pass over one segment read."""

    records: list[tuple[int, bytes]]
    data_bytes: int
    next_seq: int
    next_offset: int
    #: Stopped by max_bytes or max_records, not by the end of the published segment.
    stopped: bool


# --- low-level I/O -----------------------------------------------------------------------------


def _pwrite_all(fd: int, parts: Sequence[Buffer], offset: int) -> int:
    """Write all ``parts`` at ``offset`` (pwritev, as many calls as short writes need) and
    return the offset after them."""
    if len(parts) == 1:  # the common case: small records copied into one buffer
        written = os.pwrite(fd, parts[0], offset)
        if written == len(parts[0]):
            return offset + written
    views = [memoryview(p) for p in parts]
    i = 0
    while True:
        while i < len(views) and not views[i].nbytes:
            i += 1
        if i == len(views):
            return offset
        written = os.pwritev(fd, views[i : i + _IOV_MAX], offset)
        if written <= 0:
            raise OSError(errno.EIO, "pwritev wrote nothing")
        offset += written
        while written and written >= views[i].nbytes:
            written -= views[i].nbytes
            i += 1
        if written:
            views[i] = views[i][written:]


def _as_record(record: bytes | memoryview) -> Buffer:
    """The record as a flat byte buffer whose len() is its size in bytes."""
    data: Buffer = record if type(record) is bytes else memoryview(record).cast("B")
    if len(data) > MAX_RECORD_BYTES:
        raise ValueError(
            f"a record of {len(data)} bytes is over MAX_RECORD_BYTES={MAX_RECORD_BYTES}"
        )
    return data


def _checksum(fields: Buffer, data: Buffer) -> int:
    """The checksum of a record whose header fields and data are in separate buffers."""
    digest = _xxh3_stream(fields)
    digest.update(data)
    return int(digest.intdigest())


def _encode(
    records: Sequence[Buffer],
    chunk: _Chunk,
    seq: int,
    offset: int,
    time_ns: int,
    segment: _Segment,
    index: tuple[array[int], array[int]],
) -> tuple[list[Buffer], int]:
    """The buffers that write ``chunk``'s records at ``offset`` of ``segment`` (small records
    copied together, large ones by reference), and the offset after them. Index entries go to
    ``index``; ``segment.next_index_at`` moves on."""
    parts: list[Buffer] = []
    pending = bytearray()
    for data in records[chunk.start : chunk.stop]:
        length = len(data)
        if offset >= segment.next_index_at:
            index[0].append(seq)
            index[1].append(offset)
            segment.next_index_at = offset + _INDEX_STRIDE
        fields = _RECORD_FIELDS.pack(_RECORD_MAGIC, 0, length, seq, time_ns)
        if length <= _COPY_LIMIT:
            covered = fields + data
            pending += _CHECKSUM.pack(_xxh3(covered))
            pending += covered
        else:
            pending += _CHECKSUM.pack(_checksum(fields, data))
            pending += fields
            parts.append(pending)
            parts.append(data)
            pending = bytearray()
        seq += 1
        offset += RECORD_HEADER_BYTES + length
    if pending:
        parts.append(pending)
    return parts, offset


def _verify(fd: int, segment: _Segment, file_size: int) -> tuple[int, str, bool] | None:
    """Walk the records of a segment file from its header to ``file_size``, checking each and
    building ``segment``'s index, last_seq and size as far as the records are good.

    Returns None when all is good, else (offset, what is wrong, whether a torn append could
    explain it). A record whose checksum is right but whose seq is wrong is never torn.
    """
    offset = SEGMENT_HEADER_BYTES
    seq = segment.first_seq
    buf = b""
    view = memoryview(buf)
    buf_at = offset
    try:
        while offset < file_size:
            rel = offset - buf_at
            if rel + RECORD_HEADER_BYTES > len(buf):
                buf = os.pread(fd, min(_SCAN_CHUNK, file_size - offset), offset)
                view, buf_at, rel = memoryview(buf), offset, 0
                if len(buf) < RECORD_HEADER_BYTES:
                    return offset, f"incomplete record header ({len(buf)} bytes)", True
            checksum, magic, reserved, length, rseq, _time = _RECORD_HEADER.unpack_from(buf, rel)
            if magic != _RECORD_MAGIC or reserved:
                return offset, "no record header (bad magic)", True
            if length > MAX_RECORD_BYTES:
                return offset, f"record length {length} over MAX_RECORD_BYTES", True
            end = offset + RECORD_HEADER_BYTES + length
            if end > file_size:
                return offset, f"record of {length} bytes runs past the end of the file", True
            stop = rel + RECORD_HEADER_BYTES + length
            if stop <= len(buf):
                actual = _xxh3(view[rel + _COVERED_FROM : stop])
            else:
                data = os.pread(fd, length, offset + RECORD_HEADER_BYTES)
                if len(data) != length:
                    return offset, "record data cut short", True
                actual = _checksum(view[rel + _COVERED_FROM : rel + RECORD_HEADER_BYTES], data)
            if actual != checksum:
                return offset, f"checksum mismatch in record of seq {rseq}", True
            if rseq != seq:
                return offset, f"record has seq {rseq}, expected {seq}", False
            if offset >= segment.next_index_at:
                segment.index_seqs.append(seq)
                segment.index_offsets.append(offset)
                segment.next_index_at = offset + _INDEX_STRIDE
            seq += 1
            offset = end
        return None
    finally:
        segment.last_seq = seq - 1
        segment.size = offset


def _read_run(
    fd: int,
    path: Path,
    seq: int,
    offset: int,
    end: int,
    from_seq: int,
    budget: tuple[int, int],
    need_one: bool,
) -> _Run:
    """Read published records of one segment from (``seq``, ``offset``) up to ``end``, returning
    those with seq >= ``from_seq`` until ``budget`` (data bytes, records) would be passed; the
    first one regardless when ``need_one``. Every returned record is verified."""
    max_bytes, max_records = budget
    chunk = min(_READ_CHUNK, max(0, max_bytes) + _READ_SLACK)  # < 0: the first was larger
    records: list[tuple[int, bytes]] = []
    used = 0
    buf = b""
    view = memoryview(buf)
    buf_at = offset
    while offset < end and len(records) < max_records:
        rel = offset - buf_at
        if rel + RECORD_HEADER_BYTES > len(buf):
            buf = os.pread(fd, min(chunk, end - offset), offset)
            view, buf_at, rel = memoryview(buf), offset, 0
            if len(buf) < RECORD_HEADER_BYTES:
                raise _corrupt(path, offset, "short read of a published record")
        checksum, magic, _reserved, length, rseq, _time = _RECORD_HEADER.unpack_from(buf, rel)
        if magic != _RECORD_MAGIC or rseq != seq or offset + RECORD_HEADER_BYTES + length > end:
            raise _corrupt(path, offset, f"expected the record of seq {seq}, found none")
        if rseq >= from_seq:
            if (records or not need_one) and used + length > max_bytes:
                return _Run(records, used, seq, offset, True)
            start = rel + RECORD_HEADER_BYTES
            if start + length <= len(buf):
                actual = _xxh3(view[rel + _COVERED_FROM : start + length])
                data = buf[start : start + length]
            else:
                data = os.pread(fd, length, offset + RECORD_HEADER_BYTES)
                actual = _checksum(view[rel + _COVERED_FROM : start], data)
            if len(data) != length or actual != checksum:
                raise _corrupt(path, offset, f"checksum mismatch in the record of seq {seq}")
            records.append((seq, data))
            used += length
        seq += 1
        offset += RECORD_HEADER_BYTES + length
    return _Run(records, used, seq, offset, offset < end)


# --- the spool ---------------------------------------------------------------------------------


class Spool:
    """An on-disk journal of records numbered 1, 2, 3, ... (see the module docstring).

    Args:
        directory: where the spool lives; created (mode 0700) if missing. One Spool at a time
            may have it open (flock); another raises :class:`SpoolError`.
        max_bytes: the most the segment files may hold together (:attr:`size_bytes`).
        min_free_bytes: an append that would leave less free space on the file system fails.
        segment_bytes: a segment is closed and a new one started once the next record would
            take it past this (a larger record gets a segment of its own).

    Raises:
        SpoolCorrupt: recovery found damage other than a torn last append.
        SpoolError: the directory is in use by another Spool.
        OSError: the directory cannot be created or read.
    """

    def __init__(
        self,
        directory: Path,
        *,
        max_bytes: int,
        min_free_bytes: int = 0,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
    ) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        if min_free_bytes < 0:
            raise ValueError(f"min_free_bytes must be >= 0, got {min_free_bytes}")
        if segment_bytes < SEGMENT_HEADER_BYTES + RECORD_HEADER_BYTES:
            raise ValueError(
                f"segment_bytes must be at least {SEGMENT_HEADER_BYTES + RECORD_HEADER_BYTES}"
            )
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.min_free_bytes = min_free_bytes
        self.segment_bytes = segment_bytes
        # Lock order: _append_lock, then _lock. _lock guards everything readers see.
        self._append_lock = threading.Lock()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._segments: list[_Segment] = []
        self._read_fds: OrderedDict[int, _Segment] = OrderedDict()
        self._base_seq = 0
        self._last_seq = 0
        self._durable_seq = 0
        self._size_bytes = 0
        self._closed = False
        self._waiters = 0  # threads in wait(): an append without waiters skips notify_all
        self._broken: str | None = None
        self._oldest: tuple[int, float] | None = None  # (base_seq, time) cache
        # Appender state (under _append_lock only).
        self._write_seg: _Segment | None = None
        self._write_fd = -1
        self._unsynced = False
        self._state_dirty = False
        self._dir_dirty = False
        self._free_at = 0  # free bytes at the last statvfs
        self._free_measured = float("-inf")  # monotonic time of it
        self._since_statvfs = 0  # bytes appended since
        self._dir_fd = self._open_directory()
        try:
            self._recover()
        except BaseException:
            self._close_fds()
            raise

    # --- properties ----------------------------------------------------------------------------

    @property
    def base_seq(self) -> int:
        """Records numbered up to this are gone (trimmed or discarded)."""
        with self._lock:
            return self._base_seq

    @property
    def last_seq(self) -> int:
        """The number of the last appended record (base_seq when the spool is empty)."""
        with self._lock:
            return self._last_seq

    @property
    def durable_seq(self) -> int:
        """Records up to this survive a crash (as of the last sync, segment roll or reset)."""
        with self._lock:
            return self._durable_seq

    @property
    def size_bytes(self) -> int:
        """Bytes of the segment files, headers included: what the spool takes on disk, and
        what ``max_bytes`` limits. Trimmed records that share a segment with retained ones
        count until their segment goes."""
        with self._lock:
            return self._size_bytes

    @property
    def record_count(self) -> int:
        """Records retained (last_seq - base_seq)."""
        with self._lock:
            return self._last_seq - self._base_seq

    @property
    def segment_count(self) -> int:
        with self._lock:
            return len(self._segments)

    def __repr__(self) -> str:
        with self._lock:
            state = "closed" if self._closed else "broken" if self._broken else "open"
            return (
                f"<Spool {str(self.directory)!r} {state} base={self._base_seq} "
                f"last={self._last_seq} durable={self._durable_seq} "
                f"bytes={self._size_bytes} segments={len(self._segments)}>"
            )

    # --- appending -----------------------------------------------------------------------------

    def append(self, records: Sequence[bytes | memoryview]) -> int:
        """Append ``records`` as numbers last_seq + 1, ... in order; return the new last_seq.

        The records are written (not yet durable: see :meth:`sync`) and visible to readers
        when this returns; readers never see part of a batch.

        Raises:
            SpoolFull: over max_bytes or min_free_bytes, or the file system is full; nothing of
                the batch was appended.
            SpoolError: a write failed (nothing of the batch was appended), or an earlier
                failure made the spool unusable.
            ValueError: a record is over MAX_RECORD_BYTES.
        """
        batch = [_as_record(r) for r in records]
        with self._append_lock:
            self._check_usable()
            if not batch:
                return self._last_seq
            if self._last_seq + len(batch) > _MAX_SEQ:
                raise SpoolError("sequence numbers exhausted; reset the spool")
            chunks, total = self._plan(batch)
            self._check_limits(total, len(batch))
            self._write_batch(batch, chunks, total)
            self._since_statvfs += total
            return self._last_seq

    def _plan(self, batch: Sequence[Buffer]) -> tuple[list[_Chunk], int]:
        """Split the batch over the open segment and new ones; also return the bytes it adds
        to the spool (records with their headers, and the headers of new segments)."""
        records = RECORD_HEADER_BYTES * len(batch) + sum(map(len, batch))
        size = self._write_seg.size if self._write_seg is not None else -1
        alone = size == SEGMENT_HEADER_BYTES and len(batch) == 1  # any size fits an empty one
        if size >= 0 and (size + records <= self.segment_bytes or alone):
            return [_Chunk(False, 0, len(batch))], records  # all in the open segment
        chunks: list[_Chunk] = []
        for i, data in enumerate(batch):
            need = RECORD_HEADER_BYTES + len(data)
            has_records = size > SEGMENT_HEADER_BYTES
            if size < 0 or (has_records and size + need > self.segment_bytes):
                chunks.append(_Chunk(True, i, i))
                size = SEGMENT_HEADER_BYTES
            elif not chunks:
                chunks.append(_Chunk(False, i, i))
            chunks[-1].stop = i + 1
            size += need
        return chunks, records + SEGMENT_HEADER_BYTES * sum(c.new_segment for c in chunks)

    def _check_limits(self, total: int, count: int) -> None:
        held = self._size_bytes
        if held + total > self.max_bytes:
            raise SpoolFull(
                f"max_bytes: the spool holds {held} bytes and a batch of {count} records needs "
                f"{total} more; {held + total} would pass max_bytes={self.max_bytes}"
            )
        if not self.min_free_bytes:
            return
        now = time.monotonic()
        estimate = self._free_at - self._since_statvfs - total
        if (
            now - self._free_measured < _STATVFS_EVERY_SECONDS
            and self._since_statvfs + total < _STATVFS_EVERY_BYTES
            and estimate - self.min_free_bytes >= _STATVFS_MARGIN
        ):
            return
        st = os.fstatvfs(self._dir_fd)
        self._free_at, self._free_measured, self._since_statvfs = st.f_bavail * st.f_frsize, now, 0
        if self._free_at - total < self.min_free_bytes:
            raise SpoolFull(
                f"min_free_bytes: the file system of {self.directory} has {self._free_at} bytes "
                f"free; a batch of {count} records needs {total}, which would leave "
                f"{self._free_at - total}, under min_free_bytes={self.min_free_bytes}"
            )

    def _write_batch(self, batch: Sequence[Buffer], chunks: list[_Chunk], total: int) -> None:
        """Write the planned chunks, then publish them all at once; on failure undo every write
        so that nothing of the batch remains."""
        time_ns = time.time_ns()
        seq = self._last_seq + 1
        old_seg, old_fd = self._write_seg, self._write_fd
        old_size, old_next_index = (old_seg.size, old_seg.next_index_at) if old_seg else (0, 0)
        old_index: tuple[array[int], array[int]] = (array("Q"), array("Q"))
        new: list[tuple[_Segment, int]] = []
        seg, fd, offset = old_seg, old_fd, old_size
        old_touched, old_end, old_last = False, old_size, self._last_seq
        try:
            for chunk in chunks:
                if chunk.new_segment:
                    if fd >= 0:
                        self._flush(fd, "segment left behind")
                    seg, fd = self._create_segment(seq)
                    new.append((seg, fd))
                    offset = SEGMENT_HEADER_BYTES
                assert seg is not None
                index = old_index if seg is old_seg else (seg.index_seqs, seg.index_offsets)
                parts, end = _encode(batch, chunk, seq, offset, time_ns, seg, index)
                old_touched = old_touched or seg is old_seg
                offset = _pwrite_all(fd, parts, offset)
                assert offset == end
                seq += chunk.stop - chunk.start
                if seg is old_seg:
                    old_end, old_last = offset, seq - 1
                else:  # not visible to readers until published below
                    seg.size, seg.last_seq = offset, seq - 1
        except BaseException as e:
            if old_seg is not None:
                old_seg.next_index_at = old_next_index
            self._undo(old_fd if old_touched else -1, old_size, new)
            if isinstance(e, OSError):
                raise self._append_error(e, len(batch)) from e
            raise
        with self._lock:
            if old_seg is not None and old_touched:
                if old_index[0]:
                    old_seg.add_index(*old_index)
                old_seg.size, old_seg.last_seq = old_end, old_last
            self._segments.extend(s for s, _ in new)
            self._last_seq = seq - 1
            self._size_bytes += total
            if new:  # every segment before the last new one was flushed when it was left
                self._durable_seq = max(self._durable_seq, new[-1][0].first_seq - 1)
            if self._waiters:
                self._changed.notify_all()
        if new:
            for f in [old_fd, *(f for _, f in new[:-1])]:
                if f >= 0:
                    os.close(f)
            self._write_seg, self._write_fd = new[-1]
        self._unsynced = True

    def _undo(self, old_fd: int, old_size: int, new: list[tuple[_Segment, int]]) -> None:
        """Remove every trace of a failed batch: its new segments, and its records in the
        segment that was open (truncated and flushed, so that a crash cannot bring them back).
        If that fails too, the spool is unusable until reopened (recovery sorts it out)."""
        try:
            for seg, fd in new:
                os.close(fd)
                self._unlink(seg.name)
            if old_fd >= 0:
                os.ftruncate(old_fd, old_size)
                self._flush(old_fd, "truncated segment")
            if new:
                self._flush(self._dir_fd, "directory")
        except OSError as e:
            self._break(f"undoing a failed append failed: {e}")

    def _append_error(self, e: OSError, count: int) -> SpoolError:
        if self._broken:
            return SpoolError(
                f"appending {count} records to {self.directory} failed: {e}; {self._broken_advice()}"
            )
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            return SpoolFull(
                f"the file system of {self.directory} is full ({os.strerror(e.errno)}); nothing "
                f"of the batch of {count} records was appended"
            )
        return SpoolError(
            f"appending {count} records to {self.directory} failed: {e}; nothing of the batch "
            f"was appended"
        )

    def _create_segment(self, first_seq: int) -> tuple[_Segment, int]:
        """A new, empty segment whose complete header is durable under its final name; returns
        it with a write descriptor."""
        name = _segment_name(first_seq)
        tmp = name + _TMP_SUFFIX
        fd = os.open(
            tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600, dir_fd=self._dir_fd
        )
        try:
            _pwrite_all(fd, [_file_header(_SEGMENT_MAGIC, first_seq)], 0)
            self._flush(fd, "new segment")
            os.rename(tmp, name, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
            self._flush(self._dir_fd, "directory")
        except BaseException:
            os.close(fd)
            self._unlink(tmp)
            self._unlink(name)
            raise
        return _Segment(first_seq, name, first_seq - 1, SEGMENT_HEADER_BYTES), fd

    # --- durability ----------------------------------------------------------------------------

    def sync(self) -> None:
        """Make every record appended so far durable, and base_seq with it. Cheap when nothing
        changed since the last call.

        Raises:
            SpoolError: a flush failed (the spool is then unusable until reopened).
        """
        with self._append_lock:
            self._check_usable()
            self._sync_locked()

    def _sync_locked(self) -> None:
        target = self._last_seq
        if self._unsynced and self._write_fd >= 0:
            self._flush_or_raise(self._write_fd, "segment")
        self._unsynced = False
        if self._state_dirty:
            self._save_state(self._base_seq)
        elif self._dir_dirty:
            self._flush_or_raise(self._dir_fd, "directory")
            self._dir_dirty = False
        with self._lock:
            self._durable_seq = max(self._durable_seq, target)

    def _flush(self, fd: int, what: str) -> None:
        """fsync a directory or fdatasync a file. A failure makes the spool unusable: after a
        failed flush the kernel may have dropped the pages, and a later one would succeed."""
        try:
            if fd == self._dir_fd:
                os.fsync(fd)
            else:
                os.fdatasync(fd)
        except OSError as e:
            self._break(f"flushing the {what} failed: {e}")
            raise

    def _flush_or_raise(self, fd: int, what: str) -> None:
        try:
            self._flush(fd, what)
        except OSError as e:
            raise SpoolError(f"{self.directory}: {self._broken_advice()}") from e

    def _save_state(self, base_seq: int) -> None:
        """Replace the state file atomically and durably; the directory is flushed with it."""
        tmp = _STATE_NAME + _TMP_SUFFIX
        try:
            fd = os.open(
                tmp,
                os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                0o600,
                dir_fd=self._dir_fd,
            )
            try:
                _pwrite_all(fd, [_file_header(_STATE_MAGIC, base_seq)], 0)
                self._flush(fd, "state file")
            finally:
                os.close(fd)
            os.rename(tmp, _STATE_NAME, src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
            self._flush(self._dir_fd, "directory")
        except OSError as e:
            advice = self._broken_advice() if self._broken else "nothing was changed"
            raise SpoolError(
                f"{self.directory}: saving base_seq={base_seq} failed: {e}; {advice}"
            ) from e
        self._state_dirty = self._dir_dirty = False

    # --- trimming and resetting ----------------------------------------------------------------

    def trim(self, upto_seq: int) -> None:
        """Records up to ``upto_seq`` are no longer needed (the replica has them): delete every
        segment whose records are all at or below it. base_seq becomes ``upto_seq``; it is
        written durably before any segment is deleted, and otherwise at the next sync or close.
        At or below base_seq: nothing to do. Past last_seq: trims to last_seq (and warns).

        Raises:
            SpoolError: saving base_seq failed (nothing was deleted), or the spool is unusable.
        """
        with self._append_lock:
            self._check_usable()
            with self._lock:
                if upto_seq > self._last_seq:
                    log.warning(
                        "%s: trim to %d asked, past the last record %d; trimming to %d",
                        self.directory,
                        upto_seq,
                        self._last_seq,
                        self._last_seq,
                    )
                    upto_seq = self._last_seq
                if upto_seq <= self._base_seq:
                    return
                doomed = [s for s in self._segments if s.last_seq <= upto_seq]
            if doomed:
                self._save_state(upto_seq)
            self._drop(doomed, upto_seq, last_seq=None)
            self._state_dirty = not doomed

    def reset(self, base_seq: int) -> None:
        """Discard every record (a full synchronization superseded them) and number the next
        one ``base_seq + 1``. Durable before it returns.

        Raises:
            ValueError: ``base_seq`` is below last_seq (numbers must never be given twice).
            SpoolError: saving base_seq failed (nothing was discarded), or the spool is unusable.
        """
        with self._append_lock:
            self._check_usable()
            if not self._last_seq <= base_seq <= _MAX_SEQ:
                raise ValueError(
                    f"reset to base_seq={base_seq}: must be from last_seq={self._last_seq} "
                    f"to {_MAX_SEQ}"
                )
            self._save_state(base_seq)
            with self._lock:
                doomed = list(self._segments)
            self._drop(doomed, base_seq, last_seq=base_seq)
            self._flush_or_raise(self._dir_fd, "directory")
            self._dir_dirty = False
            with self._lock:
                self._durable_seq = base_seq

    def _drop(self, doomed: list[_Segment], base_seq: int, last_seq: int | None) -> None:
        """Forget the first ``len(doomed)`` segments and delete their files (a reader still in
        one keeps reading it through its descriptor)."""
        with self._lock:
            del self._segments[: len(doomed)]
            self._base_seq = base_seq
            if last_seq is not None:
                self._last_seq = last_seq
            self._size_bytes -= sum(s.size for s in doomed)
            self._oldest = None
            if doomed:  # base_seq was saved: its numbers are never given again
                self._durable_seq = max(self._durable_seq, base_seq)
            for seg in doomed:
                self._retire(seg)
            self._changed.notify_all()
        if self._write_seg is not None and self._write_seg in doomed:
            os.close(self._write_fd)
            self._write_seg, self._write_fd, self._unsynced = None, -1, False
        for seg in doomed:
            self._unlink(seg.name)
        self._dir_dirty = self._dir_dirty or bool(doomed)

    # --- reading -------------------------------------------------------------------------------

    def read(
        self, from_seq: int, max_bytes: int, max_records: int = 10_000
    ) -> list[tuple[int, bytes]]:
        """The retained records numbered ``from_seq`` on, in order, as (seq, data), up to
        ``max_bytes`` of data and ``max_records`` records, but at least one record if there is
        any. An empty list when ``from_seq`` is last_seq + 1 (nothing new yet: see
        :meth:`wait`). Safe to call from any thread while another appends.

        Raises:
            SpoolGap: ``from_seq`` <= base_seq: records from_seq..base_seq are gone.
            SpoolAhead: ``from_seq`` > last_seq + 1.
            SpoolCorrupt: a record on disk does not match its checksum.
            SpoolClosed: the spool is closed.
        """
        if from_seq < 1 or max_bytes < 0 or max_records < 1:
            raise ValueError(
                f"read(from_seq={from_seq}, max_bytes={max_bytes}, max_records={max_records}): "
                f"from_seq and max_records must be >= 1, max_bytes >= 0"
            )
        records: list[tuple[int, bytes]] = []
        seq, data_bytes = from_seq, 0
        while True:
            found = self._find(seq, first=not records)
            if found is None:
                return records
            seg, fd, start_seq, offset, end = found
            try:
                budget = (max_bytes - data_bytes, max_records - len(records))
                run = _read_run(
                    fd, self.directory / seg.name, start_seq, offset, end, seq, budget, not records
                )
            finally:
                self._release(seg)
            with self._lock:
                seg.hint_seq, seg.hint_offset = run.next_seq, run.next_offset
            records += run.records
            data_bytes += run.data_bytes
            seq = run.next_seq
            if run.stopped or len(records) >= max_records:
                return records

    def _find(self, seq: int, *, first: bool) -> tuple[_Segment, int, int, int, int] | None:
        """Where to start reading ``seq``: (segment, read fd, seq and offset to walk from,
        published end); None when there is nothing (more) to read. The segment is held until
        :meth:`_release`."""
        with self._lock:
            if self._closed:
                raise SpoolClosed(f"{self.directory}: the spool is closed")
            if seq <= self._base_seq:
                if not first:
                    return None  # trimmed while we read: return what we have
                raise SpoolGap(
                    f"{self.directory}: records {seq}..{self._base_seq} were trimmed or "
                    f"discarded (base_seq={self._base_seq}); the reader must resynchronize"
                )
            if seq > self._last_seq:
                if seq > self._last_seq + 1 and first:
                    raise SpoolAhead(
                        f"{self.directory}: asked for records from {seq}, but the last record "
                        f"is {self._last_seq}: the reader has records this spool does not"
                    )
                return None
            return self._hold(seq)

    def _hold(self, seq: int) -> tuple[_Segment, int, int, int, int]:
        """Under _lock, for a retained ``seq``: see :meth:`_find`."""
        i = bisect.bisect_right(self._segments, seq, key=lambda s: s.first_seq) - 1
        seg = self._segments[i]
        start_seq, offset = seg.locate(seq)
        fd = self._acquire(seg)
        return seg, fd, start_seq, offset, seg.size

    def _acquire(self, seg: _Segment) -> int:
        """A read descriptor of ``seg`` (cached, at most _MAX_READ_FDS idle); under _lock."""
        if seg.read_fd < 0:
            seg.read_fd = os.open(seg.name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=self._dir_fd)
            self._read_fds[seg.first_seq] = seg
            idle = [s for s in self._read_fds.values() if not s.readers and s is not seg]
            for old in idle[: max(0, len(self._read_fds) - _MAX_READ_FDS)]:
                self._close_read_fd(old)
        self._read_fds.move_to_end(seg.first_seq)
        seg.readers += 1
        return seg.read_fd

    def _release(self, seg: _Segment) -> None:
        with self._lock:
            seg.readers -= 1
            if seg.retired and not seg.readers:
                self._close_read_fd(seg)

    def _retire(self, seg: _Segment) -> None:
        """Under _lock: ``seg`` is gone for new readers."""
        seg.retired = True
        if not seg.readers:
            self._close_read_fd(seg)

    def _close_read_fd(self, seg: _Segment) -> None:
        if seg.read_fd >= 0:
            os.close(seg.read_fd)
            seg.read_fd = -1
            if self._read_fds.get(seg.first_seq) is seg:
                del self._read_fds[seg.first_seq]

    def wait(self, after_seq: int, timeout: float) -> bool:
        """Block until last_seq > ``after_seq`` or ``timeout`` seconds passed; True if there is
        something after ``after_seq``. Woken by append, reset and close."""
        with self._changed:
            self._waiters += 1
            try:
                self._changed.wait_for(lambda: self._last_seq > after_seq or self._closed, timeout)
            finally:
                self._waiters -= 1
            return self._last_seq > after_seq

    def oldest_timestamp(self) -> float | None:
        """time.time() when the oldest retained record was appended (for replication lag: the
        age of the oldest unacknowledged change); None when the spool is empty."""
        with self._lock:
            if self._closed:
                raise SpoolClosed(f"{self.directory}: the spool is closed")
            if self._last_seq == self._base_seq:
                return None
            if self._oldest is not None and self._oldest[0] == self._base_seq:
                return self._oldest[1]
            base = self._base_seq
            seg, fd, seq, offset, end = self._hold(base + 1)
        try:
            path = self.directory / seg.name
            while True:
                raw = os.pread(fd, RECORD_HEADER_BYTES, offset) if offset < end else b""
                if len(raw) < RECORD_HEADER_BYTES or raw[8:10] != _RECORD_MAGIC:
                    raise _corrupt(path, offset, f"expected the record of seq {seq}, found none")
                _c, _magic, _reserved, length, rseq, time_ns = _RECORD_HEADER.unpack(raw)
                if rseq != seq:
                    raise _corrupt(path, offset, f"expected the record of seq {seq}, found none")
                if seq == base + 1:
                    break
                seq += 1
                offset += RECORD_HEADER_BYTES + length
        finally:
            self._release(seg)
        when = int(time_ns) / 1e9
        with self._lock:
            self._oldest = (base, when)
        return when

    # --- lifetime ------------------------------------------------------------------------------

    def close(self) -> None:
        """Sync (unless the spool is unusable), then close every descriptor and wake waiters;
        idempotent. A failing final sync is raised after everything is closed."""
        with self._append_lock:
            if self._closed:
                return
            error: SpoolError | None = None
            if self._broken is None:
                try:
                    self._sync_locked()
                except SpoolError as e:
                    error = e
            with self._lock:
                self._closed = True
                for seg in self._segments:
                    self._retire(seg)
                self._changed.notify_all()
            self._close_fds()
        if error is not None:
            raise error

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _close_fds(self) -> None:
        if self._write_fd >= 0:
            os.close(self._write_fd)
            self._write_seg, self._write_fd = None, -1
        if self._dir_fd >= 0:
            fd, self._dir_fd = self._dir_fd, -1
            os.close(fd)  # also releases the flock

    def _check_usable(self) -> None:
        if self._closed:
            raise SpoolClosed(f"{self.directory}: the spool is closed")
        if self._broken is not None:
            raise SpoolError(f"{self.directory}: {self._broken_advice()}")

    def _break(self, reason: str) -> None:
        if self._broken is None:
            log.error("%s: spool unusable: %s", self.directory, reason)
            self._broken = reason

    def _broken_advice(self) -> str:
        return (
            f"the spool is unusable after an earlier failure ({self._broken}); close it and "
            f"open it again (recovery checks every record)"
        )

    def _unlink(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name, dir_fd=self._dir_fd)

    # --- opening and recovery ------------------------------------------------------------------

    def _open_directory(self) -> int:
        """Create the directory if missing (mode 0700, its entry made durable), open it and lock
        it against a second Spool."""
        try:
            os.makedirs(self.directory, mode=0o700)
        except FileExistsError:
            pass
        else:
            parent = os.open(self.directory.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(parent)
            finally:
                os.close(parent)
        fd = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SpoolError(f"{self.directory} is in use by another Spool") from None
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _recover(self) -> None:
        """Rebuild the in-memory state from the directory (see the module docstring)."""
        names = self._list_segments()
        saved = self._load_state()
        base = saved if saved is not None else 0
        # Segments whose successor starts at or below base + 1 hold nothing above base.
        while len(names) > 1 and names[1][0] <= base + 1:
            log.warning(
                "%s: removing %s, left over from an interrupted trim", self.directory, names[0][1]
            )
            self._unlink(names.pop(0)[1])
            self._dir_dirty = True
        expected: int | None = None
        for i, (first, name) in enumerate(names):
            if expected is not None and first != expected:
                raise _corrupt(
                    self.directory / name,
                    0,
                    f"segment starts at seq {first}, but the one before it ends at {expected - 1}",
                )
            seg = self._scan(first, name, last=i == len(names) - 1)
            self._segments.append(seg)
            expected = seg.last_seq + 1
        if self._segments and self._segments[-1].last_seq <= base:
            self._unlink(self._segments.pop().name)  # all trimmed; its tail was lost in a crash
            self._dir_dirty = True
        if saved is None and self._segments:
            log.warning("%s: no state file; base_seq taken from the first segment", self.directory)
        if self._segments and self._segments[0].first_seq > base + 1:
            if saved is not None:
                log.warning(
                    "%s: records %d..%d are missing (the first segment starts at %d); readers "
                    "of them get SpoolGap",
                    self.directory,
                    base + 1,
                    self._segments[0].first_seq - 1,
                    self._segments[0].first_seq,
                )
            base = self._segments[0].first_seq - 1
        self._base_seq = base
        self._last_seq = max(base, self._segments[-1].last_seq if self._segments else 0)
        self._size_bytes = sum(s.size for s in self._segments)
        if saved != base:
            self._save_state(base)
        elif self._dir_dirty:
            os.fsync(self._dir_fd)
            self._dir_dirty = False
        self._durable_seq = self._last_seq
        last = self._segments[-1] if self._segments else None
        if last is not None and last.size < self.segment_bytes:
            self._write_fd = os.open(last.name, os.O_WRONLY | os.O_CLOEXEC, dir_fd=self._dir_fd)
            self._write_seg = last

    def _list_segments(self) -> list[tuple[int, str]]:
        """(first seq, name) of every segment file, in order; leftover temporary files go."""
        names: list[tuple[int, str]] = []
        for name in os.listdir(self._dir_fd):
            match = _SEGMENT_NAME.match(name)
            if match:
                names.append((int(match.group(1)), name))
            elif name.endswith(_TMP_SUFFIX):
                self._unlink(name)
                self._dir_dirty = True
        return sorted(names)

    def _load_state(self) -> int | None:
        try:
            fd = os.open(_STATE_NAME, os.O_RDONLY | os.O_CLOEXEC, dir_fd=self._dir_fd)
        except FileNotFoundError:
            return None
        try:
            raw = os.pread(fd, _FILE_HEADER.size + 1, 0)
        finally:
            os.close(fd)
        base, problem = _parse_file_header(raw, _STATE_MAGIC)
        if problem is None and len(raw) != _FILE_HEADER.size:
            problem = f"state file is longer than {_FILE_HEADER.size} bytes"
        if problem is not None:
            raise _corrupt(self.directory / _STATE_NAME, 0, problem)
        return base

    def _scan(self, first_seq: int, name: str, *, last: bool) -> _Segment:
        """Verify one segment file; truncate a torn tail if it is the last one."""
        path = self.directory / name
        fd = os.open(name, (os.O_RDWR if last else os.O_RDONLY) | os.O_CLOEXEC, dir_fd=self._dir_fd)
        try:
            seq, problem = _parse_file_header(os.pread(fd, _FILE_HEADER.size, 0), _SEGMENT_MAGIC)
            if problem is None and seq != first_seq:
                problem = f"header says first seq {seq}, the name says {first_seq}"
            if problem is not None:
                raise _corrupt(path, 0, problem)
            seg = _Segment(first_seq, name, first_seq - 1, SEGMENT_HEADER_BYTES)
            file_size = os.fstat(fd).st_size
            damage = _verify(fd, seg, file_size)
            # Recovery counts every record it keeps as durable: a clean exit without sync
            # may have left them in the page cache only (cheap when they are on disk already).
            os.fdatasync(fd)
            if damage is not None:
                offset, what, torn = damage
                if not (last and torn):
                    raise _corrupt(path, offset, what)
                log.warning(
                    "%s: %s at offset %d: dropping the last %d bytes (an append torn by a "
                    "crash); the last record is now %d",
                    path,
                    what,
                    offset,
                    file_size - offset,
                    seg.last_seq,
                )
                os.ftruncate(fd, offset)
                os.fdatasync(fd)
            return seg
        finally:
            os.close(fd)
