"""Records inside a Batch payload: encoding, strict decoding, and the frame limits of a Batch."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from standby.protocol import (
    BLOCK_DIGEST_SIZE,
    HEADER_SIZE,
    MAX_BATCH_RAW,
    MAX_BLOCK_SIZE,
    MAX_FILE_SIZE,
    MAX_PATH_SIZE,
    MIN_BLOCK_SIZE,
    RECORD_TYPES,
    Batch,
    BlockData,
    Goodbye,
    LocalProtocolError,
    Message,
    RecAttrs,
    Record,
    RecRemove,
    RecRename,
    RecWrite,
    RemoteProtocolError,
    Remove,
    decode,
    decode_records,
    encode,
    encode_record,
    encode_records,
    parse_header,
)
from tests.strategies import RECORDS, records

from .helpers import meta_frame, raw_frame, wire

REMOVE = RecRemove(root=0, path=b"gone")
RENAME = RecRename(root=1, path=b"a", target=b"b")
WRITE = RecWrite(root=0, path=b"f", offset=8192, digests=b"d" * BLOCK_DIGEST_SIZE, payload=b"xyz")


# --- round trips --------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", list(RECORDS), ids=lambda cls: cls.__name__)
@given(data=st.data())
def test_roundtrip_every_record_type(cls: type[Record], data: st.DataObject) -> None:
    """decode_records(encode_record(r), 1) == [r] for every record type, field types kept."""
    record = data.draw(RECORDS[cls])

    (decoded,) = decode_records(encode_record(record), 1)

    names = list(record.__dataclass_fields__)
    assert record == decoded
    assert [type(getattr(record, n)) for n in names] == [type(getattr(decoded, n)) for n in names]


@settings(max_examples=50)
@given(batch=st.lists(records, max_size=8))
def test_records_concatenate(batch: list[Record]) -> None:
    """encode_records is the records' frames end to end; decode_records gives them back."""
    raw = encode_records(batch)

    assert raw == b"".join(encode_record(r) for r in batch)
    assert batch == decode_records(raw, len(batch))
    assert batch == decode_records(memoryview(raw), len(batch))


def test_encode_records_takes_any_iterable() -> None:
    """A generator of records is fine: the records are encoded once, in order."""
    raw = encode_records(r for r in (REMOVE, RENAME))

    expected = [REMOVE, RENAME]
    assert expected == decode_records(raw, 2)


def test_record_payload_is_raw_in_the_frame() -> None:
    """A RecWrite frame is a frame like any other: meta without the payload, then the payload."""
    frame = encode_record(WRITE)
    header = parse_header(frame, records=True)

    meta = frame[HEADER_SIZE : HEADER_SIZE + header.meta_len]
    expected = [0, b"f", 8192, b"d" * BLOCK_DIGEST_SIZE]
    assert expected == msgpack.unpackb(meta)
    assert frame.endswith(b"xyz")


def test_memoryview_payload_is_encoded() -> None:
    """A RecWrite may hold a view of a reused buffer: its bytes go into the batch."""
    buffer = bytearray(b"abcdef")
    write = RecWrite(
        root=0, path=b"f", offset=0, digests=b"d" * BLOCK_DIGEST_SIZE, payload=memoryview(buffer)
    )

    raw = encode_record(write)
    buffer[:] = b"zzzzzz"

    (decoded,) = decode_records(raw, 1)
    assert isinstance(decoded, RecWrite)
    expected = b"abcdef"
    assert expected == decoded.payload


def test_decode_records_accepts_views_of_other_formats() -> None:
    """A memoryview whose items are not bytes is read as its bytes."""
    raw = encode_record(REMOVE) * 4  # 4 frames of 28 bytes

    view = memoryview(raw).cast("I")

    expected = [REMOVE] * 4
    assert expected == decode_records(view, 4)


