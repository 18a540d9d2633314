"""The transfer plan: what the master sends so a replica file becomes a copy of its own.

Applying a plan to the replica's file (the contract tested by the property tests):

1. set the file's size to ``plan.size`` (truncation drops the tail; extension reads as zeros);
2. write zeros over each of ``plan.zero_runs`` (or punch a hole there);
3. write the master's bytes over each of ``plan.data_runs``.

Steps 2 and 3 touch disjoint, block-aligned runs inside ``[0, plan.size)``, so they may happen in
any order, and before or after step 1. With ``plan.whole`` the replica starts from an empty file
instead (FileBegin ``whole``: a temporary name, renamed at FileEnd): ``data_runs`` then lists every
block of the master that is not all zero and ``zero_runs`` is empty.

A block *differs* when the replica's content of it, after step 1, may differ from the master's:
its digests differ, or it lies past the replica's end and is not all zero on the master (a zero
block there reads as zero after the extension, so it costs nothing).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from standby.protocol._messages import BLOCK_DIGEST_SIZE

from ._bitmap import bit_runs, get_bit
from ._digests import BytesLike, block_count, differing_indexes, digest_count, zero_digest

#: Defaults of a scenario's block synchronization.
DEFAULT_BLOCK_SIZE = 64 * 1024
DEFAULT_RANGE_BLOCKS = 256
DEFAULT_MAX_RUN = 1024 * 1024
DEFAULT_WHOLE_THRESHOLD = 0.70


class Run(NamedTuple):
    """A byte range of a file: ``length`` bytes from ``offset``."""

    offset: int
    length: int

    @property
    def end(self) -> int:
        return self.offset + self.length


def _describe_runs(runs: tuple[Run, ...], shown: int = 3) -> str:
    listed = ", ".join(f"{run.offset}+{run.length}" for run in runs[:shown])
    more = f", ... {len(runs) - shown} more" if len(runs) > shown else ""
    return f"[{listed}{more}]"


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class TransferPlan:
    """What to send for one file; see the module docstring for how a replica applies it."""

    #: The master's size: the replica file's final size.
    size: int
    block_size: int
    #: Send the whole file (the replica has no such file, or too many blocks differ).
    whole: bool
    #: Runs of the master's data to send (BlockData), block-aligned, in increasing order,
    #: each at most ``max_run`` bytes.
    data_runs: tuple[Run, ...]
    #: Runs that must become zero on the replica (ZeroRange), block-aligned, increasing.
    zero_runs: tuple[Run, ...]
    #: The master's block count.
    blocks: int
    #: Block digests compared one by one (those inside the differing coarse ranges).
    blocks_compared: int
    #: Blocks that differ (see the module docstring), whether or not the file goes whole.
    blocks_differing: int

    @property
    def data_bytes(self) -> int:
        return sum(run.length for run in self.data_runs)

    @property
    def zero_bytes(self) -> int:
        return sum(run.length for run in self.zero_runs)

    def __repr__(self) -> str:
        return (
            f"TransferPlan(size={self.size}, block_size={self.block_size}, whole={self.whole}, "
            f"blocks={self.blocks}, compared={self.blocks_compared}, "
            f"differing={self.blocks_differing}, "
            f"data={len(self.data_runs)} runs/{self.data_bytes} bytes "
            f"{_describe_runs(self.data_runs)}, "
            f"zero={len(self.zero_runs)} runs/{self.zero_bytes} bytes "
            f"{_describe_runs(self.zero_runs)})"
        )


def ranges_to_compare(master_coarse: BytesLike, replica_coarse: BytesLike) -> list[int]:
    """The coarse ranges whose block digests the master must ask for (BlockRequest): those
    both files have and whose coarse digests differ. Ranges only one side has need no digests:
    the planner knows they differ (master only) or get truncated (replica only)."""
    common = min(digest_count(master_coarse), digest_count(replica_coarse))
    return [index for index in differing_indexes(master_coarse, replica_coarse) if index < common]


class _RunBuilder:
    """Collects block indexes, in increasing order, into runs ``[first, stop)``."""

    __slots__ = ("runs",)

    def __init__(self) -> None:
        self.runs: list[list[int]] = []

    def add(self, first: int, stop: int) -> None:
        if self.runs and self.runs[-1][1] == first:
            self.runs[-1][1] = stop
        else:
            self.runs.append([first, stop])

    def byte_runs(self, size: int, block_size: int, max_blocks: int | None) -> tuple[Run, ...]:
        out: list[Run] = []
        for first, stop in self.runs:
            step = max_blocks or stop - first
            for start in range(first, stop, step):
                offset = start * block_size
                out.append(Run(offset, min(min(start + step, stop) * block_size, size) - offset))
        return tuple(out)


def _range_spans(
    ranges: Sequence[int], range_blocks: int, blocks: int
) -> Iterator[tuple[int, int]]:
    """``(first block, block count)`` of each range in a file of ``blocks`` blocks."""
    for index in ranges:
        first = index * range_blocks
        yield first, min(first + range_blocks, blocks) - first


def plan_transfer(
    *,
    size: int,
    block_size: int,
    range_blocks: int,
    zeros: bytes | bytearray,
    replica_size: int | None,
    ranges: Sequence[int] = (),
    master_digests: BytesLike = b"",
    replica_digests: BytesLike = b"",
    max_run: int = DEFAULT_MAX_RUN,
    whole_threshold: float = DEFAULT_WHOLE_THRESHOLD,
) -> TransferPlan:
    """Plan the transfer of one file from the master to a replica.

    - ``size``, ``block_size``, ``range_blocks``: the master's file size and the scenario's
      block and range sizes (the same ones both sides hashed with).
    - ``zeros``: the master's zero bitmap (``standby.blocks`` bitmap, one bit per block).
    - ``replica_size``: the replica file's size (RangeDigests.size), or None when it has no
      such file (RangeDigests.missing): the plan is then whole.
    - ``ranges``: the ranges compared, in increasing order: ``ranges_to_compare(...)``.
      Every other range both files have is taken as equal.
    - ``master_digests``, ``replica_digests``: each side's block digests of ``ranges``, in that
      order (``select_ranges`` or ``hash_ranges`` on the master; BlockDigests from the replica).
      A range holds fewer digests on the side whose file ends inside it.
    - ``max_run``: the longest data run, in bytes (rounded down to whole blocks, at least one).
    - ``whole_threshold``: send the whole file when more than this share of its blocks differ.

    Raises ValueError when the inputs do not fit together (a wrong count of digests, a range
    outside either file, ranges out of order): a peer's answer cannot produce a wrong plan.
    The work is proportional to the compared ranges plus the blocks past the replica's end.
    """
    blocks = block_count(size, block_size)
    if range_blocks < 1:
        raise ValueError(f"range_blocks must be at least 1, got {range_blocks}")
    if max_run < block_size:
        raise ValueError(f"max_run ({max_run}) is smaller than a block ({block_size})")
    if whole_threshold < 0:
        raise ValueError(f"whole_threshold must be >= 0, got {whole_threshold}")
    if len(zeros) * 8 < blocks:
        raise ValueError(f"the zero bitmap has {len(zeros) * 8} bits for {blocks} blocks")
    max_blocks = max_run // block_size

    data = _RunBuilder()
    zero = _RunBuilder()
    compared = differing = 0
    if replica_size is None:
        if ranges or master_digests or replica_digests:
            raise ValueError("the replica has no file, so there is nothing to compare")
        replica_blocks = 0
    else:
        replica_blocks = block_count(replica_size, block_size)
        compared, differing = _compare_ranges(
            size, block_size, range_blocks, blocks, replica_blocks, zeros,
            ranges, master_digests, replica_digests, data, zero,
        )  # fmt: skip
        # Past the replica's end: blocks that are not all zero on the master.
        for first, stop in bit_runs(zeros, min(replica_blocks, blocks), blocks, False):
            data.add(first, stop)
            differing += stop - first

    whole = replica_size is None or (blocks > 0 and differing / blocks > whole_threshold)
    if whole:
        data = _RunBuilder()
        zero = _RunBuilder()
        nonzero = 0
        for first, stop in bit_runs(zeros, 0, blocks, False):
            data.add(first, stop)
            nonzero += stop - first
        if replica_size is None:
            differing = nonzero  # a new file reads as zeros after step 1
    return TransferPlan(
        size=size,
        block_size=block_size,
        whole=whole,
        data_runs=data.byte_runs(size, block_size, max_blocks),
        zero_runs=zero.byte_runs(size, block_size, None),
        blocks=blocks,
        blocks_compared=compared,
        blocks_differing=differing,
    )


def _compare_ranges(
    size: int,
    block_size: int,
    range_blocks: int,
    blocks: int,
    replica_blocks: int,
    zeros: bytes | bytearray,
    ranges: Sequence[int],
    master_digests: BytesLike,
    replica_digests: BytesLike,
    data: _RunBuilder,
    zero: _RunBuilder,
) -> tuple[int, int]:
    """Classify the blocks of the compared ranges; returns (compared, differing)."""
    common_ranges = min(
        block_count(blocks, range_blocks), block_count(replica_blocks, range_blocks)
    )
    previous = -1
    for index in ranges:
        if not previous < index < common_ranges:
            raise ValueError(
                f"range {index} is out of order or outside the {common_ranges} ranges both have"
            )
        previous = index
    master_spans = list(_range_spans(ranges, range_blocks, blocks))
    replica_spans = list(_range_spans(ranges, range_blocks, replica_blocks))
    for name, spans, digests in (
        ("master_digests", master_spans, master_digests),
        ("replica_digests", replica_spans, replica_digests),
    ):
        expected = sum(count for _, count in spans)
        if digest_count(digests) != expected:
            raise ValueError(f"{name} holds {digest_count(digests)} digests, expected {expected}")

    master_view = memoryview(master_digests).cast("B")
    replica_view = memoryview(replica_digests).cast("B")
    zero_full = zero_digest(block_size)
    compared = differing = 0
    master_at = replica_at = 0
    for (first, count), (_, replica_count) in zip(master_spans, replica_spans, strict=True):
        mine = master_view[master_at : master_at + count * BLOCK_DIGEST_SIZE]
        theirs = replica_view[replica_at : replica_at + replica_count * BLOCK_DIGEST_SIZE]
        master_at += count * BLOCK_DIGEST_SIZE
        replica_at += replica_count * BLOCK_DIGEST_SIZE
        compared += min(count, replica_count)
        # Blocks past the replica's end are handled by the caller, from the bitmap.
        for offset in differing_indexes(mine, theirs):
            if offset >= count:
                break
            block = first + offset
            if block >= replica_blocks:
                break
            differing += 1
            digest = mine[offset * BLOCK_DIGEST_SIZE : (offset + 1) * BLOCK_DIGEST_SIZE]
            zero_of_block = (
                zero_full if block + 1 < blocks else zero_digest(size - block * block_size)
            )
            # Zero only when the bitmap and the digest agree: on any doubt, send the data.
            if get_bit(zeros, block) and digest == zero_of_block:
                zero.add(block, block + 1)
            else:
                data.add(block, block + 1)
    return compared, differing
