"""One side of a peer link, without I/O: bytes in, messages out, and the other way round.

The I/O layer drives it with four verbs, as h11 is driven::

    conn.receive_data(data)        # bytes read from the socket; b"" when the peer closed
    event = conn.next_event()      # a Message, NEED_DATA or PEER_CLOSED
    pieces = conn.send(message)    # validate, advance the state, return the bytes to write
    conn.send_failed()             # the write failed: the connection is unusable

Error handling: RemoteProtocolError means the peer broke the protocol (drop the link, resync);
LocalProtocolError means our own code did (a bug). Any exception inside ``next_event`` or
``send`` moves the connection to State.ERROR, and every later call raises LocalProtocolError:
whoever keeps using a failed connection is at fault.
"""

from __future__ import annotations

from ._errors import LocalProtocolError, RemoteProtocolError
from ._frames import DEFAULT_MAX_META_SIZE, FrameDecoder, encode, not_a_wire_message
from ._messages import (
    MESSAGE_TYPES,
    PROTOCOL_VERSION_MAX,
    PROTOCOL_VERSION_MIN,
    Hello,
    Message,
    Role,
    Welcome,
)
from ._state import State, next_state, purpose_allows


class _Sentinel(type):
    def __repr__(cls) -> str:
        return cls.__name__


class NEED_DATA(metaclass=_Sentinel):
    """Returned by :meth:`Connection.next_event`: call ``receive_data`` first."""


class PEER_CLOSED(metaclass=_Sentinel):
    """Returned by :meth:`Connection.next_event`: the peer closed the link at a frame boundary."""


_WIRE_TYPES = frozenset(MESSAGE_TYPES.values())