def test_the_largest_record_fits_in_a_batch() -> None:
    """A RecWrite of MAX_BLOCK_SIZE with one digest per 4 KiB and the longest path fits in a
    Batch, which is what MAX_BATCH_RAW was chosen for."""
    write = RecWrite(
        root=2**64 - 1,
        path=b"p" * MAX_PATH_SIZE,
        offset=MAX_FILE_SIZE - MAX_BLOCK_SIZE,
        digests=b"d" * BLOCK_DIGEST_SIZE * (MAX_BLOCK_SIZE // MIN_BLOCK_SIZE),
        payload=bytes(MAX_BLOCK_SIZE),
    )

    raw = encode_record(write)

    assert 3 * len(raw) < MAX_BATCH_RAW
    assert [write] == decode_records(raw, 1)


# --- what encode_record refuses -----------------------------------------------------------------


@pytest.mark.parametrize(
    "msg", [Remove(path=b"p"), Goodbye(), Message()], ids=lambda msg: type(msg).__name__
)
def test_only_records_are_encoded_as_records(msg: Message) -> None:
    """A session message, or no registered message at all, is not a record."""
    with pytest.raises(LocalProtocolError) as excinfo:
        encode_records([REMOVE, msg])

    expected = f"{type(msg).__name__} is not a record"
    assert expected == str(excinfo.value)


def test_an_unregistered_record_subclass_is_refused() -> None:
    """A subclass of a record type is not that record type."""

    class Special(RecRemove):
        pass

    with pytest.raises(LocalProtocolError, match="Special is not a record"):
        encode_record(Special(root=0, path=b"p"))


def test_records_are_not_wire_messages() -> None:
    """encode() and decode() of a session stream refuse records, both ways."""
    with pytest.raises(LocalProtocolError) as excinfo:
        encode(REMOVE)
    with pytest.raises(RemoteProtocolError) as remote:
        decode(encode_record(REMOVE))

    expected = "RecRemove is a record: records travel only inside a Batch payload"
    assert str(excinfo.value).startswith(expected)
    assert expected == str(remote.value)


# --- what decode_records refuses ----------------------------------------------------------------

TWO = encode_records([REMOVE, RENAME])

BROKEN: list[tuple[str, bytes, int, str]] = [
    ("empty, one expected", b"", 1, "Batch payload holds 0 records, its count says 1"),
    ("fewer", TWO, 3, "Batch payload holds 2 records, its count says 3"),
    ("more", TWO, 1, f"Batch payload has {len(TWO) - len(encode_record(REMOVE))} bytes after"),
    ("trailing byte", TWO + b"\x00", 2, "Batch payload has 1 bytes after its 2 records"),
    ("short header", TWO[:-1][: HEADER_SIZE - 1], 1, "ends inside a record's header"),
    ("cut record", TWO[:-1], 2, "Batch payload ends inside a record"),
    ("session message", wire(Remove(path=b"p")), 1, "holds records only, not Remove"),
    (
        "batch in a batch",
        wire(Batch(first_seq=1, count=1, compressed=False, raw_size=1, payload=b"x")),
        1,
        "holds records only, not Batch",
    ),
    ("unknown type", raw_frame(200, b"\x90"), 1, "unknown message type 200"),
    ("bad magic", raw_frame(RecRemove.TYPE, b"\x90", magic=b"XX"), 1, "bad frame magic"),
    ("checksum", raw_frame(RecRemove.TYPE, b"\x92\x00\xc4\x01a", checksum=0), 1, "checksum"),
    ("bad fields", meta_frame(RecRemove.TYPE, [0, b""]), 1, "RecRemove.path must hold 1"),
    ("wrong arity", meta_frame(RecRemove.TYPE, [0]), 1, "must be an array of 2 fields"),
    (
        "payload where none belongs",
        raw_frame(RecRemove.TYPE, msgpack.packb([0, b"a"]), b"x"),
        1,
        "RecRemove frame carries a payload",
    ),
    (
        "payload too large",
        raw_frame(RecWrite.TYPE, b"", payload_len=MAX_BLOCK_SIZE + 1),
        1,
        f"RecWrite payload of {MAX_BLOCK_SIZE + 1} bytes exceeds {MAX_BLOCK_SIZE}",
    ),
]


@pytest.mark.parametrize(
    ("data", "count", "error"), [c[1:] for c in BROKEN], ids=[c[0] for c in BROKEN]
)
def test_damaged_batches_raise_remote_protocol_error(data: bytes, count: int, error: str) -> None:
    """Anything but exactly ``count`` whole, valid record frames is the peer's fault."""
    with pytest.raises(RemoteProtocolError) as excinfo:
        decode_records(data, count)

    assert error in str(excinfo.value)


def test_zero_records_expected_and_found() -> None:
    """An empty payload holds zero records (no Batch says so, but the function is total)."""
    expected: list[Message] = []
    assert expected == decode_records(b"", 0)


def test_negative_count_is_our_bug() -> None:
    """A negative count never comes from a Batch: the caller is wrong."""
    with pytest.raises(ValueError, match="expected_count must be >= 0"):
        decode_records(b"", -1)


@settings(max_examples=300)
@given(data=st.binary(max_size=300), count=st.integers(min_value=0, max_value=4))
def test_any_bytes_decode_or_raise_remote_protocol_error(data: bytes, count: int) -> None:
    """Whatever a peer puts in a batch, decoding returns records or raises RemoteProtocolError."""
    try:
        decoded = decode_records(data, count)
    except RemoteProtocolError:
        return
    assert count == len(decoded)


def test_no_flipped_bit_turns_a_record_type_into_another() -> None:
    """Record TYPEs have even parity: a flipped bit of the (unchecksummed) type byte always
    gives a type that is not a record, which decoding refuses."""
    types = set(RECORD_TYPES)

    flipped = {t ^ (1 << bit) for t in types for bit in range(8)}

    expected: set[int] = set()
    assert expected == flipped & types


@settings(max_examples=200)
@given(
    batch=st.lists(records, min_size=1, max_size=4),
    position=st.integers(min_value=0),
    flip=st.integers(min_value=0, max_value=7),
)
def test_a_flipped_bit_is_always_caught(batch: list[Record], position: int, flip: int) -> None:
    """The per-record checksums (and the header checks) catch any single flipped bit."""
    raw = bytearray(encode_records(batch))
    raw[position % len(raw)] ^= 1 << flip

    with pytest.raises(RemoteProtocolError):
        decode_records(bytes(raw), len(batch))


# --- Batch frames: the one type with a larger payload -------------------------------------------


def test_a_full_batch_makes_the_round_trip() -> None:
    """A Batch with a MAX_BATCH_RAW payload is one valid frame."""
    msg = Batch(
        first_seq=1, count=1, compressed=False, raw_size=MAX_BATCH_RAW, payload=bytes(MAX_BATCH_RAW)
    )

    assert msg == decode(wire(msg))


@pytest.mark.parametrize(
    ("type_", "limit"),
    [(Batch.TYPE, MAX_BATCH_RAW), (BlockData.TYPE, MAX_BLOCK_SIZE), (RecAttrs.TYPE, 0)],
)
def test_payload_limits_are_per_type(type_: int, limit: int) -> None:
    """Only a Batch may carry more than MAX_BLOCK_SIZE; the header alone says so."""
    records_context = type_ in RECORD_TYPES
    at_limit = raw_frame(type_, b"", payload_len=limit)
    over = raw_frame(type_, b"", payload_len=limit + 1)

    header = parse_header(at_limit, records=records_context)
    with pytest.raises(RemoteProtocolError):
        parse_header(over, records=records_context)

    expected = limit
    assert expected == header.payload_len
