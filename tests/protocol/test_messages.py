"""Messages validate themselves: what cannot travel cannot be built."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

import pytest

from standby.protocol import (
    BLOCK_DIGEST_SIZE,
    FILE_DIGEST_SIZE,
    MAX_BATCH_RAW,
    MAX_BLOCK_SIZE,
    MAX_DATA_DEPTH,
    MAX_FILE_SIZE,
    MAX_PATH_SIZE,
    MESSAGE_TYPES,
    MIN_BLOCK_SIZE,
    RECORD_TYPE_MIN,
    RECORD_TYPES,
    Ack,
    Batch,
    BlockData,
    BlockDigests,
    BlockRequest,
    Entries,
    EntriesEnd,
    Entry,
    EntryKind,
    EpochClaim,
    FileEnd,
    Heartbeat,
    Hello,
    LocalProtocolError,
    MakeSymlink,
    Message,
    RangeDigests,
    RecAttrs,
    RecHardLink,
    RecMakeDir,
    Record,
    RecRemove,
    RecRename,
    RecSymlink,
    RecTruncate,
    RecWrite,
    RecZero,
    ReplicateReady,
    Reply,
    Role,
    ScenarioPut,
    SetAttrs,
    SyncBegin,
    SyncMethod,
    Welcome,
)

ENTRY: dict[str, Any] = {
    "path": b"a/b",
    "kind": EntryKind.FILE,
    "size": 3,
    "mtime_ns": -5,
    "mode": 0o644,
    "target": b"",
}
SYNC_BEGIN: dict[str, Any] = {
    "scenario": "s",
    "epoch": 1,
    "root": 0,
    "method": SyncMethod.BLOCK,
    "block_size": 65536,
    "range_blocks": 256,
}


def nested(depth: int) -> dict[str, Any]:
    """A dict nesting ``depth`` containers (itself included)."""
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"x": value}
    return value


class BytesSubclass(bytes):
    pass


def test_valid_messages_build() -> None:
    """Messages with values at the edges of their domains build and keep those values."""
    msg = SetAttrs(path=b"\xff\x00", mode=2**64 - 1, mtime_ns=-(2**63))

    expected = (b"\xff\x00", 2**64 - 1, -(2**63))
    assert expected == (msg.path, msg.mode, msg.mtime_ns)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"version": True}, "Welcome.version must be int, got bool"),
        ({"version": -1}, "Welcome.version must be >= 0"),
        ({"version": 2**64}, "Welcome.version must be < 2**64"),
        ({"version": 1.0}, "Welcome.version must be int, got float"),
        ({"engine": b"x"}, "Welcome.engine must be str, got bytes"),
        ({"engine": "\udc80"}, "Welcome.engine is not encodable as UTF-8"),
    ],
)
def test_scalar_fields_are_checked(kwargs: dict[str, Any], error: str) -> None:
    """Ints refuse bools and values outside 64 bits; text must be encodable as UTF-8."""
    with pytest.raises(LocalProtocolError) as excinfo:
        Welcome(**{"version": 1, "engine": "e", **kwargs})

    assert error == str(excinfo.value)


def test_non_ascii_text_is_accepted() -> None:
    """Text beyond ASCII travels as UTF-8."""
    expected = "été ✓"
    assert expected == Welcome(version=1, engine="été ✓").engine


def test_signed_fields_hold_int64() -> None:
    """mtime_ns may be negative but must fit in a signed 64-bit integer."""
    with pytest.raises(LocalProtocolError) as excinfo:
        MakeSymlink(path=b"l", target=b"t", mtime_ns=2**63)

    expected = "MakeSymlink.mtime_ns must fit in a signed 64-bit integer"
    assert expected == str(excinfo.value)


def test_int_enum_values_are_ints() -> None:
    """An IntEnum member is a valid int field value (SyncBegin.method is an int)."""
    expected = SyncMethod.FILE
    assert expected == SyncBegin(**{**SYNC_BEGIN, "method": SyncMethod.FILE}).method


def test_optional_fields_accept_none() -> None:
    """``str | None`` fields accept None and str."""
    expected = (None, "boom")
    assert expected == (
        EntriesEnd(count=0, error=None).error,
        EntriesEnd(count=0, error="boom").error,
    )


@pytest.mark.parametrize(
    ("ranges", "error"),
    [
        ([1, 2], "BlockRequest.ranges must be tuple[int, ...], got list"),
        ((1, True), "BlockRequest.ranges must be int, got bool"),
        ((1, -2), "BlockRequest.ranges must be >= 0"),
        ((2**64,), "BlockRequest.ranges must be < 2**64"),
        (("1",), "BlockRequest.ranges must be int, got str"),
    ],
)
def test_tuple_items_are_checked(ranges: Any, error: str) -> None:
    """Each item of a tuple field is checked like a field of the item's type."""
    with pytest.raises(LocalProtocolError) as excinfo:
        BlockRequest(file_id=1, ranges=ranges)

    assert error == str(excinfo.value)


