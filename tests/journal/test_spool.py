"""Spool: the on-disk journal keeps every record, in order, until trimmed, and says so loudly
when it cannot (SpoolFull, SpoolGap, SpoolCorrupt) rather than losing or inventing records."""

from __future__ import annotations

import contextlib
import errno
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import xxhash
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from standby.journal import (
    MAX_RECORD_BYTES,
    RECORD_HEADER_BYTES,
    SEGMENT_HEADER_BYTES,
    Spool,
    SpoolAhead,
    SpoolClosed,
    SpoolCorrupt,
    SpoolError,
    SpoolFull,
    SpoolGap,
)

#: Small segments, so that a few kilobytes of records already span many of them.
SEGMENT = 1024
BIG = 1 << 40

HEADER = struct.Struct("<Q2sHIQQ")  # the documented record header: checksum, magic, ..., time


def open_spool(directory: Path, **kwargs: Any) -> Spool:
    options: dict[str, Any] = {"max_bytes": BIG, "segment_bytes": SEGMENT, **kwargs}
    return Spool(directory, **options)


def make_records(count: int, seed: int = 0, max_size: int = 300) -> list[bytes]:
    """Records of varied sizes (empty ones included) and contents."""
    rng = random.Random(seed)
    return [rng.randbytes(rng.randrange(max_size + 1)) for _ in range(count)]


def read_all(spool: Spool, from_seq: int, max_bytes: int = 4096) -> list[tuple[int, bytes]]:
    """Read from ``from_seq`` to the end in pieces of at most ``max_bytes``."""
    out: list[tuple[int, bytes]] = []
    while True:
        got = spool.read(from_seq, max_bytes)
        if not got:
            return out
        out += got
        from_seq = got[-1][0] + 1


def numbered(first: int, records: list[bytes]) -> list[tuple[int, bytes]]:
    return list(enumerate(records, first))


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.seg"))


def parse_segment(path: Path) -> list[tuple[int, int, int]]:
    """(offset, seq, length) of each record, by the format the module docstring documents,
    checking every checksum as documented."""
    raw = path.read_bytes()
    magic, version, _reserved, first, checksum = struct.unpack_from("<8sIIQQ", raw)
    assert (magic, version) == (b"SBYSPOOL", 1)
    assert xxhash.xxh3_64_intdigest(raw[:24]) == checksum
    assert path.name == f"{first:020d}.seg"
    out = []
    offset = SEGMENT_HEADER_BYTES
    while offset < len(raw):
        checksum, magic, _reserved, length, seq, _time = HEADER.unpack_from(raw, offset)
        assert magic == b"\xa7R"
        end = offset + RECORD_HEADER_BYTES + length
        assert xxhash.xxh3_64_intdigest(raw[offset + 8 : end]) == checksum
        out.append((offset, seq, length))
        offset = end
    return out


def flip(path: Path, offset: int) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x40]))


@pytest.fixture
def spool_dir(tmp_path: Path) -> Path:
    return tmp_path / "spool"


# --- appending and reading ---------------------------------------------------------------------


def test_round_trip_across_segment_rolls(spool_dir: Path) -> None:
    """Records appended in batches of every size read back identical, numbered 1.., across many
    segments, whatever the read budget."""
    records = make_records(600)
    with open_spool(spool_dir) as spool:
        position = 0
        for size in [1, 0, 7, 50, 2, 300, 240]:
            last = spool.append(records[position : position + size])
            position += size
            assert position == last
        assert len(segments(spool_dir)) > 50
        assert numbered(1, records) == read_all(spool, 1)
        assert numbered(1, records) == read_all(spool, 1, max_bytes=0)
        assert numbered(1, records) == read_all(spool, 1, max_bytes=1 << 20)
        assert numbered(301, records[300:]) == read_all(spool, 301, max_bytes=777)
        assert 600 == spool.last_seq == spool.record_count
        assert spool.size_bytes == sum(p.stat().st_size for p in segments(spool_dir))


