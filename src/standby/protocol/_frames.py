"""Frame codec: messages to bytes and back, with strict validation.

Wire format of one frame::

    header   20 bytes, struct "!2sBBIIQ":
             magic b"SB" | TYPE u8 | flags u8 (0) | meta_len u32 | payload_len u32 | checksum u64
    meta     meta_len bytes: msgpack array of the message's fields in declaration order,
             except a last field named ``payload``
    payload  payload_len bytes, raw (only for messages whose last field is ``payload``)

``checksum`` is xxh3-64 over meta then payload. It catches corruption that TCP's 16-bit sum
lets through and bugs in framing; it is not a defence against an attacker (TLS is).

Field encoding: enums as ints, an ``Entry`` as ``[path, kind, size, mtime_ns, mode, target]``,
tuples as arrays (decoded back to tuples), dicts as maps with str keys, bytes as bin, None as nil,
floats as float 64.

A Batch's payload is made of frames too: its records' frames, concatenated (before
compression). A record frame is refused outside a batch, and any other frame inside one.

Rules of this file:
1. Nothing here knows about connection state or roles; ``_connection.py`` does.
2. Decoding trusts nothing: every failure, whatever its cause, leaves as RemoteProtocolError.
   Encoding failures leave as LocalProtocolError.
3. Bulk data is never copied on send; on receive it is copied into the receive buffer, then
   once out of it into the message.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from typing import Any, NamedTuple, NoReturn

import msgpack
import xxhash

from ._errors import LocalProtocolError, RemoteProtocolError
from ._messages import (
    MESSAGE_TYPES,
    RECORD_TYPES,
    Entry,
    EntryKind,
    Message,
    Record,
)

#: The frame header: magic, message TYPE, flags, meta_len, payload_len, checksum.
HEADER = struct.Struct("!2sBBIIQ")
HEADER_SIZE = HEADER.size
MAGIC = b"SB"

#: Largest metadata (the msgpack part of a frame) we accept before giving up on the peer.
#: Precedents: gRPC refuses received messages over 4 MiB by default
#: (GRPC_DEFAULT_MAX_RECV_MESSAGE_LENGTH); msgpack-python's Unpacker buffers at most 100 MiB
#: (max_buffer_size, since 1.0); h11 allows 16 KiB of HTTP headers. Our largest metadata is a
#: listing batch: 1000 entries whose path and symlink target are each as long as PATH_MAX
#: (4096) allows take about 8.2 MB, so 8 MiB fits the worst case of 1000-entry Entries
#: batches, while one frame costs a receiver at most 8 MiB + MAX_BATCH_RAW (the largest
#: payload, a Batch's; other types stop at MAX_BLOCK_SIZE) of memory. It also caps a
#: RangeDigests at about 512 Ki coarse digests: choose range sizes accordingly.
DEFAULT_MAX_META_SIZE = 8 * 1024 * 1024

# The header stores meta_len in 32 bits.
_U32_MAX = (1 << 32) - 1


class FrameHeader(NamedTuple):
    """The parsed, validated header of one frame (a NamedTuple: built once per frame, cheaply)."""

    type: int
    flags: int
    meta_len: int
    payload_len: int
    checksum: int

    @property
    def frame_size(self) -> int:
        """Length of the whole frame, header included."""
        return HEADER_SIZE + self.meta_len + self.payload_len


# --- per-type field codecs ----------------------------------------------------------------------

_Encoder = Callable[[Any], Any]
_Decoder = Callable[[Any], Any]


def _encode_entries(entries: tuple[Entry, ...]) -> list[list[Any]]:
    return [[e.path, int(e.kind), e.size, e.mtime_ns, e.mode, e.target] for e in entries]


# Faster than calling EntryKind(value) once per entry.
_ENTRY_KINDS: dict[int, EntryKind] = {kind.value: kind for kind in EntryKind}


def _decode_entry(item: object) -> Entry:
    if type(item) is not list or len(item) != 6:
        raise RemoteProtocolError("an entry must be an array of 6 fields")
    path, kind, size, mtime_ns, mode, target = item
    # type() first: True == 1 would find EntryKind.FILE.
    entry_kind = _ENTRY_KINDS.get(kind) if type(kind) is int else None
    if entry_kind is None:
        raise RemoteProtocolError(f"entry kind must be one of {sorted(_ENTRY_KINDS)}")
    # Entry checks the other fields' types and ranges.
    return Entry(path=path, kind=entry_kind, size=size, mtime_ns=mtime_ns, mode=mode, target=target)


def _decode_entries(value: object) -> tuple[Entry, ...]:
    if type(value) is not list:
        raise RemoteProtocolError(f"entries must be an array, got {type(value).__name__}")
    return tuple(_decode_entry(item) for item in value)


def _decode_tuple(value: object) -> tuple[object, ...]:
    if type(value) is not list:
        raise RemoteProtocolError(f"expected an array, got {type(value).__name__}")
    return tuple(value)


# Annotation -> (encoder, decoder); None means the value travels as it is (msgpack packs int
# subclasses such as IntEnum as ints, and the message's own checks validate what arrives).
_FIELD_CODECS: dict[str, tuple[_Encoder | None, _Decoder | None]] = {
    "int": (None, None),
    "float": (None, None),
    "bool": (None, None),
    "str": (None, None),
    "bytes": (None, None),
    "str | None": (None, None),
    "bytes | None": (None, None),
    "dict[str, Any]": (None, None),
    "tuple[int, ...]": (None, _decode_tuple),  # msgpack packs tuples as arrays
    "tuple[Entry, ...]": (_encode_entries, _decode_entries),
}


@dataclass(frozen=True, slots=True)
class _TypeCodec:
    cls: type[Message]
    names: tuple[str, ...]  # meta fields, in order
    encoders: tuple[_Encoder | None, ...]
    decoders: tuple[_Decoder | None, ...]
    has_payload: bool
    max_payload: int  # 0 for types without a payload


def _type_codec(cls: type[Message]) -> _TypeCodec:
    """Build the codec of one message class from its field annotations.

    Raises:
        TypeError: a field's annotation has no codec (a message added without one).
    """
    meta_fields = list(fields(cls))
    has_payload = bool(meta_fields) and meta_fields[-1].name == "payload"
    if has_payload:
        meta_fields.pop()
    codecs = []
    for f in meta_fields:
        codec = _FIELD_CODECS.get(str(f.type))
        if codec is None:
            raise TypeError(f"{cls.__name__}.{f.name}: no wire codec for {f.type!r}")
        codecs.append(codec)
    return _TypeCodec(
        cls=cls,
        names=tuple(f.name for f in meta_fields),
        encoders=tuple(enc for enc, _ in codecs),
        decoders=tuple(dec for _, dec in codecs),
        has_payload=has_payload,
        max_payload=cls.MAX_PAYLOAD if has_payload else 0,
    )


# Session messages and records share the frame format, but never a context: each context
# knows only its own types (see parse_header).
_MESSAGE_CODECS: dict[int, _TypeCodec] = {t: _type_codec(c) for t, c in MESSAGE_TYPES.items()}
_RECORD_CODECS: dict[int, _TypeCodec] = {t: _type_codec(c) for t, c in RECORD_TYPES.items()}
_CODECS_BY_TYPE: dict[int, _TypeCodec] = {**_MESSAGE_CODECS, **_RECORD_CODECS}
_CODECS_BY_CLASS: dict[type[Message], _TypeCodec] = {c.cls: c for c in _CODECS_BY_TYPE.values()}


# --- encoding -----------------------------------------------------------------------------------


def _checksum(meta: bytes | memoryview, payload: bytes | memoryview) -> int:
    if not payload:
        return xxhash.xxh3_64_intdigest(meta)
    hasher = xxhash.xxh3_64(meta)
    hasher.update(payload)  # streaming: meta and payload are never concatenated
    return hasher.intdigest()


def encode(msg: Message, *, max_meta_size: int = DEFAULT_MAX_META_SIZE) -> list[bytes | memoryview]:
    """Serialize one message into the pieces of its frame.

    Args:
        msg: the message to send.
        max_meta_size: refuse metadata larger than this (the peer would refuse it anyway).

    Returns:
        ``[header, meta]``, plus the payload itself (not a copy) for messages that carry one.
        Write them in order, e.g. with ``writelines`` or ``sendmsg``.

    Raises:
        LocalProtocolError: the message is not a wire message (a record is not: see
            :func:`encode_record`), or cannot be encoded.
    """
    codec = _CODECS_BY_CLASS.get(type(msg))
    if codec is None or isinstance(msg, Record):
        raise LocalProtocolError(not_a_wire_message(msg))
    return _encode(msg, codec, max_meta_size)


def not_a_wire_message(msg: Message) -> str:
    """Why ``msg`` cannot be sent as a frame of its own."""
    name = type(msg).__name__
    if isinstance(msg, Record):
        return f"{name} is a record: records travel only inside a Batch payload (encode_records)"
    return f"{name} is not a wire message"


def _encode(msg: Message, codec: _TypeCodec, max_meta_size: int) -> list[bytes | memoryview]:
    values = [
        getattr(msg, name) if enc is None else enc(getattr(msg, name))
        for name, enc in zip(codec.names, codec.encoders, strict=True)
    ]
    try:
        meta: bytes = msgpack.packb(values, use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        # Only reachable when a dict field was mutated after the message was built.
        raise LocalProtocolError(f"cannot encode {type(msg).__name__}: {exc}") from exc
    if len(meta) > max_meta_size:
        raise LocalProtocolError(
            f"{type(msg).__name__} metadata is {len(meta)} bytes, over the {max_meta_size} limit"
        )
    payload: bytes = msg.payload if codec.has_payload else b""  # type: ignore[attr-defined]
    header = HEADER.pack(MAGIC, msg.TYPE, 0, len(meta), len(payload), _checksum(meta, payload))
    return [header, meta, payload] if codec.has_payload else [header, meta]


# --- decoding -----------------------------------------------------------------------------------


def parse_header(
    data: bytes | bytearray | memoryview,
    offset: int = 0,
    *,
    max_meta_size: int = DEFAULT_MAX_META_SIZE,
    records: bool = False,
) -> FrameHeader:
    """Parse and validate the header at ``data[offset:offset + HEADER_SIZE]``.

    Everything the header alone can tell is checked here, so an oversized or unknown frame is
    refused before any of it is buffered.

    Args:
        records: the frame is inside a Batch payload, where only records may be; otherwise it
            is on a connection, where records may not.

    Raises:
        RemoteProtocolError: bad magic, unknown type, a type out of its context, nonzero
            flags, oversized parts, or a payload on a type that has none.
    """
    magic, type_, flags, meta_len, payload_len, checksum = HEADER.unpack_from(data, offset)
    if magic != MAGIC:
        raise RemoteProtocolError(f"bad frame magic {magic!r}, expected {MAGIC!r}")
    codec = (_RECORD_CODECS if records else _MESSAGE_CODECS).get(type_)
    if codec is None:
        _refuse_type(type_, records)
    name = codec.cls.__name__
    if flags:
        raise RemoteProtocolError(f"{name} frame has unknown flags {flags:#04x}")
    if meta_len > max_meta_size:
        raise RemoteProtocolError(f"{name} metadata of {meta_len} bytes exceeds {max_meta_size}")
    if payload_len > codec.max_payload:
        if not codec.has_payload:
            raise RemoteProtocolError(f"{name} frame carries a payload; {name} has none")
        raise RemoteProtocolError(
            f"{name} payload of {payload_len} bytes exceeds {codec.max_payload}"
        )
    return FrameHeader(type_, flags, meta_len, payload_len, checksum)


def _refuse_type(type_: int, records: bool) -> NoReturn:
    """Explain why a frame of ``type_`` is refused where it is."""
    codec = _CODECS_BY_TYPE.get(type_)
    if codec is None:
        raise RemoteProtocolError(f"unknown message type {type_}")
    name = codec.cls.__name__
    if records:
        raise RemoteProtocolError(f"a Batch payload holds records only, not {name}")
    raise RemoteProtocolError(f"{name} is a record: records travel only inside a Batch payload")


def decode_body(
    header: FrameHeader, meta: bytes | memoryview, payload: bytes | memoryview
) -> Message:
    """Check the checksum, then decode and validate the message of a parsed header.

    Args:
        header: what :func:`parse_header` returned for this frame.
        meta: exactly ``header.meta_len`` bytes.
        payload: exactly ``header.payload_len`` bytes; copied into the message.

    Raises:
        RemoteProtocolError: checksum mismatch, undecodable metadata, wrong number or types of
            fields, or values the message refuses.
    """
    codec = _CODECS_BY_TYPE[header.type]
    name = codec.cls.__name__
    if _checksum(meta, payload) != header.checksum:
        raise RemoteProtocolError(f"{name} frame checksum mismatch")
    try:
        values = msgpack.unpackb(meta, use_list=True, raw=False, strict_map_key=True)
    except Exception as exc:
        # msgpack raises many types here (ValueError subclasses, TypeError, UnicodeDecodeError,
        # ...); its changelog for 0.6.1 says to catch Exception around a minimal block.
        raise RemoteProtocolError(f"{name} metadata is not valid msgpack: {exc}") from exc
    if type(values) is not list or len(values) != len(codec.names):
        raise RemoteProtocolError(f"{name} metadata must be an array of {len(codec.names)} fields")
    try:
        kwargs: dict[str, Any] = {
            field: value if dec is None else dec(value)
            for field, dec, value in zip(codec.names, codec.decoders, values, strict=True)
        }
        if codec.has_payload:
            kwargs["payload"] = bytes(payload)
        return codec.cls(**kwargs)
    except (LocalProtocolError, TypeError, ValueError) as exc:
        # The message's (or an entry's) own validation refused what the peer sent.
        raise RemoteProtocolError(f"invalid {name}: {exc}") from exc


def decode(
    frame: bytes | bytearray | memoryview, *, max_meta_size: int = DEFAULT_MAX_META_SIZE
) -> Message:
    """Decode exactly one whole frame.

    Raises:
        RemoteProtocolError: the bytes are not exactly one valid frame.
    """
    with memoryview(frame) as view:
        if len(view) < HEADER_SIZE:
            raise RemoteProtocolError(f"frame of {len(view)} bytes is shorter than a header")
        header = parse_header(view, max_meta_size=max_meta_size)
        if len(view) != header.frame_size:
            raise RemoteProtocolError(
                f"frame of {len(view)} bytes, header says {header.frame_size}"
            )
        meta_end = HEADER_SIZE + header.meta_len
        with view[HEADER_SIZE:meta_end] as meta, view[meta_end:] as payload:
            return decode_body(header, meta, payload)


# --- records: the payload of a Batch ------------------------------------------------------------


def encode_record(record: Message) -> bytes:
    """The frame of one record, as bytes (its payload copied in).

    Raises:
        LocalProtocolError: ``record`` is not a record, or cannot be encoded.
    """
    return b"".join(_record_pieces(record))


def encode_records(records: Iterable[Message]) -> bytes:
    """The frames of ``records``, concatenated: the raw payload of a Batch (one copy).

    Raises:
        LocalProtocolError: one of them is not a record, or cannot be encoded.
    """
    return b"".join([piece for record in records for piece in _record_pieces(record)])


def _record_pieces(record: Message) -> list[bytes | memoryview]:
    codec = _CODECS_BY_CLASS.get(type(record))
    if codec is None or not isinstance(record, Record):
        raise LocalProtocolError(f"{type(record).__name__} is not a record")
    return _encode(record, codec, DEFAULT_MAX_META_SIZE)


def decode_records(data: bytes | memoryview, expected_count: int) -> list[Message]:
    """Decode the records of a Batch payload (decompressed): exactly ``expected_count`` frames.

    Args:
        data: the records' frames, concatenated.
        expected_count: the Batch's ``count``.

    Returns:
        The records, in order (each a :class:`Record`).

    Raises:
        RemoteProtocolError: a frame is damaged or is not a record, or the frames are not
            exactly ``expected_count`` whole ones with nothing after them.
        ValueError: ``expected_count`` is negative.
    """
    if expected_count < 0:
        raise ValueError(f"expected_count must be >= 0, got {expected_count}")
    records: list[Message] = []
    with memoryview(data) as raw, raw.cast("B") as view:
        size = len(view)
        offset = 0
        while offset < size:
            if len(records) == expected_count:
                raise RemoteProtocolError(
                    f"Batch payload has {size - offset} bytes after its {expected_count} records"
                )
            if size - offset < HEADER_SIZE:
                raise RemoteProtocolError("Batch payload ends inside a record's header")
            header = parse_header(view, offset, records=True)
            end = offset + header.frame_size
            if end > size:
                raise RemoteProtocolError("Batch payload ends inside a record")
            meta_end = offset + HEADER_SIZE + header.meta_len
            with view[offset + HEADER_SIZE : meta_end] as meta, view[meta_end:end] as payload:
                records.append(decode_body(header, meta, payload))
            offset = end
    if len(records) != expected_count:
        raise RemoteProtocolError(
            f"Batch payload holds {len(records)} records, its count says {expected_count}"
        )
    return records


# First capacity of a FrameDecoder's buffer; it grows (by doubling) to fit the largest frame.
_INITIAL_BUFFER_SIZE = 256 * 1024


class FrameDecoder:
    """Incremental decoder: feed bytes as they arrive, take whole messages out.

    The buffer is a bytearray whose length is its capacity, with a read offset and a write
    offset. It is written in place and never shrunk: resizing a bytearray down and up again
    for every frame returns its memory to the system and faults it back in, which costs more
    than the data copies here. Unparsed bytes move to the front only when a write would not
    fit, and the buffer doubles only when they still do not; with a capacity of at least twice
    the largest frame, each byte is moved at most about once. Memory per decoder is therefore
    bounded by about twice the largest frame received (at most ``max_meta_size`` plus the
    largest payload: MAX_BATCH_RAW for a Batch, MAX_BLOCK_SIZE for others) plus twice the
    largest chunk fed. A frame's header is validated as soon as its 20 bytes are here, so
    a frame over the limits is refused before it is buffered.
    """

    def __init__(self, *, max_meta_size: int = DEFAULT_MAX_META_SIZE) -> None:
        if not 1 <= max_meta_size <= _U32_MAX:
            raise ValueError(f"max_meta_size must be in 1..{_U32_MAX}, got {max_meta_size}")
        self._max_meta_size = max_meta_size
        self._buffer = bytearray(_INITIAL_BUFFER_SIZE)
        self._start = 0  # first byte not yet returned as a message
        self._end = 0  # end of the bytes received
        self._header: FrameHeader | None = None  # header of the frame being waited for

    @property
    def max_meta_size(self) -> int:
        """The metadata size limit of this decoder."""
        return self._max_meta_size

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as messages (0 means at a frame boundary)."""
        return self._end - self._start

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes (copied: the caller may reuse its buffer)."""
        with memoryview(data) as view:
            size = view.nbytes
            if self._end + size > len(self._buffer):
                self._make_room(size)
            # Same-length slice assignment: a plain copy, the bytearray is not resized.
            self._buffer[self._end : self._end + size] = view
            self._end += size

    def _make_room(self, size: int) -> None:
        """Move the unparsed bytes to the front, growing the buffer if they and ``size`` bytes
        still would not fit."""
        pending = self._end - self._start
        capacity = len(self._buffer)
        if pending + size > capacity:
            capacity = max(2 * capacity, pending + size)
            grown = bytearray(capacity)
            grown[:pending] = self._buffer[self._start : self._end]
            self._buffer = grown
        else:  # pending > 0: an empty buffer starts over at 0 and never gets here
            # Copy out first: a slice assignment from a view of itself would overlap.
            self._buffer[:pending] = self._buffer[self._start : self._end]
        self._start, self._end = 0, pending

    def next_message(self) -> Message | None:
        """Return the next whole message, or None if more bytes are needed.

        Raises:
            RemoteProtocolError: the buffered bytes are not a valid frame. The decoder then
                raises the same way at every call.
        """
        header = self._header
        if header is None:
            if self._end - self._start < HEADER_SIZE:
                return None
            header = self._header = parse_header(
                self._buffer, self._start, max_meta_size=self._max_meta_size
            )
        start = self._start
        end = start + header.frame_size
        if self._end < end:
            return None
        meta_start = start + HEADER_SIZE
        meta_end = meta_start + header.meta_len
        # Release every view before returning or raising: a live export would stop the
        # buffer from growing later.
        with (
            memoryview(self._buffer) as view,
            view[meta_start:meta_end] as meta,
            view[meta_end:end] as payload,
        ):
            msg = decode_body(header, meta, payload)
        self._header = None
        if end == self._end:
            self._start = self._end = 0  # all consumed: start over at the front, for free
        else:
            self._start = end
        return msg
