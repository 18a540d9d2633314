"""Block, coarse and file digests, zero detection and digest comparison, against naive models."""

from __future__ import annotations

import hashlib
import random

import blake3
import pytest
import xxhash
from hypothesis import given
from hypothesis import strategies as st

from standby.blocks import (
    DigestAccumulator,
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
from standby.protocol._messages import BLOCK_DIGEST_SIZE, FILE_DIGEST_SIZE, MAX_BLOCK_SIZE

D = BLOCK_DIGEST_SIZE


def pieces(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def digest_strings(count: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(count * D)


@given(st.binary(max_size=300), st.integers(1, 40))
def test_block_digests_are_xxh3_128_of_each_block(data: bytes, block_size: int) -> None:
    expected = b"".join(xxhash.xxh3_128_digest(p) for p in pieces(data, block_size))
    assert block_digests(data, block_size) == expected
    assert block_digests(bytearray(data), block_size) == expected
    assert block_digests(memoryview(data), block_size) == expected
    assert digest_count(expected) == block_count(len(data), block_size)
    for index, piece in enumerate(pieces(data, block_size)):
        assert block_digest(piece) == expected[index * D : (index + 1) * D]


def test_block_digests_refuse_a_block_size_below_one() -> None:
    with pytest.raises(ValueError, match="block_size"):
        block_digests(b"abc", 0)
    with pytest.raises(ValueError, match="size"):
        block_count(-1, 4096)


@pytest.mark.parametrize("length", [0, 1, 4096, 65536, MAX_BLOCK_SIZE, MAX_BLOCK_SIZE + 12345])
def test_zero_digest_is_the_digest_of_zeros(length: int) -> None:
    assert zero_digest(length) == xxhash.xxh3_128_digest(bytes(length))


def test_zero_digest_refuses_negative_lengths() -> None:
    with pytest.raises(ValueError, match="length"):
        zero_digest(-1)


@given(st.integers(0, 5000), st.data())
def test_is_zero_matches_a_byte_loop(length: int, data: st.DataObject) -> None:
    buf = bytearray(length)
    assert is_zero(buf)
    if length:
        where = data.draw(st.integers(0, length - 1))
        buf[where] = data.draw(st.integers(1, 255))
        assert not is_zero(buf)
        assert not is_zero(memoryview(buf)[where:])
        assert is_zero(memoryview(buf)[:where])


def test_is_zero_beyond_the_shared_zero_buffer() -> None:
    buf = bytearray(MAX_BLOCK_SIZE * 2 + 7)
    assert is_zero(buf)
    buf[-1] = 1
    assert not is_zero(buf)
    buf[-1] = 0
    buf[MAX_BLOCK_SIZE + 3] = 9
    assert not is_zero(buf)


@st.composite
def zero_heavy_buffers(draw: st.DrawFn) -> tuple[bytes, int]:
    block_size = draw(st.integers(1, 12))
    parts = draw(
        st.lists(
            st.one_of(
                st.integers(1, 40).map(bytes),
                st.binary(min_size=1, max_size=30),
            ),
            max_size=8,
        )
    )
    return b"".join(parts), block_size


@given(zero_heavy_buffers())
def test_zero_blocks_finds_exactly_the_all_zero_blocks(case: tuple[bytes, int]) -> None:
    data, block_size = case
    expected = [i for i, p in enumerate(pieces(data, block_size)) if not any(p)]
    assert zero_blocks(data, block_size, block_digests(data, block_size)) == expected


def test_zero_blocks_does_not_trust_a_digest_alone() -> None:
    # A block whose digest is claimed to be the zero digest still has to read as zero.
    data = b"\0" * 8 + b"\1" * 8 + b"\0" * 3
    forged = zero_digest(8) * 2 + zero_digest(3)
    assert zero_blocks(data, 8, forged) == [0, 2]
    misaligned = b"\xaa" * 8 + zero_digest(8) + b"\xbb" * 8 + zero_digest(3)
    assert zero_blocks(data, 8, misaligned) == [2]
    with pytest.raises(ValueError, match="digests"):
        zero_blocks(data, 8, forged[:-1])


@given(st.integers(0, 40), st.integers(1, 9), st.integers(0, 2**32))
def test_coarse_digests_hash_each_range_of_block_digests(
    count: int, range_blocks: int, seed: int
) -> None:
    digests = digest_strings(count, seed)
    expected = b"".join(xxhash.xxh3_128_digest(p) for p in pieces(digests, range_blocks * D))
    assert coarse_digests(digests, range_blocks) == expected
    assert digest_count(expected) == block_count(count, range_blocks)
    ranges = list(range(digest_count(expected)))
    random.Random(seed).shuffle(ranges)
    assert select_ranges(digests, range_blocks, ranges) == b"".join(
        pieces(digests, range_blocks * D)[r] for r in ranges
    )


def test_digest_strings_must_hold_whole_digests() -> None:
    with pytest.raises(ValueError, match="whole number"):
        coarse_digests(b"x" * 17, 1)
    with pytest.raises(ValueError, match="range_blocks"):
        coarse_digests(b"x" * 16, 0)
    with pytest.raises(ValueError, match="whole number"):
        differing_indexes(b"x" * 16, b"x" * 15)
    with pytest.raises(ValueError, match="whole number"):
        file_digest(b"x", 1)
    with pytest.raises(ValueError, match="range 2"):
        select_ranges(b"x" * 32, 1, [2])
    with pytest.raises(ValueError, match="range -1"):
        select_ranges(b"x" * 32, 1, [-1])
    with pytest.raises(ValueError, match="range_blocks"):
        select_ranges(b"x" * 32, 0, [0])


@given(
    st.integers(0, 9000),
    st.integers(0, 9000),
    st.lists(st.integers(0, 8999), max_size=6),
    st.integers(0, 2**32),
)
def test_differing_indexes_match_a_digest_by_digest_comparison(
    count_a: int, count_b: int, changes: list[int], seed: int
) -> None:
    # Long, mostly equal strings exercise every comparison stride (4096, 64 and 1 digests).
    a = digest_strings(count_a, seed)
    b = bytearray(digest_strings(count_b, seed))
    for index in changes:
        if index < count_b:
            b[index * D + seed % D] ^= 0x5A
    expected = [
        i for i in range(max(count_a, count_b)) if a[i * D : (i + 1) * D] != b[i * D : (i + 1) * D]
    ]
    assert differing_indexes(a, bytes(b)) == expected
    assert differing_indexes(memoryview(a), b) == expected
    assert differing_indexes(bytes(b), a) == expected


def test_file_digest_is_blake3_over_block_digests_and_size() -> None:
    digests = digest_strings(5, 1)
    expected = blake3.blake3(digests + (123456).to_bytes(8, "little")).digest()
    assert file_digest(digests, 123456) == expected
    assert len(expected) == FILE_DIGEST_SIZE
    assert file_digest(b"", 0) == blake3.blake3(bytes(8)).digest()
    assert file_digest(digests, 1) != file_digest(digests, 2)
    assert hashlib.sha256(expected).digest() != expected  # a digest, not an echo
    with pytest.raises(ValueError, match="size"):
        file_digest(digests, -1)


operations = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(0, 30)),
        st.tuples(st.just("repeat"), st.integers(0, 40)),
    ),
    max_size=10,
)


