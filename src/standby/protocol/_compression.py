"""zstd compression of Batch payloads: only where it pays, and bounded on the way back.

Rules of this file:
1. Compression is the sender's choice, per batch: a batch leaves compressed only when that
   saves at least 10 % (:func:`compress_batch` returns None otherwise).
2. Decompression trusts nothing: the zstd frame must state the exact ``raw_size`` the Batch
   announced (at most MAX_BATCH_RAW) before anything is allocated, and must hold that many
   bytes and nothing after them. Every failure leaves as RemoteProtocolError.
3. zstd contexts are costly to set up and not thread-safe, so each is used by one thread at a
   time: a call takes one from a pool (a deque, whose append and pop are atomic) and puts it
   back when done. The pool holds as many contexts as calls ever ran at once.
"""

from __future__ import annotations

from collections import deque

import zstandard

from ._errors import RemoteProtocolError
from ._messages import MAX_BATCH_RAW

#: Compressed output must be below this share of the input, or the batch travels raw: a
#: smaller gain is not worth the receiver's decompression.
_WORTH_IT = 0.9
#: A batch this large is first judged on a sample of this size (its start), so that
#: incompressible data (media, archives, encrypted files) costs a 64 KiB attempt, not a 16 MiB
#: one: zstd level 1 spends about 20 ms on 16 MiB of random data, about 0.2 ms on the sample.
_SAMPLE_SIZE = 64 * 1024
_SAMPLE_FROM = 4 * _SAMPLE_SIZE  # below this, compressing it all costs about as little

#: The compression levels zstd accepts: negative ones trade ratio for speed (ZSTD_minCLevel).
MIN_COMPRESSION_LEVEL = -(1 << 17)
MAX_COMPRESSION_LEVEL = zstandard.MAX_COMPRESSION_LEVEL

_compressors: dict[int, deque[zstandard.ZstdCompressor]] = {}
_decompressors: deque[zstandard.ZstdDecompressor] = deque()


def _compress(data: bytes | memoryview, level: int) -> bytes:
    pool = _compressors.get(level)
    if pool is None:
        pool = _compressors.setdefault(level, deque())
    try:
        cctx = pool.pop()
    except IndexError:
        # The content size in the frame header lets the receiver check it before allocating;
        # no zstd checksum: every record frame inside carries its own.
        cctx = zstandard.ZstdCompressor(level=level, write_content_size=True, write_checksum=False)
    compressed = cctx.compress(data)
    pool.append(cctx)
    return compressed


def compress_batch(raw: bytes | memoryview, level: int = 1) -> bytes | None:
    """Compress a Batch's raw payload, or return None when compression does not pay.

    Args:
        raw: the records' frames (:func:`encode_records`).
        level: the zstd level; 1 (the default) compresses text several times at hundreds of
            MB/s, negative levels are faster still.

    Returns:
        One zstd frame stating its content size, shorter than 90 % of ``raw``; or None: send
        ``raw`` uncompressed (it is incompressible, or its first 64 KiB are).

    Raises:
        ValueError: ``level`` is outside MIN_COMPRESSION_LEVEL..MAX_COMPRESSION_LEVEL.
    """
    if not MIN_COMPRESSION_LEVEL <= level <= MAX_COMPRESSION_LEVEL:
        raise ValueError(
            f"level must be in {MIN_COMPRESSION_LEVEL}..{MAX_COMPRESSION_LEVEL}, got {level}"
        )
    size = len(raw)
    if size >= _SAMPLE_FROM:
        with memoryview(raw) as view, view[:_SAMPLE_SIZE] as sample:
            if len(_compress(sample, level)) >= _WORTH_IT * _SAMPLE_SIZE:
                return None
    compressed = _compress(raw, level)
    return compressed if len(compressed) < _WORTH_IT * size else None


def decompress_batch(data: bytes | memoryview, raw_size: int) -> bytes:
    """Decompress a compressed Batch payload into exactly ``raw_size`` bytes.

    Never allocates more than ``raw_size`` bytes for the output, whatever ``data`` claims.

    Raises:
        RemoteProtocolError: ``data`` is not one whole zstd frame that states and holds
            exactly ``raw_size`` bytes.
        ValueError: ``raw_size`` is outside 1..MAX_BATCH_RAW (a Batch would not hold it).
    """
    if not 1 <= raw_size <= MAX_BATCH_RAW:
        raise ValueError(f"raw_size must be in 1..{MAX_BATCH_RAW}, got {raw_size}")
    try:
        # zstandard allocates what the frame header says, whatever max_output_size says:
        # check that first.
        stated = zstandard.frame_content_size(data)
    except zstandard.ZstdError as exc:
        raise RemoteProtocolError(
            f"compressed Batch payload has no zstd frame header: {exc}"
        ) from exc
    if stated != raw_size:
        stated_text = "no size" if stated < 0 else f"{stated} bytes"
        raise RemoteProtocolError(
            f"compressed Batch payload states {stated_text}, its raw_size says {raw_size}"
        )
    try:
        dctx = _decompressors.pop()
    except IndexError:
        # zstd already caps a frame's window at its content size; a second bound costs nothing.
        dctx = zstandard.ZstdDecompressor(max_window_size=MAX_BATCH_RAW)
    try:
        raw = dctx.decompress(data, max_output_size=raw_size, allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise RemoteProtocolError(f"compressed Batch payload is damaged: {exc}") from exc
    _decompressors.append(dctx)  # not after an error: a fresh context is cheap
    return raw