class Connection:
    """The protocol state of one peer link, seen from one side.

    Both hosts use this class: the side that opened the link is ``Role.INITIATOR`` and sends
    Hello; the other is ``Role.ACCEPTOR`` and answers Welcome (version from
    :meth:`choose_version`) or Failure. Then both are OPEN until a Goodbye or a Failure, in
    either direction, closes the session; nothing may follow it.

    The purpose in Hello decides which session messages may flow (see _state.py): a
    "replicate" session carries the replication messages only, other sessions everything
    else. Records never travel on their own, only inside a Batch.

    After Goodbye or Failure the session is over in both directions: a frame that crosses
    our Goodbye on the wire raises RemoteProtocolError, so end a session only when the peer
    has nothing left to send (after the last answer), then wait for PEER_CLOSED.

    Resource handling: received bytes wait in one buffer until ``next_event`` takes them out.
    Call ``next_event`` until it returns NEED_DATA after each ``receive_data``: a frame's
    header is checked as soon as it arrives, so an oversized frame is refused before it is
    buffered, and the buffer never holds more than one frame plus one read.

    Args:
        our_role: INITIATOR or ACCEPTOR.
        max_meta_size: largest frame metadata accepted from the peer, and sent to it.
    """

    def __init__(self, our_role: Role, *, max_meta_size: int = DEFAULT_MAX_META_SIZE) -> None:
        if our_role not in (Role.INITIATOR, Role.ACCEPTOR):
            raise ValueError(f"our_role must be INITIATOR or ACCEPTOR, not {our_role!r}")
        self._our_role = our_role
        self._their_role = Role.ACCEPTOR if our_role is Role.INITIATOR else Role.INITIATOR
        self._decoder = FrameDecoder(max_meta_size=max_meta_size)
        self._state = State.HANDSHAKE
        self._hello: Hello | None = None
        self._version: int | None = None
        self._their_engine: str | None = None
        self._eof = False
        self._error: BaseException | None = None  # what moved us to ERROR

    # --- what the connection knows ------------------------------------------------------------

    @property
    def our_role(self) -> Role:
        return self._our_role

    @property
    def their_role(self) -> Role:
        return self._their_role

    @property
    def state(self) -> State:
        return self._state

    @property
    def purpose(self) -> str | None:
        """The session's purpose, from Hello; None before Hello went through."""
        return None if self._hello is None else self._hello.purpose

    @property
    def negotiated_version(self) -> int | None:
        """The protocol version of the session, once Welcome went through; else None."""
        return self._version

    @property
    def their_engine(self) -> str | None:
        """The peer's engine name, from its Hello or Welcome; None before."""
        return self._their_engine

    def __repr__(self) -> str:
        return (
            f"<Connection {self._our_role.value} {self._state.name}"
            f" version={self._version} peer={self._their_engine!r}"
            f" buffered={self._decoder.buffered}>"
        )

    def choose_version(self) -> int:
        """The version the acceptor must put in its Welcome: the highest both sides speak.

        Calling it changes nothing: when it raises, answer Failure, then close.

        Raises:
            LocalProtocolError: we are not the acceptor, or no Hello has arrived.
            RemoteProtocolError: the peer's Hello shares no version with us.
        """
        if self._our_role is not Role.ACCEPTOR or self._hello is None:
            raise LocalProtocolError("choose_version() is for the acceptor, after Hello")
        hello = self._hello
        version = min(hello.version_max, PROTOCOL_VERSION_MAX)
        if version < max(hello.version_min, PROTOCOL_VERSION_MIN):
            raise RemoteProtocolError(
                f"no common protocol version: peer speaks {hello.version_min}..{hello.version_max},"
                f" we speak {PROTOCOL_VERSION_MIN}..{PROTOCOL_VERSION_MAX}"
            )
        return version

    # --- the four verbs ----------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Add bytes read from the peer; ``b""`` means the peer closed its side.

        The bytes are copied, so the caller may reuse its buffer.

        Raises:
            LocalProtocolError: the connection is in ERROR, or data follows the b"".
        """
        self._check_usable()
        if not data:
            self._eof = True
        elif self._eof:
            exc = LocalProtocolError("receive_data() got data after b'' (end of stream)")
            self._fail(exc)
            raise exc
        else:
            self._decoder.feed(data)

    def next_event(self) -> Message | type[NEED_DATA] | type[PEER_CLOSED]:
        """Parse the next message from the received bytes and advance the state.

        Returns:
            The next message; NEED_DATA when the buffer holds no whole frame; PEER_CLOSED when
            the peer closed at a frame boundary (the state becomes CLOSED).

        Raises:
            RemoteProtocolError: the peer sent a malformed frame, a message out of order, not
                its to send or foreign to the session's purpose, a record outside a Batch, or
                closed mid-frame.
            LocalProtocolError: the connection was already in ERROR.
        """
        self._check_usable()
        try:
            msg = self._decoder.next_message()
            if msg is None:
                return self._no_message()
            new_state = self._check(msg, self._their_role, RemoteProtocolError)
            self._apply(msg, self._their_role, new_state)
        except BaseException as exc:
            self._fail(exc)
            raise
        return msg

    def send(self, msg: Message) -> list[bytes | memoryview]:
        """Check that we may send ``msg`` now, advance the state, and serialize it.

        Returns:
            The pieces of the frame, to write in order (the payload is not copied).

        Raises:
            LocalProtocolError: the message may not be sent by us, in this state or in a
                session of this purpose, or does not fit in a frame (a record never does);
                also when the connection was already in ERROR.
        """
        self._check_usable()
        try:
            if type(msg) not in _WIRE_TYPES:
                raise LocalProtocolError(not_a_wire_message(msg))
            new_state = self._check(msg, self._our_role, LocalProtocolError)
            pieces = encode(msg, max_meta_size=self._decoder.max_meta_size)
            self._apply(msg, self._our_role, new_state)
        except BaseException as exc:
            self._fail(exc)
            raise
        return pieces

    def send_failed(self) -> None:
        """Tell the connection that writing what ``send`` returned failed: it moves to ERROR."""
        if self._state is not State.ERROR:
            self._fail(LocalProtocolError("send_failed() was called"))

    # --- internals ---------------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._state is State.ERROR:
            raise LocalProtocolError(
                f"connection is in state ERROR after: {self._error!r}"
            ) from self._error

    def _fail(self, exc: BaseException) -> None:
        """Move to ERROR for good, remembering why."""
        self._state = State.ERROR
        self._error = exc

    def _no_message(self) -> type[NEED_DATA] | type[PEER_CLOSED]:
        if not self._eof:
            return NEED_DATA
        if self._decoder.buffered:
            raise RemoteProtocolError(
                f"peer closed the connection inside a frame ({self._decoder.buffered} bytes"
                " of it received)"
            )
        self._state = State.CLOSED
        return PEER_CLOSED

    def _check(
        self, msg: Message, sender: Role, error: type[LocalProtocolError | RemoteProtocolError]
    ) -> State:
        """Check ``msg`` from ``sender`` against roles, state and handshake; return the next state.

        ``error`` is the class to raise: LocalProtocolError when we send, RemoteProtocolError
        when we receive.
        """
        name = type(msg).__name__
        if msg.SENDER is not Role.EITHER and msg.SENDER is not sender:
            raise error(f"{name} is sent by the {msg.SENDER.value}, not the {sender.value}")
        new_state = next_state(self._state, type(msg))
        if new_state is None:
            raise error(f"{name} is not allowed in state {self._state.name}")
        if self._state is State.OPEN:
            assert self._hello is not None  # OPEN means Hello went through
            if not purpose_allows(self._hello.purpose, type(msg)):
                raise error(f"{name} is not allowed in a {self._hello.purpose!r} session")
        if isinstance(msg, Hello):
            self._check_hello(msg, sender)
        elif isinstance(msg, Welcome):
            self._check_welcome(msg, sender)
        return new_state

    def _apply(self, msg: Message, sender: Role, new_state: State) -> None:
        """Record what the handshake tells, and move to ``new_state``."""
        if isinstance(msg, Hello):
            self._hello = msg
        elif isinstance(msg, Welcome):
            self._version = msg.version
        if sender is self._their_role and isinstance(msg, Hello | Welcome):
            self._their_engine = msg.engine
        self._state = new_state

    def _check_hello(self, hello: Hello, sender: Role) -> None:
        # Whatever range the peer offers is acceptable here: the acceptor answers it with
        # Welcome or Failure. Ours must be within what this code speaks.
        if sender is self._our_role and not (
            hello.version_min >= PROTOCOL_VERSION_MIN and hello.version_max <= PROTOCOL_VERSION_MAX
        ):
            raise LocalProtocolError(
                f"Hello offers versions {hello.version_min}..{hello.version_max}; this code"
                f" speaks {PROTOCOL_VERSION_MIN}..{PROTOCOL_VERSION_MAX}"
            )

    def _check_welcome(self, welcome: Welcome, sender: Role) -> None:
        if sender is self._our_role:
            try:
                expected = self.choose_version()
            except RemoteProtocolError as exc:
                raise LocalProtocolError(f"cannot send Welcome ({exc}); send Failure") from exc
            if welcome.version != expected:
                raise LocalProtocolError(
                    f"Welcome.version must be {expected}, the highest common version,"
                    f" not {welcome.version}"
                )
        else:
            assert self._hello is not None  # NEGOTIATING means Hello went out
            if not self._hello.version_min <= welcome.version <= self._hello.version_max:
                raise RemoteProtocolError(
                    f"Welcome picks version {welcome.version}, outside the"
                    f" {self._hello.version_min}..{self._hello.version_max} we offered"
                )
