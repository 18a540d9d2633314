"""Bitmaps with one bit per block: which blocks of a file are all zero.

Bit ``i`` (block ``i``) is bit ``i % 8`` (least significant first) of byte ``i // 8``; bits past
the last block are clear. A bitmap is a plain ``bytearray`` (mutable, while hashing) or ``bytes``
(frozen, once complete), so it can be stored and sent as is. One bit per block keeps it small:
a 1 TiB file in 4 KiB blocks needs 32 MiB.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

# Bytes that hold no set bit / no clear bit: skipped at C speed while looking for the next bit.
_NOT_ALL_CLEAR = re.compile(rb"[^\x00]")
_NOT_ALL_SET = re.compile(rb"[^\xff]")


def new_bitmap(bits: int) -> bytearray:
    """A bitmap of ``bits`` clear bits."""
    if bits < 0:
        raise ValueError(f"a bitmap cannot have {bits} bits")
    return bytearray((bits + 7) >> 3)


def get_bit(bitmap: bytes | bytearray, index: int) -> bool:
    """Whether bit ``index`` is set."""
    return bool(bitmap[index >> 3] >> (index & 7) & 1)


def set_bits(bitmap: bytearray, start: int, stop: int) -> None:
    """Set bits ``start`` to ``stop - 1``, whole bytes at a time (a 1 TiB hole is one call)."""
    if start < 0 or stop > len(bitmap) * 8:
        raise IndexError(f"bits {start}..{stop} outside a bitmap of {len(bitmap) * 8} bits")
    if start >= stop:
        return
    first, last = start >> 3, (stop - 1) >> 3
    head = (0xFF << (start & 7)) & 0xFF
    tail = (1 << (((stop - 1) & 7) + 1)) - 1
    if first == last:
        bitmap[first] |= head & tail
        return
    bitmap[first] |= head
    bitmap[first + 1 : last] = b"\xff" * (last - first - 1)
    bitmap[last] |= tail


def count_bits(bitmap: bytes | bytearray) -> int:
    """Number of set bits."""
    return int.from_bytes(bitmap, "little").bit_count()


def _find_bit(bitmap: bytes | bytearray, index: int, stop: int, value: bool) -> int:
    """First bit index in ``[index, stop)`` whose bit equals ``value``, else ``stop``."""
    while index < stop and index & 7:
        if get_bit(bitmap, index) == value:
            return index
        index += 1
    if index >= stop:
        return stop
    pattern = _NOT_ALL_CLEAR if value else _NOT_ALL_SET
    match = pattern.search(bitmap, index >> 3, (stop + 7) >> 3)
    if match is None:
        return stop
    byte = bitmap[match.start()]
    bits = byte if value else ~byte & 0xFF
    return min(match.start() * 8 + (bits & -bits).bit_length() - 1, stop)


def bit_runs(
    bitmap: bytes | bytearray, start: int, stop: int, value: bool
) -> Iterator[tuple[int, int]]:
    """Maximal runs ``(first, stop)`` of bits equal to ``value`` inside ``[start, stop)``.

    Whole bytes without a bit of interest are skipped by a regular expression, so the cost
    follows the number of runs, not the number of bits.
    """
    if start < 0 or stop > len(bitmap) * 8:
        raise IndexError(f"bits {start}..{stop} outside a bitmap of {len(bitmap) * 8} bits")
    index = start
    while index < stop:
        first = _find_bit(bitmap, index, stop, value)
        if first >= stop:
            return
        index = _find_bit(bitmap, first, stop, not value)
        yield first, index
