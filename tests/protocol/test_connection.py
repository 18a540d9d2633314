"""The Connection: handshake, roles, session states, end of stream and sticky errors."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from standby.protocol import (
    MESSAGE_TYPES,
    NEED_DATA,
    PEER_CLOSED,
    PROTOCOL_VERSION_MAX,
    PROTOCOL_VERSION_MIN,
    PURPOSE_CONTROL,
    PURPOSE_REPLICATE,
    PURPOSE_SYNC,
    REPLICATION_MESSAGES,
    SESSION_MESSAGES,
    TRANSITIONS,
    Ack,
    Batch,
    BlockData,
    Connection,
    Failure,
    Goodbye,
    Heartbeat,
    Hello,
    LocalProtocolError,
    Message,
    RecRemove,
    RecWrite,
    RemoteProtocolError,
    Remove,
    ReplicateBegin,
    ReplicateReady,
    Role,
    State,
    SyncBegin,
    SyncEnd,
    Welcome,
    encode_record,
    purpose_allows,
)
from tests.strategies import MESSAGES, session_messages

from .helpers import HELLO, WELCOME, ConnectionPair, drain, feed, open_pair, raw_frame, wire

FAILURE = Failure(code="SB3104", message="giving up")


def hello(version_min: int, version_max: int) -> Hello:
    return Hello(version_min=version_min, version_max=version_max, engine="old", purpose="sync")


# --- handshake ----------------------------------------------------------------------------------


def test_handshake_opens_both_sides() -> None:
    """Hello then Welcome: both sides OPEN, with the version and the peer's engine name."""
    pair = open_pair()

    expected = (State.OPEN, PROTOCOL_VERSION_MAX, "engine-b")
    assert expected == (
        pair.initiator.state,
        pair.initiator.negotiated_version,
        pair.initiator.their_engine,
    )
    expected = (State.OPEN, PROTOCOL_VERSION_MAX, "engine-a")
    assert expected == (
        pair.acceptor.state,
        pair.acceptor.negotiated_version,
        pair.acceptor.their_engine,
    )


def test_states_during_the_handshake() -> None:
    """Before Hello: HANDSHAKE, nothing known; after Hello: NEGOTIATING on both sides."""
    pair = ConnectionPair()
    before = (pair.initiator.state, pair.initiator.negotiated_version, pair.initiator.their_engine)

    pair.send(pair.initiator, HELLO)

    expected = (State.HANDSHAKE, None, None)
    assert expected == before
    expected = [State.NEGOTIATING, State.NEGOTIATING]
    assert expected == [pair.initiator.state, pair.acceptor.state]
    expected_engines = [None, "engine-a"]
    assert expected_engines == [pair.initiator.their_engine, pair.acceptor.their_engine]


def test_roles_are_reported() -> None:
    """Each side knows its role and its peer's."""
    conn = Connection(Role.ACCEPTOR)

    expected = (Role.ACCEPTOR, Role.INITIATOR)
    assert expected == (conn.our_role, conn.their_role)


@pytest.mark.parametrize("role", [Role.EITHER, "initiator"])
def test_our_role_must_be_a_side(role: object) -> None:
    """A connection is the initiator or the acceptor, never EITHER."""
    with pytest.raises(ValueError, match="our_role must be INITIATOR or ACCEPTOR"):
        Connection(role)  # type: ignore[arg-type]


def test_repr_shows_the_state() -> None:
    """repr() names the role, state, version, peer and buffered bytes."""
    pair = open_pair()
    pair.acceptor.receive_data(b"SB")

    expected = "<Connection acceptor OPEN version=1 peer='engine-a' buffered=2>"
    assert expected == repr(pair.acceptor)
    expected = "<Connection initiator HANDSHAKE version=None peer=None buffered=0>"
    assert expected == repr(Connection(Role.INITIATOR))


@pytest.mark.parametrize(
    ("offered", "expected"),
    [
        ((PROTOCOL_VERSION_MIN, PROTOCOL_VERSION_MAX), PROTOCOL_VERSION_MAX),
        ((0, PROTOCOL_VERSION_MAX + 5), PROTOCOL_VERSION_MAX),
        ((PROTOCOL_VERSION_MAX, PROTOCOL_VERSION_MAX), PROTOCOL_VERSION_MAX),
    ],
)
def test_choose_version_picks_the_highest_common(offered: tuple[int, int], expected: int) -> None:
    """The acceptor answers with the highest version both sides speak."""
    acceptor = Connection(Role.ACCEPTOR)
    acceptor.receive_data(wire(hello(*offered)))
    drain(acceptor)

    assert expected == acceptor.choose_version()


