"""Fuzzing the receiving side of an OPEN connection, and the payload of a Batch.

Invariant: any byte string fed after a valid handshake, for a session of any purpose, either
parses into messages or raises RemoteProtocolError; nothing else escapes, and how the bytes
are split into chunks changes neither the messages nor the outcome. Likewise any Batch a peer
can send either gives its records (decompressed when compressed, then decoded) or raises
RemoteProtocolError.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import msgpack
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from standby.protocol import (
    MESSAGE_TYPES,
    PEER_CLOSED,
    PURPOSE_REPLICATE,
    PURPOSE_SYNC,
    RECORD_TYPES,
    Batch,
    Connection,
    Message,
    Record,
    RemoteProtocolError,
    Remove,
    Role,
    State,
    SyncEnd,
    compress_batch,
    decode,
    decode_records,
    decompress_batch,
    encode_records,
)
from tests.strategies import plain_data, records, session_messages

from .helpers import drain, feed, open_pair, raw_frame, wire

Outcome = tuple[list[Message | type[PEER_CLOSED]], str | None]

purposes = st.sampled_from([PURPOSE_SYNC, PURPOSE_REPLICATE])


def receive(data: bytes, chunk_size: int, purpose: str = PURPOSE_SYNC) -> Outcome:
    """Feed ``data`` to an OPEN acceptor of a ``purpose`` session in chunks, then end of stream.

    Returns:
        The events received, and the RemoteProtocolError message that ended them (or None).
        Any other exception propagates and fails the test.
    """
    acceptor: Connection = open_pair(purpose).acceptor
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


def check_invariant(data: bytes, chunk_size: int, purpose: str = PURPOSE_SYNC) -> Outcome:
    """Whole, chunked and byte-by-byte feeding give the same outcome; return it."""
    whole = receive(data, max(len(data), 1), purpose)
    expected = [whole, whole]
    assert expected == [receive(data, chunk_size, purpose), receive(data, 1, purpose)]
    return whole


chunk_sizes = st.integers(min_value=1, max_value=64)


@settings(max_examples=300)
@given(data=st.binary(max_size=600), chunk_size=chunk_sizes)
def test_random_bytes(data: bytes, chunk_size: int) -> None:
    """Random bytes: nearly always a bad magic, sometimes a truncated header."""
    check_invariant(data, chunk_size)


def mutate(draw: st.DrawFn, data: bytearray) -> bytes:
    """``data`` with one bit flipped, cut, bytes inserted, or kept as it is."""
    position = draw(st.integers(min_value=0, max_value=len(data)))
    action = draw(st.sampled_from(["flip", "cut", "insert", "keep"]))
    if action == "flip" and position < len(data):
        data[position] ^= 1 << draw(st.integers(min_value=0, max_value=7))
    elif action == "cut":
        del data[position:]
    elif action == "insert":
        data[position:position] = draw(st.binary(min_size=1, max_size=24))
    return bytes(data)


@st.composite
def mutated_streams(draw: st.DrawFn) -> tuple[str, bytes]:
    """A session's purpose, and a valid stream of initiator messages for it, mutated."""
    purpose = draw(purposes)
    msgs = draw(st.lists(session_messages(Role.INITIATOR, purpose), max_size=4))
    return purpose, mutate(draw, bytearray(wire(*msgs)))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(stream=mutated_streams(), chunk_size=chunk_sizes)
def test_mutated_valid_streams(stream: tuple[str, bytes], chunk_size: int) -> None:
    """Damaged valid streams: the intact frames before the damage still come through."""
    purpose, data = stream
    check_invariant(data, chunk_size, purpose)


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
    st.floats(),
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


# Records too: a record frame may come where only session messages belong.
ALL_TYPES: dict[int, type[Message]] = {**MESSAGE_TYPES, **RECORD_TYPES}
WITH_PAYLOAD = {t for t, cls in ALL_TYPES.items() if "payload" in cls.__dataclass_fields__}