def test_tuple_items_accept_int_subclasses() -> None:
    """An IntEnum item takes the slow path and is accepted."""
    expected = (SyncMethod.FILE, 7)
    assert expected == BlockRequest(file_id=1, ranges=(SyncMethod.FILE, 7)).ranges


def test_entries_hold_entries_only() -> None:
    """Entries.entries is a tuple of Entry objects."""
    with pytest.raises(LocalProtocolError) as excinfo:
        Entries(entries=(Entry(**ENTRY), ENTRY))  # type: ignore[arg-type]

    expected = "Entries.entries must be Entry, got dict"
    assert expected == str(excinfo.value)


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"t": (1, 2)}, "Reply.data cannot hold tuple (plain data only)"),
        ({"s": {1}}, "Reply.data cannot hold set (plain data only)"),
        ({"b": bytearray(b"x")}, "Reply.data cannot hold bytearray (plain data only)"),
        ({1: "x"}, "Reply.data keys must be str, got int"),
        ({"\udc80": 1}, "Reply.data is not encodable as UTF-8"),
        ({"x": ["\udc80"]}, "Reply.data is not encodable as UTF-8"),
        ({"big": 2**64}, "Reply.data holds an integer wider than 64 bits"),
        ({"small": -(2**63) - 1}, "Reply.data holds an integer wider than 64 bits"),
        (nested(MAX_DATA_DEPTH + 1), f"Reply.data nests deeper than {MAX_DATA_DEPTH} levels"),
        (
            {"l": [[[]] * 2] * 2, "deep": [nested(MAX_DATA_DEPTH)]},
            "Reply.data nests deeper than 32 levels",
        ),
    ],
)
def test_dict_fields_hold_plain_data(data: dict[Any, Any], error: str) -> None:
    """Dict fields refuse what would not come back unchanged, or not at all."""
    with pytest.raises(LocalProtocolError) as excinfo:
        Reply(ok=True, message="", data=data)

    assert error == str(excinfo.value)


def test_dict_fields_accept_all_plain_data() -> None:
    """Every kind of plain data, at the deepest allowed nesting, is accepted."""
    document = {
        "none": None,
        "bool": False,
        "ints": [-(2**63), 2**64 - 1, SyncMethod.FILE],
        "float": 1.5,
        "text": "été",
        "bytes": b"\x00",
        "deep": nested(MAX_DATA_DEPTH - 1),
    }

    assert document == ScenarioPut(name="n", document=document).document


def test_dict_field_must_be_a_dict() -> None:
    """A list where a dict is declared is refused."""
    with pytest.raises(LocalProtocolError) as excinfo:
        ScenarioPut(name="n", document=[])  # type: ignore[arg-type]

    expected = "ScenarioPut.document must be dict[str, Any], got list"
    assert expected == str(excinfo.value)


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("path", "a/b", "Entry.path must be bytes, got str"),
        ("target", None, "Entry.target must be bytes, got NoneType"),
        ("kind", 1, "Entry.kind must be EntryKind, got int"),
        ("size", -1, "Entry.size must be >= 0"),
        ("size", True, "Entry.size must be int, got bool"),
        ("mode", 2**64, "Entry.mode must be < 2**64"),
        ("mtime_ns", -(2**63) - 1, "Entry.mtime_ns must fit in a signed 64-bit integer"),
    ],
)
def test_entries_validate_themselves(field: str, value: object, error: str) -> None:
    """An Entry checks each of its fields, though it is not a message."""
    with pytest.raises(LocalProtocolError) as excinfo:
        Entry(**{**ENTRY, field: value})

    assert error == str(excinfo.value)


def test_entry_accepts_subclasses_on_the_slow_path() -> None:
    """Values that miss the fast path but are valid (a bytes subclass) are accepted."""
    entry = Entry(**{**ENTRY, "path": BytesSubclass(b"p")})

    expected = b"p"
    assert expected == entry.path


