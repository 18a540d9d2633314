"""Every message that engines exchange over a peer link.

Rules of this file:
1. A message is a frozen, slotted, keyword-only dataclass that validates itself, so an invalid
   message cannot be built and every later layer can trust what it holds.
2. Each message has a stable one-byte ``TYPE`` (never reuse a retired number) and a ``SENDER``:
   the role allowed to send it. The *initiator* opened the connection (the master's engine for
   a synchronization or a replication); the *acceptor* answered it. Session messages take
   TYPEs below RECORD_TYPE_MIN, records (rule 6) TYPEs from it up.
3. Paths travel as bytes, relative to a root, with ``/`` separators: names are whatever the
   file system holds (not necessarily UTF-8). The replica confines them; this file only checks
   their shape loosely (types and sizes; in records also: not empty, no NUL, not absolute).
4. A message whose last field is named ``payload`` carries it as the frame's raw payload, not
   inside the encoded metadata, so bulk data is never re-encoded.
5. Only what survives the wire unchanged can be built: integers fit in 64 bits (int fields
   refuse bool), text is encodable as UTF-8, and ``dict[str, Any]`` fields hold plain data
   (None, bool, int, float, str, bytes, list, dict with str keys; no tuples) nested at most
   MAX_DATA_DEPTH deep, and floats are finite, so ``decode(encode(m)) == m`` holds for every
   message.
6. A *record* (a :class:`Record`) is one change for the replica to replay, numbered by its place
   in the replication stream. Records never travel as frames of their own: their frames are
   concatenated into the payload of a :class:`Batch` (``encode_records``, ``decode_records``).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from ._errors import LocalProtocolError

#: Versions of the wire protocol this code speaks. The handshake picks the highest common one.
PROTOCOL_VERSION_MIN = 1
PROTOCOL_VERSION_MAX = 1

#: Length in bytes of a block digest (xxh3-128) and of a whole-file digest (BLAKE3, 32 bytes).
BLOCK_DIGEST_SIZE = 16
FILE_DIGEST_SIZE = 32

#: Largest payload a BlockData may carry (a run of blocks, or one large block). Precedents:
#: rsync MAX_BLOCK_SIZE = 128 KiB (protocol >= 30), DRBD_MAX_BIO_SIZE = 1 MiB. We allow 4 MiB so
#: a scenario can choose large blocks for very large images; the frame limit adds room for the
#: metadata (up to 16 bytes of digest per 4 KiB block).
MAX_BLOCK_SIZE = 4 * 1024 * 1024
#: Smallest block size a scenario may choose (a page).
MIN_BLOCK_SIZE = 4096

#: Largest uncompressed payload of a Batch: the records' frames, concatenated. Precedents:
#: PostgreSQL streams its WAL in 16 MiB segments (the default wal_segment_size); Kafka refuses
#: batches over about 1 MiB by default (message.max.bytes). Our largest record, a RecWrite of
#: MAX_BLOCK_SIZE with one digest per 4 KiB and a PATH_MAX path, takes about 4.02 MiB, so any
#: record fits in a batch with room for more; at 1 Gbit/s a full batch is on the wire for
#: about 0.14 s, so acknowledgements stay frequent; and a receiver holds at most one batch
#: compressed and one decompressed (32 MiB) while it decodes.
MAX_BATCH_RAW = 16 * 1024 * 1024

#: Longest path or link target a record may hold: Linux PATH_MAX, terminating NUL included,
#: so a longer one could never be opened on the replica.
MAX_PATH_SIZE = 4096

#: Largest file offset or size: off_t is a signed 64-bit integer.
MAX_FILE_SIZE = (1 << 63) - 1

#: Records take TYPEs from here up (255 at most), session messages the TYPEs below. A record's
#: TYPE has an even number of one bits, so one flipped bit never turns a record into another
#: (the frame checksum covers meta and payload, not the header, and records also rest in
#: spools on disk): RecMakeDir and RecAttrs, say, have the same shape.
RECORD_TYPE_MIN = 128

#: What a session is for (Hello.purpose). An acceptor answers a purpose it does not serve
#: with Failure; a session's purpose decides which session messages it may carry (_state.py).
PURPOSE_CONTROL = "control"
PURPOSE_SYNC = "sync"
PURPOSE_REPLICATE = "replicate"
PURPOSE_HA = "ha"


class Role(enum.Enum):
    INITIATOR = "initiator"
    ACCEPTOR = "acceptor"
    EITHER = "either"


class EntryKind(enum.IntEnum):
    """What a tree entry is. Values travel on the wire."""

    FILE = 1
    DIRECTORY = 2
    SYMLINK = 3
    OTHER = 4  # socket, FIFO, device: never replicated, reported with an event


class SyncMethod(enum.IntEnum):
    FILE = 1  # size and mtime; differing files move whole
    BLOCK = 2  # fixed-offset block digests; only differing blocks move


@dataclass(frozen=True, slots=True, kw_only=True)
class Message:
    """Base of all messages."""

    TYPE: ClassVar[int]
    SENDER: ClassVar[Role]
    #: Largest payload a frame of this type may carry (for types with a ``payload`` field);
    #: the frame decoder refuses a larger one from its header, before buffering it.
    MAX_PAYLOAD: ClassVar[int] = MAX_BLOCK_SIZE

    def __post_init__(self) -> None:
        _check_fields(self)
        self._validate()

    def _validate(self) -> None:
        """Per-message checks beyond field types; override where needed."""


# The string annotations used in this file, mapped to the runtime types they must have. A field
# whose annotation is missing here fails loudly (TypeError) instead of going unchecked.
_FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "int": int,
    "float": float,  # finite only: NaN is not equal to itself
    "str": str,
    "bytes": bytes,
    "bool": bool,
    "bytes | None": (bytes, type(None)),
    # A payload may be a view of the sender's reused read buffer: sent without a copy.
    "bytes | memoryview": (bytes, memoryview),
    "str | None": (str, type(None)),
    "dict[str, Any]": dict,
    "tuple[int, ...]": tuple,
    "tuple[Entry, ...]": tuple,
    # "EntryKind" and "Entry" are added below their classes.
}
# The annotation of each element of a tuple field.
_ITEM_ANNOTATIONS = {"tuple[int, ...]": "int", "tuple[Entry, ...]": "Entry"}
# mtimes may precede 1970.
_SIGNED_FIELDS = frozenset({"mtime_ns"})

# Integers travel as msgpack integers: unsigned fields up to 2**64 - 1, signed ones (mtimes) in
# the int64 range. Anything wider could not be encoded, so it cannot be built either.
_U64_MAX = (1 << 64) - 1
_I64_MIN = -(1 << 63)
_I64_MAX = (1 << 63) - 1

#: How deeply lists and dicts may nest inside a ``dict[str, Any]`` field (scenario documents,
#: statistics). Real documents nest a handful of levels; the bound keeps checking and decoding
#: far from the interpreter's recursion limit whatever a peer sends.
MAX_DATA_DEPTH = 32

# Per class, for each field: (name, "Class.name", annotation, fast type, low, high), computed
# once. A value whose type is exactly the fast type (and, for ints, within low..high; for str,
# ASCII) is valid without further ado; anything else goes through _check_value, which accepts
# the rest of what is valid (enums, subclasses, containers) and explains what is not.
_FieldSpec = tuple[str, str, str, type | None, int, int]
_FIELD_SPECS: dict[type, tuple[_FieldSpec, ...]] = {}
_FAST_TYPES: dict[str, type] = {"int": int, "bytes": bytes, "bool": bool, "str": str}


def _field_specs(cls: type[Message | Entry]) -> tuple[_FieldSpec, ...]:
    specs = []
    for f in fields(cls):
        annotation = str(f.type)
        low, high = (_I64_MIN, _I64_MAX) if f.name in _SIGNED_FIELDS else (0, _U64_MAX)
        fast = _FAST_TYPES.get(annotation)
        specs.append((f.name, f"{cls.__name__}.{f.name}", annotation, fast, low, high))
    return tuple(specs)


def _check_fields(obj: Message | Entry) -> None:
    """Check every field of a message or entry against its annotation.

    Raises:
        LocalProtocolError: a field holds a value of the wrong type or out of range.
        TypeError: a field's annotation has no runtime check (a bug in this file).
    """
    cls = type(obj)
    specs = _FIELD_SPECS.get(cls)
    if specs is None:
        specs = _FIELD_SPECS[cls] = _field_specs(cls)
    for name, where, annotation, fast, low, high in specs:
        value = getattr(obj, name)
        if type(value) is fast:
            if type(value) is int:
                if low <= value <= high:
                    continue
            elif type(value) is not str or value.isascii():
                continue
        _check_value(where, annotation, value, signed=low < 0)


def _check_value(where: str, annotation: str, value: object, *, signed: bool = False) -> None:
    expected = _FIELD_TYPES.get(annotation)
    if expected is None:
        raise TypeError(f"{where}: annotation {annotation!r} has no runtime check")
    # bool is an int subclass, but True is no file size.
    if not isinstance(value, expected) or (annotation == "int" and isinstance(value, bool)):
        raise LocalProtocolError(f"{where} must be {annotation}, got {type(value).__name__}")
    if isinstance(value, int):  # bool included: 0 and 1 pass
        _check_int(where, value, signed=signed)
    elif isinstance(value, str):
        _check_text(where, value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise LocalProtocolError(f"{where} must be a finite float")
    elif isinstance(value, tuple):
        item_annotation = _ITEM_ANNOTATIONS[annotation]
        item_type = _FIELD_TYPES[item_annotation]
        for item in value:
            # The common case inline (a listing holds thousands of entries); the rest explained.
            if type(item) is not item_type or (type(item) is int and not 0 <= item <= _U64_MAX):
                _check_value(where, item_annotation, item)
    elif isinstance(value, dict):
        _check_data(where, value, 1)


def _check_int(where: str, value: int, *, signed: bool) -> None:
    if signed:
        if not _I64_MIN <= value <= _I64_MAX:
            raise LocalProtocolError(f"{where} must fit in a signed 64-bit integer")
    elif value < 0:
        raise LocalProtocolError(f"{where} must be >= 0")
    elif value > _U64_MAX:
        raise LocalProtocolError(f"{where} must be < 2**64")


def _check_text(where: str, value: str) -> None:
    # Text travels as UTF-8: a lone surrogate (from surrogateescape, say) cannot.
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise LocalProtocolError(f"{where} is not encodable as UTF-8") from None


def _check_data(where: str, value: object, depth: int) -> None:
    """Check that ``value`` is plain data that survives the wire unchanged.

    Plain data is None, bool, int (int64 or uint64), float, str, bytes, list, and dict with
    str keys, nested at most MAX_DATA_DEPTH deep. Tuples are refused: they would come back as
    lists, and the message would no longer equal itself after a round trip.
    """
    if value is None or isinstance(value, bool | float | bytes):
        return
    if isinstance(value, int):
        if not _I64_MIN <= value <= _U64_MAX:
            raise LocalProtocolError(f"{where} holds an integer wider than 64 bits")
    elif isinstance(value, str):
        _check_text(where, value)
    elif isinstance(value, list | dict):
        if depth > MAX_DATA_DEPTH:
            raise LocalProtocolError(f"{where} nests deeper than {MAX_DATA_DEPTH} levels")
        if isinstance(value, list):
            for item in value:
                _check_data(where, item, depth + 1)
        else:
            for key, item in value.items():
                if not isinstance(key, str):
                    raise LocalProtocolError(f"{where} keys must be str, got {type(key).__name__}")
                _check_text(where, key)
                _check_data(where, item, depth + 1)
    else:
        raise LocalProtocolError(f"{where} cannot hold {type(value).__name__} (plain data only)")


# --- handshake and session control -------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Hello(Message):
    """First message of every connection: who we are and which versions we speak."""

    TYPE: ClassVar[int] = 1
    SENDER: ClassVar[Role] = Role.INITIATOR

    version_min: int
    version_max: int
    engine: str
    purpose: str  # PURPOSE_CONTROL, PURPOSE_SYNC or PURPOSE_REPLICATE: what follows

    def _validate(self) -> None:
        if self.version_min > self.version_max:
            raise LocalProtocolError("Hello.version_min > version_max")


@dataclass(frozen=True, slots=True, kw_only=True)
class Welcome(Message):
    """The acceptor's answer to Hello: the version both will speak from now on."""

    TYPE: ClassVar[int] = 2
    SENDER: ClassVar[Role] = Role.ACCEPTOR

    version: int
    engine: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Failure(Message):
    """The sender gives up on this session; ``code`` is an event ID such as ``SB3104``."""

    TYPE: ClassVar[int] = 3
    SENDER: ClassVar[Role] = Role.EITHER

    code: str
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Goodbye(Message):
    """Orderly end of a session; no message may follow."""

    TYPE: ClassVar[int] = 4
    SENDER: ClassVar[Role] = Role.EITHER