def test_on_disk_format_is_the_documented_one(spool_dir: Path) -> None:
    """Segment files parse with an independent reader of the documented format."""
    records = make_records(100)
    with open_spool(spool_dir) as spool:
        spool.append(records)
    parsed = [entry for path in segments(spool_dir) for entry in parse_segment(path)]
    assert [(seq, len(r)) for seq, r in numbered(1, records)] == [(s, n) for _, s, n in parsed]
    assert oct(spool_dir.stat().st_mode & 0o777) == "0o700"


def test_read_budget(spool_dir: Path) -> None:
    """read() stops before max_bytes of data (but returns one record even if it is larger) and
    at max_records."""
    with open_spool(spool_dir) as spool:
        spool.append([b"a" * 100] * 20)
        assert [s for s, _ in spool.read(1, 300)] == [1, 2, 3]
        assert [s for s, _ in spool.read(1, 299)] == [1, 2]
        assert [s for s, _ in spool.read(5, 10)] == [5]
        assert [s for s, _ in spool.read(5, 0)] == [5]
        assert [s for s, _ in spool.read(7, 10_000, max_records=4)] == [7, 8, 9, 10]
        assert list(range(1, 21)) == [s for s, _ in spool.read(1, 10_000)]


def test_large_record_gets_a_segment_of_its_own(spool_dir: Path) -> None:
    """A record larger than segment_bytes is stored whole, alone in its segment."""
    big = os.urandom(40 * SEGMENT)
    with open_spool(spool_dir) as spool:
        spool.append([b"x", big, b"y"])
        assert [(1, b"x"), (2, big), (3, b"y")] == read_all(spool, 1)
        assert [(2, big)] == spool.read(2, 10)  # over budget, and the end of its segment
    sizes = [len(parse_segment(p)) for p in segments(spool_dir)]
    assert sizes == [1, 1, 1]


def test_memoryview_records(spool_dir: Path) -> None:
    """memoryviews of any format are stored as their bytes."""
    words = array("I", range(1000))
    large = bytearray(os.urandom(100_000))  # over the size that is copied into one buffer
    with open_spool(spool_dir) as spool:
        spool.append([memoryview(words), memoryview(b"abcdef")[2:4], memoryview(large)])
        expected = [(1, words.tobytes()), (2, b"cd"), (3, bytes(large))]
        assert expected == read_all(spool, 1)
    with open_spool(spool_dir) as spool:
        assert expected == read_all(spool, 1)


def test_record_size_limit(spool_dir: Path) -> None:
    with open_spool(spool_dir) as spool:
        with pytest.raises(ValueError, match="over MAX_RECORD_BYTES"):
            spool.append([b"ok", bytes(MAX_RECORD_BYTES + 1)])
        assert spool.last_seq == 0


def test_read_edges(spool_dir: Path) -> None:
    """Nothing new: []. Ahead of the spool: SpoolAhead. Nonsense arguments: ValueError."""
    with open_spool(spool_dir) as spool:
        assert spool.read(1, 100) == []
        spool.append([b"a", b"b"])
        assert spool.read(3, 100) == []
        with pytest.raises(SpoolAhead, match="from 4"):
            spool.read(4, 100)
        with pytest.raises(ValueError, match="from_seq"):
            spool.read(0, 100)
        assert spool.append([]) == 2


def test_corruption_of_a_published_record_is_caught_on_read(spool_dir: Path) -> None:
    """A record damaged on disk after it was written is never returned."""
    with open_spool(spool_dir, segment_bytes=1 << 20) as spool:
        spool.append([b"a" * 100, b"b" * 100])
        (path,) = segments(spool_dir)
        flip(path, SEGMENT_HEADER_BYTES + RECORD_HEADER_BYTES + 100 + RECORD_HEADER_BYTES + 5)
        assert spool.read(1, 100) == [(1, b"a" * 100)]
        with pytest.raises(SpoolCorrupt, match=f"{path.name}: checksum mismatch"):
            spool.read(2, 100)