NO_COMMON_VERSION = [
    (PROTOCOL_VERSION_MAX + 1, PROTOCOL_VERSION_MAX + 3),
    (0, PROTOCOL_VERSION_MIN - 1),
]


@pytest.mark.parametrize("offered", NO_COMMON_VERSION)
def test_no_common_version_is_answered_with_failure(offered: tuple[int, int]) -> None:
    """Without a common version choose_version raises, changes nothing, and Failure closes."""
    acceptor = Connection(Role.ACCEPTOR)
    acceptor.receive_data(wire(hello(*offered)))
    drain(acceptor)

    with pytest.raises(RemoteProtocolError) as excinfo:
        acceptor.choose_version()
    state_after_error = acceptor.state
    acceptor.send(FAILURE)

    expected = f"no common protocol version: peer speaks {offered[0]}..{offered[1]}, we speak"
    assert str(excinfo.value).startswith(expected)
    expected_states = [State.NEGOTIATING, State.CLOSED]
    assert expected_states == [state_after_error, acceptor.state]


@pytest.mark.parametrize("offered", NO_COMMON_VERSION)
def test_no_welcome_without_a_common_version(offered: tuple[int, int]) -> None:
    """Sending Welcome when no version is common is our bug."""
    acceptor = Connection(Role.ACCEPTOR)
    acceptor.receive_data(wire(hello(*offered)))
    drain(acceptor)

    with pytest.raises(LocalProtocolError) as excinfo:
        acceptor.send(Welcome(version=PROTOCOL_VERSION_MAX, engine="b"))

    assert str(excinfo.value).startswith("cannot send Welcome (no common protocol version")
    assert str(excinfo.value).endswith("); send Failure")


def test_failure_after_hello_closes_both_sides() -> None:
    """The acceptor may refuse a Hello with Failure; both sides are CLOSED."""
    pair = ConnectionPair()
    pair.send(pair.initiator, HELLO)

    events = pair.send(pair.acceptor, FAILURE)

    expected_events = [FAILURE]
    assert expected_events == events
    expected = [State.CLOSED, State.CLOSED]
    assert expected == [pair.initiator.state, pair.acceptor.state]


def test_failure_before_hello_closes() -> None:
    """Either side may give up before Hello (an acceptor refusing the connection)."""
    pair = ConnectionPair()

    events = pair.send(pair.acceptor, FAILURE)

    expected = [FAILURE]
    assert expected == events
    expected = [State.CLOSED, State.CLOSED]
    assert expected == [pair.initiator.state, pair.acceptor.state]


@pytest.mark.parametrize("conn_role", [Role.INITIATOR, Role.ACCEPTOR])
def test_choose_version_is_for_the_acceptor_after_hello(conn_role: Role) -> None:
    """The initiator, or an acceptor without a Hello, cannot choose a version."""
    with pytest.raises(LocalProtocolError, match="for the acceptor, after Hello"):
        Connection(conn_role).choose_version()


def test_our_hello_must_offer_versions_we_speak() -> None:
    """Offering versions this code does not speak is our bug."""
    with pytest.raises(LocalProtocolError) as excinfo:
        Connection(Role.INITIATOR).send(hello(PROTOCOL_VERSION_MIN, PROTOCOL_VERSION_MAX + 1))

    assert "this code speaks" in str(excinfo.value)


def test_welcome_must_carry_the_chosen_version() -> None:
    """The acceptor cannot welcome with a version other than the highest common one."""
    acceptor = Connection(Role.ACCEPTOR)
    acceptor.receive_data(wire(hello(0, PROTOCOL_VERSION_MAX)))
    drain(acceptor)

    with pytest.raises(LocalProtocolError) as excinfo:
        acceptor.send(Welcome(version=0, engine="b"))

    expected = f"Welcome.version must be {PROTOCOL_VERSION_MAX}, the highest common version, not 0"
    assert expected == str(excinfo.value)


