"""Hashing files for block synchronization: the blocking I/O around :mod:`standby.blocks`.

Every function here blocks on the disk; the engine runs it in a worker thread. Reads go through
``os.preadv`` into one caller-supplied (or per-call) buffer, so hashing a file allocates no bytes
object per block and touches the same few pages over and over: page faults are expensive. Get
buffers from :func:`new_buffer` (page-aligned) and keep them: a ``bytearray`` works too, but is
used from its first 64-byte boundary on, because the kernel copies into a ``bytearray`` as malloc
places it (16 bytes past a boundary) about four times slower (docs/hashing.md).

Holes are found with ``SEEK_DATA``/``SEEK_HOLE`` and never read: a block entirely inside a hole
gets the zero digest and its zero bit. Where the file system cannot tell (``EINVAL``,
``EOPNOTSUPP``), the whole file is read. Blocks that read as all zero get their zero bit too, so
the master sends ZeroRange rather than data for them.

These functions read at explicit offsets but move the descriptor's file offset (``lseek``).
A file that shrinks under them raises :class:`FileChangedError`: hash it again.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol

from standby.blocks import (
    DEFAULT_RANGE_BLOCKS,
    BytesLike,
    DigestAccumulator,
    block_count,
    block_digests,
    count_bits,
    get_bit,
    new_bitmap,
    set_bits,
    zero_blocks,
    zero_digest,
)
from standby.protocol._messages import BLOCK_DIGEST_SIZE, MAX_BLOCK_SIZE

#: The default read buffer: holds any block and any BlockData payload (MAX_BLOCK_SIZE). Measured
#: (docs/hashing.md): 1 to 4 MiB hash a warm file about 5 % faster than 8 MiB, which falls out
#: of the caches, and 256 KiB is slower again (more calls per byte).
DEFAULT_BUFFER_SIZE = MAX_BLOCK_SIZE

#: Reads land at this alignment: the kernel copies into a buffer at 16 bytes past a 64-byte
#: boundary (where malloc puts a bytearray) four times slower than into an aligned one.
_ALIGNMENT = 64

#: A buffer to read into: preferably from new_buffer(); any other is used from its first
#: 64-byte boundary on.
WritableBuffer = bytearray | mmap.mmap | memoryview

_SEEK_UNSUPPORTED = frozenset({errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP})


class FileChangedError(RuntimeError):
    """The file ended before the expected size (it shrank while being read)."""


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class FileHashes:
    """What hashing one file found."""

    #: The size the file had when hashing started (fstat); the digests describe that many bytes.
    size: int
    block_size: int
    range_blocks: int
    #: All block digests, concatenated; ``b""`` when hashed with ``keep_digests=False``.
    block_digests: bytes
    #: One digest per range of ``range_blocks`` blocks (RangeDigests.digests).
    coarse_digests: bytes
    #: The end-to-end digest (FileEnd.digest).
    file_digest: bytes
    #: Zero bitmap: bit ``i`` set when block ``i`` is all zero (hole or zero bytes).
    zeros: bytes
    #: Bytes actually read from the file (holes are not read).
    bytes_read: int

    @property
    def blocks(self) -> int:
        return block_count(self.size, self.block_size)

    @property
    def zero_block_count(self) -> int:
        return count_bits(self.zeros)

    def is_zero_block(self, index: int) -> bool:
        """Whether block ``index`` is all zero (a hole, or zero bytes)."""
        if not 0 <= index < self.blocks:
            raise IndexError(f"block {index} is outside the file's {self.blocks} blocks")
        return get_bit(self.zeros, index)

    def __repr__(self) -> str:
        return (
            f"FileHashes(size={self.size}, block_size={self.block_size}, blocks={self.blocks}, "
            f"zero_blocks={self.zero_block_count}, "
            f"ranges={len(self.coarse_digests) // BLOCK_DIGEST_SIZE}, "
            f"kept_digests={bool(self.block_digests) or not self.blocks}, "
            f"bytes_read={self.bytes_read}, file_digest={self.file_digest.hex()[:16]}...)"
        )


class _DigestSink(Protocol):
    def add(self, digests: BytesLike) -> None: ...

    def add_repeated(self, digest: bytes, count: int) -> None: ...


class _Collector:
    """A sink that only keeps the digests (for hash_ranges)."""

    def __init__(self) -> None:
        self.digests = bytearray()

    def add(self, digests: BytesLike) -> None:
        self.digests += digests

    def add_repeated(self, digest: bytes, count: int) -> None:
        self.digests += digest * count


def new_buffer(size: int = DEFAULT_BUFFER_SIZE) -> mmap.mmap:
    """A page-aligned read buffer (anonymous memory), to allocate once and reuse."""
    return mmap.mmap(-1, size)


def _aligned(buffer: WritableBuffer) -> memoryview:
    """A writable view of ``buffer`` that starts on a 64-byte boundary."""
    view = memoryview(buffer).cast("B")
    if view.readonly:
        raise TypeError("the read buffer must be writable")
    if not view:
        return view
    address = ctypes.addressof(ctypes.c_char.from_buffer(view))
    return view[-address % _ALIGNMENT :]


def _usable_view(buffer: WritableBuffer | None, block_size: int) -> memoryview:
    """The largest whole number of blocks of the aligned buffer (a new one if None)."""
    if block_size < 1:
        raise ValueError(f"block_size must be at least 1, got {block_size}")
    view = _aligned(new_buffer(max(DEFAULT_BUFFER_SIZE, block_size)) if buffer is None else buffer)
    usable = len(view) - len(view) % block_size
    if not usable:
        raise ValueError(f"a buffer of {len(view)} bytes cannot hold a {block_size}-byte block")
    return view[:usable]


def _read_exact(fd: int, view: memoryview, offset: int) -> None:
    got = 0
    while got < len(view):
        count = os.preadv(fd, [view[got:]], offset + got)
        if not count:
            raise FileChangedError(f"end of file at {offset + got}, expected {offset + len(view)}")
        got += count


def _check_not_shrunk(fd: int, size: int) -> None:
    """Holes past a new end of file read as zeros: only the size tells that the file shrank."""
    now = os.fstat(fd).st_size
    if now < size:
        raise FileChangedError(f"the file shrank from {size} to {now} bytes while being hashed")


def data_extents(fd: int, start: int, stop: int) -> Iterator[tuple[int, int]]:
    """The extents of ``[start, stop)`` that may hold data; the rest is holes (never to be
    read). On a file system without SEEK_DATA, the whole range."""
    offset = start
    while offset < stop:
        try:
            data = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as error:
            if error.errno == errno.ENXIO:  # only holes from here to the end of the file
                return
            if error.errno in _SEEK_UNSUPPORTED:
                yield offset, stop
                return
            raise
        if data >= stop:
            return
        try:
            hole = min(os.lseek(fd, data, os.SEEK_HOLE), stop)
        except OSError as error:
            if error.errno != errno.ENXIO:  # ENXIO: the file shrank; the read will tell
                raise
            hole = stop
        yield data, hole
        offset = hole


def _hash_blocks(
    fd: int,
    size: int,
    block_size: int,
    first: int,
    stop: int,
    view: memoryview,
    sink: _DigestSink,
    zeros: bytearray | None,
) -> int:
    """Feed the digests of blocks ``[first, stop)`` to ``sink`` in order, set the zero bits of
    zero blocks in ``zeros`` (indexed by block), and return the number of bytes read."""
    blocks = block_count(size, block_size)
    stop = min(stop, blocks)
    bytes_read = 0
    done = first  # the next block to feed to the sink

    def holes(until: int) -> None:
        full = min(until, blocks - 1 if size % block_size else blocks) - done
        if full > 0:
            sink.add_repeated(zero_digest(block_size), full)
        if done + max(full, 0) < until:  # the file's short last block, inside a hole
            sink.add(zero_digest(size % block_size))
        if zeros is not None:
            set_bits(zeros, done, until)

    for data, hole in data_extents(fd, first * block_size, min(stop * block_size, size)):
        start = max(data // block_size, done)
        end = -(-hole // block_size)
        if start > done:
            holes(start)
        offset, end_offset = start * block_size, min(end * block_size, size)
        while offset < end_offset:
            chunk = view[: min(len(view), end_offset - offset)]
            _read_exact(fd, chunk, offset)
            bytes_read += len(chunk)
            digests = block_digests(chunk, block_size)
            sink.add(digests)
            if zeros is not None:
                base = offset // block_size
                for index in zero_blocks(chunk, block_size, digests):
                    set_bits(zeros, base + index, base + index + 1)
            offset += len(chunk)
        done = max(done, end)
    if done < stop:
        holes(stop)
    return bytes_read


def hash_file(
    fd: int,
    block_size: int,
    *,
    buffer: WritableBuffer | None = None,
    range_blocks: int = DEFAULT_RANGE_BLOCKS,
    keep_digests: bool = True,
) -> FileHashes:
    """Hash the regular file open on ``fd``: block digests, coarse digests, file digest, zero
    bitmap. ``buffer`` bounds the memory read at once; pass one from :func:`new_buffer` and
    reuse it (without one, each call maps and faults in a new 4 MiB). ``keep_digests=False`` drops the block digests of very large files (the coarse
    and file digests are still computed; ``hash_ranges`` recomputes block digests on demand)."""
    size = os.fstat(fd).st_size
    view = _usable_view(buffer, block_size)
    blocks = block_count(size, block_size)
    accumulator = DigestAccumulator(range_blocks, keep=keep_digests)
    zeros = new_bitmap(blocks)
    bytes_read = _hash_blocks(fd, size, block_size, 0, blocks, view, accumulator, zeros)
    _check_not_shrunk(fd, size)
    result = accumulator.finish(size)
    return FileHashes(
        size=size,
        block_size=block_size,
        range_blocks=range_blocks,
        block_digests=result.block_digests,
        coarse_digests=result.coarse_digests,
        file_digest=result.file_digest,
        zeros=bytes(zeros),
        bytes_read=bytes_read,
    )


def hash_ranges(
    fd: int,
    size: int,
    block_size: int,
    range_blocks: int,
    ranges: Iterable[int],
    *,
    buffer: WritableBuffer | None = None,
) -> bytes:
    """The block digests of the listed coarse ranges of a file of ``size`` bytes, in the order
    listed, concatenated (as ``select_ranges`` would give from all of them): the answer to a
    BlockRequest when the block digests were not kept. Holes are not read."""
    if range_blocks < 1:
        raise ValueError(f"range_blocks must be at least 1, got {range_blocks}")
    view = _usable_view(buffer, block_size)
    blocks = block_count(size, block_size)
    collector = _Collector()
    for index in ranges:
        first = index * range_blocks
        if not 0 <= first < blocks:
            raise ValueError(f"range {index} is outside the file's {blocks} blocks")
        _hash_blocks(fd, size, block_size, first, first + range_blocks, view, collector, None)
    _check_not_shrunk(fd, size)
    return bytes(collector.digests)


def read_runs(
    fd: int, runs: Iterable[tuple[int, int]], buffer: WritableBuffer
) -> Iterator[tuple[int, memoryview]]:
    """Read each ``(offset, length)`` run (a plan's ``data_runs``) into ``buffer`` and yield
    ``(offset, view)``. The view is only valid until the next item: copy what must outlive it.
    A run longer than the buffer raises ValueError; a run past the end, FileChangedError."""
    whole = _aligned(buffer)
    for offset, length in runs:
        if length > len(whole):
            raise ValueError(f"a run of {length} bytes does not fit a {len(whole)}-byte buffer")
        view = whole[:length]
        _read_exact(fd, view, offset)
        yield offset, view