@dataclass(frozen=True, slots=True, kw_only=True)
class Reply(Message):
    """Generic answer to a control request."""

    TYPE: ClassVar[int] = 5
    SENDER: ClassVar[Role] = Role.ACCEPTOR

    ok: bool
    message: str
    data: dict[str, Any]


# --- scenario management -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class ScenarioPut(Message):
    """The master's engine gives a scenario to the replica's engine (create or replace)."""

    TYPE: ClassVar[int] = 10
    SENDER: ClassVar[Role] = Role.INITIATOR

    name: str
    document: dict[str, Any]  # the validated scenario, as plain data


@dataclass(frozen=True, slots=True, kw_only=True)
class ScenarioRemove(Message):
    TYPE: ClassVar[int] = 11
    SENDER: ClassVar[Role] = Role.INITIATOR

    name: str


# --- synchronization ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Entry:
    """One entry of a tree listing (not a message: travels inside ``Entries``)."""

    path: bytes
    kind: EntryKind
    size: int
    mtime_ns: int
    mode: int  # permission bits only (S_IMODE)
    target: bytes = b""  # symlink target, as stored

    def __post_init__(self) -> None:
        # Listings hold millions of entries: test the common, valid case inline and leave the
        # precise diagnosis (and the odd subclass of bytes or int) to the generic check.
        size, mode, mtime_ns = self.size, self.mode, self.mtime_ns
        if not (
            type(self.path) is bytes
            and type(self.target) is bytes
            and type(self.kind) is EntryKind
            and type(size) is int
            and type(mode) is int
            and type(mtime_ns) is int
            and 0 <= size <= _U64_MAX
            and 0 <= mode <= _U64_MAX
            and _I64_MIN <= mtime_ns <= _I64_MAX
        ):
            _check_fields(self)