# --- trim, reset, reopen -----------------------------------------------------------------------


def test_trim_deletes_whole_segments_only(spool_dir: Path) -> None:
    """trim(N) deletes the segments whose records are all <= N, keeps the one holding N+1, and
    reads at or below N raise SpoolGap."""
    records = make_records(300, seed=1)
    with open_spool(spool_dir) as spool:
        spool.append(records)
        before = {p.name: [seq for _, seq, _ in parse_segment(p)] for p in segments(spool_dir)}
        spool.trim(150)
        after = {p.name for p in segments(spool_dir)}
        assert {name for name, seqs in before.items() if max(seqs) > 150} == after
        assert spool.base_seq == 150
        assert spool.record_count == 150
        with pytest.raises(SpoolGap, match=r"records 150\.\.150"):
            spool.read(150, 100)
        with pytest.raises(SpoolGap, match=r"records 3\.\.150"):
            spool.read(3, 100)
        assert numbered(151, records[150:]) == read_all(spool, 151)
        spool.trim(100)  # below base: nothing happens
        assert spool.base_seq == 150
        assert spool.size_bytes == sum(p.stat().st_size for p in segments(spool_dir))


def test_trim_everything_then_numbering_continues(spool_dir: Path) -> None:
    """Trimming past the end trims to the end; every file goes, base_seq survives reopening."""
    with open_spool(spool_dir) as spool:
        spool.append([b"r"] * 10)
        spool.trim(25)
        assert (
            spool.base_seq,
            spool.last_seq,
            spool.size_bytes,
            spool.record_count,
        ) == (10, 10, 0, 0)
        assert segments(spool_dir) == []
        assert spool.append([b"next"]) == 11
    with open_spool(spool_dir) as spool:
        assert (spool.base_seq, spool.last_seq) == (10, 11)
        assert spool.read(11, 100) == [(11, b"next")]


def test_reopen_keeps_records_and_base_seq(spool_dir: Path) -> None:
    """Close and open again: the same records, the same base_seq (also one that deleted no
    segment), and appends continue where they stopped."""
    records = make_records(200, seed=2)
    with open_spool(spool_dir) as spool:
        spool.append(records)
        spool.trim(120)
        spool.trim(121)
    with open_spool(spool_dir) as spool:
        assert (spool.base_seq, spool.last_seq) == (121, 200)
        assert numbered(122, records[121:]) == read_all(spool, 122)
        assert spool.append([b"more"]) == 201
    with open_spool(spool_dir) as spool:
        assert read_all(spool, 122)[-1] == (201, b"more")


def test_reset(spool_dir: Path) -> None:
    """reset discards everything, durably, and numbering goes on after the new base."""
    with open_spool(spool_dir) as spool:
        spool.append(make_records(50))
        with pytest.raises(ValueError, match="last_seq=50"):
            spool.reset(49)
        spool.reset(80)
        assert (spool.base_seq, spool.last_seq, spool.record_count) == (80, 80, 0)
        assert spool.durable_seq == 80
        assert segments(spool_dir) == []
        with pytest.raises(SpoolGap):
            spool.read(50, 100)
        assert spool.read(81, 100) == []
        assert spool.append([b"after"]) == 81
    with open_spool(spool_dir) as spool:
        assert read_all(spool, 81) == [(81, b"after")]


def test_durable_seq_follows_sync(spool_dir: Path) -> None:
    with open_spool(spool_dir, segment_bytes=1 << 20) as spool:
        spool.append([b"a"] * 5)
        assert spool.durable_seq == 0
        spool.sync()
        assert spool.durable_seq == 5
        spool.sync()  # nothing new: still fine
        assert spool.durable_seq == 5


