"""Compare two directory trees the way an administrator would check a replica."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Any


def snapshot(root: Path | str, *, mtimes: bool = True) -> dict[bytes, tuple[Any, ...]]:
    """Every entry below ``root`` (not the root itself): kind, mode, mtime, and content
    (SHA-256 of a file, target of a link), plus hard-link groups. Never follows symlinks."""
    root_b = os.fsencode(root)
    out: dict[bytes, tuple[Any, ...]] = {}
    inodes: dict[tuple[int, int], bytes] = {}
    for dirpath, dirnames, filenames in os.walk(root_b):
        dirnames.sort()  # a stable walk order, so hard-link groups name the same first path
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, root_b)
            st = os.lstat(full)
            mode = stat.S_IMODE(st.st_mode)
            mtime = st.st_mtime_ns if mtimes else 0
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(full))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", mode, mtime)
            elif stat.S_ISREG(st.st_mode):
                h = hashlib.sha256()
                with open(full, "rb") as f:
                    while chunk := f.read(1 << 20):
                        h.update(chunk)
                first = inodes.setdefault((st.st_dev, st.st_ino), rel) if st.st_nlink > 1 else rel
                out[rel] = ("file", mode, mtime, st.st_size, h.hexdigest(), first)
            else:
                out[rel] = ("special",)
    return out


def assert_trees_equal(master: Path | str, replica: Path | str, *, mtimes: bool = True) -> None:
    a = {k: v for k, v in snapshot(master, mtimes=mtimes).items() if v[0] != "special"}
    b = snapshot(replica, mtimes=mtimes)
    missing = sorted(set(a) - set(b))[:10]
    extra = sorted(set(b) - set(a))[:10]
    differ = sorted(k for k in set(a) & set(b) if a[k] != b[k])[:10]
    details = [(k, a[k], b[k]) for k in differ]
    assert missing == [], f"missing on the replica: {missing}"
    assert extra == [], f"extra on the replica: {extra}"
    assert details == [], f"different on the replica: {details}"
