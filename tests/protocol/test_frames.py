"""The frame codec: round trips, the exact wire format, and every malformed frame."""

from __future__ import annotations

import array
import dataclasses
from typing import Any, ClassVar

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from standby.protocol import (
    BLOCK_DIGEST_SIZE,
    DEFAULT_MAX_META_SIZE,
    HEADER,
    HEADER_SIZE,
    MAGIC,
    MAX_BLOCK_SIZE,
    MAX_DATA_DEPTH,
    BlockData,
    BlockRequest,
    Entries,
    Entry,
    EntryKind,
    FrameDecoder,
    Goodbye,
    Hello,
    LocalProtocolError,
    Message,
    RemoteProtocolError,
    Reply,
    Role,
    ScenarioPut,
    SyncBegin,
    SyncMethod,
    Welcome,
    decode,
    encode,
    parse_header,
)
from standby.protocol._frames import _type_codec
from tests.strategies import MESSAGES, messages

from .helpers import meta_frame, raw_frame, wire

BLOCK = BlockData(file_id=3, offset=4096, digests=b"d" * BLOCK_DIGEST_SIZE, payload=b"data")


# --- round trips --------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", list(MESSAGES), ids=lambda cls: cls.__name__)
@given(data=st.data())
def test_roundtrip_every_type(cls: type[Message], data: st.DataObject) -> None:
    """decode(encode(m)) == m for every message type, with the same field types."""
    msg = data.draw(MESSAGES[cls])

    decoded = decode(wire(msg))

    names = list(msg.__dataclass_fields__)
    # SyncBegin.method is declared int: a SyncMethod given to it comes back as a plain int.
    expected_types = [
        int if type(v) is SyncMethod else type(v) for v in map(msg.__getattribute__, names)
    ]
    assert msg == decoded
    assert expected_types == [type(getattr(decoded, name)) for name in names]


def test_roundtrip_keeps_tuples_and_entry_kinds() -> None:
    """Tuples come back as tuples and entry kinds as EntryKind members."""
    listing = Entries(
        entries=(
            Entry(path=b"l", kind=EntryKind.SYMLINK, size=0, mtime_ns=-1, mode=0o777, target=b"t"),
        )
    )
    ranges = BlockRequest(file_id=1, ranges=(5, 9))

    decoded_listing = decode(wire(listing))
    decoded_ranges = decode(wire(ranges))

    assert isinstance(decoded_listing, Entries)
    assert isinstance(decoded_ranges, BlockRequest)
    assert EntryKind.SYMLINK is decoded_listing.entries[0].kind
    expected = (5, 9)
    assert expected == decoded_ranges.ranges


def test_roundtrip_largest_payload() -> None:
    """A BlockData with a MAX_BLOCK_SIZE payload makes the round trip."""
    msg = BlockData(
        file_id=1, offset=0, digests=b"d" * BLOCK_DIGEST_SIZE * 1024, payload=bytes(MAX_BLOCK_SIZE)
    )

    assert msg == decode(wire(msg))


# --- the wire format ----------------------------------------------------------------------------


def test_goodbye_wire_bytes() -> None:
    """The exact bytes of a Goodbye pin the header layout and the checksum algorithm."""
    expected = b"SB\x04\x00" + b"\x00\x00\x00\x01" + b"\x00\x00\x00\x00"
    expected += bytes.fromhex("eb1109e4990694cc") + b"\x90"

    assert expected == wire(Goodbye())


def test_block_data_pieces() -> None:
    """BlockData encodes to header, meta and the payload object itself (never copied)."""
    header, meta, payload = encode(BLOCK)

    assert (MAGIC, BlockData.TYPE, 0, len(meta), 4) == HEADER.unpack(header)[:5]
    expected = [3, 4096, b"d" * BLOCK_DIGEST_SIZE]
    assert expected == msgpack.unpackb(meta)
    assert payload is BLOCK.payload


def test_messages_without_payload_have_two_pieces() -> None:
    """A message without a payload field encodes to header and meta only."""
    pieces = encode(Welcome(version=1, engine="e"))

    expected = [HEADER_SIZE, 4]  # fixarray, fixint, fixstr of one byte
    assert expected == [len(piece) for piece in pieces]


def test_fields_travel_in_declaration_order_with_enums_as_ints() -> None:
    """Meta is the list of field values in order; enums are plain ints; entries are lists."""
    begin = SyncBegin(
        scenario="s", epoch=7, root=1, method=SyncMethod.BLOCK, block_size=4096, range_blocks=8
    )
    entry = Entry(path=b"p", kind=EntryKind.DIRECTORY, size=1, mtime_ns=2, mode=3, target=b"")

    expected = ["s", 7, 1, 2, 4096, 8]
    assert expected == msgpack.unpackb(encode(begin)[1])
    expected = [[[b"p", 2, 1, 2, 3, b""]]]
    assert expected == msgpack.unpackb(encode(Entries(entries=(entry,)))[1])