def test_closed_spool(spool_dir: Path) -> None:
    spool = open_spool(spool_dir)
    spool.append([b"a"])
    spool.close()
    spool.close()
    assert "closed" in repr(spool)
    for call in (lambda: spool.append([b"b"]), lambda: spool.read(1, 10), spool.sync):
        with pytest.raises(SpoolClosed):
            call()


def test_one_spool_per_directory(spool_dir: Path) -> None:
    with open_spool(spool_dir), pytest.raises(SpoolError, match="in use"):
        open_spool(spool_dir)
    open_spool(spool_dir).close()  # free again after close


# --- recovery ----------------------------------------------------------------------------------


def _last_segment_with(spool_dir: Path, records: list[bytes]) -> Path:
    with open_spool(spool_dir) as spool:
        spool.append(records)
    return segments(spool_dir)[-1]


@pytest.mark.parametrize("cut", [1, 10, RECORD_HEADER_BYTES - 1, RECORD_HEADER_BYTES + 3])
def test_torn_last_record_is_dropped(spool_dir: Path, cut: int) -> None:
    """A last segment that ends inside a record (a crash mid-append) loses just that record;
    numbering continues after the survivors."""
    records = [b"x" * 100] * 30
    path = _last_segment_with(spool_dir, records)
    offset, seq, _ = parse_segment(path)[-1]
    os.truncate(path, offset + cut)
    with open_spool(spool_dir) as spool:
        assert seq - 1 == spool.last_seq == 29
        assert numbered(1, records[:29]) == read_all(spool, 1)
        assert spool.append([b"new"]) == 30
        assert read_all(spool, 1)[-1] == (30, b"new")
    assert offset + RECORD_HEADER_BYTES + 3 == path.stat().st_size


@pytest.mark.parametrize("where", ["checksum", "length", "seq", "data"])
def test_damaged_last_record_is_dropped(spool_dir: Path, where: str) -> None:
    """A bad last record of the last segment is a torn tail: dropped, the rest kept."""
    records = [b"y" * 100] * 30
    path = _last_segment_with(spool_dir, records)
    offset, _, _ = parse_segment(path)[-1]
    flip(path, offset + {"checksum": 0, "length": 12, "seq": 16, "data": 40}[where])
    with open_spool(spool_dir) as spool:
        assert spool.last_seq == 29
        assert numbered(1, records[:29]) == read_all(spool, 1)


def test_torn_tail_in_the_middle_of_the_last_segment(spool_dir: Path) -> None:
    """Damage inside the last segment drops everything after it in that segment (an unsynced
    append can reach the disk out of order)."""
    records = [b"z" * 10] * 20
    with open_spool(spool_dir, segment_bytes=1 << 20) as spool:
        spool.append(records)
    (path,) = segments(spool_dir)
    offset, _, _ = parse_segment(path)[5]
    flip(path, offset + 40)
    with open_spool(spool_dir) as spool:
        assert spool.last_seq == 5


@pytest.mark.parametrize("where", ["segment header", "record header", "record data"])
def test_damage_in_an_earlier_segment_is_corruption(spool_dir: Path, where: str) -> None:
    """A bad byte anywhere but the tail of the last segment raises SpoolCorrupt naming the file
    and the offset, and telling what to do."""
    _last_segment_with(spool_dir, [b"q" * 100] * 100)
    path = segments(spool_dir)[1]
    offset, _, _ = parse_segment(path)[1]
    flip(
        path,
        {"segment header": 20, "record header": offset + 12, "record data": offset + 40}[where],
    )
    expected_offset = 0 if where == "segment header" else offset
    with pytest.raises(SpoolCorrupt, match=f"{path.name}: .* at offset {expected_offset}") as info:
        open_spool(spool_dir)
    assert "Move the spool directory aside" in str(info.value)


