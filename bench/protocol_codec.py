"""Throughput of the wire protocol codec: send + receive through a pair of Connections.

For each case, one iteration is ``initiator.send(msg)`` then ``acceptor.receive_data(piece)``
for every piece and ``acceptor.next_event()``: encoding, checksum both ways, buffering and
decoding, as the engine does them, without sockets. The reference is a plain ``bytes`` copy
of the same frame in the same process, so the ratio says how close to memory speed the codec
runs whatever the machine.

Usage: .venv/bin/python bench/protocol_codec.py [--seconds 1.0]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

from standby.protocol import (
    BLOCK_DIGEST_SIZE,
    BlockData,
    Connection,
    Entries,
    Entry,
    EntryKind,
    Hello,
    Message,
    Role,
    Welcome,
)


def open_pair() -> tuple[Connection, Connection]:
    """An initiator and an acceptor that went through the handshake."""
    initiator, acceptor = Connection(Role.INITIATOR), Connection(Role.ACCEPTOR)
    transfer(initiator, acceptor, Hello(version_min=1, version_max=1, engine="a", purpose="sync"))
    transfer(acceptor, initiator, Welcome(version=acceptor.choose_version(), engine="b"))
    return initiator, acceptor


def transfer(sender: Connection, receiver: Connection, msg: Message) -> None:
    for piece in sender.send(msg):
        receiver.receive_data(piece)
    event = receiver.next_event()
    assert type(event) is type(msg), event  # equality is checked once, in bench()


def rate(fn: Callable[[], object], seconds: float) -> float:
    """Iterations per second of ``fn``, best of five rounds of about ``seconds / 5`` each."""
    fn()  # warm up (allocations, caches)
    best = 0.0
    for _ in range(5):
        n, start = 0, time.perf_counter()
        deadline = start + seconds / 5
        while (now := time.perf_counter()) < deadline or n == 0:
            fn()
            n += 1
        best = max(best, n / (now - start))
    return best


def block_data(size: int) -> BlockData:
    blocks = max(1, size // 4096)
    return BlockData(
        file_id=7,
        offset=1 << 30,
        digests=os.urandom(BLOCK_DIGEST_SIZE * blocks),
        payload=os.urandom(size),
    )


def entries(count: int) -> Entries:
    return Entries(
        entries=tuple(
            Entry(
                path=b"var/lib/app/data/%08d.bin" % n,
                kind=EntryKind.FILE,
                size=n * 4096,
                mtime_ns=1_700_000_000_000_000_000 + n,
                mode=0o644,
            )
            for n in range(count)
        )
    )


def bench(
    name: str, sender: Connection, receiver: Connection, msg: Message, seconds: float
) -> None:
    wire = b"".join(sender.send(msg))  # one frame, to size the copy reference
    receiver.receive_data(wire)
    assert receiver.next_event() == msg
    codec = rate(lambda: transfer(sender, receiver, msg), seconds) * len(wire)
    view = memoryview(wire)
    copy = rate(lambda: bytes(view), seconds) * len(wire)
    print(
        f"{name:<24} {len(wire) / 1024:>9.1f} KiB/frame  codec {codec / 1e6:>9.0f} MB/s"
        f"  bytes copy {copy / 1e6:>9.0f} MB/s  ratio {codec / copy:.3f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="measuring time per case")
    args = parser.parse_args()
    initiator, acceptor = open_pair()
    bench("BlockData 64 KiB", initiator, acceptor, block_data(64 * 1024), args.seconds)
    bench("BlockData 1 MiB", initiator, acceptor, block_data(1024 * 1024), args.seconds)
    listing = entries(1000)
    bench("Entries x1000", acceptor, initiator, listing, args.seconds)
    per_s = rate(lambda: transfer(acceptor, initiator, listing), args.seconds) * 1000
    print(f"{'Entries x1000':<24} {per_s / 1e6:.2f} M entries/s")


if __name__ == "__main__":
    main()
