"""Transfer plans: applied to the replica's content, a plan yields the master's content."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from standby.blocks import (
    Run,
    TransferPlan,
    block_digests,
    coarse_digests,
    new_bitmap,
    plan_transfer,
    ranges_to_compare,
    select_ranges,
    set_bits,
    zero_blocks,
)


def zero_bitmap(data: bytes, block_size: int) -> bytearray:
    bitmap = new_bitmap(-(-len(data) // block_size))
    for index in zero_blocks(data, block_size, block_digests(data, block_size)):
        set_bits(bitmap, index, index + 1)
    return bitmap


def plan_between(
    master: bytes,
    replica: bytes | None,
    block_size: int,
    range_blocks: int,
    max_run: int,
    threshold: float,
) -> TransferPlan:
    """What the master's engine does, without the wire."""
    master_digests = block_digests(master, block_size)
    zeros = zero_bitmap(master, block_size)
    if replica is None:
        return plan_transfer(
            size=len(master),
            block_size=block_size,
            range_blocks=range_blocks,
            zeros=zeros,
            replica_size=None,
            max_run=max_run,
            whole_threshold=threshold,
        )
    replica_digests = block_digests(replica, block_size)
    ranges = ranges_to_compare(
        coarse_digests(master_digests, range_blocks), coarse_digests(replica_digests, range_blocks)
    )
    return plan_transfer(
        size=len(master),
        block_size=block_size,
        range_blocks=range_blocks,
        zeros=zeros,
        replica_size=len(replica),
        ranges=ranges,
        master_digests=select_ranges(master_digests, range_blocks, ranges),
        replica_digests=select_ranges(replica_digests, range_blocks, ranges),
        max_run=max_run,
        whole_threshold=threshold,
    )


def apply(plan: TransferPlan, replica: bytes | None, master: bytes) -> bytes:
    """The replica's side, as the plan's docstring specifies it."""
    if plan.whole or replica is None:
        out = bytearray(plan.size)
    else:
        out = bytearray(replica[: plan.size].ljust(plan.size, b"\0"))
    for run in plan.zero_runs:
        out[run.offset : run.end] = bytes(run.length)
    for run in plan.data_runs:
        out[run.offset : run.end] = master[run.offset : run.end]
    return bytes(out)