def test_repeated_record_with_good_checksum_is_corruption(spool_dir: Path) -> None:
    """A valid record with the wrong sequence number is not a torn write."""
    path = _last_segment_with(spool_dir, [b"a" * 10] * 3)
    offset, _, length = parse_segment(path)[-1]
    raw = path.read_bytes()
    with path.open("ab") as f:
        f.write(raw[offset : offset + RECORD_HEADER_BYTES + length])
    with pytest.raises(SpoolCorrupt, match="expected"):
        open_spool(spool_dir)


def test_missing_middle_segment_is_corruption(spool_dir: Path) -> None:
    _last_segment_with(spool_dir, make_records(100, seed=4))
    segments(spool_dir)[2].unlink()
    with pytest.raises(SpoolCorrupt, match="the one before it ends"):
        open_spool(spool_dir)


def test_missing_first_segments_become_a_gap(spool_dir: Path) -> None:
    """Records deleted behind our back are reported as gone (SpoolGap: resynchronize), never
    skipped silently."""
    _last_segment_with(spool_dir, make_records(100, seed=5))
    first, second = segments(spool_dir)[:2]
    first.unlink()
    expected_base = int(second.name[:20]) - 1
    with open_spool(spool_dir) as spool:
        assert expected_base == spool.base_seq
        with pytest.raises(SpoolGap):
            spool.read(1, 100)
        assert spool.read(expected_base + 1, 100)


def test_leftovers_of_an_interrupted_trim_are_removed(spool_dir: Path, tmp_path: Path) -> None:
    """Segments wholly at or below base_seq (the trim saved base_seq, then crashed before it
    deleted them) are deleted on open."""
    records = make_records(200, seed=6)
    with open_spool(spool_dir) as spool:
        spool.append(records)
        saved = [tmp_path / p.name for p in segments(spool_dir)]
        for path in segments(spool_dir):
            shutil.copy(path, tmp_path / path.name)
        spool.trim(200)
    for path in saved:
        shutil.copy(path, spool_dir / path.name)
    (spool_dir / "00000000000000000099.seg.tmp").write_bytes(b"half")
    with open_spool(spool_dir) as spool:
        assert (spool.base_seq, spool.last_seq) == (200, 200)
    assert segments(spool_dir) == []
    assert not list(spool_dir.glob("*.tmp"))


def test_damaged_state_file_is_corruption(spool_dir: Path) -> None:
    open_spool(spool_dir).close()
    flip(spool_dir / "state", 17)
    with pytest.raises(SpoolCorrupt, match="state: header checksum mismatch"):
        open_spool(spool_dir)


def test_process_killed_without_close(spool_dir: Path) -> None:
    """A process that dies without sync or close (os._exit) loses nothing the page cache held;
    base_seq may fall back to the last saved one, never further."""
    script = f"""
import os
from pathlib import Path
from standby.journal import Spool
spool = Spool(Path({str(spool_dir)!r}), max_bytes=1 << 30, segment_bytes={SEGMENT})
spool.append([bytes([i % 256]) * (i % 50) for i in range(1, 301)])
spool.sync()
spool.trim(5)  # deletes no segment: base_seq is only in memory
os._exit(0)
"""
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    with open_spool(spool_dir) as spool:
        assert spool.last_seq == 300
        assert spool.base_seq in (0, 5)
        expected = [(i, bytes([i % 256]) * (i % 50)) for i in range(spool.base_seq + 1, 301)]
        assert expected == read_all(spool, spool.base_seq + 1)


# --- limits ------------------------------------------------------------------------------------


def test_max_bytes(spool_dir: Path) -> None:
    """A batch that would pass max_bytes is refused whole, with the numbers; trimming makes
    room again."""
    with open_spool(spool_dir, max_bytes=4096) as spool:
        spool.append([b"a" * 900] * 3)
        held = spool.size_bytes
        with pytest.raises(SpoolFull, match=rf"max_bytes: the spool holds {held} bytes") as info:
            spool.append([b"b" * 100, b"c" * 900, b"d" * 900])
        assert "max_bytes=4096" in str(info.value)
        assert (3, held) == (spool.last_seq, spool.size_bytes)
        assert [r for _, r in read_all(spool, 1)] == [b"a" * 900] * 3
        spool.trim(3)
        spool.append([b"b" * 100, b"c" * 900, b"d" * 900])
        assert spool.last_seq == 6


