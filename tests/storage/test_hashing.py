"""hash_file, hash_ranges and read_runs on real files: holes, zeros, odd sizes, a full sync."""

from __future__ import annotations

import ctypes
import errno
import os
import random
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from standby.blocks import (
    block_digests,
    coarse_digests,
    file_digest,
    get_bit,
    plan_transfer,
    ranges_to_compare,
    select_ranges,
    zero_blocks,
)
from standby.storage.hashing import (
    FileChangedError,
    FileHashes,
    WritableBuffer,
    hash_file,
    hash_ranges,
    new_buffer,
    read_runs,
)

KIB = 1024
BS = 64 * KIB


def write(path: Path, size: int, extents: list[tuple[int, bytes]]) -> None:
    """A file of ``size`` bytes holding ``extents`` and holes everywhere else."""
    with path.open("wb") as f:
        f.truncate(size)
        for offset, data in extents:
            f.seek(offset)
            f.write(data)


def content(path: Path) -> bytes:
    return path.read_bytes()


def expected(data: bytes, block_size: int, range_blocks: int = 256) -> tuple[bytes, bytes, bytes]:
    digests = block_digests(data, block_size)
    return digests, coarse_digests(digests, range_blocks), file_digest(digests, len(data))


def hashed(path: Path, block_size: int = BS, **kwargs: object) -> FileHashes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return hash_file(fd, block_size, **kwargs)  # type: ignore[arg-type]
    finally:
        os.close(fd)


def check_against_model(fh: FileHashes, data: bytes) -> None:
    digests, coarse, whole = expected(data, fh.block_size, fh.range_blocks)
    assert fh.size == len(data)
    assert fh.block_digests == digests
    assert fh.coarse_digests == coarse
    assert fh.file_digest == whole
    zeros = set(zero_blocks(data, fh.block_size, digests))
    assert {i for i in range(fh.blocks) if get_bit(fh.zeros, i)} == zeros
    assert {i for i in range(fh.blocks) if fh.is_zero_block(i)} == zeros
    assert fh.zero_block_count == len(zeros)


def supports_holes(path: Path) -> bool:
    probe = path / "probe"
    write(probe, 4 * BS, [(2 * BS, b"x")])
    fd = os.open(probe, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_DATA) > 0
    except OSError:
        return False
    finally:
        os.close(fd)
        probe.unlink()


@pytest.fixture
def sparse_dir(tmp_path: Path) -> Path:
    if not supports_holes(tmp_path):
        pytest.skip("the temporary directory's file system does not report holes")
    return tmp_path


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    size=st.integers(0, 5 * 4096 + 100),
    block_size=st.sampled_from([512, 4096, 8192]),
    buffer_blocks=st.integers(1, 3),
    range_blocks=st.integers(1, 4),
    seed=st.integers(0, 2**32),
)
def test_hash_file_matches_the_pure_functions(
    tmp_path: Path, size: int, block_size: int, buffer_blocks: int, range_blocks: int, seed: int
) -> None:
    rng = random.Random(seed)
    data = bytearray(rng.randbytes(size))
    for _ in range(rng.randrange(4)):  # some zero stretches, written as data
        start = rng.randrange(size + 1)
        data[start : start + rng.randrange(3 * block_size)] = bytes(3 * block_size)
    data = data[:size]
    path = tmp_path / "f"
    path.write_bytes(data)
    buffer = bytearray(buffer_blocks * block_size + 63 + rng.randrange(block_size))
    fh = hashed(path, block_size, buffer=buffer, range_blocks=range_blocks)
    check_against_model(fh, bytes(data))
    assert fh.bytes_read == size  # no holes: everything read, once
    lean = hashed(path, block_size, buffer=buffer, range_blocks=range_blocks, keep_digests=False)
    assert lean.block_digests == b""
    assert (lean.coarse_digests, lean.file_digest, lean.zeros) == (
        fh.coarse_digests,
        fh.file_digest,
        fh.zeros,
    )