@pytest.mark.parametrize(
    ("build", "error"),
    [
        (
            lambda: Hello(version_min=2, version_max=1, engine="e", purpose="p"),
            "Hello.version_min > version_max",
        ),
        (lambda: SyncBegin(**{**SYNC_BEGIN, "method": 3}), "SyncBegin.method 3 is unknown"),
        (
            lambda: EpochClaim(scenario="s", epoch=0, active="beta", failover=True),
            "EpochClaim.epoch must be >= 1",
        ),
        (
            lambda: EpochClaim(scenario="s", epoch=2, active="", failover=False),
            "EpochClaim.active must name a host",
        ),
        (
            lambda: SyncBegin(**{**SYNC_BEGIN, "block_size": 2048}),
            "SyncBegin.block_size must be a power of two in 4 KiB..4 MiB",
        ),
        (
            lambda: SyncBegin(**{**SYNC_BEGIN, "block_size": 4096 + 512}),
            "SyncBegin.block_size must be a power of two in 4 KiB..4 MiB",
        ),
        (
            lambda: SyncBegin(**{**SYNC_BEGIN, "range_blocks": 0}),
            "SyncBegin.range_blocks must be in 1..2**20",
        ),
        (
            lambda: RangeDigests(file_id=1, size=0, missing=False, digests=b"x"),
            "RangeDigests.digests is not a whole number of digests",
        ),
        (
            lambda: BlockDigests(file_id=1, digests=b"x" * (BLOCK_DIGEST_SIZE + 1)),
            "BlockDigests.digests is not a whole number of digests",
        ),
        (
            lambda: BlockData(file_id=1, offset=0, digests=b"", payload=b"x"),
            "BlockData.digests is not a whole, non-zero number of digests",
        ),
        (
            lambda: BlockData(file_id=1, offset=0, digests=b"d" * BLOCK_DIGEST_SIZE, payload=b""),
            "BlockData.payload must hold 1 byte to MAX_BLOCK_SIZE",
        ),
        (
            lambda: BlockData(
                file_id=1,
                offset=0,
                digests=b"d" * BLOCK_DIGEST_SIZE,
                payload=bytes(MAX_BLOCK_SIZE + 1),
            ),
            "BlockData.payload must hold 1 byte to MAX_BLOCK_SIZE",
        ),
        (
            lambda: FileEnd(file_id=1, size=0, mode=0, mtime_ns=0, digest=b"d"),
            f"FileEnd.digest must be {FILE_DIGEST_SIZE} bytes",
        ),
    ],
)
def test_per_message_checks(build: Any, error: str) -> None:
    """Each message's own rules (beyond field types) refuse invalid values."""
    with pytest.raises(LocalProtocolError) as excinfo:
        build()

    assert error == str(excinfo.value)


def test_a_field_without_a_runtime_check_fails_loudly() -> None:
    """A message declared with an annotation the checker does not know raises TypeError."""

    @dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
    class Odd(Message):
        TYPE: ClassVar[int] = 250
        SENDER: ClassVar[Role] = Role.EITHER

        ratio: complex

    with pytest.raises(TypeError) as excinfo:
        Odd(ratio=0.5)

    expected = "Odd.ratio: annotation 'complex' has no runtime check"
    assert expected == str(excinfo.value)


class Nanos(int):
    pass


def test_int_subclasses_are_checked_on_the_slow_path() -> None:
    """An int subclass in a signed field is accepted when in range, refused when not."""
    msg = SetAttrs(path=b"p", mode=Nanos(1), mtime_ns=Nanos(-1))
    with pytest.raises(LocalProtocolError):
        SetAttrs(path=b"p", mode=0, mtime_ns=Nanos(2**63))

    expected = (1, -1)
    assert expected == (msg.mode, msg.mtime_ns)


# --- replication ---------------------------------------------------------------------------------

DIGEST = b"d" * BLOCK_DIGEST_SIZE


def batch(**kwargs: Any) -> Batch:
    fields: dict[str, Any] = {
        "first_seq": 1,
        "count": 1,
        "compressed": False,
        "raw_size": 3,
        "payload": b"abc",
    }
    return Batch(**{**fields, **kwargs})


def test_batch_limits_build() -> None:
    """A Batch at the edges: the last seq is 2**64 - 1, a compressed payload of MAX_BATCH_RAW."""
    last = batch(first_seq=2**64 - 3, count=3)
    full = batch(compressed=True, raw_size=MAX_BATCH_RAW, count=MAX_BATCH_RAW, payload=b"z")

    expected = (2**64 - 3, MAX_BATCH_RAW)
    assert expected == (last.first_seq, full.count)
    expected_size = MAX_BATCH_RAW
    assert expected_size == len(batch(raw_size=MAX_BATCH_RAW, payload=bytes(MAX_BATCH_RAW)).payload)