def meta_field_count(cls: type[Message]) -> int:
    return sum(1 for f in dataclasses.fields(cls) if f.name != "payload")


@st.composite
def frames_with_good_checksums(draw: st.DrawFn) -> bytes:
    """Frames that pass the checksum but carry arbitrary metadata, often of the right shape.

    These reach the field decoding and the messages' own validation, which random bytes
    rarely do.
    """
    if draw(st.integers(min_value=0, max_value=9)):
        type_ = draw(st.sampled_from(sorted(ALL_TYPES)))
    else:
        type_ = draw(st.integers(min_value=0, max_value=255))
    cls = ALL_TYPES.get(type_)
    shape = draw(st.sampled_from(["fields", "fields", "fields", "msgpack", "bytes"]))
    if shape == "fields" and cls is not None:
        count = max(0, meta_field_count(cls) + draw(st.sampled_from([0, 0, 0, -1, 1])))
        meta = msgpack.packb(draw(st.lists(field_values, min_size=count, max_size=count)))
    elif shape == "bytes":
        meta = draw(st.binary(max_size=40))
    else:
        meta = msgpack.packb(draw(msgpack_values))
    payload = draw(st.binary(min_size=1, max_size=64)) if type_ in WITH_PAYLOAD else b""
    if draw(st.integers(min_value=0, max_value=9)) == 0:
        payload = draw(st.binary(max_size=8))  # now and then, a payload where none belongs
    return raw_frame(type_, meta, payload)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    frames=st.lists(frames_with_good_checksums(), min_size=1, max_size=3),
    chunk_size=chunk_sizes,
    purpose=purposes,
)
def test_frames_with_arbitrary_metadata(frames: list[bytes], chunk_size: int, purpose: str) -> None:
    """Well-framed garbage is refused by decoding and validation, never by a stray exception."""
    check_invariant(b"".join(frames), chunk_size, purpose)


# --- the payload of a Batch ---------------------------------------------------------------------


def unpack(batch: Batch) -> list[Message]:
    """What a replica does with a Batch: decompress when compressed, then decode the records."""
    raw = decompress_batch(batch.payload, batch.raw_size) if batch.compressed else batch.payload
    return decode_records(raw, batch.count)


@st.composite
def damaged_batches(draw: st.DrawFn) -> tuple[list[Record], Batch, bool]:
    """Valid records packed as a sender would (compressed when it pays), then maybe damaged
    inside the payload, or given a count or raw_size off by one: a Batch that passes the frame
    checksum, as a faulty or hostile sender could build it. The flag tells if it was damaged.
    """
    batch = draw(st.lists(records, min_size=1, max_size=6))
    raw = encode_records(batch)
    compressed = compress_batch(raw) if draw(st.booleans()) else None
    packed = raw if compressed is None else compressed
    payload = mutate(draw, bytearray(packed))
    count = max(1, len(batch) + draw(st.sampled_from([0, 0, 0, -1, 1])))
    raw_size = len(raw) + draw(st.sampled_from([0, 0, 0, -1, 1]))
    if compressed is None:
        raw_size = len(payload)  # what a Batch requires of an uncompressed payload
    assume(payload and raw_size >= count)
    damaged = (payload, count, raw_size) != (packed, len(batch), len(raw))
    message = Batch(
        first_seq=1,
        count=count,
        compressed=compressed is not None,
        raw_size=raw_size,
        payload=payload,
    )
    return batch, message, damaged


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(case=damaged_batches())
def test_damaged_batches_give_records_or_remote_protocol_error(
    case: tuple[list[Record], Batch, bool],
) -> None:
    """Unpacking a Batch gives ``count`` records or raises RemoteProtocolError; an undamaged
    one gives back exactly the records packed."""
    records_in, batch, damaged = case
    received = decode(wire(batch))  # through the wire, as a replica gets it
    assert isinstance(received, Batch)

    try:
        records_out = unpack(received)
    except RemoteProtocolError:
        assert damaged
        return

    assert batch.count == len(records_out)
    if not damaged:
        assert records_in == records_out


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