@pytest.mark.parametrize("version", [PROTOCOL_VERSION_MIN - 1, PROTOCOL_VERSION_MAX + 1])
def test_welcome_outside_our_offer_is_refused(version: int) -> None:
    """An acceptor that picks a version we did not offer broke the protocol."""
    initiator = Connection(Role.INITIATOR)
    initiator.send(HELLO)
    initiator.receive_data(wire(Welcome(version=version, engine="b")))

    with pytest.raises(RemoteProtocolError) as excinfo:
        initiator.next_event()

    assert f"Welcome picks version {version}, outside the" in str(excinfo.value)


# --- roles --------------------------------------------------------------------------------------

ONE_SIDED = [cls for cls in MESSAGE_TYPES.values() if cls.SENDER is not Role.EITHER]


def connection_in(state_for: type[Message], role: Role) -> tuple[Connection, ConnectionPair]:
    """The ``role`` side of a pair in the state where ``state_for`` is expected."""
    pair = ConnectionPair()
    if state_for is Welcome:
        pair.send(pair.initiator, HELLO)
    elif state_for is not Hello:
        pair.handshake()
    return (pair.initiator if role is Role.INITIATOR else pair.acceptor), pair


@pytest.mark.parametrize("cls", ONE_SIDED, ids=lambda cls: cls.__name__)
@settings(max_examples=5)
@given(data=st.data())
def test_sending_the_other_roles_message_is_our_bug(
    cls: type[Message], data: st.DataObject
) -> None:
    """Sending a message reserved for the other role raises LocalProtocolError, then ERROR."""
    wrong_role = Role.ACCEPTOR if cls.SENDER is Role.INITIATOR else Role.INITIATOR
    conn, _ = connection_in(cls, wrong_role)

    with pytest.raises(LocalProtocolError) as excinfo:
        conn.send(data.draw(MESSAGES[cls]))

    expected = f"{cls.__name__} is sent by the {cls.SENDER.value}, not the {wrong_role.value}"
    assert expected == str(excinfo.value)
    expected = State.ERROR
    assert expected == conn.state


@pytest.mark.parametrize("cls", ONE_SIDED, ids=lambda cls: cls.__name__)
@settings(max_examples=5)
@given(data=st.data())
def test_receiving_the_wrong_roles_message_is_their_fault(
    cls: type[Message], data: st.DataObject
) -> None:
    """Receiving a message that only we may send raises RemoteProtocolError, then ERROR."""
    conn, _ = connection_in(cls, cls.SENDER)
    conn.receive_data(wire(data.draw(MESSAGES[cls])))

    with pytest.raises(RemoteProtocolError) as excinfo:
        conn.next_event()

    their_role = conn.their_role.value
    expected = f"{cls.__name__} is sent by the {cls.SENDER.value}, not the {their_role}"
    assert expected == str(excinfo.value)
    expected = State.ERROR
    assert expected == conn.state


@pytest.mark.parametrize("purpose", [PURPOSE_CONTROL, PURPOSE_SYNC, PURPOSE_REPLICATE])
@settings(max_examples=30)
@given(data=st.data())
def test_session_messages_flow_both_ways(purpose: str, data: st.DataObject) -> None:
    """In an OPEN session each side receives what the other may send, unchanged."""
    to_acceptor = data.draw(st.lists(session_messages(Role.INITIATOR, purpose), max_size=5))
    to_initiator = data.draw(st.lists(session_messages(Role.ACCEPTOR, purpose), max_size=5))
    pair = open_pair(purpose)

    received_by_acceptor = [e for msg in to_acceptor for e in pair.send(pair.initiator, msg)]
    received_by_initiator = [e for msg in to_initiator for e in pair.send(pair.acceptor, msg)]

    assert to_acceptor == received_by_acceptor
    assert to_initiator == received_by_initiator
    expected = [State.OPEN, State.OPEN]
    assert expected == [pair.initiator.state, pair.acceptor.state]


# --- order --------------------------------------------------------------------------------------

BLOCK = BlockData(file_id=1, offset=0, digests=bytes(16), payload=b"x")


