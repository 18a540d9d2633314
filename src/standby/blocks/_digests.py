"""Block, range and file digests: the hashing rules both hosts must apply identically.

- A *block digest* is xxh3-128 (16 bytes, ``xxhash.xxh3_128_digest``) of one block; the last
  block of a file may be short and is hashed as it is.
- A *coarse digest* is xxh3-128 over the concatenated block digests of one range of
  ``range_blocks`` consecutive blocks (the last range may be short).
- The *file digest* is BLAKE3-256 over the concatenated block digests of the whole file followed
  by the file size as 8 bytes little-endian, so a replica recomputes it from block digests it
  already verified, without reading the file again.

Digest strings are concatenations of 16-byte digests (``bytes``, or any bytes-like object where
noted). Nothing here copies a block: buffers are hashed through memoryview slices.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import NamedTuple

import blake3
import xxhash

from standby.protocol._messages import BLOCK_DIGEST_SIZE, FILE_DIGEST_SIZE, MAX_BLOCK_SIZE

#: Anything the hash functions accept without a copy.
BytesLike = bytes | bytearray | memoryview

_xxh3_128 = xxhash.xxh3_128_digest

# One shared all-zero buffer: zero tests and zero digests compare against or hash slices of it.
# bytes(n) comes from calloc, so its pages cost nothing until first read.
_ZEROS = bytes(MAX_BLOCK_SIZE)
_ZERO_VIEW = memoryview(_ZEROS)

# Digests compared in one memcmp by differing_indexes before it looks closer.
_COMPARE_STRIDES = (4096 * BLOCK_DIGEST_SIZE, 64 * BLOCK_DIGEST_SIZE, BLOCK_DIGEST_SIZE)


def _check_positive(name: str, value: int) -> None:
    if value < 1:
        raise ValueError(f"{name} must be at least 1, got {value}")


def _check_digests(name: str, digests: BytesLike) -> None:
    if len(digests) % BLOCK_DIGEST_SIZE:
        raise ValueError(f"{name} holds {len(digests)} bytes, not a whole number of digests")


def digest_count(digests: BytesLike) -> int:
    """Number of 16-byte digests in a digest string (ValueError if it is not a whole number)."""
    _check_digests("digests", digests)
    return len(digests) // BLOCK_DIGEST_SIZE


def block_count(size: int, block_size: int) -> int:
    """Number of blocks of a file of ``size`` bytes (the last one may be short)."""
    _check_positive("block_size", block_size)
    if size < 0:
        raise ValueError(f"size must be >= 0, got {size}")
    return -(-size // block_size)


def block_digest(data: BytesLike) -> bytes:
    """The 16-byte digest of one block."""
    return bytes(_xxh3_128(data))


def block_digests(buf: BytesLike, block_size: int) -> bytes:
    """Concatenated digests of each ``block_size`` piece of ``buf`` (the last may be short)."""
    _check_positive("block_size", block_size)
    view = memoryview(buf).cast("B")
    return b"".join(
        map(_xxh3_128, [view[i : i + block_size] for i in range(0, len(view), block_size)])
    )


@functools.lru_cache(maxsize=64)
def zero_digest(length: int) -> bytes:
    """Digest of a block of ``length`` zero bytes (cached: holes cost no hashing)."""
    if length < 0:
        raise ValueError(f"length must be >= 0, got {length}")
    if length <= len(_ZEROS):
        return block_digest(_ZERO_VIEW[:length])
    hasher = xxhash.xxh3_128()
    for offset in range(0, length, len(_ZEROS)):
        hasher.update(_ZERO_VIEW[: min(len(_ZEROS), length - offset)])
    return bytes(hasher.digest())


def is_zero(data: BytesLike) -> bool:
    """Whether every byte of ``data`` is zero: a memcmp against a shared zero buffer."""
    view = memoryview(data).cast("B")
    step = len(_ZEROS)
    if len(view) <= step:
        return _ZEROS.startswith(view)
    return all(_ZEROS.startswith(view[i : i + step]) for i in range(0, len(view), step))


def zero_blocks(buf: BytesLike, block_size: int, digests: bytes) -> list[int]:
    """Indexes of the blocks of ``buf`` that are all zero; ``digests`` is
    ``block_digests(buf, block_size)``.

    A zero block always has the zero digest, so only blocks with that digest are compared byte
    by byte: the answer is exact and costs nothing for blocks that hold data.
    """
    view = memoryview(buf).cast("B")
    count = block_count(len(view), block_size)
    if len(digests) != count * BLOCK_DIGEST_SIZE:
        raise ValueError(f"{len(digests)} bytes of digests for {count} blocks")
    found: list[int] = []
    full_blocks, tail = divmod(len(view), block_size)
    full = zero_digest(block_size)
    position = digests.find(full, 0, full_blocks * BLOCK_DIGEST_SIZE)
    while position >= 0:
        index, misaligned = divmod(position, BLOCK_DIGEST_SIZE)
        if not misaligned and is_zero(view[index * block_size : (index + 1) * block_size]):
            found.append(index)
        position = digests.find(full, position + 1, full_blocks * BLOCK_DIGEST_SIZE)
    if (
        tail
        and digests[full_blocks * BLOCK_DIGEST_SIZE :] == zero_digest(tail)
        and is_zero(view[full_blocks * block_size :])
    ):
        found.append(full_blocks)
    return found


def coarse_digests(block_digests: BytesLike, range_blocks: int) -> bytes:
    """One digest per range of ``range_blocks`` block digests (the last range may be short)."""
    _check_positive("range_blocks", range_blocks)
    _check_digests("block_digests", block_digests)
    stride = range_blocks * BLOCK_DIGEST_SIZE
    view = memoryview(block_digests).cast("B")
    return b"".join(map(_xxh3_128, [view[i : i + stride] for i in range(0, len(view), stride)]))


def select_ranges(block_digests: BytesLike, range_blocks: int, ranges: Iterable[int]) -> bytes:
    """The block digests of the listed ranges, in the order listed, concatenated: the answer to
    a BlockRequest, or the master's side of the comparison."""
    _check_positive("range_blocks", range_blocks)
    count = digest_count(block_digests)
    view = memoryview(block_digests).cast("B")
    stride = range_blocks * BLOCK_DIGEST_SIZE
    parts = []
    for index in ranges:
        if not 0 <= index * range_blocks < count:
            raise ValueError(f"range {index} is outside {count} blocks")
        parts.append(view[index * stride : (index + 1) * stride])
    return b"".join(parts)