def test_encode_refuses_non_wire_messages() -> None:
    """Only registered message types can be encoded."""
    with pytest.raises(LocalProtocolError) as excinfo:
        encode(Message())

    expected = "Message is not a wire message"
    assert expected == str(excinfo.value)


def test_encode_refuses_a_dict_mutated_after_building() -> None:
    """A dict field changed after the message was built cannot sneak a set onto the wire."""
    msg = Reply(ok=True, message="", data={})
    msg.data["oops"] = {1, 2}

    with pytest.raises(LocalProtocolError) as excinfo:
        encode(msg)

    assert str(excinfo.value).startswith("cannot encode Reply: ")


def test_encode_refuses_metadata_over_the_limit() -> None:
    """Encoding checks the metadata size against the limit the peer applies."""
    msg = ScenarioPut(name="n", document={"x": "y" * 100})
    size = len(encode(msg)[1])

    encode(msg, max_meta_size=size)
    with pytest.raises(LocalProtocolError) as excinfo:
        encode(msg, max_meta_size=size - 1)

    assert f"ScenarioPut metadata is {size} bytes, over the {size - 1} limit" == str(excinfo.value)


# --- malformed frames ---------------------------------------------------------------------------

GOOD_META = msgpack.packb([1, "engine"])


def _deep_document(depth: int) -> Any:
    value: Any = {}
    for _ in range(depth - 1):
        value = {"k": value}
    return value


MALFORMED: list[tuple[str, bytes, str]] = [
    ("magic", raw_frame(Welcome.TYPE, GOOD_META, magic=b"XX"), "bad frame magic b'XX'"),
    ("type 0", raw_frame(0, GOOD_META), "unknown message type 0"),
    ("type 255", raw_frame(255, GOOD_META), "unknown message type 255"),
    ("flags", raw_frame(Welcome.TYPE, GOOD_META, flags=1), "Welcome frame has unknown flags"),
    ("payload on Welcome", raw_frame(Welcome.TYPE, GOOD_META, b"x"), "Welcome frame carries"),
    ("checksum", raw_frame(Welcome.TYPE, GOOD_META, checksum=1), "Welcome frame checksum mismatch"),
    ("empty meta", raw_frame(Welcome.TYPE, b""), "Welcome metadata is not valid msgpack"),
    ("reserved byte", raw_frame(Welcome.TYPE, b"\xc1"), "Welcome metadata is not valid msgpack"),
    ("truncated meta", raw_frame(Welcome.TYPE, GOOD_META[:-1]), "not valid msgpack"),
    ("extra data", raw_frame(Welcome.TYPE, GOOD_META + b"\xc0"), "not valid msgpack"),
    ("bad utf-8", raw_frame(Welcome.TYPE, b"\x92\x01\xa1\xff"), "not valid msgpack"),
    ("int map key", meta_frame(Reply.TYPE, [True, "", {1: 2}]), "Reply metadata is not valid"),
    ("too deep", raw_frame(Goodbye.TYPE, b"\x91" * 5000 + b"\xc0"), "not valid msgpack"),
    ("meta is a map", meta_frame(Welcome.TYPE, {"version": 1}), "must be an array of 2 fields"),
    ("too few fields", meta_frame(Welcome.TYPE, [1]), "Welcome metadata must be an array of 2"),
    ("too many fields", meta_frame(Welcome.TYPE, [1, "e", 3]), "must be an array of 2 fields"),
    ("str for int", meta_frame(Welcome.TYPE, ["1", "e"]), "invalid Welcome: Welcome.version"),
    (
        "bool for int",
        meta_frame(Welcome.TYPE, [True, "e"]),
        "Welcome.version must be int, got bool",
    ),
    ("negative", meta_frame(Welcome.TYPE, [-1, "e"]), "Welcome.version must be >= 0"),
    ("bytes for str", meta_frame(Welcome.TYPE, [1, b"e"]), "Welcome.engine must be str"),
    ("hello order", meta_frame(Hello.TYPE, [2, 1, "e", "p"]), "Hello.version_min > version_max"),
    ("bad method", meta_frame(SyncBegin.TYPE, ["s", 1, 0, 3, 4096, 1]), "SyncBegin.method 3"),
    ("ranges map", meta_frame(BlockRequest.TYPE, [1, {}]), "expected an array, got dict"),
    ("ranges bool", meta_frame(BlockRequest.TYPE, [1, [False]]), "must be int, got bool"),
    ("entries int", meta_frame(Entries.TYPE, [5]), "entries must be an array, got int"),
    ("entry short", meta_frame(Entries.TYPE, [[[b"p", 1, 0, 0, 0]]]), "array of 6 fields"),
    ("entry str", meta_frame(Entries.TYPE, [["abcdef"]]), "array of 6 fields"),
    ("kind 9", meta_frame(Entries.TYPE, [[[b"p", 9, 0, 0, 0, b""]]]), "entry kind must be one"),
    ("kind True", meta_frame(Entries.TYPE, [[[b"p", True, 0, 0, 0, b""]]]), "entry kind must"),
    ("kind str", meta_frame(Entries.TYPE, [[[b"p", "1", 0, 0, 0, b""]]]), "entry kind must"),
    ("entry path", meta_frame(Entries.TYPE, [[["p", 1, 0, 0, 0, b""]]]), "Entry.path must be"),
    ("int for bool", meta_frame(Reply.TYPE, [1, "", {}]), "Reply.ok must be bool, got int"),
    ("doc ext", meta_frame(Reply.TYPE, [True, "", {"t": msgpack.ExtType(5, b"")}]), "hold ExtType"),
    (
        "doc timestamp",
        meta_frame(Reply.TYPE, [True, "", {"t": msgpack.Timestamp(1)}]),
        "cannot hold Timestamp",
    ),
    (
        "doc too deep",
        meta_frame(ScenarioPut.TYPE, ["n", _deep_document(MAX_DATA_DEPTH + 1)]),
        f"nests deeper than {MAX_DATA_DEPTH} levels",
    ),
    (
        "empty payload",
        meta_frame(BlockData.TYPE, [1, 0, b"d" * BLOCK_DIGEST_SIZE]),
        "BlockData.payload must hold 1 byte",
    ),
]