@pytest.mark.parametrize(
    ("steps", "sender", "msg", "state"),
    [
        ([], "initiator", BLOCK, "HANDSHAKE"),
        ([], "initiator", Goodbye(), "HANDSHAKE"),
        ([], "acceptor", WELCOME, "HANDSHAKE"),
        (["hello"], "initiator", HELLO, "NEGOTIATING"),
        (["hello"], "initiator", BLOCK, "NEGOTIATING"),
        (["hello"], "acceptor", Goodbye(), "NEGOTIATING"),
        (["hello", "welcome"], "initiator", HELLO, "OPEN"),
        (["hello", "welcome"], "acceptor", WELCOME, "OPEN"),
        (["hello", "welcome", "goodbye"], "initiator", BLOCK, "CLOSED"),
        (["hello", "welcome", "goodbye"], "acceptor", Goodbye(), "CLOSED"),
        (["hello", "welcome", "failure"], "acceptor", FAILURE, "CLOSED"),
        (["hello", "welcome", "failure"], "initiator", SyncEnd(), "CLOSED"),
    ],
)
@pytest.mark.parametrize("direction", ["send", "receive"])
def test_messages_out_of_order(
    steps: list[str], sender: str, msg: Message, state: str, direction: str
) -> None:
    """A message the state does not allow is our bug when we send it, theirs when we get it."""
    pair = ConnectionPair()
    script = {
        "hello": (pair.initiator, HELLO),
        "welcome": (pair.acceptor, WELCOME),
        "goodbye": (pair.initiator, Goodbye()),
        "failure": (pair.initiator, FAILURE),
    }
    for step in steps:
        pair.send(*script[step])
    conn = pair.initiator if sender == "initiator" else pair.acceptor
    receiver = pair.peer_of(conn)

    if direction == "send":
        with pytest.raises(LocalProtocolError) as excinfo:
            conn.send(msg)
        failed = conn
    else:
        receiver.receive_data(wire(msg))
        with pytest.raises(RemoteProtocolError) as excinfo:
            receiver.next_event()
        failed = receiver

    expected = f"{type(msg).__name__} is not allowed in state {state}"
    assert expected == str(excinfo.value)
    expected = State.ERROR
    assert expected == failed.state


@pytest.mark.parametrize("ender", [Goodbye(), FAILURE])
@pytest.mark.parametrize("who", ["initiator", "acceptor"])
def test_goodbye_or_failure_closes_both_sides(ender: Message, who: str) -> None:
    """Goodbye or Failure, sent by either side, leaves both sides CLOSED."""
    pair = open_pair()
    conn = pair.initiator if who == "initiator" else pair.acceptor

    events = pair.send(conn, ender)

    assert [ender] == events
    expected = [State.CLOSED, State.CLOSED]
    assert expected == [pair.initiator.state, pair.acceptor.state]


def test_transition_table_covers_every_state_and_message() -> None:
    """Every state has a row; every message type is allowed somewhere; CLOSED allows nothing."""
    allowed = {cls for row in TRANSITIONS.values() for cls in row}

    assert set(State) == set(TRANSITIONS)
    assert set(MESSAGE_TYPES.values()) == allowed
    expected = {}
    assert expected == TRANSITIONS[State.CLOSED]
    assert set(SESSION_MESSAGES) == {
        cls for cls, state in TRANSITIONS[State.OPEN].items() if state is State.OPEN
    }


# --- bytes in -----------------------------------------------------------------------------------


@settings(max_examples=30)
@given(
    msgs=st.lists(session_messages(Role.ACCEPTOR), max_size=6),
    chunk_size=st.integers(min_value=2, max_value=500),
)
def test_whole_chunked_and_byte_by_byte_give_the_same_events(
    msgs: list[Message], chunk_size: int
) -> None:
    """A session fed at once, in chunks or byte by byte yields the same events, then EOF."""
    stream = wire(WELCOME, *msgs, Goodbye())
    expected = [WELCOME, *msgs, Goodbye(), PEER_CLOSED]

    results = []
    for size in (len(stream), chunk_size, 1):
        initiator = Connection(Role.INITIATOR)
        initiator.send(HELLO)
        events = feed(initiator, stream, size)
        initiator.receive_data(b"")
        results.append(events + drain(initiator))

    assert [expected] * 3 == results


def test_sentinels_print_their_names() -> None:
    """NEED_DATA and PEER_CLOSED are classes that print as their names, for logs and repr."""
    expected = ["NEED_DATA", "PEER_CLOSED"]
    assert expected == [repr(NEED_DATA), repr(PEER_CLOSED)]


def test_need_data_until_a_frame_is_whole() -> None:
    """next_event returns NEED_DATA for an empty buffer and for a partial frame."""
    acceptor = Connection(Role.ACCEPTOR)
    first = acceptor.next_event()
    acceptor.receive_data(wire(HELLO)[:-1])

    expected = [NEED_DATA, NEED_DATA]
    assert expected == [first, acceptor.next_event()]