def differing_indexes(a: BytesLike, b: BytesLike) -> list[int]:
    """Indexes of the digests that differ between two digest strings, in increasing order.

    When the lengths differ, every digest past the shorter string differs. Equal stretches are
    compared a large slice at a time (memcmp, no copies), so the cost follows the differences.
    """
    _check_digests("a", a)
    _check_digests("b", b)
    left = a if isinstance(a, bytes | bytearray) else bytes(a)
    right = memoryview(b).cast("B")
    common = min(len(left), len(right))
    found: list[int] = []

    def scan(start: int, stop: int, level: int) -> None:
        stride = _COMPARE_STRIDES[level]
        for offset in range(start, stop, stride):
            end = min(offset + stride, stop)
            if left.startswith(right[offset:end], offset):
                continue
            if stride == BLOCK_DIGEST_SIZE:
                found.append(offset // BLOCK_DIGEST_SIZE)
            else:
                scan(offset, end, level + 1)

    scan(0, common, 0)
    found.extend(
        range(common // BLOCK_DIGEST_SIZE, max(len(left), len(right)) // BLOCK_DIGEST_SIZE)
    )
    return found


def _size_suffix(size: int) -> bytes:
    if size < 0:
        raise ValueError(f"size must be >= 0, got {size}")
    return size.to_bytes(8, "little")


def file_digest(block_digests: BytesLike, size: int) -> bytes:
    """The 32-byte end-to-end digest of a file from all its block digests and its size."""
    _check_digests("block_digests", block_digests)
    hasher = blake3.blake3(block_digests)
    hasher.update(_size_suffix(size))
    return bytes(hasher.digest(length=FILE_DIGEST_SIZE))


class FileDigests(NamedTuple):
    """Everything a DigestAccumulator learned about a file."""

    blocks: int
    #: All block digests, or ``b""`` when the accumulator was told not to keep them.
    block_digests: bytes
    coarse_digests: bytes
    file_digest: bytes


class DigestAccumulator:
    """Consumes a file's block digests in order, in pieces of any length, and yields its coarse
    digests and file digest, keeping all block digests only when asked (a 1 TiB file in 64 KiB
    blocks has 256 MiB of them; without them, ``hash_ranges`` recomputes the needed ones).
    Runs of identical digests (holes) are added in O(ranges) with ``add_repeated``.
    """

    __slots__ = ("_blocks", "_coarse", "_file", "_finished", "_kept", "_pending", "_range_bytes")

    def __init__(self, range_blocks: int, *, keep: bool = True) -> None:
        _check_positive("range_blocks", range_blocks)
        self._range_bytes = range_blocks * BLOCK_DIGEST_SIZE
        self._kept: bytearray | None = bytearray() if keep else None
        self._pending = bytearray()  # digests of the current, incomplete range
        self._coarse = bytearray()
        self._file = blake3.blake3()
        self._blocks = 0
        self._finished = False

    def __repr__(self) -> str:
        return (
            f"DigestAccumulator(range_blocks={self._range_bytes // BLOCK_DIGEST_SIZE}, "
            f"keep={self._kept is not None}, blocks={self._blocks})"
        )

    def add(self, digests: BytesLike) -> None:
        """Append the digests of the next blocks of the file."""
        if self._finished:
            raise RuntimeError("DigestAccumulator used after finish()")
        view = memoryview(digests).cast("B")
        self._blocks += digest_count(view)
        self._file.update(view)
        if self._kept is not None:
            self._kept += view
        position = 0
        if self._pending:
            position = self._range_bytes - len(self._pending)
            self._pending += view[:position]
            if len(self._pending) < self._range_bytes:
                return
            self._coarse += _xxh3_128(self._pending)
            self._pending.clear()
        stop = len(view) - (len(view) - position) % self._range_bytes
        if stop > position:
            self._coarse += coarse_digests(
                view[position:stop], self._range_bytes // BLOCK_DIGEST_SIZE
            )
        self._pending += view[stop:]

    def add_repeated(self, digest: bytes, count: int) -> None:
        """Append ``count`` copies of one digest without building them all (unless kept)."""
        if len(digest) != BLOCK_DIGEST_SIZE or count < 0:
            raise ValueError("add_repeated needs one 16-byte digest and a count >= 0")
        range_blocks = self._range_bytes // BLOCK_DIGEST_SIZE
        head = min(count, (range_blocks - len(self._pending) // BLOCK_DIGEST_SIZE) % range_blocks)
        self.add(digest * head)
        count -= head
        full, rest = divmod(count, range_blocks)
        if full:
            whole_range = digest * range_blocks
            self._coarse += _xxh3_128(whole_range) * full
            self._blocks += full * range_blocks
            if self._kept is not None:
                self._kept += whole_range * full
            chunk = digest * 4096
            chunks, tail = divmod(full * range_blocks, 4096)
            for _ in range(chunks):
                self._file.update(chunk)
            self._file.update(digest * tail)
        self.add(digest * rest)

    def finish(self, size: int) -> FileDigests:
        """The results, for a file of ``size`` bytes; the accumulator is spent afterwards."""
        if self._finished:
            raise RuntimeError("DigestAccumulator.finish() called twice")
        self._finished = True
        if self._pending:
            self._coarse += _xxh3_128(self._pending)
            self._pending.clear()
        self._file.update(_size_suffix(size))
        return FileDigests(
            blocks=self._blocks,
            block_digests=bytes(self._kept) if self._kept is not None else b"",
            coarse_digests=bytes(self._coarse),
            file_digest=bytes(self._file.digest(length=FILE_DIGEST_SIZE)),
        )
