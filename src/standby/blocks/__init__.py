"""Block maps, digests and transfer plans for block synchronization (pure: no I/O).

Everything here takes bytes or memoryviews and returns values; the file reading lives in
:mod:`standby.storage.hashing`, which runs these functions over a reused buffer.

Both hosts cut a file into fixed-offset blocks of ``block_size`` bytes (a power of two,
4 KiB..4 MiB, default 64 KiB; the last block may be short) and hash each with xxh3-128
(:func:`block_digests`). Digest strings are concatenated 16-byte digests. Blocks group into
ranges of ``range_blocks`` blocks (default 256), each with a coarse digest over its block
digests (:func:`coarse_digests`). The file digest (:func:`file_digest`) is BLAKE3-256 over all
block digests and the size, the end-to-end check carried by FileEnd. A zero bitmap (one bit per
block, :func:`new_bitmap`) marks the blocks that are all zero, holes included.

The master, per file (``fh`` is the master's :class:`~standby.storage.hashing.FileHashes`)::

    # RangeDigests from the replica: rd.size, rd.missing, rd.digests (its coarse digests)
    if rd.missing:
        plan = plan_transfer(size=fh.size, block_size=bs, range_blocks=rb,
                             zeros=fh.zeros, replica_size=None)
    else:
        ranges = ranges_to_compare(fh.coarse_digests, rd.digests)   # -> BlockRequest(ranges)
        # BlockDigests from the replica: bd.digests
        plan = plan_transfer(size=fh.size, block_size=bs, range_blocks=rb, zeros=fh.zeros,
                             replica_size=rd.size, ranges=ranges,
                             master_digests=select_ranges(fh.block_digests, rb, ranges),
                             replica_digests=bd.digests)
    # FileBegin(size=plan.size, whole=plan.whole); ZeroRange per plan.zero_runs;
    # for offset, view in read_runs(fd, plan.data_runs, buffer):
    #     BlockData(offset=offset, digests=block_digests(view, bs), payload=bytes(view))
    # FileEnd(digest=fh.file_digest)

The replica answers HashRequest with ``coarse_digests`` of its block digests and BlockRequest
with ``select_ranges`` (or ``hash_ranges`` when it did not keep them), checks each BlockData
with ``block_digests(payload, bs) == digests``, and recomputes :func:`file_digest` from its
block digests with the verified ones put in place.
"""

from ._bitmap import bit_runs, count_bits, get_bit, new_bitmap, set_bits
from ._digests import (
    BytesLike,
    DigestAccumulator,
    FileDigests,
    block_count,
    block_digest,
    block_digests,
    coarse_digests,
    differing_indexes,
    digest_count,
    file_digest,
    is_zero,
    select_ranges,
    zero_blocks,
    zero_digest,
)
from ._plan import (
    DEFAULT_BLOCK_SIZE,
    DEFAULT_MAX_RUN,
    DEFAULT_RANGE_BLOCKS,
    DEFAULT_WHOLE_THRESHOLD,
    Run,
    TransferPlan,
    plan_transfer,
    ranges_to_compare,
)

__all__ = [
    "DEFAULT_BLOCK_SIZE",
    "DEFAULT_MAX_RUN",
    "DEFAULT_RANGE_BLOCKS",
    "DEFAULT_WHOLE_THRESHOLD",
    "BytesLike",
    "DigestAccumulator",
    "FileDigests",
    "Run",
    "TransferPlan",
    "bit_runs",
    "block_count",
    "block_digest",
    "block_digests",
    "coarse_digests",
    "count_bits",
    "differing_indexes",
    "digest_count",
    "file_digest",
    "get_bit",
    "is_zero",
    "new_bitmap",
    "plan_transfer",
    "ranges_to_compare",
    "select_ranges",
    "set_bits",
    "zero_blocks",
    "zero_digest",
]