def test_eof_at_a_frame_boundary() -> None:
    """b"" at a frame boundary gives PEER_CLOSED (again and again) and the state CLOSED."""
    pair = open_pair()
    pair.acceptor.receive_data(b"")
    pair.acceptor.receive_data(b"")

    events = [pair.acceptor.next_event(), pair.acceptor.next_event()]

    expected = [PEER_CLOSED, PEER_CLOSED]
    assert expected == events
    expected = State.CLOSED
    assert expected == pair.acceptor.state


def test_eof_after_goodbye() -> None:
    """The usual end: Goodbye, then the peer closes."""
    pair = open_pair()
    pair.send(pair.initiator, Goodbye())
    pair.acceptor.receive_data(b"")

    assert PEER_CLOSED is pair.acceptor.next_event()


@pytest.mark.parametrize("cut", [1, 19, 20, 25])
def test_eof_inside_a_frame_is_their_fault(cut: int) -> None:
    """b"" in the middle of a frame (header or body) raises RemoteProtocolError."""
    acceptor = Connection(Role.ACCEPTOR)
    acceptor.receive_data(wire(HELLO)[:cut])
    acceptor.receive_data(b"")

    with pytest.raises(RemoteProtocolError) as excinfo:
        acceptor.next_event()

    expected = f"peer closed the connection inside a frame ({cut} bytes of it received)"
    assert expected == str(excinfo.value)


def test_messages_before_eof_come_first() -> None:
    """Frames received before b"" are all returned before PEER_CLOSED."""
    acceptor = Connection(Role.ACCEPTOR)
    acceptor.receive_data(wire(HELLO, FAILURE))
    acceptor.receive_data(b"")

    expected = [HELLO, FAILURE, PEER_CLOSED]
    assert expected == drain(acceptor)


def test_data_after_eof_is_our_bug() -> None:
    """Feeding bytes after b"" is a bug in the I/O layer."""
    acceptor = Connection(Role.ACCEPTOR)
    acceptor.receive_data(b"")

    with pytest.raises(LocalProtocolError, match="after b''"):
        acceptor.receive_data(b"x")

    expected = State.ERROR
    assert expected == acceptor.state


def test_oversized_frame_is_refused_from_its_header() -> None:
    """A frame over max_meta_size is refused once its 20-byte header is in."""
    acceptor = Connection(Role.ACCEPTOR, max_meta_size=2)
    acceptor.receive_data(wire(HELLO)[:20])

    with pytest.raises(RemoteProtocolError, match="Hello metadata of 17 bytes exceeds 2"):
        acceptor.next_event()


def test_send_refuses_metadata_over_our_limit() -> None:
    """send() applies max_meta_size too: what we send, the peer (same limit) would refuse."""
    initiator = Connection(Role.INITIATOR, max_meta_size=8)

    with pytest.raises(LocalProtocolError, match="over the 8 limit"):
        initiator.send(HELLO)


# --- bytes out ----------------------------------------------------------------------------------


def test_send_returns_the_frame_pieces() -> None:
    """send() returns the pieces of the frame; the payload is the message's own object."""
    pair = open_pair()

    pieces = pair.initiator.send(BLOCK)

    assert wire(BLOCK) == b"".join(pieces)
    assert pieces[-1] is BLOCK.payload


def test_send_refuses_non_wire_messages() -> None:
    """A Message that is no registered type cannot be sent."""
    with pytest.raises(LocalProtocolError, match="Message is not a wire message"):
        Connection(Role.INITIATOR).send(Message())


# --- sticky errors ------------------------------------------------------------------------------


def broken_connection() -> tuple[Connection, BaseException]:
    """An acceptor that received garbage, and the error it raised."""
    acceptor = Connection(Role.ACCEPTOR)
    acceptor.receive_data(b"GARBAGE GARBAGE GARBAGE")
    with pytest.raises(RemoteProtocolError) as excinfo:
        acceptor.next_event()
    return acceptor, excinfo.value