@pytest.mark.parametrize(
    ("size", "extents", "data_blocks"),
    [
        # hole at the start
        (8 * BS, [(5 * BS, b"\1" * (3 * BS))], 3),
        # hole in the middle, data not block-aligned (two partial blocks get read)
        (8 * BS, [(0, b"\2" * (BS + 100)), (6 * BS - 5, b"\3" * 10)], 2 + 2),
        # hole at the end, with a short last block inside it
        (6 * BS + 1000, [(0, b"\4" * (2 * BS))], 2),
        # data at the very end, in the short last block
        (6 * BS + 1000, [(6 * BS, b"\5" * 1000)], 1),
        # all hole
        (10 * BS + 1, [], 0),
        # holes at start, middle and end
        (12 * BS, [(3 * BS, b"\6" * BS), (7 * BS, b"\7" * BS)], 2),
    ],
)
def test_holes_are_not_read(
    sparse_dir: Path, size: int, extents: list[tuple[int, bytes]], data_blocks: int
) -> None:
    path = sparse_dir / "sparse"
    write(path, size, extents)
    data = content(path)
    fh = hashed(path, BS, buffer=bytearray(2 * BS), range_blocks=3)
    check_against_model(fh, data)
    last = size - (fh.blocks - 1) * BS
    reads_last = any(offset + len(d) > (fh.blocks - 1) * BS for offset, d in extents)
    assert fh.bytes_read == data_blocks * BS - (BS - last if reads_last and last != BS else 0)
    assert hash_ranges(os.open(path, os.O_RDONLY), size, BS, 3, [1, 0]) == select_ranges(
        fh.block_digests, 3, [1, 0]
    )


def test_zeros_written_as_data_are_read_and_marked_zero(tmp_path: Path) -> None:
    path = tmp_path / "zeros"
    path.write_bytes(bytes(5 * BS + 3))
    fh = hashed(path)
    check_against_model(fh, content(path))
    assert fh.zero_block_count == fh.blocks == 6
    with pytest.raises(IndexError):
        fh.is_zero_block(6)
    with pytest.raises(IndexError):
        fh.is_zero_block(-1)
    assert fh.bytes_read == 5 * BS + 3


def test_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.write_bytes(b"")
    fh = hashed(path)
    assert (fh.size, fh.blocks, fh.block_digests, fh.coarse_digests, fh.zeros, fh.bytes_read) == (
        0,
        0,
        b"",
        b"",
        b"",
        0,
    )
    assert fh.file_digest == file_digest(b"", 0)
    assert "blocks=0" in repr(fh)
    assert "kept_digests=True" in repr(fh)


def test_repr_is_a_summary(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"\1" * (3 * BS))
    fh = hashed(path, keep_digests=False)
    text = repr(fh)
    assert text.startswith("FileHashes(size=196608, block_size=65536, blocks=3, zero_blocks=0")
    assert "kept_digests=False" in text
    assert fh.file_digest.hex()[:16] in text
    assert len(text) < 300


