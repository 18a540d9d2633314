"""Hypothesis strategies shared by the test suites.

Add a strategy here whenever you add a message type, a model or a data structure that tests
generate, so every suite draws from the same definitions.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from standby.protocol import (
    BLOCK_DIGEST_SIZE,
    FILE_DIGEST_SIZE,
    MAX_BLOCK_SIZE,
    MAX_FILE_SIZE,
    MESSAGE_TYPES,
    MIN_BLOCK_SIZE,
    PURPOSE_SYNC,
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
    Failure,
    FileBegin,
    FileEnd,
    FileResult,
    Goodbye,
    HaHeartbeat,
    HashRequest,
    Heartbeat,
    Hello,
    MakeDir,
    MakeHardLink,
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
    Remove,
    ReplicateBegin,
    ReplicateReady,
    Reply,
    Role,
    ScenarioPut,
    ScenarioRemove,
    SetAttrs,
    SyncBegin,
    SyncDone,
    SyncEnd,
    SyncMethod,
    Welcome,
    ZeroRange,
    purpose_allows,
)

# --- scalars ------------------------------------------------------------------------------------

#: Unsigned and signed fields travel as 64-bit integers.
u64 = st.integers(min_value=0, max_value=2**64 - 1)
i64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
#: Small non-negative numbers, for fields where huge values make no sense (ids, modes).
small = st.integers(min_value=0, max_value=2**32)
#: Text that can travel: any code point but lone surrogates (Hypothesis excludes them already).
text = st.text(max_size=40)
#: Relative paths as the file system holds them: any bytes, mostly short.
paths = st.binary(max_size=64)
modes = st.integers(min_value=0, max_value=0o7777)
#: Paths as records must hold them: 1 to 64 bytes here, no NUL; relative, or any link target.
link_targets = st.binary(min_size=1, max_size=64).map(lambda b: b.replace(b"\0", b"_"))
record_paths = link_targets.map(lambda b: b"r" + b[1:] if b.startswith(b"/") else b)
#: Finite floats, as float fields hold them.
finite_floats = st.floats(allow_nan=False, allow_infinity=False)


def digests(min_count: int = 0, max_count: int = 8) -> st.SearchStrategy[bytes]:
    """Concatenated xxh3-128 block digests: a whole number of BLOCK_DIGEST_SIZE pieces."""
    return st.integers(min_value=min_count, max_value=max_count).flatmap(
        lambda n: st.binary(min_size=n * BLOCK_DIGEST_SIZE, max_size=n * BLOCK_DIGEST_SIZE)
    )


#: Plain data as dict fields may hold it (JSON-like, plus bytes; lists, never tuples).
plain_data: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | text
    | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(text, children, max_size=4),
    max_leaves=8,
)
documents = st.dictionaries(text, plain_data, max_size=5)

entries = st.builds(
    Entry,
    path=paths,
    kind=st.sampled_from(EntryKind),
    size=u64,
    mtime_ns=i64,
    mode=modes,
    target=paths,
)

# --- messages, one strategy per type ------------------------------------------------------------

#: Hypothesis payloads stay small; tests that need MAX_BLOCK_SIZE build one by hand.
payloads = st.binary(min_size=1, max_size=4096)


@st.composite
def hellos(draw: st.DrawFn) -> Hello:
    low, high = sorted((draw(u64), draw(u64)))
    return Hello(version_min=low, version_max=high, engine=draw(text), purpose=draw(text))


@st.composite
def sync_begins(draw: st.DrawFn) -> SyncBegin:
    return SyncBegin(
        scenario=draw(text),
        epoch=draw(u64),
        root=draw(small),
        method=draw(st.sampled_from(SyncMethod) | st.sampled_from([int(m) for m in SyncMethod])),
        block_size=1 << draw(st.integers(min_value=12, max_value=MAX_BLOCK_SIZE.bit_length() - 1)),
        range_blocks=draw(st.integers(min_value=1, max_value=1 << 20)),
    )


@st.composite
def seq_pairs(draw: st.DrawFn) -> tuple[int, int]:
    """(received_seq, durable_seq): durable never above received."""
    durable, received = sorted((draw(u64), draw(u64)))
    return received, durable


@st.composite
def batches(draw: st.DrawFn) -> Batch:
    """Batches with a payload of arbitrary bytes (the message itself never looks inside)."""
    payload = draw(payloads)
    compressed = draw(st.booleans())
    raw_size = len(payload)
    if compressed:
        raw_size = draw(st.integers(min_value=1, max_value=16 * len(payload)))
    first_seq = draw(st.integers(min_value=1, max_value=2**64 - 1))
    count = draw(st.integers(min_value=1, max_value=min(raw_size, 2**64 - first_seq)))
    return Batch(
        first_seq=first_seq, count=count, compressed=compressed, raw_size=raw_size, payload=payload
    )


MESSAGES: dict[type[Message], st.SearchStrategy[Message]] = {
    Hello: hellos(),
    Welcome: st.builds(Welcome, version=u64, engine=text),
    Failure: st.builds(Failure, code=text, message=text),
    Goodbye: st.builds(Goodbye),
    Reply: st.builds(Reply, ok=st.booleans(), message=text, data=documents),
    ScenarioPut: st.builds(ScenarioPut, name=text, document=documents),
    ScenarioRemove: st.builds(ScenarioRemove, name=text),
    SyncBegin: sync_begins(),
    Entries: st.builds(Entries, entries=st.lists(entries, max_size=8).map(tuple)),
    EntriesEnd: st.builds(EntriesEnd, count=u64, error=st.none() | text),
    Remove: st.builds(Remove, path=paths),
    MakeDir: st.builds(MakeDir, path=paths, mode=modes),
    MakeSymlink: st.builds(MakeSymlink, path=paths, target=paths, mtime_ns=i64),
    MakeHardLink: st.builds(MakeHardLink, path=paths, existing=paths),
    SetAttrs: st.builds(SetAttrs, path=paths, mode=modes, mtime_ns=i64),
    HashRequest: st.builds(HashRequest, file_id=u64, path=paths),
    RangeDigests: st.builds(
        RangeDigests, file_id=u64, size=u64, missing=st.booleans(), digests=digests()
    ),
    BlockRequest: st.builds(BlockRequest, file_id=u64, ranges=st.lists(u64, max_size=8).map(tuple)),
    BlockDigests: st.builds(BlockDigests, file_id=u64, digests=digests()),
    FileBegin: st.builds(FileBegin, file_id=u64, path=paths, size=u64, whole=st.booleans()),
    BlockData: st.builds(
        BlockData, file_id=u64, offset=u64, digests=digests(min_count=1), payload=payloads
    ),
    ZeroRange: st.builds(ZeroRange, file_id=u64, offset=u64, length=u64),
    FileEnd: st.builds(
        FileEnd,
        file_id=u64,
        size=u64,
        mode=modes,
        mtime_ns=i64,
        digest=st.binary(min_size=FILE_DIGEST_SIZE, max_size=FILE_DIGEST_SIZE),
    ),
    FileResult: st.builds(FileResult, file_id=u64, ok=st.booleans(), message=text),
    SyncEnd: st.builds(SyncEnd),
    SyncDone: st.builds(SyncDone, stats=documents),
    ReplicateBegin: st.builds(ReplicateBegin, scenario=text, epoch=u64, base_seq=u64),
    ReplicateReady: seq_pairs().map(lambda p: ReplicateReady(received_seq=p[0], durable_seq=p[1])),
    Batch: batches(),
    Ack: seq_pairs().map(lambda p: Ack(received_seq=p[0], durable_seq=p[1])),
    Heartbeat: st.builds(Heartbeat, sent_at=finite_floats),
    HaHeartbeat: st.builds(HaHeartbeat, scenario=text, status=documents),
    EpochClaim: st.builds(EpochClaim, scenario=text, epoch=st.integers(min_value=1,
                                                                       max_value=2**64 - 1),
                          active=text.filter(bool), failover=st.booleans()),
}
assert set(MESSAGES) == set(MESSAGE_TYPES.values()), "add a strategy for every message type"

#: Any message of any type.
messages: st.SearchStrategy[Message] = st.one_of(*MESSAGES.values())


def session_messages(sender: Role, purpose: str = PURPOSE_SYNC) -> st.SearchStrategy[Message]:
    """Messages that ``sender`` may send in an OPEN session of ``purpose`` (not the handshake,
    not the end)."""
    excluded = {Hello, Welcome, Failure, Goodbye}
    return st.one_of(
        *(
            strategy
            for cls, strategy in MESSAGES.items()
            if cls not in excluded
            and cls.SENDER in (sender, Role.EITHER)
            and purpose_allows(purpose, cls)
        )
    )


# --- records, one strategy per type -------------------------------------------------------------


@st.composite
def rec_writes(draw: st.DrawFn) -> RecWrite:
    payload = draw(payloads)
    most = -(-len(payload) // MIN_BLOCK_SIZE)  # one digest per block of at least 4 KiB
    return RecWrite(
        root=draw(small),
        path=draw(record_paths),
        offset=draw(st.integers(min_value=0, max_value=MAX_FILE_SIZE - len(payload))),
        digests=draw(digests(min_count=1, max_count=most)),
        payload=payload,
    )


@st.composite
def rec_zeros(draw: st.DrawFn) -> RecZero:
    length = draw(st.integers(min_value=1, max_value=MAX_FILE_SIZE))
    return RecZero(
        root=draw(small),
        path=draw(record_paths),
        offset=draw(st.integers(min_value=0, max_value=MAX_FILE_SIZE - length)),
        length=length,
    )


RECORDS: dict[type[Record], st.SearchStrategy[Record]] = {
    RecMakeDir: st.builds(RecMakeDir, root=small, path=record_paths, mode=modes, mtime_ns=i64),
    RecSymlink: st.builds(
        RecSymlink, root=small, path=record_paths, target=link_targets, mtime_ns=i64
    ),
    RecHardLink: st.builds(RecHardLink, root=small, path=record_paths, existing=record_paths),
    RecRemove: st.builds(RecRemove, root=small, path=record_paths),
    RecRename: st.builds(RecRename, root=small, path=record_paths, target=record_paths),
    RecWrite: rec_writes(),
    RecZero: rec_zeros(),
    RecTruncate: st.builds(
        RecTruncate,
        root=small,
        path=record_paths,
        size=st.integers(min_value=0, max_value=MAX_FILE_SIZE),
    ),
    RecAttrs: st.builds(RecAttrs, root=small, path=record_paths, mode=modes, mtime_ns=i64),
}
assert set(RECORDS) == set(RECORD_TYPES.values()), "add a strategy for every record type"

#: Any record of any type.
records: st.SearchStrategy[Record] = st.one_of(*RECORDS.values())