@pytest.mark.parametrize(
    "call",
    [
        lambda conn: conn.next_event(),
        lambda conn: conn.send(WELCOME),
        lambda conn: conn.receive_data(b"more"),
        lambda conn: conn.receive_data(b""),
    ],
    ids=["next_event", "send", "receive_data", "eof"],
)
def test_error_is_sticky(call: object) -> None:
    """After an error every call raises LocalProtocolError, caused by the first error."""
    conn, first_error = broken_connection()

    with pytest.raises(LocalProtocolError) as excinfo:
        call(conn)  # type: ignore[operator]

    expected = State.ERROR
    assert expected == conn.state
    assert first_error is excinfo.value.__cause__
    assert str(excinfo.value).startswith("connection is in state ERROR after: RemoteProtocolError")


def test_send_failed_moves_to_error() -> None:
    """A failed write poisons the connection; a second send_failed keeps the first cause."""
    pair = open_pair()
    pair.initiator.send_failed()
    pair.initiator.send_failed()

    with pytest.raises(LocalProtocolError) as excinfo:
        pair.initiator.send(BLOCK)

    expected = State.ERROR
    assert expected == pair.initiator.state
    expected = "send_failed() was called"
    assert expected == str(excinfo.value.__cause__)


def test_send_failed_after_an_error_keeps_the_error() -> None:
    """send_failed on a connection already in ERROR does not hide the original error."""
    conn, first_error = broken_connection()
    conn.send_failed()

    with pytest.raises(LocalProtocolError) as excinfo:
        conn.next_event()

    assert first_error is excinfo.value.__cause__


def test_local_error_in_send_is_sticky() -> None:
    """Our own mistake in send() poisons the connection as well."""
    conn = Connection(Role.INITIATOR)
    with pytest.raises(LocalProtocolError):
        conn.send(WELCOME)

    with pytest.raises(LocalProtocolError, match="state ERROR"):
        conn.send(HELLO)

    expected = State.ERROR
    assert expected == conn.state


def test_failure_message_from_peer_in_handshake_state() -> None:
    """Failure is the one message either side may send from the first byte on."""
    initiator = Connection(Role.INITIATOR)
    initiator.receive_data(wire(FAILURE))

    expected = [FAILURE]
    assert expected == drain(initiator)
    expected = State.CLOSED
    assert expected == initiator.state


# --- session purposes ----------------------------------------------------------------------------

BATCH = Batch(first_seq=1, count=1, compressed=False, raw_size=3, payload=b"abc")
REPLICATION_SCRIPT: list[tuple[str, Message]] = [
    ("initiator", ReplicateBegin(scenario="web", epoch=1, base_seq=10)),
    ("acceptor", ReplicateReady(received_seq=12, durable_seq=11)),
    ("initiator", BATCH),
    ("acceptor", Heartbeat(sent_at=1.5)),
    ("initiator", Heartbeat(sent_at=2.5)),
    ("acceptor", Ack(received_seq=13, durable_seq=13)),
    ("initiator", Goodbye()),
]


def test_a_replication_session() -> None:
    """Hello(purpose="replicate"), then the stream both ways, then Goodbye."""
    pair = open_pair(PURPOSE_REPLICATE)

    for who, msg in REPLICATION_SCRIPT:
        sender = pair.initiator if who == "initiator" else pair.acceptor
        assert [msg] == pair.send(sender, msg)

    expected = [State.CLOSED, State.CLOSED]
    assert expected == [pair.initiator.state, pair.acceptor.state]


def test_purpose_is_reported() -> None:
    """Each side knows the session's purpose once Hello went through."""
    pair = ConnectionPair()
    before = pair.acceptor.purpose

    pair.handshake(PURPOSE_REPLICATE)

    expected = (None, PURPOSE_REPLICATE, PURPOSE_REPLICATE)
    assert expected == (before, pair.initiator.purpose, pair.acceptor.purpose)


FOREIGN = [
    (PURPOSE_SYNC, "initiator", BATCH),
    (PURPOSE_SYNC, "initiator", ReplicateBegin(scenario="web", epoch=1, base_seq=0)),
    (PURPOSE_CONTROL, "acceptor", Ack(received_seq=1, durable_seq=1)),
    (PURPOSE_SYNC, "acceptor", Heartbeat(sent_at=0.0)),
    ("status", "initiator", Heartbeat(sent_at=0.0)),
    (PURPOSE_REPLICATE, "initiator", SyncEnd()),
    (PURPOSE_REPLICATE, "initiator", Remove(path=b"p")),
    (
        PURPOSE_REPLICATE,
        "initiator",
        SyncBegin(scenario="s", epoch=1, root=0, method=1, block_size=4096, range_blocks=1),
    ),
]


