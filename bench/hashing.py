"""Hashing throughput on this machine, to choose and check the block-sync hashes.

Run: .venv/bin/python bench/hashing.py [--size-mib 1024] [--dir /var/tmp] [--repeat 3]

1. Hash functions over an in-memory buffer of random bytes, block by block, at 4 KiB, 64 KiB
   and 1 MiB blocks: xxh3-128, xxh3-64, BLAKE3 (one thread and its own threads), SHA-256,
   CRC32, and ``standby.blocks.block_digests`` (xxh3-128 plus our per-block Python overhead).
2. ``hash_file`` over a file of ``--size-mib`` (default 1 GiB) with a warm page cache, against a
   plain read loop in the same process (preadv into one reused, page-aligned 4 MiB buffer, like
   ``cat``), the same loop into a plain ``bytearray``, and ``cat FILE > /dev/null`` itself;
   ``hash_file`` with other buffer sizes; then a sparse file of the same size (10 % data).

Absolute numbers are noisy on a shared machine: every variant runs once per round, round robin,
and the best of ``--repeat`` rounds is reported; the ratios are what to compare.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
import subprocess
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import blake3
import xxhash

from standby.blocks import block_digests
from standby.storage.hashing import DEFAULT_BUFFER_SIZE, WritableBuffer, hash_file, new_buffer

MIB = 1024 * 1024
BLOCK_SIZES = (4096, 64 * 1024, MIB)


def per_block(hash_one: Callable[[memoryview], object], view: memoryview, bs: int) -> None:
    for offset in range(0, len(view), bs):
        hash_one(view[offset : offset + bs])


def bench_functions(repeat: int) -> None:
    size = 256 * MIB
    buffer = new_buffer(size)
    buffer.write(os.urandom(size))
    view = memoryview(buffer)
    functions: dict[str, Callable[[memoryview], object]] = {
        "xxh3_128": xxhash.xxh3_128_digest,
        "xxh3_64": xxhash.xxh3_64_digest,
        "blake3 (1 thread)": lambda v: blake3.blake3(v).digest(),
        "blake3 (max_threads)": lambda v: blake3.blake3(v, max_threads=blake3.blake3.AUTO).digest(),
        "sha256": lambda v: hashlib.sha256(v).digest(),
        "crc32": zlib.crc32,
    }
    variants: dict[tuple[str, int], Callable[[], object]] = {}
    for name, function in functions.items():
        for bs in BLOCK_SIZES:
            variants[name, bs] = functools.partial(per_block, function, view, bs)
    for bs in BLOCK_SIZES:
        variants["block_digests (4 MiB calls)", bs] = functools.partial(digest_pieces, view, bs)
    best = dict.fromkeys(variants, float("inf"))
    for _ in range(repeat):  # round robin, best of each
        for key, action in variants.items():
            start = time.perf_counter()
            action()
            best[key] = min(best[key], time.perf_counter() - start)
    print(f"hash functions, GB/s over {size // MIB} MiB in memory (best of {repeat})")
    print(f"{'function':<28}" + "".join(f"{bs // 1024:>9} KiB" for bs in BLOCK_SIZES))
    for name in [*functions, "block_digests (4 MiB calls)"]:
        cells = "".join(f"{size / best[name, bs] / 1e9:>13.1f}" for bs in BLOCK_SIZES)
        print(f"{name:<28}{cells}")


def digest_pieces(view: memoryview, bs: int) -> None:
    """block_digests over buffer-sized pieces, as hash_file calls it."""
    for offset in range(0, len(view), DEFAULT_BUFFER_SIZE):
        block_digests(view[offset : offset + DEFAULT_BUFFER_SIZE], bs)


def read_loop(path: Path, buffer: WritableBuffer) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        view, offset = memoryview(buffer), 0
        while count := os.preadv(fd, [view], offset):
            offset += count
        return offset
    finally:
        os.close(fd)


def hash_path(path: Path, bs: int, buffer: WritableBuffer) -> int:
    fd = os.open(path, os.O_RDONLY)
    try:
        return hash_file(fd, bs, buffer=buffer).bytes_read
    finally:
        os.close(fd)


def cat(path: Path) -> None:
    with open(os.devnull, "wb") as null:
        subprocess.run(["cat", str(path)], stdout=null, check=True)


def bench_files(size: int, directory: str | None, repeat: int) -> None:
    buffer = new_buffer(DEFAULT_BUFFER_SIZE)
    plain = bytearray(DEFAULT_BUFFER_SIZE)  # malloc'd: 16 bytes past a 64-byte boundary
    chunk = os.urandom(64 * MIB)
    with tempfile.TemporaryDirectory(dir=directory) as tmp:
        dense, sparse = Path(tmp) / "dense", Path(tmp) / "sparse"
        with dense.open("wb") as f:
            for _ in range(size // len(chunk)):
                f.write(chunk)
        with sparse.open("wb") as f:  # 10 % data: one 4 MiB extent every 40 MiB
            f.truncate(size)
            for offset in range(0, size, 40 * MIB):
                f.seek(offset)
                f.write(chunk[: 4 * MIB])
        variants: dict[str, Callable[[], object]] = {
            "read loop (preadv, reused buffer)": functools.partial(read_loop, dense, buffer),
            "read loop, plain bytearray buffer": functools.partial(read_loop, dense, plain),
            "cat FILE > /dev/null": functools.partial(cat, dense),
        }
        for bs in BLOCK_SIZES:
            variants[f"hash_file, {bs // 1024} KiB blocks"] = functools.partial(
                hash_path, dense, bs, buffer
            )
        for buffer_size in (256 * 1024, MIB, 8 * MIB, 32 * MIB):
            variants[f"hash_file 64 KiB, {buffer_size // 1024} KiB buffer"] = functools.partial(
                hash_path, dense, 64 * 1024, new_buffer(buffer_size)
            )
        variants["sparse (10 % data): read loop"] = functools.partial(read_loop, sparse, buffer)
        variants["sparse (10 % data): hash_file 64 KiB"] = functools.partial(
            hash_path, sparse, 64 * 1024, buffer
        )
        # Round robin, best of each: a load that comes and goes hits every variant alike.
        best = dict.fromkeys(variants, float("inf"))
        for action in variants.values():
            action()  # warm the page cache and the buffers
        for _ in range(repeat):
            for name, action in variants.items():
                start = time.perf_counter()
                action()
                best[name] = min(best[name], time.perf_counter() - start)
        base = best["read loop (preadv, reused buffer)"]
        gb = size / 1e9
        print(
            f"\nfiles of {size // MIB} MiB, warm page cache, {DEFAULT_BUFFER_SIZE // MIB} MiB buffer unless said (best of {repeat})"
        )
        print(f"{'':<40}{'GB/s':>8}{'time/read':>11}")
        for name, seconds in best.items():
            print(f"{name:<40}{gb / seconds:>8.1f}{seconds / base:>11.2f}")
        read = hash_path(sparse, 64 * 1024, buffer)
        print(f"sparse file: hash_file read {read // MIB} MiB of {size // MIB} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="file size (multiple of 64)")
    parser.add_argument("--dir", default=None, help="where to put the test files")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-functions", action="store_true")
    args = parser.parse_args()
    print(f"cpus: {os.cpu_count()}")
    if not args.skip_functions:
        bench_functions(args.repeat)
    bench_files(args.size_mib * MIB, args.dir, args.repeat)


if __name__ == "__main__":
    main()
