"""Helpers shared by the benchmarks: seeded data sets, page-cache control, copy checks.

Everything that builds data is deterministic for a given seed, so two runs build the same
bytes, and fast enough to write gigabytes in seconds (1 MiB writes, no per-byte Python work).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import random
import shutil
import socket
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30

# Unit of the image layouts and of the sparse extents.
BLOCK = MiB
# Read size when warming the cache or comparing files: large enough that syscalls don't count.
READ_CHUNK = 4 * MiB


class BenchError(Exception):
    """A benchmark step failed; the message says which and why."""


def fmt_size(n: int) -> str:
    """Format a byte count the way the tables show it: 4 GiB, 256 MiB, 12.5 KiB."""
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} B"


# --- seeded data ------------------------------------------------------------------------------


class Noise:
    """Seeded incompressible bytes: an AES-128-CTR keystream (about 7 GB/s on one core)."""

    def __init__(self, seed: int, label: str) -> None:
        key = hashlib.sha256(f"{seed}/{label}".encode()).digest()[:16]
        self._encryptor = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
        self._zeros = bytes(BLOCK)

    def read(self, size: int) -> bytes:
        if size > len(self._zeros):
            self._zeros = bytes(size)
        return self._encryptor.update(memoryview(self._zeros)[:size])


class Text:
    """Seeded text-like bytes: Zipf-distributed pseudo-words in sentences and paragraphs.

    Compresses about 3x with zstd -1, like prose or logs. Blocks are drawn from a pool of
    paragraphs, so building 1 GiB takes seconds, yet no two 1 MiB blocks are alike.
    """

    _LETTERS = "etaoinshrdlcumwfgypbvkjxqz"
    _LETTER_WEIGHTS = (12, 9, 8, 7.5, 7, 6.7, 6.3, 6, 5.9, 4.3, 4, 2.8, 2.8, 2.4, 2.4, 2.2, 2, 2,
                       1.5, 1, 0.8, 0.2, 0.15, 0.1, 0.1, 0.07)  # English letter frequencies
    _WORDS = 5000
    _PARAGRAPHS = 16384

    def __init__(self, seed: int, label: str) -> None:
        self._rng = random.Random(f"{seed}/{label}")
        rng = self._rng
        # cum_weights: choices() would otherwise add up the weights again on every call.
        letter_cum = list(itertools.accumulate(self._LETTER_WEIGHTS))
        words = ["".join(rng.choices(self._LETTERS, cum_weights=letter_cum, k=rng.randint(1, 10)))
                 for _ in range(self._WORDS)]
        word_cum = list(itertools.accumulate(1 / rank for rank in range(1, len(words) + 1)))
        self._paragraphs = []
        for _ in range(self._PARAGRAPHS):
            sentences = []
            for _ in range(rng.randint(2, 6)):
                sentence = " ".join(rng.choices(words, cum_weights=word_cum, k=rng.randint(4, 18)))
                sentences.append(sentence.capitalize() + ".")
            self._paragraphs.append((" ".join(sentences) + "\n").encode())
        self._mean = sum(map(len, self._paragraphs)) / len(self._paragraphs)

    def read(self, size: int) -> bytes:
        out = b""
        while len(out) < size:
            count = int((size - len(out)) / self._mean * 1.1) + 1
            out += b"".join(self._rng.choices(self._paragraphs, k=count))
        return out[:size]


def _write_all(fd: int, data: bytes | memoryview, offset: int | None = None) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view) if offset is None else os.pwrite(fd, view, offset)
        view = view[n:]
        if offset is not None:
            offset += n


def _create(path: Path) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)


def write_image(path: Path, size: int, seed: int) -> None:
    """Write a VM-like image of 1 MiB blocks, shuffled with a fixed seed.

    Half the blocks are all zeros (written as real zeros, not holes), a quarter text-like,
    a quarter random.
    """
    blocks = size // BLOCK
    kinds = ["text"] * (blocks // 4) + ["random"] * (blocks // 4)
    kinds += ["zero"] * (blocks - len(kinds))
    random.Random(f"{seed}/image-layout").shuffle(kinds)
    noise, text, zero = Noise(seed, "image"), Text(seed, "image"), bytes(BLOCK)
    fd = _create(path)
    try:
        for kind in kinds:
            _write_all(fd, zero if kind == "zero" else
                       text.read(BLOCK) if kind == "text" else noise.read(BLOCK))
    finally:
        os.close(fd)


def write_sparse(path: Path, size: int, fraction: float, seed: int) -> None:
    """Write a sparse file of ``size`` bytes with ``fraction`` of it in random 1 MiB extents."""
    blocks = size // BLOCK
    chosen = random.Random(f"{seed}/sparse").sample(range(blocks), round(blocks * fraction))
    noise = Noise(seed, "sparse")
    fd = _create(path)
    try:
        os.ftruncate(fd, size)
        for block in sorted(chosen):
            _write_all(fd, noise.read(BLOCK), block * BLOCK)
    finally:
        os.close(fd)


def change_blocks(path: Path, fraction: float, seed: int, write_size: int = 4 * KiB) -> int:
    """Write ``write_size`` random bytes at a random offset inside ``fraction`` of the blocks.

    Returns:
        The number of blocks changed (at least one).
    """
    blocks = path.stat().st_size // BLOCK
    rng = random.Random(f"{seed}/change")
    chosen = sorted(rng.sample(range(blocks), max(1, round(blocks * fraction))))
    noise = Noise(seed, "change")
    fd = os.open(path, os.O_WRONLY)
    try:
        for block in chosen:
            offset = block * BLOCK + rng.randrange(BLOCK - write_size + 1)
            _write_all(fd, noise.read(write_size), offset)
    finally:
        os.close(fd)
    return len(chosen)


def write_tree(root: Path, files: int, dirs: int, max_size: int, seed: int) -> int:
    """Write ``files`` files of 0..max_size bytes into ``dirs`` directories, two levels deep.

    Contents are slices of a seeded pool, half random and half text-like.

    Returns:
        The total size of the files in bytes.
    """
    rng = random.Random(f"{seed}/tree")
    pool = memoryview(Noise(seed, "tree").read(8 * MiB) + Text(seed, "tree").read(8 * MiB))
    per_top = 100
    dir_paths = [root / f"d{d // per_top:02d}" / f"d{d:04d}" for d in range(dirs)]
    for path in dir_paths:
        path.mkdir(parents=True, exist_ok=True)
    total = 0
    for i in range(files):
        size = rng.randint(0, max_size)
        offset = rng.randrange(len(pool) - size + 1)
        fd = os.open(dir_paths[i % dirs] / f"f{i:06d}", os.O_WRONLY | os.O_CREAT | os.O_EXCL,
                     0o644)
        try:
            _write_all(fd, pool[offset:offset + size])
        finally:
            os.close(fd)
        total += size
    return total


# --- files and trees --------------------------------------------------------------------------


def clear_dir(path: Path) -> None:
    """Make ``path`` an empty directory, keeping the directory itself if it exists."""
    path.mkdir(parents=True, exist_ok=True)
    for child in path.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def copy_contents(src: Path, dst: Path) -> None:
    """Make ``dst`` a copy of directory ``src``: contents, modes and times; zeros become holes."""
    clear_dir(dst)
    subprocess.run(["cp", "-a", "--sparse=always", f"{src}/.", f"{dst}/"], check=True)


def _walk(root: Path) -> Iterator[Path]:
    """Yield every path under ``root`` (not ``root`` itself), relative to it, sorted."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        base = Path(dirpath).relative_to(root)
        for name in sorted(dirnames + filenames):
            yield base / name


