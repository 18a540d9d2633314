"""zstd compression of Batch payloads: pays or declines, and never inflates past raw_size."""

from __future__ import annotations

import os
import struct
import threading

import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from standby.protocol import (
    MAX_BATCH_RAW,
    MAX_COMPRESSION_LEVEL,
    MIN_COMPRESSION_LEVEL,
    Record,
    RemoteProtocolError,
    _compression,
    compress_batch,
    decode_records,
    decompress_batch,
    encode_records,
)
from tests.strategies import records

TEXT = b"".join(b"line %d of a log file that repeats itself\n" % i for i in range(20_000))


def zstd_frame(data: bytes, *, content_size: bool = True) -> bytes:
    """A zstd frame made by another compressor than ours (content size optional)."""
    if content_size:
        return zstandard.ZstdCompressor(write_content_size=True).compress(data)
    compressor = zstandard.ZstdCompressor(write_content_size=False).compressobj()
    return compressor.compress(data) + compressor.flush()


def lying_frame(stated: int, data: bytes) -> bytes:
    """A zstd frame of one raw block holding ``data`` whose header states ``stated`` bytes."""
    # Frame header descriptor 0xA0: 4-byte content size, single segment.
    block_header = (len(data) << 3 | 1).to_bytes(3, "little")  # last block, raw
    return b"\x28\xb5\x2f\xfd\xa0" + struct.pack("<I", stated) + block_header + data


# --- compression --------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [100, 200_000, len(TEXT)])
def test_compressible_data_round_trips(size: int) -> None:
    """Text compresses, small or large, and comes back exactly."""
    raw = TEXT[:size]

    compressed = compress_batch(raw)

    assert compressed is not None
    assert len(compressed) < 0.9 * len(raw)
    assert raw == decompress_batch(compressed, len(raw))


@settings(max_examples=50)
@given(batch=st.lists(records, min_size=1, max_size=20), level=st.sampled_from([-5, 1, 3, 19]))
def test_records_survive_compression(batch: list[Record], level: int) -> None:
    """The whole path: records, encoded, compressed when it pays, back to the same records."""
    raw = encode_records(batch)

    compressed = compress_batch(raw, level)
    payload = raw if compressed is None else decompress_batch(compressed, len(raw))

    assert batch == decode_records(payload, len(batch))


def test_frame_states_its_content_size() -> None:
    """What we send states its size, so a receiver can check it before allocating."""
    compressed = compress_batch(TEXT)
    assert compressed is not None

    expected = len(TEXT)
    assert expected == zstandard.frame_content_size(compressed)


@pytest.mark.parametrize("size", [0, 1, 1000, 100_000])
def test_small_or_incompressible_data_is_declined(size: int) -> None:
    """Random bytes (and nothing at all) are not worth compressing: None, send them raw."""
    assert compress_batch(os.urandom(size)) is None