_FIELD_TYPES["EntryKind"] = EntryKind
_FIELD_TYPES["Entry"] = Entry


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncBegin(Message):
    """Start synchronizing one root of a scenario. The replica answers with its listing."""

    TYPE: ClassVar[int] = 20
    SENDER: ClassVar[Role] = Role.INITIATOR

    scenario: str
    #: The epoch of the master's record: a replica that knows a higher one refuses (fencing).
    epoch: int
    root: int  # index into the scenario's roots
    method: int  # SyncMethod
    block_size: int
    range_blocks: int  # blocks per coarse range of the two-level comparison

    def _validate(self) -> None:
        if self.method not in SyncMethod.__members__.values():
            raise LocalProtocolError(f"SyncBegin.method {self.method} is unknown")
        block_size = self.block_size
        if not MIN_BLOCK_SIZE <= block_size <= MAX_BLOCK_SIZE or block_size & (block_size - 1):
            raise LocalProtocolError("SyncBegin.block_size must be a power of two in 4 KiB..4 MiB")
        if not 1 <= self.range_blocks <= 1 << 20:
            raise LocalProtocolError("SyncBegin.range_blocks must be in 1..2**20")


@dataclass(frozen=True, slots=True, kw_only=True)
class Entries(Message):
    """A batch of the replica's listing of the root."""

    TYPE: ClassVar[int] = 21
    SENDER: ClassVar[Role] = Role.ACCEPTOR

    entries: tuple[Entry, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class EntriesEnd(Message):
    """End of the replica's listing. ``error`` is set when the replica root could not be listed."""

    TYPE: ClassVar[int] = 22
    SENDER: ClassVar[Role] = Role.ACCEPTOR

    count: int
    error: str | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Remove(Message):
    """Delete an entry (a directory with everything under it)."""

    TYPE: ClassVar[int] = 23
    SENDER: ClassVar[Role] = Role.INITIATOR

    path: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class MakeDir(Message):
    TYPE: ClassVar[int] = 24
    SENDER: ClassVar[Role] = Role.INITIATOR

    path: bytes
    mode: int


@dataclass(frozen=True, slots=True, kw_only=True)
class MakeSymlink(Message):
    """Create or replace a symbolic link; the target is stored as given and never followed."""

    TYPE: ClassVar[int] = 25
    SENDER: ClassVar[Role] = Role.INITIATOR

    path: bytes
    target: bytes
    mtime_ns: int


@dataclass(frozen=True, slots=True, kw_only=True)
class MakeHardLink(Message):
    """Make ``path`` another name of the already synchronized file ``existing``."""

    TYPE: ClassVar[int] = 26
    SENDER: ClassVar[Role] = Role.INITIATOR

    path: bytes
    existing: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class SetAttrs(Message):
    """Set the permission bits and the mtime of an entry (directories, after their content)."""

    TYPE: ClassVar[int] = 27
    SENDER: ClassVar[Role] = Role.INITIATOR

    path: bytes
    mode: int
    mtime_ns: int


@dataclass(frozen=True, slots=True, kw_only=True)
class HashRequest(Message):
    """Ask the replica for the coarse (range) digests of one of its files."""

    TYPE: ClassVar[int] = 30
    SENDER: ClassVar[Role] = Role.INITIATOR

    file_id: int
    path: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class RangeDigests(Message):
    """The replica's coarse digests: one per range of ``range_blocks`` blocks, concatenated.

    ``size`` is the replica file's size; ``missing`` is true when it has no such regular file.
    """

    TYPE: ClassVar[int] = 31
    SENDER: ClassVar[Role] = Role.ACCEPTOR

    file_id: int
    size: int
    missing: bool
    digests: bytes

    def _validate(self) -> None:
        if len(self.digests) % BLOCK_DIGEST_SIZE:
            raise LocalProtocolError("RangeDigests.digests is not a whole number of digests")


@dataclass(frozen=True, slots=True, kw_only=True)
class BlockRequest(Message):
    """Ask for the block digests inside the listed coarse ranges (those that differ)."""

    TYPE: ClassVar[int] = 32
    SENDER: ClassVar[Role] = Role.INITIATOR

    file_id: int
    ranges: tuple[int, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class BlockDigests(Message):
    """Block digests for the requested ranges, in the order asked, concatenated."""

    TYPE: ClassVar[int] = 33
    SENDER: ClassVar[Role] = Role.ACCEPTOR

    file_id: int
    digests: bytes

    def _validate(self) -> None:
        if len(self.digests) % BLOCK_DIGEST_SIZE:
            raise LocalProtocolError("BlockDigests.digests is not a whole number of digests")


@dataclass(frozen=True, slots=True, kw_only=True)
class FileBegin(Message):
    """Start writing a file. ``whole``: written to a temporary name and renamed at FileEnd;
    otherwise the existing replica file is updated in place, block by block."""

    TYPE: ClassVar[int] = 34
    SENDER: ClassVar[Role] = Role.INITIATOR

    file_id: int
    path: bytes
    size: int
    whole: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class BlockData(Message):
    """Data for a run of whole blocks of the current file, starting at a block boundary.

    ``digests`` holds the xxh3-128 digest of each ``block_size`` piece of ``payload`` (the
    last piece of a file may be shorter), concatenated; the replica checks every one before
    it writes anything.
    """

    TYPE: ClassVar[int] = 35
    SENDER: ClassVar[Role] = Role.INITIATOR

    file_id: int
    offset: int
    digests: bytes
    payload: bytes | memoryview

    def _validate(self) -> None:
        if not self.digests or len(self.digests) % BLOCK_DIGEST_SIZE:
            raise LocalProtocolError("BlockData.digests is not a whole, non-zero number of digests")
        if not self.payload or len(self.payload) > MAX_BLOCK_SIZE:
            raise LocalProtocolError("BlockData.payload must hold 1 byte to MAX_BLOCK_SIZE")


@dataclass(frozen=True, slots=True, kw_only=True)
class ZeroRange(Message):
    """A range of the current file that is all zeros: the replica leaves or punches a hole."""

    TYPE: ClassVar[int] = 36
    SENDER: ClassVar[Role] = Role.INITIATOR

    file_id: int
    offset: int
    length: int


@dataclass(frozen=True, slots=True, kw_only=True)
class FileEnd(Message):
    """The current file is complete: final size and attributes, and the master's digest of it.

    ``digest`` is the file digest defined in :mod:`standby.blocks` (BLAKE3 over the file's
    block digests and size), which the replica recomputes and reports in FileResult.
    """

    TYPE: ClassVar[int] = 37
    SENDER: ClassVar[Role] = Role.INITIATOR

    file_id: int
    size: int
    mode: int
    mtime_ns: int
    digest: bytes

    def _validate(self) -> None:
        if len(self.digest) != FILE_DIGEST_SIZE:
            raise LocalProtocolError(f"FileEnd.digest must be {FILE_DIGEST_SIZE} bytes")


@dataclass(frozen=True, slots=True, kw_only=True)
class FileResult(Message):
    """The replica's verdict on a file: ``ok`` when its digest equals the master's."""

    TYPE: ClassVar[int] = 38
    SENDER: ClassVar[Role] = Role.ACCEPTOR

    file_id: int
    ok: bool
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncEnd(Message):
    """No more operations for this root; the replica makes everything durable and answers."""

    TYPE: ClassVar[int] = 39
    SENDER: ClassVar[Role] = Role.INITIATOR


@dataclass(frozen=True, slots=True, kw_only=True)
class SyncDone(Message):
    """The replica's statistics for the root, after everything is durable."""

    TYPE: ClassVar[int] = 40
    SENDER: ClassVar[Role] = Role.ACCEPTOR

    stats: dict[str, Any]


# --- replication -------------------------------------------------------------------------------
#
# A "replicate" session streams the changes of one scenario, in order. The initiator (the
# master's engine) sends ReplicateBegin; the acceptor (the replica's engine) answers
# ReplicateReady with what it already holds; then Batches of numbered records flow one way and
# Acks the other, with Heartbeats from either side while a direction is idle.


def _check_seqs(name: str, received_seq: int, durable_seq: int) -> None:
    if durable_seq > received_seq:
        raise LocalProtocolError(f"{name}.durable_seq > received_seq")


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicateBegin(Message):
    """Start streaming the changes of a scenario.

    Records numbered ``base_seq`` or below were superseded by a synchronization: the replica
    treats them as applied (0: none were).
    """

    TYPE: ClassVar[int] = 50
    SENDER: ClassVar[Role] = Role.INITIATOR

    scenario: str
    #: The epoch of the master's record: a replica that knows a higher one refuses (fencing).
    epoch: int
    base_seq: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ReplicateReady(Message):
    """What the replica already holds, so the master sends from ``received_seq + 1``.

    ``received_seq``: the highest seq it holds safely (applied, or in its own spool);
    ``durable_seq``: the highest seq applied and fsynced (never above ``received_seq``).
    """

    TYPE: ClassVar[int] = 51
    SENDER: ClassVar[Role] = Role.ACCEPTOR

    received_seq: int
    durable_seq: int

    def _validate(self) -> None:
        _check_seqs("ReplicateReady", self.received_seq, self.durable_seq)


@dataclass(frozen=True, slots=True, kw_only=True)
class Batch(Message):
    """``count`` records, numbered ``first_seq`` to ``first_seq + count - 1``.

    ``payload`` is the records' frames concatenated (``encode_records``), ``raw_size`` bytes
    long; when ``compressed``, it holds them as one zstd frame instead (``compress_batch``),
    and ``raw_size`` is the length once decompressed.
    """

    TYPE: ClassVar[int] = 52
    SENDER: ClassVar[Role] = Role.INITIATOR
    MAX_PAYLOAD: ClassVar[int] = MAX_BATCH_RAW

    first_seq: int
    count: int
    compressed: bool
    raw_size: int
    payload: bytes | memoryview

    def _validate(self) -> None:
        if not 1 <= self.raw_size <= MAX_BATCH_RAW:
            raise LocalProtocolError("Batch.raw_size must be in 1..MAX_BATCH_RAW")
        if self.first_seq < 1:
            raise LocalProtocolError("Batch.first_seq must be >= 1")
        # Every record takes bytes, and the last seq must fit in 64 bits.
        if not 1 <= self.count <= self.raw_size or self.first_seq + self.count - 1 > _U64_MAX:
            raise LocalProtocolError("Batch.count must be in 1..raw_size, its last seq < 2**64")
        size = len(self.payload)
        if self.compressed:
            if not 1 <= size <= MAX_BATCH_RAW:
                raise LocalProtocolError("Batch.payload must hold 1 byte to MAX_BATCH_RAW")
        elif size != self.raw_size:
            raise LocalProtocolError("Batch.raw_size must be len(payload) when not compressed")


@dataclass(frozen=True, slots=True, kw_only=True)
class Ack(Message):
    """How far the replica got: the same two seqs as ReplicateReady.

    A replica sends them growing; this package keeps no seqs and does not check that.
    """

    TYPE: ClassVar[int] = 53
    SENDER: ClassVar[Role] = Role.ACCEPTOR

    received_seq: int
    durable_seq: int

    def _validate(self) -> None:
        _check_seqs("Ack", self.received_seq, self.durable_seq)


@dataclass(frozen=True, slots=True, kw_only=True)
class Heartbeat(Message):
    """Sent by a side that has sent nothing for a while, so the peer knows the link is alive.

    ``sent_at`` is the sender's wall clock (Unix time, seconds), for lag estimates and logs.
    No answer is due: each side sends its own.
    """

    TYPE: ClassVar[int] = 54
    SENDER: ClassVar[Role] = Role.EITHER

    sent_at: float


# --- high availability ---------------------------------------------------------------------------
#
# An "ha" session carries Is Alive heartbeats and epoch claims between the hosts of scenarios
# (master, replicas, witness). The initiator sends one request at a time; the acceptor answers
# each with a Reply whose ``data`` is its own status for that scenario. The status documents
# are plain data, checked by the engine (standby.engine.ha_status), not here.


@dataclass(frozen=True, slots=True, kw_only=True)
class HaHeartbeat(Message):
    """Is Alive: the sender's status for one scenario (its epoch record, role, workload and
    replication state). The acceptor answers with a Reply carrying its own."""

    TYPE: ClassVar[int] = 60
    SENDER: ClassVar[Role] = Role.INITIATOR

    scenario: str
    status: dict[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class EpochClaim(Message):
    """Ask a witness to record (``epoch``, ``active``) for a scenario: a compare-and-set that
    succeeds only above the witness's record. ``failover``: the sender promotes itself because
    the active host is silent (the witness refuses while it still hears that host); otherwise
    the active host hands over to ``active``. Answered with a Reply (ok, and the record the
    witness holds afterwards)."""

    TYPE: ClassVar[int] = 61
    SENDER: ClassVar[Role] = Role.INITIATOR

    scenario: str
    epoch: int
    active: str
    failover: bool

    def _validate(self) -> None:
        if self.epoch < 1:
            raise LocalProtocolError("EpochClaim.epoch must be >= 1")
        if not self.active:
            raise LocalProtocolError("EpochClaim.active must name a host")


# --- records: the changes inside a Batch -------------------------------------------------------


def _check_path(where: str, value: bytes, *, relative: bool = True) -> None:
    """A path's loose shape: 1 to MAX_PATH_SIZE bytes, no NUL, relative unless told otherwise.

    The replica confines every path (components, symlinks); this only refuses what can never
    name a file, so that no such value gets that far.
    """
    if not 1 <= len(value) <= MAX_PATH_SIZE:
        raise LocalProtocolError(f"{where} must hold 1 to {MAX_PATH_SIZE} bytes")
    if b"\0" in value:
        raise LocalProtocolError(f"{where} contains a NUL byte")
    if relative and value[:1] == b"/":
        raise LocalProtocolError(f"{where} must be relative")


def _check_mode(where: str, mode: int) -> None:
    if mode > 0o7777:
        raise LocalProtocolError(f"{where} holds more than permission bits (0o7777)")


def _check_extent(where: str, offset: int, length: int) -> None:
    if offset + length > MAX_FILE_SIZE:
        raise LocalProtocolError(f"{where} ends past the largest file offset (2**63 - 1)")


@dataclass(frozen=True, slots=True, kw_only=True)
class Record(Message):
    """Base of the records: one change to ``path``, relative to root number ``root`` of the
    scenario. Records are sent inside a Batch only (rule 6); their seq is their place in it."""

    SENDER: ClassVar[Role] = Role.INITIATOR

    root: int  # index into the scenario's roots
    path: bytes

    def _validate(self) -> None:
        _check_path(f"{type(self).__name__}.path", self.path)
        self._validate_record()

    def _validate_record(self) -> None:
        """Per-record checks beyond root and path; override where needed."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RecMakeDir(Record):
    """Create a directory (or set the attributes of the one there)."""

    TYPE: ClassVar[int] = 129

    mode: int
    mtime_ns: int

    def _validate_record(self) -> None:
        _check_mode("RecMakeDir.mode", self.mode)


@dataclass(frozen=True, slots=True, kw_only=True)
class RecSymlink(Record):
    """Create or replace a symbolic link; the target is stored as given and never followed."""

    TYPE: ClassVar[int] = 130

    target: bytes
    mtime_ns: int

    def _validate_record(self) -> None:
        _check_path("RecSymlink.target", self.target, relative=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class RecHardLink(Record):
    """Make ``path`` another name of the file ``existing`` (same root)."""

    TYPE: ClassVar[int] = 132

    existing: bytes

    def _validate_record(self) -> None:
        _check_path("RecHardLink.existing", self.existing)


@dataclass(frozen=True, slots=True, kw_only=True)
class RecRemove(Record):
    """Delete an entry; a directory with everything under it."""

    TYPE: ClassVar[int] = 135


@dataclass(frozen=True, slots=True, kw_only=True)
class RecRename(Record):
    """Rename ``path`` to ``target`` (same root), replacing what ``target`` names."""

    TYPE: ClassVar[int] = 136

    target: bytes

    def _validate_record(self) -> None:
        _check_path("RecRename.target", self.target)


@dataclass(frozen=True, slots=True, kw_only=True)
class RecWrite(Record):
    """Write ``payload`` at ``offset``, creating the file if it is missing.

    ``digests`` holds the xxh3-128 digest of each block of ``payload`` (the writer's block
    size, at least MIN_BLOCK_SIZE; the last block may be shorter), concatenated; the replica
    checks every one before it writes anything.
    """

    TYPE: ClassVar[int] = 139

    offset: int
    digests: bytes
    payload: bytes | memoryview

    def _validate_record(self) -> None:
        size = len(self.payload)
        if not 1 <= size <= MAX_BLOCK_SIZE:
            raise LocalProtocolError("RecWrite.payload must hold 1 byte to MAX_BLOCK_SIZE")
        count, rest = divmod(len(self.digests), BLOCK_DIGEST_SIZE)
        # Blocks are at least MIN_BLOCK_SIZE long: no more digests than that allows.
        if rest or not 1 <= count <= -(-size // MIN_BLOCK_SIZE):
            raise LocalProtocolError("RecWrite.digests must be one digest per block of the payload")
        _check_extent("RecWrite", self.offset, size)


@dataclass(frozen=True, slots=True, kw_only=True)
class RecZero(Record):
    """The range reads as zeros from now on (a hole punched, or zeros written)."""

    TYPE: ClassVar[int] = 141

    offset: int
    length: int

    def _validate_record(self) -> None:
        if not self.length:
            raise LocalProtocolError("RecZero.length must be >= 1")
        _check_extent("RecZero", self.offset, self.length)


@dataclass(frozen=True, slots=True, kw_only=True)
class RecTruncate(Record):
    """Set the size of a file (cut, or extended with zeros)."""

    TYPE: ClassVar[int] = 142

    size: int

    def _validate_record(self) -> None:
        _check_extent("RecTruncate", 0, self.size)


@dataclass(frozen=True, slots=True, kw_only=True)
class RecAttrs(Record):
    """Set the permission bits and the mtime of an entry."""

    TYPE: ClassVar[int] = 144

    mode: int
    mtime_ns: int

    def _validate_record(self) -> None:
        _check_mode("RecAttrs.mode", self.mode)


#: The messages of a session: each travels as a frame of its own.
MESSAGE_TYPES: dict[int, type[Message]] = {
    cls.TYPE: cls
    for cls in (
        Hello,
        Welcome,
        Failure,
        Goodbye,
        Reply,
        ScenarioPut,
        ScenarioRemove,
        SyncBegin,
        Entries,
        EntriesEnd,
        Remove,
        MakeDir,
        MakeSymlink,
        MakeHardLink,
        SetAttrs,
        HashRequest,
        RangeDigests,
        BlockRequest,
        BlockDigests,
        FileBegin,
        BlockData,
        ZeroRange,
        FileEnd,
        FileResult,
        SyncEnd,
        SyncDone,
        ReplicateBegin,
        ReplicateReady,
        Batch,
        Ack,
        Heartbeat,
        HaHeartbeat,
        EpochClaim,
    )
}

#: The records, which travel only inside a Batch payload.
RECORD_TYPES: dict[int, type[Record]] = {
    cls.TYPE: cls
    for cls in (
        RecMakeDir,
        RecSymlink,
        RecHardLink,
        RecRemove,
        RecRename,
        RecWrite,
        RecZero,
        RecTruncate,
        RecAttrs,
    )
}