@given(operations, st.integers(1, 7), st.booleans(), st.integers(0, 2**32))
def test_accumulator_matches_the_one_shot_functions(
    ops: list[tuple[str, int]], range_blocks: int, keep: bool, seed: int
) -> None:
    rng = random.Random(seed)
    accumulator = DigestAccumulator(range_blocks, keep=keep)
    whole = bytearray()
    for kind, count in ops:
        if kind == "add":
            piece = rng.randbytes(count * D)
            accumulator.add(memoryview(piece))
        else:
            digest = rng.randbytes(D)
            accumulator.add_repeated(digest, count)
            piece = digest * count
        whole += piece
    assert "blocks=" in repr(accumulator)
    result = accumulator.finish(len(whole) * 3)
    assert result.blocks == digest_count(whole)
    assert result.block_digests == (bytes(whole) if keep else b"")
    assert result.coarse_digests == coarse_digests(whole, range_blocks)
    assert result.file_digest == file_digest(whole, len(whole) * 3)


def test_accumulator_repeats_many_ranges_without_listing_them() -> None:
    accumulator = DigestAccumulator(4, keep=False)
    digest = zero_digest(4096)
    accumulator.add(b"\1" * D)
    accumulator.add_repeated(digest, 3 + 4 * 5000 + 2)
    result = accumulator.finish(0)
    whole = b"\1" * D + digest * (3 + 4 * 5000 + 2)
    assert result.coarse_digests == coarse_digests(whole, 4)
    assert result.file_digest == file_digest(whole, 0)


def test_accumulator_refuses_misuse() -> None:
    with pytest.raises(ValueError, match="range_blocks"):
        DigestAccumulator(0)
    accumulator = DigestAccumulator(2)
    with pytest.raises(ValueError, match="whole number"):
        accumulator.add(b"abc")
    with pytest.raises(ValueError, match="16-byte"):
        accumulator.add_repeated(b"abc", 2)
    with pytest.raises(ValueError, match="count"):
        accumulator.add_repeated(bytes(D), -1)
    accumulator.finish(0)
    with pytest.raises(RuntimeError, match="after finish"):
        accumulator.add(bytes(D))
    with pytest.raises(RuntimeError, match="twice"):
        accumulator.finish(0)