def _read_full(fd: int, buf: bytearray) -> int:
    """Fill ``buf`` from ``fd``; return the byte count, short only at end of file."""
    view, filled = memoryview(buf), 0
    while filled < len(buf):
        n = os.readv(fd, [view[filled:]])
        if n == 0:
            break
        filled += n
    return filled


def warm(root: Path) -> None:
    """Read every file under ``root`` so that its metadata and data are in the page cache."""
    buf = bytearray(READ_CHUNK)
    for rel in _walk(root):
        path = root / rel
        if path.is_file() and not path.is_symlink():
            fd = os.open(path, os.O_RDONLY)
            try:
                while _read_full(fd, buf) == len(buf):
                    pass
            finally:
                os.close(fd)


def _same_bytes(a: Path, b: Path, buf_a: bytearray, buf_b: bytearray) -> bool:
    fd_a, fd_b = os.open(a, os.O_RDONLY), os.open(b, os.O_RDONLY)
    try:
        while True:
            n_a, n_b = _read_full(fd_a, buf_a), _read_full(fd_b, buf_b)
            if n_a != n_b:
                return False
            if n_a < len(buf_a):  # last chunk: compare the filled part only
                return buf_a[:n_a] == buf_b[:n_b]
            if buf_a != buf_b:  # bytearray == is a memcmp; memoryview == is 70x slower
                return False
    finally:
        os.close(fd_a)
        os.close(fd_b)