@pytest.mark.parametrize(
    ("frame", "error"), [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED]
)
def test_malformed_frames_raise_remote_protocol_error(frame: bytes, error: str) -> None:
    """Each way a frame can be wrong raises RemoteProtocolError, and says which."""
    with pytest.raises(RemoteProtocolError) as excinfo:
        decode(frame)

    assert error in str(excinfo.value)


@pytest.mark.parametrize("offset", [HEADER_SIZE, HEADER_SIZE + 5, -1])
def test_checksum_covers_meta_and_payload(offset: int) -> None:
    """Flipping any bit of the meta or the payload is detected."""
    frame = bytearray(wire(BLOCK))
    frame[offset] ^= 0x01

    with pytest.raises(RemoteProtocolError) as excinfo:
        decode(frame)

    expected = "BlockData frame checksum mismatch"
    assert expected == str(excinfo.value)


def test_meta_over_the_limit_is_refused_from_the_header() -> None:
    """meta_len over max_meta_size is refused by the header alone."""
    header = raw_frame(Welcome.TYPE, b"", meta_len=DEFAULT_MAX_META_SIZE + 1)

    with pytest.raises(RemoteProtocolError) as excinfo:
        parse_header(header)

    assert f"Welcome metadata of {DEFAULT_MAX_META_SIZE + 1} bytes exceeds" in str(excinfo.value)


def test_payload_over_the_limit_is_refused_from_the_header() -> None:
    """payload_len over MAX_BLOCK_SIZE is refused by the header alone."""
    header = raw_frame(BlockData.TYPE, b"", payload_len=MAX_BLOCK_SIZE + 1)

    with pytest.raises(RemoteProtocolError) as excinfo:
        parse_header(header)

    assert f"BlockData payload of {MAX_BLOCK_SIZE + 1} bytes exceeds" in str(excinfo.value)


def test_max_meta_size_is_configurable() -> None:
    """A smaller max_meta_size refuses what the default accepts."""
    frame = wire(Welcome(version=1, engine="engine"))

    with pytest.raises(RemoteProtocolError):
        decode(frame, max_meta_size=4)

    assert Welcome(version=1, engine="engine") == decode(frame, max_meta_size=len(frame))


@pytest.mark.parametrize(
    ("frame", "error"),
    [
        (wire(BLOCK)[: HEADER_SIZE - 1], "frame of 19 bytes is shorter than a header"),
        (wire(BLOCK)[:-1], "header says"),
        (wire(BLOCK) + b"\x00", "header says"),
    ],
)
def test_decode_wants_exactly_one_frame(frame: bytes, error: str) -> None:
    """decode() refuses a short header, a truncated frame and trailing bytes."""
    with pytest.raises(RemoteProtocolError) as excinfo:
        decode(frame)

    assert error in str(excinfo.value)


# --- incremental decoding -----------------------------------------------------------------------


def decode_stream(data: bytes, chunk_size: int) -> list[Message]:
    """Feed ``data`` to a FrameDecoder in chunks; return every message it yields."""
    decoder = FrameDecoder()
    out: list[Message] = []
    for start in range(0, len(data), chunk_size):
        decoder.feed(data[start : start + chunk_size])
        while (msg := decoder.next_message()) is not None:
            out.append(msg)
    expected = 0
    assert expected == decoder.buffered
    return out