@pytest.fixture
def attempts(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The sizes of the inputs zstd is asked to compress, in order."""
    sizes: list[int] = []
    real = _compression._compress

    def spy(data: bytes | memoryview, level: int) -> bytes:
        sizes.append(len(data))
        return real(data, level)

    monkeypatch.setattr(_compression, "_compress", spy)
    return sizes


def test_incompressible_large_batch_is_judged_on_a_sample(attempts: list[int]) -> None:
    """16 MiB of random bytes are declined after one attempt on their first 64 KiB (about
    0.2 ms, where the whole would cost about 20 ms)."""
    declined = compress_batch(os.urandom(MAX_BATCH_RAW))

    assert declined is None
    expected = [64 * 1024]
    assert expected == attempts


def test_a_compressible_start_means_a_full_attempt(attempts: list[int]) -> None:
    """The sample only decides to skip: a batch that starts compressible is compressed whole,
    and declined if the whole does not pay."""
    raw = TEXT[: 64 * 1024] + os.urandom(1024 * 1024)

    declined = compress_batch(raw)

    assert declined is None
    expected = [64 * 1024, len(raw)]
    assert expected == attempts


def test_batches_below_256_kib_are_not_sampled(attempts: list[int]) -> None:
    """Below four samples, one attempt on the whole costs about as little as a sample."""
    compress_batch(os.urandom(256 * 1024 - 1))

    expected = [256 * 1024 - 1]
    assert expected == attempts


@pytest.mark.parametrize("level", [MIN_COMPRESSION_LEVEL - 1, MAX_COMPRESSION_LEVEL + 1])
def test_level_must_be_one_zstd_knows(level: int) -> None:
    """A level zstd does not have is the caller's bug."""
    with pytest.raises(ValueError, match="level must be in"):
        compress_batch(TEXT, level)


def test_compressors_are_shared_safely_between_threads() -> None:
    """Threads compressing at once each get their own context: every result is right."""
    inputs = [TEXT[i * 1000 :] for i in range(16)]
    results: list[bytes | None] = [None] * len(inputs)

    def work(index: int) -> None:
        for _ in range(5):
            compressed = compress_batch(inputs[index], 3)
            assert compressed is not None
            results[index] = decompress_batch(compressed, len(inputs[index]))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert inputs == results


# --- decompression: nothing the peer sends makes us allocate more than raw_size ----------------


def test_a_frame_from_another_compressor_is_accepted() -> None:
    """Any zstd frame that states the right size will do, whoever made it."""
    expected = TEXT[:5000]
    assert expected == decompress_batch(zstd_frame(TEXT[:5000]), 5000)


def test_a_memoryview_is_decompressed() -> None:
    """The payload may be a view (of a receive buffer)."""
    frame = zstd_frame(TEXT[:5000])

    expected = TEXT[:5000]
    assert expected == decompress_batch(memoryview(frame), 5000)


BOMB = zstd_frame(bytes(64 * 1024 * 1024))  # 64 MiB of zeros in a few KiB

REFUSED: list[tuple[str, bytes, int, str]] = [
    ("bomb", BOMB, 1000, f"states {64 * 1024 * 1024} bytes, its raw_size says 1000"),
    ("no size stated", zstd_frame(TEXT[:5000], content_size=False), 5000, "states no size"),
    ("size differs", zstd_frame(TEXT[:5000]), 4999, "states 5000 bytes, its raw_size says 4999"),
    ("empty", b"", 10, "has no zstd frame header"),
    ("not zstd", b"not a zstd frame at all", 10, "has no zstd frame header"),
    ("cut", zstd_frame(TEXT[:5000])[:-5], 5000, "is damaged"),
    ("trailing bytes", zstd_frame(TEXT[:5000]) + b"\x00", 5000, "is damaged"),
    ("two frames", zstd_frame(TEXT[:5000]) * 2, 5000, "is damaged"),
    ("holds less than stated", lying_frame(2000, b"x" * 1000), 2000, "is damaged"),
    ("holds more than stated", lying_frame(1000, b"x" * 2000), 1000, "is damaged"),
]


@pytest.mark.parametrize(
    ("data", "raw_size", "error"), [c[1:] for c in REFUSED], ids=[c[0] for c in REFUSED]
)
def test_bad_compressed_payloads_are_refused(data: bytes, raw_size: int, error: str) -> None:
    """Bombs, frames that lie about their size, damaged or extra data: the peer's fault."""
    with pytest.raises(RemoteProtocolError) as excinfo:
        decompress_batch(data, raw_size)

    assert error in str(excinfo.value)


def test_an_honest_hand_made_frame_is_accepted() -> None:
    """The hand-made frames above are refused for their lies, not for their make."""
    expected = b"x" * 1000
    assert expected == decompress_batch(lying_frame(1000, b"x" * 1000), 1000)


@pytest.mark.parametrize("raw_size", [0, MAX_BATCH_RAW + 1])
def test_raw_size_must_be_one_a_batch_holds(raw_size: int) -> None:
    """A raw_size no Batch can carry is the caller's bug."""
    with pytest.raises(ValueError, match="raw_size must be in"):
        decompress_batch(zstd_frame(b"x"), raw_size)


@settings(max_examples=300)
@given(data=st.binary(max_size=200), raw_size=st.integers(min_value=1, max_value=4096))
def test_any_bytes_decompress_or_raise_remote_protocol_error(data: bytes, raw_size: int) -> None:
    """Whatever a peer sends as a compressed payload: raw_size bytes, or RemoteProtocolError."""
    try:
        raw = decompress_batch(data, raw_size)
    except RemoteProtocolError:
        return
    assert raw_size == len(raw)
