"""The master's small pure helpers, on real sparse files where they read files."""

from __future__ import annotations

import os
from pathlib import Path

from standby.engine.sync_master import _block_extents, _data_runs

BLOCK = 64 * 1024


def _sparse(path: Path, size: int, writes: list[int]) -> int:
    with open(path, "wb") as f:
        f.truncate(size)
        for offset in writes:
            f.seek(offset)
            f.write(b"x" * 100)
    return os.open(path, os.O_RDONLY)


def test_extents_are_whole_blocks_and_never_overlap(tmp_path: Path) -> None:
    """Two data extents inside one block come out as that block once; holes are skipped."""
    fd = _sparse(tmp_path / "f", 40 * BLOCK, [10, BLOCK // 2, 20 * BLOCK + 5, 40 * BLOCK - 50])
    try:
        extents = list(_block_extents(fd, 40 * BLOCK, BLOCK))
    finally:
        os.close(fd)
    # ext4 allocates 4 KiB at a time: the first two writes may be one or two extents.
    assert extents == [(0, BLOCK), (20 * BLOCK, 21 * BLOCK), (39 * BLOCK, 40 * BLOCK)]


def test_extents_of_a_short_last_block(tmp_path: Path) -> None:
    size = 3 * BLOCK + 123
    fd = _sparse(tmp_path / "f", size, [3 * BLOCK + 10])
    try:
        assert list(_block_extents(fd, size, BLOCK)) == [(3 * BLOCK, size)]
    finally:
        os.close(fd)


def test_data_runs_skip_zero_blocks_and_respect_the_limit() -> None:
    assert list(_data_runs(10, [2, 3, 7], 2)) == [(0, 2), (4, 6), (6, 7), (8, 10)]
    assert list(_data_runs(3, [0, 1, 2], 16)) == []
    assert list(_data_runs(5, [], 16)) == [(0, 5)]
