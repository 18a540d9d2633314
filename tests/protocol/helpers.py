"""Helpers for the protocol tests: raw frame builders and an in-memory connection pair."""

from __future__ import annotations

from typing import Any

import msgpack
import xxhash

from standby.protocol import (
    HEADER,
    MAGIC,
    NEED_DATA,
    PEER_CLOSED,
    PROTOCOL_VERSION_MAX,
    PROTOCOL_VERSION_MIN,
    PURPOSE_SYNC,
    Connection,
    Hello,
    Message,
    Role,
    Welcome,
    encode,
)

HELLO = Hello(
    version_min=PROTOCOL_VERSION_MIN,
    version_max=PROTOCOL_VERSION_MAX,
    engine="engine-a",
    purpose="sync",
)
WELCOME = Welcome(version=PROTOCOL_VERSION_MAX, engine="engine-b")


def wire(*msgs: Message) -> bytes:
    """The frames of ``msgs``, joined, as a peer would write them."""
    return b"".join(piece for msg in msgs for piece in encode(msg))


def raw_frame(
    type_: int,
    meta: bytes,
    payload: bytes = b"",
    *,
    magic: bytes = MAGIC,
    flags: int = 0,
    meta_len: int | None = None,
    payload_len: int | None = None,
    checksum: int | None = None,
) -> bytes:
    """A frame built by hand; every header field can be wrong on purpose.

    The checksum defaults to the right one, so a test reaches the check it means to.
    """
    if checksum is None:
        checksum = xxhash.xxh3_64_intdigest(meta + payload)
    header = HEADER.pack(
        magic,
        type_,
        flags,
        len(meta) if meta_len is None else meta_len,
        len(payload) if payload_len is None else payload_len,
        checksum,
    )
    return header + meta + payload


def meta_frame(type_: int, fields: Any, payload: bytes = b"") -> bytes:
    """A frame whose metadata is ``fields`` packed as msgpack, with a correct checksum."""
    return raw_frame(type_, msgpack.packb(fields, use_bin_type=True), payload)


def drain(conn: Connection) -> list[Message | type[PEER_CLOSED]]:
    """Call next_event until NEED_DATA or PEER_CLOSED; return what came (PEER_CLOSED included)."""
    events: list[Message | type[PEER_CLOSED]] = []
    while True:
        event = conn.next_event()
        if event is NEED_DATA:
            return events
        if event is PEER_CLOSED:
            events.append(PEER_CLOSED)
            return events
        assert isinstance(event, Message)
        events.append(event)


def feed(conn: Connection, data: bytes, chunk_size: int) -> list[Message | type[PEER_CLOSED]]:
    """Feed ``data`` in chunks of ``chunk_size`` bytes, draining events after each chunk."""
    events: list[Message | type[PEER_CLOSED]] = []
    for start in range(0, len(data), chunk_size):
        conn.receive_data(data[start : start + chunk_size])
        events += drain(conn)
    return events


class ConnectionPair:
    """An initiator and an acceptor wired back to back, without sockets (after h11's)."""

    def __init__(self) -> None:
        self.initiator = Connection(Role.INITIATOR)
        self.acceptor = Connection(Role.ACCEPTOR)

    def peer_of(self, conn: Connection) -> Connection:
        return self.acceptor if conn is self.initiator else self.initiator

    def send(self, sender: Connection, msg: Message) -> list[Message | type[PEER_CLOSED]]:
        """Send ``msg`` from ``sender``; return the events the other side gets from it."""
        receiver = self.peer_of(sender)
        for piece in sender.send(msg):
            receiver.receive_data(piece)
        return drain(receiver)

    def handshake(self, purpose: str = PURPOSE_SYNC) -> ConnectionPair:
        """Hello for ``purpose``, then Welcome with the version the acceptor chose: both sides
        are OPEN."""
        hello = Hello(
            version_min=HELLO.version_min,
            version_max=HELLO.version_max,
            engine=HELLO.engine,
            purpose=purpose,
        )
        expected = [hello]
        assert expected == self.send(self.initiator, hello)
        welcome = Welcome(version=self.acceptor.choose_version(), engine=WELCOME.engine)
        assert [welcome] == self.send(self.acceptor, welcome)
        return self


def open_pair(purpose: str = PURPOSE_SYNC) -> ConnectionPair:
    """A pair that went through the handshake, for a session of ``purpose``."""
    return ConnectionPair().handshake(purpose)
