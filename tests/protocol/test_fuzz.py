"""Fuzzing the receiving side of an OPEN connection.

Invariant: any byte string fed after a valid handshake either parses into messages or raises
RemoteProtocolError; nothing else escapes, and how the bytes are split into chunks changes
neither the messages nor the outcome.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from standby.protocol import (
    MESSAGE_TYPES,
    PEER_CLOSED,
    BlockData,
    Connection,
    Message,
    RemoteProtocolError,
    Remove,
    Role,
    State,
    SyncEnd,
)
from tests.strategies import plain_data, session_messages

from .helpers import drain, feed, open_pair, raw_frame, wire

Outcome = tuple[list[Message | type[PEER_CLOSED]], str | None]


def receive(data: bytes, chunk_size: int) -> Outcome:
    """Feed ``data`` to an OPEN acceptor in chunks, then end of stream.

    Returns:
        The events received, and the RemoteProtocolError message that ended them (or None).
        Any other exception propagates and fails the test.
    """
    acceptor: Connection = open_pair().acceptor
    events: list[Message | type[PEER_CLOSED]] = []
    try:
        events += feed(acceptor, data, chunk_size)
        acceptor.receive_data(b"")
        events += drain(acceptor)
    except RemoteProtocolError as exc:
        assert State.ERROR is acceptor.state
        return events, str(exc)
    expected = PEER_CLOSED
    assert expected is events[-1]
    return events, None


def check_invariant(data: bytes, chunk_size: int) -> Outcome:
    """Whole, chunked and byte-by-byte feeding give the same outcome; return it."""
    whole = receive(data, max(len(data), 1))
    expected = [whole, whole]
    assert expected == [receive(data, chunk_size), receive(data, 1)]
    return whole


chunk_sizes = st.integers(min_value=1, max_value=64)


@settings(max_examples=300)
@given(data=st.binary(max_size=600), chunk_size=chunk_sizes)
def test_random_bytes(data: bytes, chunk_size: int) -> None:
    """Random bytes: nearly always a bad magic, sometimes a truncated header."""
    check_invariant(data, chunk_size)


@st.composite
def mutated_streams(draw: st.DrawFn) -> bytes:
    """A valid stream of initiator messages with one byte flipped, cut, or bytes inserted."""
    data = bytearray(wire(*draw(st.lists(session_messages(Role.INITIATOR), max_size=4))))
    position = draw(st.integers(min_value=0, max_value=len(data)))
    action = draw(st.sampled_from(["flip", "cut", "insert", "keep"]))
    if action == "flip" and position < len(data):
        data[position] ^= 1 << draw(st.integers(min_value=0, max_value=7))
    elif action == "cut":
        del data[position:]
    elif action == "insert":
        data[position:position] = draw(st.binary(min_size=1, max_size=24))
    return bytes(data)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(data=mutated_streams(), chunk_size=chunk_sizes)
def test_mutated_valid_streams(data: bytes, chunk_size: int) -> None:
    """Damaged valid streams: the intact frames before the damage still come through."""
    check_invariant(data, chunk_size)


msgpack_values: st.SearchStrategy[Any] = st.recursive(
    plain_data
    | st.builds(msgpack.ExtType, st.integers(min_value=0, max_value=127), st.binary(max_size=8))
    | st.builds(
        msgpack.Timestamp,
        st.integers(min_value=0, max_value=2**34),
        st.integers(min_value=0, max_value=999_999_999),
    ),
    lambda children: st.lists(children, max_size=7),
    max_leaves=20,
)


# Values shaped like fields: right types mostly, edge values often, wrong types sometimes.
field_values: st.SearchStrategy[Any] = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.integers(min_value=0, max_value=4096),
    st.booleans(),
    st.none(),
    st.binary(max_size=40),
    st.text(max_size=10),
    st.lists(st.integers(min_value=-1, max_value=2**64 - 1), max_size=3),
    st.lists(
        st.tuples(
            st.binary(max_size=4) | st.text(max_size=2),
            st.integers(min_value=-1, max_value=5) | st.booleans(),
            st.integers(min_value=-1, max_value=2**64 - 1),
            st.integers(min_value=-(2**63), max_value=2**63),
            st.integers(min_value=0, max_value=0o7777),
            st.binary(max_size=4),
        ).map(list)
        | st.lists(st.integers(min_value=-1, max_value=9), max_size=7),
        max_size=3,
    ),
    st.dictionaries(st.text(max_size=4), msgpack_values, max_size=3),
    msgpack_values,
)


def meta_field_count(cls: type[Message]) -> int:
    return sum(1 for f in dataclasses.fields(cls) if f.name != "payload")


@st.composite
def frames_with_good_checksums(draw: st.DrawFn) -> bytes:
    """Frames that pass the checksum but carry arbitrary metadata, often of the right shape.

    These reach the field decoding and the messages' own validation, which random bytes
    rarely do.
    """
    if draw(st.integers(min_value=0, max_value=9)):
        type_ = draw(st.sampled_from(sorted(MESSAGE_TYPES)))
    else:
        type_ = draw(st.integers(min_value=0, max_value=255))
    cls = MESSAGE_TYPES.get(type_)
    shape = draw(st.sampled_from(["fields", "fields", "fields", "msgpack", "bytes"]))
    if shape == "fields" and cls is not None:
        count = max(0, meta_field_count(cls) + draw(st.sampled_from([0, 0, 0, -1, 1])))
        meta = msgpack.packb(draw(st.lists(field_values, min_size=count, max_size=count)))
    elif shape == "bytes":
        meta = draw(st.binary(max_size=40))
    else:
        meta = msgpack.packb(draw(msgpack_values))
    payload = draw(st.binary(min_size=1, max_size=64)) if type_ == BlockData.TYPE else b""
    if draw(st.integers(min_value=0, max_value=9)) == 0:
        payload = draw(st.binary(max_size=8))  # now and then, a payload where none belongs
    return raw_frame(type_, meta, payload)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    frames=st.lists(frames_with_good_checksums(), min_size=1, max_size=3), chunk_size=chunk_sizes
)
def test_frames_with_arbitrary_metadata(frames: list[bytes], chunk_size: int) -> None:
    """Well-framed garbage is refused by decoding and validation, never by a stray exception."""
    check_invariant(b"".join(frames), chunk_size)


def test_the_harness_sees_valid_messages() -> None:
    """The harness returns the messages of a valid stream and ends with PEER_CLOSED."""
    msgs: list[Message] = [Remove(path=b"p"), SyncEnd(), Remove(path=b"q")]

    events, error = check_invariant(wire(*msgs), 3)

    expected: Outcome = ([*msgs, PEER_CLOSED], None)
    assert expected == (events, error)


def test_the_harness_reports_errors() -> None:
    """The harness reports a RemoteProtocolError as the outcome, after the messages before it."""
    events, error = check_invariant(b"XX" + bytes(30), 5)

    expected: Outcome = ([], "bad frame magic b'XX', expected b'SB'")
    assert expected == (events, error)
