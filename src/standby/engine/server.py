"""The peer server: accepts links from paired engines and serves their sessions.

Each connection gets a thread: the data plane uses blocking TLS (see docs/design.md). A session
that fails, whatever the reason, ends that session only; the accept loop goes on.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import threading
import time
from typing import TYPE_CHECKING

from ..protocol import ProtocolError, RemoteProtocolError, Role, ScenarioPut, ScenarioRemove
from ..replica.confine import PathRefused
from . import events as ev
from .channel import LinkError, PeerRefused, accept
from .session import PeerFailure, Session

if TYPE_CHECKING:
    from .engine import Engine

log = logging.getLogger("standby.server")

#: Sessions served at once; further connections are closed at once (a peer retries). A data
#: session holds a thread and up to a few MiB of buffers; every scenario also keeps one
#: heartbeat session open from each other host (and two at a witness), which hold a thread
#: and little memory: room for about a hundred scenarios per engine.
MAX_SESSIONS = 256
#: errnos on which accept() should back off rather than spin (as asyncio and trio do).
_CAPACITY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}


class PeerServer:
    def __init__(self, engine: Engine, host: str, port: int) -> None:
        self.engine = engine
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, port))
        self._listener.listen(128)
        self.port = self._listener.getsockname()[1]
        self._slots = threading.BoundedSemaphore(MAX_SESSIONS)
        self._stopping = threading.Event()
        self._full_reported = -60.0
        self._thread = threading.Thread(target=self._accept_loop, name="peer-accept",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                sock, addr = self._listener.accept()
            except OSError as exc:
                if self._stopping.is_set():
                    return
                if exc.errno in _CAPACITY_ERRNOS:
                    log.warning("accept: %s; backing off", exc)
                    time.sleep(0.1)
                continue
            if not self._slots.acquire(blocking=False):
                log.warning("refusing %s: %d sessions already", addr, MAX_SESSIONS)
                sock.close()
                if time.monotonic() - self._full_reported > 60:  # an event a minute at most
                    self._full_reported = time.monotonic()
                    self.engine.emit(ev.SESSIONS_FULL, f"connection from {addr[0]} refused: "
                                     f"{MAX_SESSIONS} sessions are served already")
                continue
            threading.Thread(target=self._serve, args=(sock, addr), name=f"peer-{addr[0]}",
                             daemon=True).start()

    def _serve(self, sock: socket.socket, addr: tuple[str, int]) -> None:
        try:
            self._session(sock, addr)
        except Exception:
            log.exception("session from %s failed unexpectedly", addr)
        finally:
            self._slots.release()

    def _session(self, sock: socket.socket, addr: tuple[str, int]) -> None:
        engine = self.engine
        where = f"{addr[0]}:{addr[1]}"
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            channel = accept(sock, engine.identity, engine.trusted_certs(), timeout=60.0)
        except PeerRefused as exc:
            engine.emit(ev.PEER_REFUSED, f"connection from {where} refused: {exc}")
            sock.close()
            return
        except (LinkError, OSError) as exc:
            log.info("TLS handshake with %s failed: %s", where, exc)
            sock.close()
            return
        peer = engine.peer_by_fingerprint(channel.peer_fingerprint)
        if peer is None:  # trusted at handshake, removed since: treat as unknown
            engine.emit(ev.PEER_REFUSED, f"connection from {where} refused: peer no longer paired")
            channel.close()
            return
        session = Session(channel, Role.ACCEPTOR, engine.name)
        scenario: str | None = None
        try:
            try:
                hello = session.accept()
            except LinkError as exc:  # e.g. `peer add` on the other side: it only wanted our
                log.info("%s (%s) left before the handshake: %s", peer, where, exc)  # certificate
                return
            session.peer_engine = peer  # the paired name, not the one the peer claims
            if hello.purpose == "control":
                self._control(session, peer)
            elif hello.purpose == "sync":
                from .sync_replica import ReplicaSync

                replica = ReplicaSync(engine, session, peer)
                try:
                    replica.run()
                finally:
                    scenario = replica.scenario_name
            elif hello.purpose == "ha":
                from .heartbeat import serve_ha_session

                serve_ha_session(engine, session, peer)
            elif hello.purpose == "replicate":
                from .replica_stream import ReplicaStream

                stream = ReplicaStream(engine, session, peer)
                try:
                    stream.run()
                finally:
                    scenario = stream.scenario_name
            else:
                session.fail("SB3001", f"unknown session purpose {hello.purpose!r}")
        except ProtocolError as exc:
            engine.emit(ev.PROTOCOL_ERROR, f"session with {peer} ({where}): {exc}", scenario)
            session.fail(ev.PROTOCOL_ERROR.code, str(exc))
        except PathRefused as exc:
            engine.emit(ev.PATH_REFUSED, f"session with {peer} ({where}): {exc}", scenario)
            session.fail(ev.PATH_REFUSED.code, str(exc))
        except PeerFailure as exc:
            log.info("session with %s ended by the peer: %s", peer, exc)
        except LinkError as exc:
            engine.emit(ev.SESSION_ERROR, f"session with {peer} ({where}): {exc}", scenario)
        except OSError as exc:  # a file operation failed here: tell the peer why we stop
            engine.emit(ev.SESSION_ERROR, f"session with {peer} ({where}): {exc}", scenario)
            session.fail(ev.SESSION_ERROR.code, f"{engine.name}: {exc}")
        finally:
            session.close()

    def _control(self, session: Session, peer: str) -> None:
        message = session.recv()
        if isinstance(message, ScenarioPut):
            reply = self.engine.receive_scenario(peer, message)
        elif isinstance(message, ScenarioRemove):
            reply = self.engine.remove_received(peer, message.name)
        else:
            raise RemoteProtocolError(f"unexpected {type(message).__name__} on a control session")
        session.send(reply)
