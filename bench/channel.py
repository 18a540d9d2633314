"""Throughput of SecureChannel between two processes on loopback, against the references.

Moves the same amount of data (2 GiB by default) from one process to another three ways, in
the same run so the ratios are meaningful on a noisy machine:

- ``tcp``: a raw TCP socket (sendall / recv_into): the ceiling.
- ``ssl-socket``: a blocking ``ssl.SSLSocket`` with the same certificates and TLS 1.3: the
  reference we measured at 1.4 GB/s, and what SecureChannel must approach.
- ``channel``: ``SecureChannel`` (memory BIOs + lock, so one thread can send while another
  receives).

The sender sends 1 MiB buffers; the receiver counts bytes and answers one byte at the end, so
each figure is end to end (first byte sent -> last byte received). Modes are interleaved
(tcp, ssl-socket, channel, tcp, ...) and the best run of each is kept, so that load from other
processes on a shared machine hits all modes alike. CPU seconds per GB (user + system, sender
and receiver) are printed too: they are much less sensitive to such load than GB/s. Run:

    .venv/bin/python bench/channel.py [--gib 2] [--repeat 3] [--only channel]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import resource
import socket
import ssl
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path

from standby.engine.channel import accept, connect
from standby.engine.identity import Identity

BLOCK = 1 << 20
TIMEOUT = 30.0
MODES = ("tcp", "ssl-socket", "channel")


def _identities(home: Path) -> tuple[Identity, Identity]:
    return (
        Identity.load_or_create(home / "server", "bench-server"),
        Identity.load_or_create(home / "client", "bench-client"),
    )


def _ssl_contexts(server: Identity, client: Identity) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """The same TLS settings as channel.py, for the plain ssl.SSLSocket reference."""
    sctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    sctx.minimum_version = ssl.TLSVersion.TLSv1_3
    sctx.load_cert_chain(server.cert_path, server.key_path)
    sctx.verify_mode = ssl.CERT_REQUIRED
    sctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    sctx.load_verify_locations(cadata=client.cert_der)
    cctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    cctx.minimum_version = ssl.TLSVersion.TLSv1_3
    cctx.check_hostname = False
    cctx.verify_mode = ssl.CERT_NONE
    cctx.load_cert_chain(client.cert_path, client.key_path)
    return sctx, cctx


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _receiver(mode: str, home: str, total: int, ready: Connection) -> None:
    """Child process: accept one connection, receive ``total`` bytes, answer b"k"."""
    server, client = _identities(Path(home))
    listener = socket.create_server(("127.0.0.1", 0))
    ready.send(listener.getsockname()[1])
    sock, _ = listener.accept()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(TIMEOUT)
    received = 0
    cpu = _cpu_seconds()
    if mode == "channel":
        channel = accept(sock, server, [client.cert_der], TIMEOUT)
        while received < total:
            received += len(channel.recv(BLOCK))
        channel.send([b"k"])
        channel.recv(1)  # wait for the sender's close
        channel.close()
    else:
        buffer = bytearray(BLOCK)
        stream: socket.socket = sock
        if mode == "ssl-socket":
            stream = _ssl_contexts(server, client)[0].wrap_socket(sock, server_side=True)
        while received < total:
            received += stream.recv_into(buffer)
        stream.sendall(b"k")
        stream.recv(1)
        stream.close()
    ready.send((received, _cpu_seconds() - cpu))


def _send(mode: str, home: Path, port: int, total: int) -> tuple[float, float]:
    """Send ``total`` bytes; return seconds from the first byte to the receiver's answer, and
    the CPU seconds this process spent meanwhile."""
    server, client = _identities(home)
    payload = memoryview(os.urandom(BLOCK))
    write: Callable[[memoryview], object]
    read: Callable[[int], bytes]
    close: Callable[[], None]
    if mode == "channel":
        channel = connect(
            ("127.0.0.1", port), client, expected_fingerprint=server.fingerprint, timeout=TIMEOUT
        )
        write, read, close = (lambda view: channel.send([view])), channel.recv, channel.close
    else:
        stream = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if mode == "ssl-socket":
            stream = _ssl_contexts(server, client)[1].wrap_socket(stream)
        write, read, close = stream.sendall, (lambda n: stream.recv(n)), stream.close
    start, cpu = time.perf_counter(), _cpu_seconds()
    for _ in range(total // BLOCK):
        write(payload)
    if read(1) != b"k":
        raise RuntimeError("receiver did not confirm")
    elapsed, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    close()
    return elapsed, cpu


def run(mode: str, home: Path, total: int) -> tuple[float, float, float]:
    """One transfer in ``mode``; returns GB/s (10**9 bytes per second) and the sender's and
    receiver's CPU seconds per GB."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_receiver, args=(mode, str(home), total, child))
    proc.start()
    try:
        port = parent.recv()
        elapsed, send_cpu = _send(mode, home, port, total)
        received, recv_cpu = parent.recv()
        if received != total:
            raise RuntimeError(f"{mode}: receiver counted {received} bytes, not {total}")
    finally:
        proc.join(TIMEOUT)
    gigabytes = total / 1e9
    return gigabytes / elapsed, send_cpu / gigabytes, recv_cpu / gigabytes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=2.0, help="data per transfer, GiB")
    parser.add_argument("--repeat", type=int, default=3, help="transfers per mode; best is kept")
    parser.add_argument("--only", choices=MODES, action="append", help="run only these modes")
    args = parser.parse_args()
    total = int(args.gib * (1 << 30)) // BLOCK * BLOCK
    modes = args.only or list(MODES)
    with tempfile.TemporaryDirectory(prefix="bench-channel-") as tmp:
        home = Path(tmp)
        _identities(home)  # create once, before the processes race to
        runs: dict[str, list[tuple[float, float, float]]] = {mode: [] for mode in modes}
        for _ in range(args.repeat):
            for mode in modes:
                runs[mode].append(run(mode, home, total))
        best: dict[str, float] = {}
        print(f"{total / (1 << 30):g} GiB per transfer, best of {args.repeat}")
        for mode in modes:
            rate, send_cpu, recv_cpu = max(runs[mode])
            best[mode] = rate
            shown = " ".join(f"{r[0]:.2f}" for r in runs[mode])
            print(
                f"{mode:>11}: {rate:.2f} GB/s (runs: {shown}); CPU s/GB: "
                f"sender {send_cpu:.2f}, receiver {recv_cpu:.2f}",
                flush=True,
            )
    if "channel" in best:
        for reference in ("tcp", "ssl-socket"):
            if reference in best:
                print(f"channel / {reference}: {best['channel'] / best[reference]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
