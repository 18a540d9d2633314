"""A peer session: the sans-IO protocol connection driven over a secure channel.

This is the thin shell around :mod:`standby.protocol`: ``recv()`` reads until the protocol has
a whole message, ``send()`` serializes and writes. One thread may send while another receives
(the master's sender and its reply reader); each direction has its own lock, and the protocol
object is touched under a third, briefly.
"""

from __future__ import annotations

import contextlib
import threading
from typing import TypeVar

from ..protocol import (
    NEED_DATA,
    PEER_CLOSED,
    PROTOCOL_VERSION_MAX,
    PROTOCOL_VERSION_MIN,
    Connection,
    Failure,
    Goodbye,
    Hello,
    Message,
    Role,
    Welcome,
)
from .channel import LinkBroken, SecureChannel

M = TypeVar("M", bound=Message)

#: Bytes asked of the channel per read: one TLS record is 16 KiB; larger reads let the channel
#: return several records at once and keep per-call overhead low on bulk data.
READ_SIZE = 1 << 20


class PeerFailure(Exception):
    """The peer ended the session with a Failure message (its reason, with an event ID)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Session:
    """One protocol session over one channel."""

    def __init__(self, channel: SecureChannel, role: Role, our_engine: str) -> None:
        self.channel = channel
        self.our_engine = our_engine
        self._conn = Connection(role)
        self._conn_lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._recv_lock = threading.Lock()
        self.peer_engine = ""
        self.purpose = ""
        self._corked: list[Message] = []  # see send_later()

    def __repr__(self) -> str:
        return f"<Session {self.our_engine}<->{self.peer_engine or '?'} {self.purpose} {self._conn!r}>"

    # --- handshake ------------------------------------------------------------------------------

    def open(self, purpose: str) -> None:
        """Initiator side: say Hello and wait for Welcome."""
        self.purpose = purpose
        self.send(Hello(version_min=PROTOCOL_VERSION_MIN, version_max=PROTOCOL_VERSION_MAX,
                        engine=self.our_engine, purpose=purpose))
        welcome = self.expect(Welcome)
        self.peer_engine = welcome.engine

    def accept(self) -> Hello:
        """Acceptor side: read Hello, answer Welcome with the highest common version."""
        hello = self.expect(Hello)
        version = min(hello.version_max, PROTOCOL_VERSION_MAX)
        if version < max(hello.version_min, PROTOCOL_VERSION_MIN):
            self.fail("SB3001", f"no common protocol version: we speak {PROTOCOL_VERSION_MIN}.."
                      f"{PROTOCOL_VERSION_MAX}, the peer {hello.version_min}..{hello.version_max}")
            raise PeerFailure("SB3001", "no common protocol version")
        self.send(Welcome(version=version, engine=self.our_engine))
        self.peer_engine = hello.engine
        self.purpose = hello.purpose
        return hello

    # --- messages -------------------------------------------------------------------------------

    def send(self, *messages: Message) -> None:
        """Send messages (with any corked ones before them) in one write: small messages share
        TLS records and system calls."""
        with self._send_lock:
            queued, self._corked = self._corked, []
            pieces: list[bytes | memoryview] = []
            with self._conn_lock:
                for message in (*queued, *messages):
                    pieces += self._conn.send(message)
            try:
                self.channel.send(pieces)
            except BaseException:
                with self._conn_lock:
                    self._conn.send_failed()
                raise

    def send_later(self, message: Message) -> None:
        """Queue a message that nobody waits for; it leaves with the next send, or before this
        session next waits for data (so a peer is never kept waiting for it)."""
        self._corked.append(message)

    def flush(self) -> None:
        if self._corked:
            self.send()

    def recv(self) -> Message:
        """The next message. A Failure from the peer raises :class:`PeerFailure`."""
        with self._recv_lock:
            while True:
                with self._conn_lock:
                    event = self._conn.next_event()
                if event is NEED_DATA:
                    self.flush()
                    data = self.channel.recv(READ_SIZE)
                    with self._conn_lock:
                        self._conn.receive_data(data)
                    continue
                if event is PEER_CLOSED:
                    raise LinkBroken("the peer closed the connection in mid-session")
                assert isinstance(event, Message)
                if isinstance(event, Failure):
                    raise PeerFailure(event.code, event.message)
                return event

    def expect(self, kind: type[M]) -> M:
        """The next message, which must be of ``kind``."""
        message = self.recv()
        if not isinstance(message, kind):
            raise PeerFailure("SB3001", f"expected {kind.__name__}, got {type(message).__name__}")
        return message

    def fail(self, code: str, message: str) -> None:
        """Tell the peer why we end the session; best effort."""
        with contextlib.suppress(Exception):
            self.send(Failure(code=code, message=message[:2000]))

    def close(self) -> None:
        """Say Goodbye when the session is still open, then close the channel."""
        try:
            if self._conn.state.name == "OPEN":
                self.send(Goodbye())  # corked messages leave first
        except Exception:
            pass
        self.channel.close()