def run_blocks(runs: tuple[Run, ...], block_size: int) -> list[int]:
    out: list[int] = []
    for run in runs:
        out.extend(range(run.offset // block_size, -(-run.end // block_size)))
    return out


@dataclass
class Case:
    master: bytes
    replica: bytes | None
    block_size: int
    range_blocks: int
    max_run: int
    threshold: float


# Contents with long zero stretches, so zero blocks, zero runs and holes-to-be appear often.
contents = st.lists(
    st.one_of(st.integers(1, 24).map(bytes), st.binary(min_size=1, max_size=16)), max_size=10
).map(b"".join)


@st.composite
def cases(draw: st.DrawFn) -> Case:
    block_size = draw(st.sampled_from([1, 2, 3, 4, 8]))
    master = draw(contents)
    kind = draw(st.sampled_from(["missing", "independent", "edited"]))
    replica: bytes | None
    if kind == "missing":
        replica = None
    elif kind == "independent":
        replica = draw(contents)
    else:
        edited = bytearray(master)
        for _ in range(draw(st.integers(0, 4))):
            start = draw(st.integers(0, len(edited)))
            patch = draw(st.one_of(st.integers(1, 6).map(bytes), st.binary(min_size=1, max_size=6)))
            edited[start : start + len(patch)] = patch
        new_size = draw(st.one_of(st.none(), st.integers(0, len(master) + 40)))
        if new_size is not None:  # truncation or extension (with zeros or data)
            tail = draw(st.one_of(st.just(b""), st.binary(max_size=40)))
            edited = (edited + tail)[:new_size].ljust(new_size, b"\0")
        replica = bytes(edited)
    return Case(
        master=master,
        replica=replica,
        block_size=block_size,
        range_blocks=draw(st.integers(1, 5)),
        max_run=block_size * draw(st.integers(1, 4)) + draw(st.integers(0, block_size - 1)),
        threshold=draw(st.sampled_from([0.0, 0.5, 0.7, 1.0])),
    )


def resized(replica: bytes, size: int) -> bytes:
    return replica[:size].ljust(size, b"\0")


@settings(max_examples=400)
@given(cases())
@example(Case(b"", None, 4, 2, 4, 0.7))
@example(Case(b"", b"abc", 4, 2, 4, 0.7))
@example(Case(b"\0" * 40, b"", 4, 2, 4, 0.7))
@example(Case(b"abcd" * 10 + b"\0" * 40, b"abcd" * 10, 4, 3, 8, 0.7))
def test_applying_the_plan_yields_the_master_content(case: Case) -> None:
    master, replica, bs = case.master, case.replica, case.block_size
    plan = plan_between(master, replica, bs, case.range_blocks, case.max_run, case.threshold)
    assert apply(plan, replica, master) == master
    assert plan.size == len(master)
    assert plan.blocks == -(-len(master) // bs)
    assert repr(plan).startswith("TransferPlan(size=")

    # Runs: block-aligned, inside the file, increasing, disjoint, data runs at most max_run.
    every = sorted(plan.data_runs + plan.zero_runs)
    for before, after in itertools.pairwise(every):
        assert before.end <= after.offset
    for run in every:
        assert run.offset % bs == 0
        assert run.length > 0
        assert run.end <= plan.size
        assert run.end % bs == 0 or run.end == plan.size
    for run in plan.data_runs:
        assert run.length <= case.max_run
        assert any(master[run.offset : run.end])  # no run is all zeros
    for run in plan.zero_runs:
        assert not any(master[run.offset : run.end])

    blocks = [master[i : i + bs] for i in range(0, len(master), bs)]
    nonzero = {i for i, b in enumerate(blocks) if any(b)}
    data_blocks, zero_blocks_ = run_blocks(plan.data_runs, bs), run_blocks(plan.zero_runs, bs)
    if plan.whole:
        # Whole: every non-zero block as data, nothing else; a missing replica forces it.
        assert set(data_blocks) == nonzero
        assert not zero_blocks_
        if replica is None:
            assert plan.blocks_differing == len(nonzero)
            assert plan.blocks_compared == 0
        else:
            assert plan.blocks_differing / plan.blocks > case.threshold
        return
    assert replica is not None
    assert plan.blocks == 0 or plan.blocks_differing / plan.blocks <= case.threshold
    # In place: the planned blocks are exactly the differing blocks, except the blocks that
    # straddle an end of file (their digests cover different lengths on the two sides).
    updated = resized(replica, len(master))
    differing = {i for i, b in enumerate(blocks) if updated[i * bs : i * bs + len(b)] != b}
    planned = set(data_blocks) | set(zero_blocks_)
    assert len(planned) == len(data_blocks) + len(zero_blocks_) == plan.blocks_differing
    assert differing <= planned
    boundary = {len(replica) // bs, len(master) // bs}
    assert planned - differing <= boundary
    replica_blocks = -(-len(replica) // bs)
    assert plan.blocks_compared <= min(plan.blocks, replica_blocks)


def master_parts(master: bytes, bs: int) -> tuple[bytes, bytearray]:
    return block_digests(master, bs), zero_bitmap(master, bs)


def test_an_unchanged_file_needs_nothing() -> None:
    master = bytes(range(256)) * 40
    plan = plan_between(master, master, 64, 4, 256, 0.7)
    assert (plan.whole, plan.data_runs, plan.zero_runs, plan.blocks_differing) == (
        False,
        (),
        (),
        0,
    )
    assert plan.blocks_compared == 0
    assert plan.data_bytes == plan.zero_bytes == 0


def test_changed_blocks_coalesce_into_runs_of_at_most_max_run() -> None:
    master = bytes(range(256)) * 64  # 16 KiB, 256 blocks of 64 bytes, 64 ranges of 4
    replica = bytearray(master)
    replica[640:2560] = bytes(1920)  # blocks 10..39 zeroed on the replica
    plan = plan_between(master, bytes(replica), 64, 4, 64 * 8, 0.7)
    assert [(r.offset, r.length) for r in plan.data_runs] == [
        (640, 512),
        (1152, 512),
        (1664, 512),
        (2176, 384),
    ]
    assert plan.blocks_differing == 30  # ranges 2..9
    assert plan.blocks_compared == 4 * 8
    assert plan.data_bytes == 1920
    assert "4 runs/1920 bytes" in repr(plan)
    assert ", ... 1 more]" in repr(plan)


def test_zero_blocks_become_zero_runs_without_a_length_limit() -> None:
    master = bytearray(b"\xff" * 4096)
    master[1024:3072] = bytes(2048)
    plan = plan_between(bytes(master), b"\xee" * 4096, 64, 4, 64, 1.0)
    assert not plan.whole
    assert [(r.offset, r.length) for r in plan.zero_runs] == [(1024, 2048)]
    assert len(plan.data_runs) == 32


def test_past_the_threshold_the_file_goes_whole() -> None:
    master = b"\1" * 1000
    replica = b"\1" * 290 + b"\2" * 710  # blocks of 10: 71 differ (one straddles)
    assert plan_between(master, replica, 10, 3, 100, 0.72).whole is False
    plan = plan_between(master, replica, 10, 3, 100, 0.70)
    assert plan.whole
    assert plan.blocks_differing == 71
    assert [(r.offset, r.length) for r in plan.data_runs] == [(i, 100) for i in range(0, 1000, 100)]


def test_extension_with_zeros_sends_nothing() -> None:
    master = b"\7" * 100 + bytes(10_000)
    plan = plan_between(master, master[:100], 10, 4, 100, 0.7)
    assert not plan.whole
    assert plan.data_runs == ()
    assert plan.zero_runs == ()
    assert plan.blocks_differing == 0
    truncate = plan_between(master[:50], master, 10, 4, 100, 0.7)
    assert truncate.size == 50
    assert truncate.data_runs == ()
    assert truncate.zero_runs == ()


def test_a_zero_bit_without_the_zero_digest_sends_data() -> None:
    # The bitmap claims block 1 is zero but its digest says otherwise: send the data.
    master = b"\1" * 8 + b"\2" * 8
    digests, zeros = master_parts(master, 8)
    set_bits(zeros, 1, 2)
    replica = b"\1" * 8 + b"\3" * 8
    replica_digests = block_digests(replica, 8)
    plan = plan_transfer(
        size=16,
        block_size=8,
        range_blocks=1,
        zeros=zeros,
        replica_size=16,
        ranges=[1],
        master_digests=digests[16:],
        replica_digests=replica_digests[16:],
    )
    assert [(r.offset, r.length) for r in plan.data_runs] == [(8, 8)]
    assert plan.zero_runs == ()


def test_inconsistent_inputs_are_refused() -> None:
    master = bytes(range(100))
    digests, zeros = master_parts(master, 10)
    replica_digests = block_digests(master[:45], 10)
    good = {
        "size": 100,
        "block_size": 10,
        "range_blocks": 2,
        "zeros": zeros,
        "replica_size": 45,
        "ranges": [2],
        "master_digests": digests[64:96],
        "replica_digests": replica_digests[64:80],
    }
    assert plan_transfer(**good).blocks_compared == 1  # type: ignore[arg-type]
    bad: list[tuple[dict[str, object], str]] = [
        ({"range_blocks": 0}, "range_blocks"),
        ({"max_run": 9}, "max_run"),
        ({"whole_threshold": -0.1}, "whole_threshold"),
        ({"zeros": b"\0"}, "bitmap"),
        ({"replica_size": None}, "nothing to compare"),
        ({"ranges": [3]}, "outside"),
        ({"ranges": [2, 2]}, "out of order"),
        ({"ranges": [-1]}, "out of order"),
        ({"master_digests": digests[64:80]}, "master_digests holds 1"),
        ({"replica_digests": replica_digests[64:80] + digests[:16]}, "replica_digests holds 2"),
        ({"size": -1}, "size"),
    ]
    for change, message in bad:
        with pytest.raises(ValueError, match=message):
            plan_transfer(**{**good, **change})  # type: ignore[arg-type]


def test_ranges_to_compare_skips_ranges_only_one_side_has() -> None:
    a = b"".join(bytes([i]) * 16 for i in range(5))
    b = a[:32] + b"\xff" * 16
    assert ranges_to_compare(a, b) == [2]
    assert ranges_to_compare(b, a) == [2]
    assert ranges_to_compare(a, b"") == []