def tree_differences(master: Path, replica: Path, limit: int = 5) -> list[str]:
    """Compare two trees: the same paths, file types, permission bits, sizes and bytes.

    Modification times are not compared: they are a property of the tool's options, not of
    a correct copy.

    Returns:
        Up to ``limit`` differences, in words; empty when the replica equals the master.
    """
    problems: list[str] = []
    a_paths, b_paths = set(_walk(master)), set(_walk(replica))
    for rel in sorted(a_paths ^ b_paths)[:limit]:
        problems.append(f"{rel}: only in {'master' if rel in a_paths else 'replica'}")
    buf_a, buf_b = bytearray(READ_CHUNK), bytearray(READ_CHUNK)
    for rel in sorted(a_paths & b_paths):
        if len(problems) >= limit:
            break
        a, b = os.lstat(master / rel), os.lstat(replica / rel)
        if stat.S_IFMT(a.st_mode) != stat.S_IFMT(b.st_mode):
            problems.append(f"{rel}: file type differs")
        elif stat.S_IMODE(a.st_mode) != stat.S_IMODE(b.st_mode):
            problems.append(f"{rel}: mode {a.st_mode:o} != {b.st_mode:o}")
        elif stat.S_ISREG(a.st_mode) and a.st_size != b.st_size:
            problems.append(f"{rel}: size {a.st_size} != {b.st_size}")
        elif stat.S_ISREG(a.st_mode) and not _same_bytes(master / rel, replica / rel, buf_a, buf_b):
            problems.append(f"{rel}: content differs")
        elif stat.S_ISLNK(a.st_mode) and os.readlink(master / rel) != os.readlink(replica / rel):
            problems.append(f"{rel}: symlink target differs")
    return problems[:limit]


def allocated(root: Path) -> int:
    """Bytes allocated on disk by the files under ``root`` (holes excluded)."""
    return sum(os.lstat(root / rel).st_blocks * 512 for rel in _walk(root))


# --- page cache -------------------------------------------------------------------------------


def drop_caches() -> bool:
    """Write back dirty pages and empty the page cache; False when not allowed (not root)."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        return False
    return True


# --- processes and ports ----------------------------------------------------------------------


def free_loopback_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the kernel's choice)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until(ready: Callable[[], bool], alive: Callable[[], bool], timeout: float,
               what: str) -> None:
    """Poll ``ready`` every 50 ms until it is true; fail if ``alive`` turns false or on timeout."""
    deadline = time.monotonic() + timeout
    while not ready():
        if not alive():
            raise BenchError(f"{what}: the process exited")
        if time.monotonic() > deadline:
            raise BenchError(f"{what}: not ready after {timeout:.0f} s")
        time.sleep(0.05)


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def stop_process(proc: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return f"({path} unreadable)"
