"""Is Alive: heartbeats between the hosts of a scenario, over long-lived "ha" sessions.

Each HA controller runs one :class:`HeartbeatLink` per other host of its scenario (and one to
its witness). A link keeps a session open to that host and, every ``interval`` seconds, sends
this host's status (:class:`~standby.engine.ha_status.HostStatus`) in an ``HaHeartbeat``; the
other host records it and answers with its own status, which the link records. Both hosts run
links to each other, so each hears the other twice per interval, and a link that fails (a
refused connection, a timeout, a closed session) is simply opened again at the next beat:
silence is what the controller judges, never an exception.

Every read and write of a link is bounded by a short timeout (two intervals, at least 2 s, at
most the scenario's Is Alive timeout), so a peer that hangs costs a beat, not the link.

:func:`serve_ha_session` is the other side, run by the peer server for an incoming "ha"
session: it answers heartbeats and epoch claims (witness) until the initiator leaves.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..protocol import (
    PURPOSE_HA,
    EpochClaim,
    Goodbye,
    HaHeartbeat,
    ProtocolError,
    RemoteProtocolError,
    Reply,
)
from .channel import LinkError
from .ha_status import HostStatus, StatusBoard
from .session import PeerFailure, Session

if TYPE_CHECKING:
    from .engine import Engine

log = logging.getLogger("standby.heartbeat")


def link_timeout(interval: float, timeout: float) -> float:
    """The bound of each network call of a heartbeat link (see the module docstring)."""
    return min(max(2 * interval, 2.0), timeout)


class HeartbeatLink:
    """Heartbeats towards one host for one scenario, in a thread of their own."""

    def __init__(self, engine: Engine, scenario: str, peer: str, *, interval: float,
                 timeout: float, status: Callable[[], HostStatus], board: StatusBoard) -> None:
        self.engine = engine
        self.scenario = scenario
        self.peer = peer
        self.interval = interval
        self.timeout = link_timeout(interval, timeout)
        self._status = status
        self._board = board
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._session: Session | None = None
        self.failure: str | None = None  # why the last beat got no answer (None: it did)
        self._thread = threading.Thread(target=self._main, name=f"ha-{scenario}-{peer}",
                                        daemon=True)

    def __repr__(self) -> str:
        state = "answering" if self.failure is None else f"silent ({self.failure})"
        return f"<HeartbeatLink {self.scenario} -> {self.peer}, every {self.interval:g} s, {state}>"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=self.timeout + 1)

    def kick(self) -> None:
        """Send the next beat now (this host's record changed: tell the peer at once)."""
        self._wake.set()

    def _main(self) -> None:
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                self._beat()
                self._wake.wait(max(0.0, started + self.interval - time.monotonic()))
                self._wake.clear()
        finally:
            self._close()

    def _beat(self) -> None:
        from .engine import EngineError

        try:
            if self._session is None:
                self._session = self.engine.open_session(self.peer, PURPOSE_HA,
                                                         timeout=self.timeout, report=False)
            self._session.send(HaHeartbeat(scenario=self.scenario,
                                           status=self._status().to_wire()))
            reply = self._session.expect(Reply)
            if not reply.ok:
                self._failed(f"{self.peer} refused: {reply.message}")
                return
            self._board.heard(self.scenario, self.peer, HostStatus.from_wire(reply.data),
                              time.monotonic())
            self.failure = None
        except EngineError as exc:
            self._failed(exc.message)
        except (LinkError, OSError, PeerFailure, ProtocolError, ValueError) as exc:
            self._failed(str(exc) or type(exc).__name__)
        except Exception as exc:  # a bug must not end the heartbeats for good
            log.exception("heartbeat %s -> %s failed", self.scenario, self.peer)
            self._failed(f"unexpected error: {exc!r}")

    def _failed(self, reason: str) -> None:
        if reason != self.failure:
            log.info("scenario %s: no heartbeat answer from %s: %s", self.scenario, self.peer,
                     reason)
        self.failure = reason
        self._close()

    def _close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            session.close()


def serve_ha_session(engine: Engine, session: Session, peer: str) -> None:
    """Answer one incoming "ha" session: a Reply to each heartbeat and epoch claim."""
    while True:
        try:
            message = session.recv()
        except LinkError as exc:  # the initiator vanished or went quiet: it reconnects
            log.debug("ha session with %s ended: %s", peer, exc)
            return
        if isinstance(message, HaHeartbeat):
            reply = engine.ha.on_heartbeat(peer, message)
        elif isinstance(message, EpochClaim):
            reply = engine.ha.on_claim(peer, message)
        elif isinstance(message, Goodbye):
            return
        else:
            raise RemoteProtocolError(f"unexpected {type(message).__name__} in an ha session")
        session.send(reply)