@pytest.mark.parametrize(
    ("build", "error"),
    [
        (
            lambda: ReplicateReady(received_seq=4, durable_seq=5),
            "ReplicateReady.durable_seq > received_seq",
        ),
        (lambda: Ack(received_seq=0, durable_seq=1), "Ack.durable_seq > received_seq"),
        (lambda: batch(raw_size=0, payload=b""), "Batch.raw_size must be in 1..MAX_BATCH_RAW"),
        (
            lambda: batch(compressed=True, raw_size=MAX_BATCH_RAW + 1),
            "Batch.raw_size must be in 1..MAX_BATCH_RAW",
        ),
        (lambda: batch(first_seq=0), "Batch.first_seq must be >= 1"),
        (lambda: batch(count=0), "Batch.count must be in 1..raw_size, its last seq < 2**64"),
        (lambda: batch(count=4), "Batch.count must be in 1..raw_size, its last seq < 2**64"),
        (
            lambda: batch(first_seq=2**64 - 2, count=3),
            "Batch.count must be in 1..raw_size, its last seq < 2**64",
        ),
        (
            lambda: batch(compressed=True, payload=b""),
            "Batch.payload must hold 1 byte to MAX_BATCH_RAW",
        ),
        (
            lambda: batch(compressed=True, payload=bytes(MAX_BATCH_RAW + 1)),
            "Batch.payload must hold 1 byte to MAX_BATCH_RAW",
        ),
        (
            lambda: batch(raw_size=4),
            "Batch.raw_size must be len(payload) when not compressed",
        ),
        (lambda: Heartbeat(sent_at=1), "Heartbeat.sent_at must be float, got int"),
        (lambda: Heartbeat(sent_at=math.nan), "Heartbeat.sent_at must be a finite float"),
        (lambda: Heartbeat(sent_at=-math.inf), "Heartbeat.sent_at must be a finite float"),
    ],
)
def test_replication_message_checks(build: Any, error: str) -> None:
    """The replication messages refuse inconsistent seqs, sizes and times."""
    with pytest.raises(LocalProtocolError) as excinfo:
        build()

    assert error == str(excinfo.value)


def test_float_fields_accept_float_subclasses() -> None:
    """A float subclass takes the slow path and is accepted when finite."""

    class Seconds(float):
        pass

    expected = 1.5
    assert expected == Heartbeat(sent_at=Seconds(1.5)).sent_at


def test_records_are_initiator_messages_with_high_types() -> None:
    """Records are sent by the initiator, and their TYPEs set them apart from session messages."""
    record_types = {cls.TYPE for cls in RECORD_TYPES.values()}

    assert all(cls.SENDER is Role.INITIATOR for cls in RECORD_TYPES.values())
    assert all(issubclass(cls, Record) for cls in RECORD_TYPES.values())
    assert min(record_types) >= RECORD_TYPE_MIN > max(MESSAGE_TYPES)
    assert max(record_types) <= 255
    assert set() == record_types & set(MESSAGE_TYPES)