def without_seek_data(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make lseek answer like a file system that cannot report holes."""
    real_lseek = os.lseek

    def lseek(fd: int, offset: int, how: int) -> int:
        if how in (os.SEEK_DATA, os.SEEK_HOLE):
            raise OSError(errno.EINVAL, "not supported here")
        return real_lseek(fd, offset, how)

    monkeypatch.setattr(os, "lseek", lseek)


def test_without_seek_data_the_whole_file_is_read(
    sparse_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = sparse_dir / "sparse"
    write(path, 6 * BS, [(4 * BS, b"\1" * BS)])
    without_seek_data(monkeypatch)
    fh = hashed(path)
    check_against_model(fh, content(path))
    assert fh.bytes_read == 6 * BS


def test_seek_hole_enxio_reads_to_the_end(
    sparse_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = sparse_dir / "sparse"
    write(path, 6 * BS, [(4 * BS, b"\1" * BS)])
    real_lseek = os.lseek

    def lseek(fd: int, offset: int, how: int) -> int:
        if how == os.SEEK_HOLE:
            raise OSError(errno.ENXIO, "shrank")
        return real_lseek(fd, offset, how)

    monkeypatch.setattr(os, "lseek", lseek)
    fh = hashed(path)
    check_against_model(fh, content(path))
    assert fh.bytes_read == 2 * BS


@pytest.mark.parametrize("how", ["SEEK_DATA", "SEEK_HOLE"])
def test_other_seek_errors_propagate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"\1" * BS)
    real_lseek = os.lseek

    def lseek(fd: int, offset: int, whence: int) -> int:
        if whence == getattr(os, how):
            raise OSError(errno.EIO, "disk on fire")
        return real_lseek(fd, offset, whence)

    monkeypatch.setattr(os, "lseek", lseek)
    with pytest.raises(OSError, match="disk on fire"):
        hashed(path)


def test_a_file_that_shrinks_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"\1" * (4 * BS))
    fd = os.open(path, os.O_RDONLY)
    try:
        with monkeypatch.context() as patch:  # no SEEK_DATA: the read itself comes up short
            without_seek_data(patch)
            with pytest.raises(FileChangedError, match="end of file"):
                hash_ranges(fd, 8 * BS, BS, 2, [2])
        os.truncate(path, 2 * BS)
        with pytest.raises(FileChangedError, match="shrank"):  # the tail became a hole
            hash_ranges(fd, 4 * BS, BS, 1, [0, 3])
        with pytest.raises(FileChangedError):
            list(read_runs(fd, [(BS, 2 * BS)], new_buffer(2 * BS)))
        real_fstat = os.fstat
        sizes = iter([4 * BS])

        def fstat(fd: int) -> os.stat_result:
            # the first call (the size hashing starts from) sees the old size
            result = real_fstat(fd)
            size = next(sizes, None)
            if size is None:
                return result
            fields = list(result)
            fields[6] = size
            return os.stat_result(fields)

        monkeypatch.setattr(os, "fstat", fstat)
        with pytest.raises(FileChangedError, match="shrank"):
            hash_file(fd, BS)
    finally:
        os.close(fd)


def test_hash_ranges_recomputes_chosen_ranges(tmp_path: Path) -> None:
    rng = random.Random(7)
    data = rng.randbytes(10 * 4096 + 77)
    path = tmp_path / "f"
    path.write_bytes(data)
    digests = block_digests(data, 4096)
    fd = os.open(path, os.O_RDONLY)
    try:
        for ranges in ([], [0], [3], [3, 1, 2], [0, 1, 2, 3]):
            assert hash_ranges(fd, len(data), 4096, 3, ranges) == select_ranges(digests, 3, ranges)
        with pytest.raises(ValueError, match="range 4"):
            hash_ranges(fd, len(data), 4096, 3, [4])
        with pytest.raises(ValueError, match="range_blocks"):
            hash_ranges(fd, len(data), 4096, 0, [0])
    finally:
        os.close(fd)


def test_buffers_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"abc")
    with pytest.raises(ValueError, match="cannot hold"):
        hashed(path, 4096, buffer=bytearray(4095))
    with pytest.raises(ValueError, match="block_size"):
        hashed(path, 0)
    with pytest.raises(ValueError, match="cannot hold"):
        hashed(path, 4096, buffer=bytearray())
    with pytest.raises(TypeError, match="writable"):
        hashed(path, 4096, buffer=memoryview(bytes(8192)))
    fd = os.open(path, os.O_RDONLY)
    try:
        with pytest.raises(ValueError, match="does not fit"):
            list(read_runs(fd, [(0, 3)], bytearray(2)))
    finally:
        os.close(fd)


def address(view: memoryview) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(view))


@pytest.mark.parametrize("make", [bytearray, new_buffer, lambda n: memoryview(bytearray(n))[3:]])
def test_reads_land_on_64_byte_boundaries(tmp_path: Path, make: Callable[[int], object]) -> None:
    # The kernel copies into a misaligned destination several times slower.
    path = tmp_path / "f"
    data = random.Random(3).randbytes(3 * 4096 + 5)
    path.write_bytes(data)
    buffer = make(2 * 4096 + 200)
    fd = os.open(path, os.O_RDONLY)
    try:
        runs = [(8192, 4096 + 5), (0, 4096)]
        for (offset, view), (start, length) in zip(
            read_runs(fd, runs, buffer),  # type: ignore[arg-type]
            runs,
            strict=True,
        ):
            assert address(view) % 64 == 0
            assert (offset, bytes(view)) == (start, data[start : start + length])
        fh = hash_file(fd, 4096, buffer=buffer)  # type: ignore[arg-type]
        assert fh.block_digests == block_digests(data, 4096)
    finally:
        os.close(fd)


def test_hashing_reuses_one_buffer(tmp_path: Path) -> None:
    path = tmp_path / "big"
    chunk = random.Random(1).randbytes(4 * 1024 * KIB)
    with path.open("wb") as f:
        for _ in range(16):
            f.write(chunk)
    buffer = new_buffer()
    tracemalloc.start()
    try:
        fh = hashed(path, BS, buffer=buffer)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert fh.bytes_read == 64 * 1024 * KIB
    # 1024 block digests and a few views: nothing near the size of a read, let alone the file
    assert peak < 512 * KIB
    assert fh.file_digest == file_digest(block_digests(chunk, BS) * 16, 64 * 1024 * KIB)


def runs_of(fd: int, runs: Sequence[tuple[int, int]], buffer: WritableBuffer) -> Iterator[bytes]:
    for (offset, view), run in zip(read_runs(fd, runs, buffer), runs, strict=True):
        assert offset == run[0]
        assert view.obj is buffer  # no copy
        yield bytes(view)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    seed=st.integers(0, 2**32),
    master_size=st.integers(0, 40 * 4096),
    replica_size=st.one_of(st.none(), st.integers(0, 40 * 4096)),
    edits=st.integers(0, 6),
)
def test_a_block_sync_between_two_files_makes_them_equal(
    tmp_path: Path, seed: int, master_size: int, replica_size: int | None, edits: int
) -> None:
    """The master's whole path on real files: hash both, compare, plan, read runs, apply."""
    bs, rb = 4096, 4
    rng = random.Random(seed)
    master = bytearray(rng.randbytes(master_size))
    for _ in range(rng.randrange(3)):
        start = rng.randrange(master_size + 1)
        master[start : start + 5 * bs] = bytes(min(5 * bs, master_size - start))
    master_path, replica_path = tmp_path / "master", tmp_path / "replica"
    master_path.write_bytes(master)
    if replica_path.exists():
        replica_path.unlink()
    if replica_size is not None:
        replica = bytearray(master[:replica_size].ljust(replica_size, b"\xcc"))
        for _ in range(edits):
            start = rng.randrange(replica_size + 1)
            replica[start : start + rng.randrange(2 * bs)] = rng.randbytes(rng.randrange(2 * bs))
        replica_path.write_bytes(replica[:replica_size])
    buffer = new_buffer(16 * bs)
    fm = hashed(master_path, bs, buffer=buffer, range_blocks=rb)
    if replica_size is None:
        plan = plan_transfer(
            size=fm.size,
            block_size=bs,
            range_blocks=rb,
            zeros=fm.zeros,
            replica_size=None,
            max_run=len(buffer),
        )
    else:
        fr = hashed(replica_path, bs, buffer=buffer, range_blocks=rb)
        ranges = ranges_to_compare(fm.coarse_digests, fr.coarse_digests)
        rfd = os.open(replica_path, os.O_RDONLY)
        try:
            replica_digests = hash_ranges(rfd, fr.size, bs, rb, ranges, buffer=buffer)
        finally:
            os.close(rfd)
        plan = plan_transfer(
            size=fm.size,
            block_size=bs,
            range_blocks=rb,
            zeros=fm.zeros,
            replica_size=fr.size,
            ranges=ranges,
            master_digests=select_ranges(fm.block_digests, rb, ranges),
            replica_digests=replica_digests,
            max_run=len(buffer),
        )
    target = replica_path if not plan.whole else tmp_path / "whole.tmp"
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if plan.whole else 0)
    mfd, wfd = os.open(master_path, os.O_RDONLY), os.open(target, flags)
    try:
        os.ftruncate(wfd, plan.size)
        for run in plan.zero_runs:
            os.pwrite(wfd, bytes(run.length), run.offset)
        for run, payload in zip(plan.data_runs, runs_of(mfd, plan.data_runs, buffer), strict=True):
            assert len(payload) == run.length
            os.pwrite(wfd, payload, run.offset)
    finally:
        os.close(mfd)
        os.close(wfd)
    if plan.whole:
        os.replace(target, replica_path)
    assert content(replica_path) == bytes(master)
    assert hashed(replica_path, bs, range_blocks=rb).file_digest == fm.file_digest
