"""The session state machine of a peer link.

Rule 1: every session transition lives in the TRANSITIONS table of this file, and which
        session messages each purpose allows in :func:`purpose_allows`.
Rule 2: this file does not know which side we are; roles (who may send what) and the version
        checks of the handshake are the Connection's business.
Rule 3: both sides of a connection share one state, advanced by messages in either direction.
Rule 4: a session's purpose (Hello.purpose) decides which session messages it carries: a
        "replicate" session the REPLICATION_MESSAGES and no others, any other session all
        the others and none of them.

::

    HANDSHAKE --Hello--> NEGOTIATING --Welcome--> OPEN --Goodbye--> CLOSED
        |                    |                     |  \\--(session messages: stay OPEN)
        +--Failure--> CLOSED +--Failure--> CLOSED  +--Failure--> CLOSED

    any exception while sending or receiving --> ERROR (sticky)

NEGOTIATING is a state of its own because the handshake has two steps (Hello, then Welcome or
Failure) and a table keyed by state and message type must tell them apart.
"""

from __future__ import annotations

import enum

from ._messages import (
    MESSAGE_TYPES,
    PURPOSE_REPLICATE,
    Ack,
    Batch,
    Failure,
    Goodbye,
    Heartbeat,
    Hello,
    Message,
    ReplicateBegin,
    ReplicateReady,
    Welcome,
)


class State(enum.Enum):
    """Where a session is. Both sides of a connection go through the same states."""

    HANDSHAKE = "handshake"  # waiting for the initiator's Hello
    NEGOTIATING = "negotiating"  # Hello seen; waiting for the acceptor's Welcome or Failure
    OPEN = "open"  # version agreed; session messages flow both ways
    CLOSED = "closed"  # Goodbye or Failure seen, or the peer closed: nothing may follow
    ERROR = "error"  # a send or receive failed: the connection is unusable


_HANDSHAKE_MESSAGES = (Hello, Welcome, Failure, Goodbye)

#: Every message that may appear in a session once it is OPEN, without changing its state.
SESSION_MESSAGES: tuple[type[Message], ...] = tuple(
    cls for cls in MESSAGE_TYPES.values() if cls not in _HANDSHAKE_MESSAGES
)
_SESSION = frozenset(SESSION_MESSAGES)

#: The session messages of a "replicate" session, and of no other.
REPLICATION_MESSAGES: tuple[type[Message], ...] = (
    ReplicateBegin,
    ReplicateReady,
    Batch,
    Ack,
    Heartbeat,
)
_REPLICATION = frozenset(REPLICATION_MESSAGES)

TRANSITIONS: dict[State, dict[type[Message], State]] = {
    State.HANDSHAKE: {Hello: State.NEGOTIATING, Failure: State.CLOSED},
    State.NEGOTIATING: {Welcome: State.OPEN, Failure: State.CLOSED},
    State.OPEN: {
        **dict.fromkeys(SESSION_MESSAGES, State.OPEN),
        Goodbye: State.CLOSED,
        Failure: State.CLOSED,
    },
    State.CLOSED: {},
    State.ERROR: {},
}


def next_state(state: State, message_type: type[Message]) -> State | None:
    """The state after ``message_type`` in ``state``, or None if it may not appear there."""
    return TRANSITIONS[state].get(message_type)


def purpose_allows(purpose: str, message_type: type[Message]) -> bool:
    """Whether an OPEN session of ``purpose`` may carry ``message_type``.

    Only session messages depend on the purpose; Goodbye and Failure end any session.
    """
    if message_type in _REPLICATION:
        return purpose == PURPOSE_REPLICATE
    return purpose != PURPOSE_REPLICATE or message_type not in _SESSION