@settings(max_examples=50)
@given(msgs=st.lists(messages, max_size=8), chunk_size=st.integers(min_value=1, max_value=300))
def test_whole_and_chunked_feeding_agree(msgs: list[Message], chunk_size: int) -> None:
    """A stream fed at once, in chunks, and byte by byte yields the same messages."""
    data = wire(*msgs)

    assert msgs == decode_stream(data, len(data) or 1)
    assert msgs == decode_stream(data, chunk_size)
    assert msgs == decode_stream(data, 1)


def test_buffer_grows_for_large_frames_and_keeps_partial_frames() -> None:
    """Frames larger than the initial buffer, split across feeds, come out whole and in order."""
    big = BlockData(
        file_id=1, offset=0, digests=b"d" * BLOCK_DIGEST_SIZE, payload=b"x" * (1024 * 1024)
    )
    data = wire(BLOCK, big, BLOCK, big, BLOCK)

    assert [BLOCK, big, BLOCK, big, BLOCK] == decode_stream(data, 100_000)


def test_compaction_moves_a_partial_frame_to_the_front() -> None:
    """When a feed does not fit after a partial frame, the partial frame moves and survives."""
    block = BlockData(file_id=1, offset=0, digests=bytes(BLOCK_DIGEST_SIZE), payload=bytes(9999))
    msgs = [block] * 200  # 2 MB fed in 70 kB chunks: frames straddle chunks, the buffer wraps

    assert msgs == decode_stream(wire(*msgs), 70_001)


def test_feed_accepts_any_buffer() -> None:
    """bytes, bytearray and memoryviews (of any item format) can be fed."""
    frame = wire(BLOCK)
    decoder = FrameDecoder()
    decoder.feed(bytearray(frame[:10]))
    decoder.feed(memoryview(frame)[10:20])
    decoder.feed(array.array("B", frame[20:]))

    expected = BLOCK
    assert expected == decoder.next_message()


def test_feed_copies_the_callers_buffer() -> None:
    """The decoder keeps its own copy: the caller may reuse its read buffer at once."""
    frame = bytearray(wire(BLOCK))
    decoder = FrameDecoder()
    decoder.feed(frame)
    frame[:] = bytes(len(frame))

    expected = BLOCK
    assert expected == decoder.next_message()


def test_header_is_checked_before_the_body_arrives() -> None:
    """An oversized frame is refused as soon as its header is in, before buffering the rest."""
    decoder = FrameDecoder(max_meta_size=100)
    decoder.feed(raw_frame(Welcome.TYPE, b"", meta_len=101))

    with pytest.raises(RemoteProtocolError):
        decoder.next_message()

    expected = HEADER_SIZE
    assert expected == decoder.buffered


def test_decoder_errors_repeat() -> None:
    """Once the buffered bytes are invalid, every call raises the same way."""
    decoder = FrameDecoder()
    decoder.feed(raw_frame(Welcome.TYPE, GOOD_META, checksum=0))

    errors = []
    for _ in range(2):
        with pytest.raises(RemoteProtocolError) as excinfo:
            decoder.next_message()
        errors.append(str(excinfo.value))

    expected = ["Welcome frame checksum mismatch"] * 2
    assert expected == errors


def test_decoder_can_grow_after_an_error() -> None:
    """A failed decode releases its views of the buffer, so the buffer can still grow."""
    decoder = FrameDecoder()
    decoder.feed(raw_frame(Welcome.TYPE, GOOD_META, checksum=0))
    with pytest.raises(RemoteProtocolError):
        decoder.next_message()

    decoder.feed(bytes(1024 * 1024))

    assert HEADER_SIZE + len(GOOD_META) + 1024 * 1024 == decoder.buffered


@pytest.mark.parametrize("size", [0, 2**32])
def test_decoder_max_meta_size_must_fit_the_header(size: int) -> None:
    """max_meta_size must be between 1 and what the 32-bit length field can say."""
    with pytest.raises(ValueError, match="max_meta_size must be in"):
        FrameDecoder(max_meta_size=size)


def test_decoder_reports_its_limit() -> None:
    """max_meta_size is readable, for a sender that wants to apply the same limit."""
    expected = 1234
    assert expected == FrameDecoder(max_meta_size=1234).max_meta_size


def test_a_message_field_without_a_codec_fails_loudly() -> None:
    """Building the codec of a message with an annotation it cannot encode raises TypeError."""

    @dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
    class Odd(Message):
        TYPE: ClassVar[int] = 251
        SENDER: ClassVar[Role] = Role.EITHER

        ratio: complex

    with pytest.raises(TypeError) as excinfo:
        _type_codec(Odd)

    expected = "Odd.ratio: no wire codec for 'complex'"
    assert expected == str(excinfo.value)