@contextlib.contextmanager
def small_tmpfs(tmp_path: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of ``size`` mounted under tmp_path (needs root); skips the test if mounting
    is not possible here."""
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if result.returncode:
        pytest.skip(f"cannot mount a {size} tmpfs (needs root): {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        if subprocess.run(["umount", str(mount_point)], capture_output=True).returncode:
            # Busy (a descriptor leaked by a failing test): detach it rather than leave it.
            subprocess.run(["umount", "--lazy", str(mount_point)], check=True)


def append_until_refused(
    spool: Spool, make_batch: Callable[[int], list[bytes]], model: list[bytes]
) -> None:
    """Append batches (adding them to ``model``) until the spool refuses one."""
    for i in range(200):
        batch = make_batch(i)
        spool.append(batch)
        model += batch
    raise AssertionError("the spool never refused a batch")


def test_min_free_bytes_on_a_small_file_system(tmp_path: Path) -> None:
    """On a 1 MiB file system with min_free_bytes=512 KiB, appends stop before free space
    falls under 512 KiB; the refused batch leaves no trace."""
    with small_tmpfs(tmp_path, "1m") as mount_point:
        model: list[bytes] = []
        with open_spool(mount_point / "spool", min_free_bytes=512 * 1024) as spool:
            with pytest.raises(SpoolFull, match="min_free_bytes: the file system") as info:
                append_until_refused(spool, lambda i: [bytes([i]) * 10_000] * 2, model)
            assert "min_free_bytes=524288" in str(info.value)
            assert len(model) == spool.last_seq
            assert model == [r for _, r in read_all(spool, 1)]
            free = os.statvfs(mount_point)
            assert free.f_bavail * free.f_frsize >= 500 * 1024


def test_file_system_full_leaves_no_trace_of_the_batch(tmp_path: Path) -> None:
    """ENOSPC in the middle of a batch (spanning segments) undoes the whole batch: SpoolFull,
    the same records before and after reopening, and the spool keeps working."""
    with small_tmpfs(tmp_path, "1m") as mount_point:
        directory = mount_point / "spool"
        model: list[bytes] = []
        with open_spool(directory, segment_bytes=64 * 1024) as spool:
            with pytest.raises(SpoolFull, match="is full") as info:
                append_until_refused(spool, lambda i: [bytes([i]) * 30_000] * 5, model)
            assert "nothing of the batch" in str(info.value)
            assert len(model) == spool.last_seq
            assert model == [r for _, r in read_all(spool, 1)]
            assert spool.size_bytes == sum(p.stat().st_size for p in segments(directory))
            spool.trim(len(model) - 2)
            spool.append([b"fits"])
            model.append(b"fits")
        with open_spool(directory) as spool:
            assert model[-3:] == [r for _, r in read_all(spool, spool.base_seq + 1)]


def test_write_error_mid_batch_leaves_no_trace(
    spool_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Any write failure undoes the batch, including segments it created."""
    with open_spool(spool_dir) as spool:
        spool.append([b"k" * 500])
        files = sorted(p.name for p in segments(spool_dir))
        calls = 0
        real_pwrite, real_pwritev = os.pwrite, os.pwritev

        def failing(real: Any) -> Any:
            def write(*args: Any) -> int:
                nonlocal calls
                calls += 1
                if calls == 4:
                    raise OSError(errno.EIO, "injected")
                return int(real(*args))

            return write

        monkeypatch.setattr(os, "pwrite", failing(real_pwrite))
        monkeypatch.setattr(os, "pwritev", failing(real_pwritev))
        with pytest.raises(SpoolError, match=r"injected.*nothing of the batch"):
            spool.append([b"m" * 400] * 6)
        monkeypatch.undo()
        assert (1, files) == (spool.last_seq, sorted(p.name for p in segments(spool_dir)))
        assert spool.append([b"ok"]) == 2
    with open_spool(spool_dir) as spool:
        assert read_all(spool, 1) == [(1, b"k" * 500), (2, b"ok")]


def test_failed_flush_makes_the_spool_unusable(
    spool_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a failed fdatasync nothing more is written (the kernel may have dropped the
    pages); reading still works, and reopening recovers."""
    with open_spool(spool_dir) as spool:
        spool.append([b"a"])

        def failing(fd: int) -> None:
            raise OSError(errno.EIO, "injected")

        monkeypatch.setattr(os, "fdatasync", failing)
        with pytest.raises(SpoolError, match="flushing the segment failed"):
            spool.sync()
        monkeypatch.undo()
        with pytest.raises(SpoolError, match="unusable"):
            spool.append([b"b"])
        assert spool.read(1, 10) == [(1, b"a")]
        assert "broken" in repr(spool)
    with open_spool(spool_dir) as spool:
        assert spool.read(1, 10) == [(1, b"a")]


# --- threads -----------------------------------------------------------------------------------


def test_concurrent_append_read_and_trim(spool_dir: Path) -> None:
    """A writer appends while a reader (the sender) reads and trims what it read (the acks):
    the reader sees every record exactly once, in order."""
    records = make_records(20_000, seed=7, max_size=120)
    received: list[tuple[int, bytes]] = []
    errors: list[BaseException] = []
    with open_spool(spool_dir, segment_bytes=64 * 1024) as spool:

        def writer() -> None:
            rng = random.Random(8)
            position = 0
            while position < len(records):
                size = rng.randrange(1, 60)
                spool.append(records[position : position + size])
                position += size

        def reader() -> None:
            try:
                after = 0
                while after < len(records):
                    if not spool.wait(after, timeout=10):
                        raise AssertionError(f"no record after {after} within 10 s")
                    got = spool.read(after + 1, max_bytes=3000)
                    received.extend(got)
                    after = got[-1][0]
                    if after % 5 == 0:
                        spool.trim(after)
            except BaseException as e:
                errors.append(e)

        threads = [threading.Thread(target=writer), threading.Thread(target=reader)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == []
        assert numbered(1, records) == received


def test_wait(spool_dir: Path) -> None:
    """wait() returns at once when there is something, wakes on append, and returns False
    after its timeout."""
    spool = open_spool(spool_dir)
    spool.append([b"a"])
    assert spool.wait(0, timeout=0)
    started = time.monotonic()
    assert not spool.wait(1, timeout=0.05)
    assert time.monotonic() - started >= 0.05
    results: list[tuple[bool, float]] = []

    def waiter() -> None:
        begin = time.monotonic()
        results.append((spool.wait(1, timeout=30), time.monotonic() - begin))

    thread = threading.Thread(target=waiter)
    thread.start()
    time.sleep(0.05)
    spool.append([])  # nothing appended: no wake-up
    time.sleep(0.05)
    assert not results
    spool.append([b"b"])
    thread.join(30)
    spool.close()
    ((woke, elapsed),) = results
    assert woke
    assert elapsed < 10


def test_wait_woken_by_close(spool_dir: Path) -> None:
    spool = open_spool(spool_dir)
    results: list[bool] = []
    thread = threading.Thread(target=lambda: results.append(spool.wait(0, timeout=30)))
    thread.start()
    time.sleep(0.05)
    started = time.monotonic()
    spool.close()
    thread.join(30)
    assert results == [False]
    assert time.monotonic() - started < 10


def test_oldest_timestamp(spool_dir: Path) -> None:
    """The append time of the oldest retained record; None when nothing is retained."""
    with open_spool(spool_dir) as spool:
        assert spool.oldest_timestamp() is None
        before = time.time()
        spool.append(make_records(100))
        between = time.time()
        time.sleep(0.01)
        spool.append(make_records(100))
        oldest = spool.oldest_timestamp()
        assert oldest is not None
        assert before <= oldest <= between
        spool.trim(150)
        newer = spool.oldest_timestamp()
        assert newer is not None
        assert between < newer <= time.time()
        spool.trim(200)
        assert spool.oldest_timestamp() is None


# --- a model-based test ------------------------------------------------------------------------


#: A segment holds a few appends of the model's records: every run rolls several times (each
#: roll costs three flushes, which on a busy disk take milliseconds).
MODEL_SEGMENT = 600


class SpoolModel(RuleBasedStateMachine):
    """Append, trim, reset, sync, read and reopen against a list: the spool always holds exactly
    the records after base_seq, numbered from base_seq + 1."""

    def __init__(self) -> None:
        super().__init__()
        self.top = Path(tempfile.mkdtemp(prefix="spool-model-"))
        self.directory = self.top / "spool"
        self.spool = Spool(self.directory, max_bytes=1 << 30, segment_bytes=MODEL_SEGMENT)
        self.base = 0
        self.records: list[bytes] = []

    @property
    def last(self) -> int:
        return self.base + len(self.records)

    @rule(batch=st.lists(st.binary(max_size=150), max_size=5))
    def append(self, batch: list[bytes]) -> None:
        assert self.last + len(batch) == self.spool.append(batch)
        self.records += batch

    @rule(data=st.data())
    def trim(self, data: st.DataObject) -> None:
        upto = data.draw(st.integers(0, self.last + 3), label="upto")
        self.spool.trim(upto)
        upto = min(upto, self.last)
        if upto > self.base:
            del self.records[: upto - self.base]
            self.base = upto

    @rule(extra=st.integers(0, 3))
    def reset(self, extra: int) -> None:
        self.spool.reset(self.last + extra)
        self.base, self.records = self.last + extra, []

    @rule()
    def sync(self) -> None:
        self.spool.sync()
        assert self.last == self.spool.durable_seq

    @rule()
    def reopen(self) -> None:
        self.spool.close()
        self.spool = Spool(self.directory, max_bytes=1 << 30, segment_bytes=MODEL_SEGMENT)

    @precondition(lambda self: self.last > 0)
    @rule(data=st.data())
    def read(self, data: st.DataObject) -> None:
        from_seq = data.draw(st.integers(max(1, self.base - 2), self.last + 1), label="from")
        max_bytes = data.draw(st.integers(0, 600), label="max_bytes")
        if from_seq <= self.base:
            with pytest.raises(SpoolGap):
                self.spool.read(from_seq, max_bytes)
            return
        got = self.spool.read(from_seq, max_bytes)
        expected = numbered(from_seq, self.records[from_seq - self.base - 1 :])
        assert expected[: len(got)] == got
        assert bool(got) == bool(expected)
        assert len(got) <= 1 or sum(len(r) for _, r in got) <= max_bytes
        if len(got) < len(expected):
            assert sum(len(r) for _, r in expected[: len(got) + 1]) > max_bytes

    @invariant()
    def same_numbers(self) -> None:
        spool = self.spool
        assert (self.base, self.last) == (spool.base_seq, spool.last_seq)
        assert len(self.records) == spool.record_count
        assert spool.size_bytes == sum(p.stat().st_size for p in segments(self.directory))

    @invariant()
    def same_records(self) -> None:
        assert numbered(self.base + 1, self.records) == read_all(self.spool, self.base + 1)

    def teardown(self) -> None:
        self.spool.close()
        shutil.rmtree(self.top)


SpoolModel.TestCase.settings = settings(
    max_examples=30,
    stateful_step_count=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_spool_against_a_list = SpoolModel.TestCase