def test_valid_records_build() -> None:
    """Records at the edges of their domains build and keep their values."""
    longest = b"p" * MAX_PATH_SIZE
    write = RecWrite(
        root=2**64 - 1,
        path=longest,
        offset=MAX_FILE_SIZE - MAX_BLOCK_SIZE,
        digests=DIGEST * (MAX_BLOCK_SIZE // MIN_BLOCK_SIZE),
        payload=bytes(MAX_BLOCK_SIZE),
    )
    link = RecSymlink(root=0, path=b"\xff", target=b"/" + longest[1:], mtime_ns=-(2**63))

    expected = (2**64 - 1, longest, MAX_FILE_SIZE - MAX_BLOCK_SIZE)
    assert expected == (write.root, write.path, write.offset)
    expected_link = (b"/" + longest[1:], -(2**63))
    assert expected_link == (link.target, link.mtime_ns)
    expected_sizes = (MAX_FILE_SIZE, MAX_FILE_SIZE - 1)
    assert expected_sizes == (
        RecTruncate(root=0, path=b"f", size=MAX_FILE_SIZE).size,
        RecZero(root=0, path=b"f", offset=1, length=MAX_FILE_SIZE - 1).length,
    )


@pytest.mark.parametrize(
    ("build", "error"),
    [
        (lambda: RecRemove(root=0, path=b""), "RecRemove.path must hold 1 to 4096 bytes"),
        (
            lambda: RecRemove(root=0, path=b"p" * (MAX_PATH_SIZE + 1)),
            "RecRemove.path must hold 1 to 4096 bytes",
        ),
        (lambda: RecRemove(root=0, path=b"a\0b"), "RecRemove.path contains a NUL byte"),
        (lambda: RecRemove(root=0, path=b"/etc"), "RecRemove.path must be relative"),
        (lambda: RecRemove(root=-1, path=b"a"), "RecRemove.root must be >= 0"),
        (
            lambda: RecRemove(root=0, path="a"),  # type: ignore[arg-type]
            "RecRemove.path must be bytes, got str",
        ),
        (
            lambda: RecMakeDir(root=0, path=b"d", mode=0o10000, mtime_ns=0),
            "RecMakeDir.mode holds more than permission bits (0o7777)",
        ),
        (
            lambda: RecAttrs(root=0, path=b"d", mode=0o100644, mtime_ns=0),
            "RecAttrs.mode holds more than permission bits (0o7777)",
        ),
        (
            lambda: RecSymlink(root=0, path=b"l", target=b"", mtime_ns=0),
            "RecSymlink.target must hold 1 to 4096 bytes",
        ),
        (
            lambda: RecSymlink(root=0, path=b"l", target=b"a\0", mtime_ns=0),
            "RecSymlink.target contains a NUL byte",
        ),
        (
            lambda: RecHardLink(root=0, path=b"l", existing=b"/f"),
            "RecHardLink.existing must be relative",
        ),
        (lambda: RecRename(root=0, path=b"a", target=b""), "RecRename.target must hold 1 to"),
        (
            lambda: RecWrite(root=0, path=b"f", offset=0, digests=DIGEST, payload=b""),
            "RecWrite.payload must hold 1 byte to MAX_BLOCK_SIZE",
        ),
        (
            lambda: RecWrite(
                root=0, path=b"f", offset=0, digests=DIGEST, payload=bytes(MAX_BLOCK_SIZE + 1)
            ),
            "RecWrite.payload must hold 1 byte to MAX_BLOCK_SIZE",
        ),
        (
            lambda: RecWrite(root=0, path=b"f", offset=0, digests=b"", payload=b"x"),
            "RecWrite.digests must be one digest per block of the payload",
        ),
        (
            lambda: RecWrite(root=0, path=b"f", offset=0, digests=DIGEST + b"d", payload=b"x"),
            "RecWrite.digests must be one digest per block of the payload",
        ),
        (
            # Two digests for 4 KiB + 1 byte: blocks of 4 KiB. Three would mean smaller ones.
            lambda: RecWrite(
                root=0, path=b"f", offset=0, digests=DIGEST * 3, payload=bytes(MIN_BLOCK_SIZE + 1)
            ),
            "RecWrite.digests must be one digest per block of the payload",
        ),
        (
            lambda: RecWrite(root=0, path=b"f", offset=MAX_FILE_SIZE, digests=DIGEST, payload=b"x"),
            "RecWrite ends past the largest file offset (2**63 - 1)",
        ),
        (
            lambda: RecZero(root=0, path=b"f", offset=0, length=0),
            "RecZero.length must be >= 1",
        ),
        (
            lambda: RecZero(root=0, path=b"f", offset=2, length=MAX_FILE_SIZE - 1),
            "RecZero ends past the largest file offset (2**63 - 1)",
        ),
        (
            lambda: RecTruncate(root=0, path=b"f", size=MAX_FILE_SIZE + 1),
            "RecTruncate ends past the largest file offset (2**63 - 1)",
        ),
    ],
)
def test_record_checks(build: Any, error: str) -> None:
    """Records refuse paths that could name no file, modes beyond permission bits, digests
    that do not match the payload, and extents past what a file can hold."""
    with pytest.raises(LocalProtocolError) as excinfo:
        build()

    assert str(excinfo.value).startswith(error)


def test_record_digests_may_describe_larger_blocks() -> None:
    """One digest for a 1 MiB payload: the writer's block size is 1 MiB (or more)."""
    write = RecWrite(root=0, path=b"f", offset=0, digests=DIGEST, payload=bytes(1 << 20))

    expected = 1
    assert expected == len(write.digests) // BLOCK_DIGEST_SIZE