@pytest.mark.parametrize(("purpose", "sender", "msg"), FOREIGN)
@pytest.mark.parametrize("direction", ["send", "receive"])
def test_messages_foreign_to_the_purpose_are_refused(
    purpose: str, sender: str, msg: Message, direction: str
) -> None:
    """Replication messages only in a replicate session, which carries nothing else: our bug
    when we send one elsewhere, theirs when we receive it."""
    pair = open_pair(purpose)
    conn = pair.initiator if sender == "initiator" else pair.acceptor
    receiver = pair.peer_of(conn)

    if direction == "send":
        with pytest.raises(LocalProtocolError) as excinfo:
            conn.send(msg)
        failed = conn
    else:
        receiver.receive_data(wire(msg))
        with pytest.raises(RemoteProtocolError) as excinfo:
            receiver.next_event()
        failed = receiver

    expected = f"{type(msg).__name__} is not allowed in a {purpose!r} session"
    assert expected == str(excinfo.value)
    expected_state = State.ERROR
    assert expected_state == failed.state


@pytest.mark.parametrize("direction", ["send", "receive"])
def test_a_batch_from_the_acceptor_is_refused(direction: str) -> None:
    """Only the master's engine (the initiator) sends Batches."""
    pair = open_pair(PURPOSE_REPLICATE)

    if direction == "send":
        with pytest.raises(LocalProtocolError) as excinfo:
            pair.acceptor.send(BATCH)
    else:
        pair.initiator.receive_data(wire(BATCH))
        with pytest.raises(RemoteProtocolError) as excinfo:
            pair.initiator.next_event()

    expected = "Batch is sent by the initiator, not the acceptor"
    assert expected == str(excinfo.value)


@pytest.mark.parametrize("purpose", [PURPOSE_SYNC, PURPOSE_REPLICATE])
def test_records_cannot_be_sent_on_their_own(purpose: str) -> None:
    """A record travels inside a Batch only: sending one is our bug."""
    pair = open_pair(purpose)
    record = RecWrite(root=0, path=b"f", offset=0, digests=bytes(16), payload=b"x")

    with pytest.raises(LocalProtocolError) as excinfo:
        pair.initiator.send(record)

    expected = "RecWrite is a record: records travel only inside a Batch payload"
    assert str(excinfo.value).startswith(expected)
    expected_state = State.ERROR
    assert expected_state == pair.initiator.state


def test_a_record_frame_on_the_link_is_refused_from_its_header() -> None:
    """A record frame received outside a Batch is the peer's fault, known from the header."""
    pair = open_pair(PURPOSE_REPLICATE)
    frame = encode_record(RecRemove(root=0, path=b"p"))
    pair.acceptor.receive_data(frame[:20])

    with pytest.raises(RemoteProtocolError) as excinfo:
        pair.acceptor.next_event()

    expected = "RecRemove is a record: records travel only inside a Batch payload"
    assert expected == str(excinfo.value)


def test_a_record_type_byte_is_refused_even_with_garbage_after_it() -> None:
    """The refusal does not depend on the body: the type alone is out of place."""
    acceptor = open_pair(PURPOSE_REPLICATE).acceptor
    acceptor.receive_data(raw_frame(RecRemove.TYPE, b"\xc1"))

    with pytest.raises(RemoteProtocolError, match="RecRemove is a record"):
        acceptor.next_event()


def test_purpose_table() -> None:
    """The replication messages belong to "replicate" sessions and nowhere else; every other
    session message to every other purpose; Goodbye and Failure end any session."""
    others = set(SESSION_MESSAGES) - set(REPLICATION_MESSAGES)
    purposes = [PURPOSE_CONTROL, PURPOSE_SYNC, PURPOSE_REPLICATE, "anything else"]

    allowed = {
        purpose: {cls for cls in MESSAGE_TYPES.values() if purpose_allows(purpose, cls)}
        for purpose in purposes
    }

    handshake = {Hello, Welcome, Goodbye, Failure}
    assert set(REPLICATION_MESSAGES) | handshake == allowed[PURPOSE_REPLICATE]
    for purpose in (PURPOSE_CONTROL, PURPOSE_SYNC, "anything else"):
        assert others | handshake == allowed[purpose]
