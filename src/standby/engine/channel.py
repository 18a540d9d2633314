"""Mutually authenticated TLS 1.3 links between paired engines, on blocking sockets.

Why blocking sockets and our own TLS pump: the data plane runs in threads because blocking
``ssl`` sockets moved 1.4 GB/s on loopback against 0.45 GB/s for asyncio TLS. A session sends
from one thread while it receives in another, and an OpenSSL ``SSL`` object must never be used
by two threads at once; ``ssl.SSLSocket`` does not protect against that. So the TLS state
machine runs on memory BIOs (``SSLContext.wrap_bio``) behind one lock, and the socket I/O
happens outside it. Encryption and decryption release the GIL.

Authentication (peers pair by certificate fingerprint, as in SSH known_hosts):

- *Client* (``connect``): ``CERT_NONE`` plus an exact check of the SHA-256 fingerprint of the
  server's certificate. OpenSSL still checks the server's CertificateVerify signature, so a
  matching fingerprint proves the server holds that certificate's key. The check runs when
  ``do_handshake`` returns, *before* our handshake flight (our certificate and Finished) leaves
  the memory BIO: a wrong server never receives our certificate nor any application data.
- *Server* (``accept``): ``CERT_REQUIRED`` against a trust store holding exactly the paired
  peers' certificates (``VERIFY_X509_PARTIAL_CHAIN``: each exact certificate is a trust anchor),
  then an explicit check that the client's certificate is one of them (not merely chained to
  one). The caller maps ``peer_fingerprint`` to the peer's name.

Pairing and TLS 1.3 ordering (verified by tests/engine/test_channel.py): in TLS 1.3 the server
sends its certificate (ServerHello ... Finished) *before* the client sends its own, and the
client's handshake is complete once it has sent its Finished; the server judges the client
certificate afterwards. So a client always obtains the server's certificate, whether or not the
server trusts it: ``fetch_peer_certificate`` relies on this.

The flip side is that the client's ``do_handshake`` cannot tell whether the server accepted it.
An OpenSSL TLS 1.3 server sends its NewSessionTicket messages only after it has verified the
client's Certificate, CertificateVerify and Finished, and sends a certificate alert instead when
it refuses. Our servers always send one ticket (``num_tickets = 1``), so ``connect`` waits for
that verdict: a ticket means accepted, an alert means refused (``PeerRefused`` raised by
``connect`` itself, not by a later ``recv``). Our client never offers the ticket back, so no
session is resumed (and ``accept`` checks the peer certificate of every session anyway).

Errors are named by cause; see ``LinkError`` and its subclasses. Every blocking socket call has
a timeout: ``connect``/``accept`` bound the whole connection set-up by ``timeout`` seconds, and a
``SecureChannel`` waits at most ``timeout`` seconds for progress on any single send or receive.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import socket
import ssl
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from types import TracebackType
from typing import Literal, cast

from standby.engine.identity import Identity, fingerprint_of, parse_fingerprint

__all__ = [
    "LinkBroken",
    "LinkClosed",
    "LinkError",
    "LinkTimeout",
    "PeerMismatch",
    "PeerRefused",
    "SecureChannel",
    "accept",
    "connect",
    "fetch_peer_certificate",
]

# Plaintext encrypted per lock hold and per socket write. Large enough that the per-call Python
# overhead vanishes (a TLS record is 16 KiB; OpenSSL loops over records in C), small enough that
# the receiving thread is not kept waiting for the lock for long (~75 us of AES-GCM) and that the
# ciphertext copy out of the memory BIO stays in malloc's reused heap.
SEND_CHUNK = 256 * 1024
# Pieces smaller than one TLS record are joined (copied) before encryption, so a burst of small
# messages becomes one record instead of one record each; larger pieces are encrypted straight
# from the caller's buffer.
SMALL_PIECE = 16 * 1024
# Ciphertext read from the socket per recv_into. Measured with bench/channel.py: 32-64 KiB cost
# the receiver ~60 % more CPU per GB than 1 MiB (per-call Python and TLS overhead), 512 KiB and
# 1 MiB were alike. One read then yields about one DEFAULT_MAX_RECV of plaintext.
RECV_CHUNK = 1 << 20
# recv()'s default and the largest plaintext it returns unless asked for more.
DEFAULT_MAX_RECV = 1 << 20
# Socket reads during connection set-up: handshake messages are a few KiB.
SETUP_READ = 64 * 1024

Side = Literal["local", "remote"]

# TLS alerts (OpenSSL reason codes of a *received* alert) by which a peer says it does not accept
# our certificate. Any other alert is a broken link, not a refusal.
_CERTIFICATE_ALERTS = frozenset(
    {
        "TLSV1_ALERT_UNKNOWN_CA",
        "TLSV1_ALERT_ACCESS_DENIED",
        "TLSV13_ALERT_CERTIFICATE_REQUIRED",
        "SSLV3_ALERT_BAD_CERTIFICATE",
        "SSLV3_ALERT_CERTIFICATE_UNKNOWN",
        "SSLV3_ALERT_CERTIFICATE_EXPIRED",
        "SSLV3_ALERT_CERTIFICATE_REVOKED",
        "SSLV3_ALERT_UNSUPPORTED_CERTIFICATE",
    }
)


# --------------------------------------------------------------------------------------------
# Errors, named by cause


class LinkError(Exception):
    """Abstract root: this link cannot carry the operation."""


class LinkTimeout(LinkError, TimeoutError):
    """A network call made no progress within the timeout.

    A timed-out ``recv`` leaves the channel usable. A timed-out ``send`` breaks it (an encrypted
    record may be half written), and later calls raise ``LinkBroken``.
    """


class LinkClosed(LinkError):
    """The link was closed in an orderly way and used again: a bug in the caller.

    Either *we* closed it (``close()``), or the peer closed it with a TLS close_notify, which
    ``recv()`` already reported once by returning ``b""``.
    """


class LinkBroken(LinkError):
    """The peer or the operating system broke the link: reset, refused, unreachable, truncated
    (TCP closed without TLS close_notify, as when the peer process dies), or a TLS record that
    does not decrypt. Reconnect."""


class PeerRefused(LinkError):
    """Authentication failed; ``refused_by`` says who refused whom.

    - ``"remote"``: the peer did not accept *our* certificate (it has not paired with us).
    - ``"local"``: *we* did not accept the peer's certificate (not one of our paired peers,
      or, for ``PeerMismatch``, not the fingerprint we expected).

    Attributes:
        refused_by: ``"local"`` or ``"remote"``.
        reason: why, e.g. the TLS alert received or the verification error.
        peer_fingerprint: the peer's certificate fingerprint when we saw it, else None.
    """

    def __init__(
        self, message: str, *, refused_by: Side, reason: str, peer_fingerprint: str | None = None
    ) -> None:
        super().__init__(message)
        self.refused_by: Side = refused_by
        self.reason = reason
        self.peer_fingerprint = peer_fingerprint


class PeerMismatch(PeerRefused):
    """The server's certificate fingerprint differs from the one we paired with.

    Raised before any application data (or even our own certificate) is sent. Either the host at
    that address is not the engine we paired with, or that engine's identity was recreated.
    """

    def __init__(self, *, address: str, expected: str, actual: str) -> None:
        super().__init__(
            f"{address} presented certificate {actual}, but we paired with {expected}; "
            "refusing to talk to it. If that host's identity was recreated on purpose, pair "
            "again with its new fingerprint",
            refused_by="local",
            reason="fingerprint mismatch",
            peer_fingerprint=actual,
        )
        self.expected = expected
        self.actual = actual


# --------------------------------------------------------------------------------------------
# TLS contexts


def _base_context(protocol: int, identity: Identity) -> ssl.SSLContext:
    ctx = ssl.SSLContext(protocol)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(identity.cert_path, identity.key_path)
    return ctx


# Building a context costs about 2.3 ms here (mostly load_cert_chain decoding the key): cheap
# for peers, but an unauthenticated connection flood would pay it per attempt. Cached on the
# exact inputs; a changed trust set gives a new context (and new session ticket keys).
@functools.lru_cache(maxsize=8)
def _client_context(identity: Identity) -> ssl.SSLContext:
    ctx = _base_context(ssl.PROTOCOL_TLS_CLIENT, identity)
    ctx.check_hostname = False  # peers are named by fingerprint, not by DNS
    ctx.verify_mode = ssl.CERT_NONE  # the fingerprint check replaces chain verification
    return ctx


@functools.lru_cache(maxsize=8)
def _server_context(identity: Identity, trusted: frozenset[bytes]) -> ssl.SSLContext:
    ctx = _base_context(ssl.PROTOCOL_TLS_SERVER, identity)
    ctx.verify_mode = ssl.CERT_REQUIRED
    # Each paired certificate is itself a trust anchor. PARTIAL_CHAIN makes OpenSSL match the
    # exact certificate; without it, two peers whose certificates share a subject name (say two
    # hosts both called "standby") are not both accepted. Our certificates are CA=False, so no
    # peer can issue certificates that chain to its own.
    ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN | ssl.VERIFY_X509_STRICT
    if trusted:
        try:
            ctx.load_verify_locations(cadata=b"".join(sorted(trusted)))
        except ssl.SSLError as exc:
            raise ValueError(
                f"trusted_certs holds something that is not a DER certificate: {exc}"
            ) from exc
    # The ticket is the client's signal that we accepted its certificate (module docstring).
    ctx.num_tickets = 1
    return ctx


# --------------------------------------------------------------------------------------------
# Connection set-up (one thread, before a SecureChannel exists)


def _check_timeout(timeout: float) -> None:
    if not timeout > 0:  # also rejects NaN
        raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")


def _format_address(address: tuple[str, int] | tuple[str, int, int, int]) -> str:
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Tls:
    """An SSL object on a pair of memory BIOs."""

    __slots__ = ("incoming", "obj", "outgoing")

    def __init__(self, ctx: ssl.SSLContext, *, server_side: bool) -> None:
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self.incoming, self.outgoing, server_side=server_side)


class _Setup:
    """TLS handshake on a socket, with one deadline for the whole set-up.

    Every socket call gets the time left, so a peer that trickles bytes cannot hold us longer
    than ``timeout`` in total.
    """

    def __init__(
        self, sock: socket.socket, tls: _Tls, *, timeout: float, deadline: float, where: str
    ) -> None:
        self.sock = sock
        self.tls = tls
        self.timeout = timeout
        self.deadline = deadline  # time.monotonic() by which the whole set-up must be done
        self.where = where  # the peer's address, for messages

    def _arm(self) -> None:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise self._timed_out()
        self.sock.settimeout(left)

    def _timed_out(self) -> LinkTimeout:
        return LinkTimeout(
            f"TLS set-up with {self.where} did not complete within {self.timeout:g} s"
        )

    def flush(self) -> None:
        """Send everything the SSL object has written."""
        view = memoryview(self.tls.outgoing.read())
        while view:
            self._arm()
            try:
                sent = self.sock.send(view)
            except TimeoutError:
                raise self._timed_out() from None
            except OSError as exc:
                raise LinkBroken(f"sending to {self.where} failed: {exc}") from exc
            view = view[sent:]

    def fill(self) -> None:
        """Receive what the socket has (waiting if needed) into the SSL object."""
        self._arm()
        try:
            data = self.sock.recv(SETUP_READ)
        except TimeoutError:
            raise self._timed_out() from None
        except OSError as exc:
            raise LinkBroken(f"receiving from {self.where} failed: {exc}") from exc
        if data:
            self.tls.incoming.write(data)
        else:
            self.tls.incoming.write_eof()

    def handshake(self, our_fingerprint: str) -> None:
        """Run the handshake until OpenSSL reports it complete on our side.

        On failure the alert OpenSSL wrote (if any) is sent before raising, so that the peer
        learns why.
        """
        while True:
            try:
                self.tls.obj.do_handshake()
                return
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as exc:
                with contextlib.suppress(LinkError):
                    self.flush()
                raise self._handshake_error(exc, our_fingerprint) from exc
            self.flush()
            self.fill()

    def _handshake_error(self, exc: ssl.SSLError, our_fingerprint: str) -> LinkError:
        if isinstance(exc, ssl.SSLCertVerificationError):
            return PeerRefused(
                f"refused {self.where}: its certificate is not one of our paired peers' "
                f"({exc.verify_message}). If it should be, pair with it: standby peer add "
                "NAME HOST:PORT FINGERPRINT",
                refused_by="local",
                reason=exc.verify_message,
            )
        if exc.reason == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
            return PeerRefused(
                f"refused {self.where}: it presented no certificate",
                refused_by="local",
                reason="no client certificate",
            )
        if isinstance(exc, ssl.SSLEOFError):
            return LinkBroken(
                f"{self.where} closed the connection during the TLS handshake (a peer whose "
                "expected fingerprint for us does not match does this)"
            )
        return self.refusal_or_broken(exc, our_fingerprint)

    def refusal_or_broken(self, exc: ssl.SSLError, our_fingerprint: str) -> LinkError:
        """Classify an error received from the peer: a certificate alert is a refusal."""
        if exc.reason in _CERTIFICATE_ALERTS:
            alert = exc.reason.split("_ALERT_", 1)[-1].lower().replace("_", " ")
            return PeerRefused(
                f"{self.where} refused our certificate (TLS alert: {alert}): it has not paired "
                "with this engine. On that host run: standby peer add NAME OUR_HOST:PORT "
                f"{our_fingerprint}",
                refused_by="remote",
                reason=alert,
            )
        if isinstance(exc, ssl.SSLEOFError):
            return LinkBroken(
                f"{self.where} closed the connection before accepting our certificate, "
                "without a TLS alert (it stopped, or its network failed)"
            )
        return LinkBroken(f"TLS with {self.where} failed: {exc}")

    def await_verdict(self, our_fingerprint: str) -> bytes:
        """Wait until the server has accepted our certificate (client side).

        Returns:
            Application data that arrived with the verdict, to be delivered first.

        Raises:
            PeerRefused: the server sent a certificate alert.
            LinkBroken: it closed without a verdict.
            LinkTimeout: no verdict before the deadline.
        """
        early = bytearray()
        obj = self.tls.obj
        while True:
            try:
                chunk = obj.read(SETUP_READ)
            except ssl.SSLWantReadError:
                chunk = None
            except ssl.SSLZeroReturnError:
                chunk = b""
            except ssl.SSLError as exc:
                raise self.refusal_or_broken(exc, our_fingerprint) from exc
            if chunk:
                early += chunk
                continue
            session = obj.session
            if session is not None and session.has_ticket:
                return bytes(early)
            if chunk == b"":
                raise LinkBroken(
                    f"{self.where} closed the link (close_notify) before accepting our certificate"
                )
            self.fill()


def _client_handshake(
    address: tuple[str, int],
    identity: Identity,
    expected_fingerprint: str | None,
    timeout: float,
) -> tuple[_Setup, bytes]:
    """Connect, handshake, check the fingerprint, then send our half of the handshake.

    Returns the set-up (to wait for the verdict) and the server's DER certificate. On error the
    socket is closed.
    """
    _check_timeout(timeout)
    expected = None if expected_fingerprint is None else parse_fingerprint(expected_fingerprint)
    where = _format_address(address)
    deadline = time.monotonic() + timeout
    try:
        sock = socket.create_connection(address, timeout=timeout)
    except TimeoutError:
        raise LinkTimeout(f"connecting to {where} timed out after {timeout:g} s") from None
    except OSError as exc:
        raise LinkBroken(f"cannot connect to {where}: {exc}") from exc
    try:
        with contextlib.suppress(OSError):  # only latency; a dead socket fails just below
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        tls = _Tls(_client_context(identity), server_side=False)
        setup = _Setup(sock, tls, timeout=timeout, deadline=deadline, where=where)
        setup.handshake(identity.fingerprint)
        cert_der = setup.tls.obj.getpeercert(binary_form=True)
        if cert_der is None:  # cannot happen in TLS 1.3: the server must send a certificate
            raise LinkBroken(f"{where} sent no certificate")
        actual = fingerprint_of(cert_der)
        if expected is not None and actual != expected:
            # Our Certificate/CertificateVerify/Finished are still in the memory BIO: the wrong
            # server never gets them, nor anything after.
            raise PeerMismatch(address=where, expected=expected, actual=actual)
        setup.flush()
    except BaseException:
        sock.close()
        raise
    return setup, cert_der


def connect(
    address: tuple[str, int],
    identity: Identity,
    *,
    expected_fingerprint: str | None,
    timeout: float,
) -> SecureChannel:
    """Open a mutually authenticated link to the engine at ``address``.

    Args:
        address: ``(host, port)``.
        identity: our certificate and key, presented to the server.
        expected_fingerprint: the server's certificate fingerprint we paired with (any accepted
            spelling, see ``parse_fingerprint``). ``None`` accepts any server: only for
            pairing, where the caller shows the fingerprint to an operator.
        timeout: seconds for the whole set-up (TCP connect, handshake, verdict), and then the
            channel's timeout for each send/recv.

    Returns:
        An open channel. The server has accepted our certificate by the time this returns.

    Raises:
        PeerMismatch: the server's fingerprint is not ``expected_fingerprint``.
        PeerRefused: the server refused our certificate (``refused_by == "remote"``).
        LinkTimeout: the set-up did not complete within ``timeout``.
        LinkBroken: connection refused, reset, or closed during the set-up.
        ValueError: ``expected_fingerprint`` is not a fingerprint.
    """
    setup, cert_der = _client_handshake(address, identity, expected_fingerprint, timeout)
    try:
        early = setup.await_verdict(identity.fingerprint)
    except BaseException:
        setup.sock.close()
        raise
    return SecureChannel(
        setup.sock,
        setup.tls,
        timeout=timeout,
        role="client",
        peer=setup.where,
        peer_cert_der=cert_der,
        early_data=early,
    )


def fetch_peer_certificate(
    address: tuple[str, int],
    identity: Identity,
    expected_fingerprint: str | None,
    timeout: float,
) -> bytes:
    """Fetch the certificate of the engine at ``address``, for pairing.

    Works whether or not that engine trusts us yet: in TLS 1.3 its certificate arrives before it
    judges ours (module docstring). We still wait for its verdict, so that the link is closed
    cleanly on both sides; a refusal is expected here and is not an error.

    Returns:
        The server's certificate, DER encoded, whose fingerprint is ``expected_fingerprint``.

    Raises:
        PeerMismatch: the fingerprint differs.
        LinkTimeout, LinkBroken: as for ``connect``, during the handshake.
    """
    setup, cert_der = _client_handshake(address, identity, expected_fingerprint, timeout)
    try:
        setup.await_verdict(identity.fingerprint)
    except LinkError:
        setup.sock.close()  # refused (expected before pairing completes) or gone: either way done
        return cert_der
    SecureChannel(
        setup.sock,
        setup.tls,
        timeout=timeout,
        role="client",
        peer=setup.where,
        peer_cert_der=cert_der,
    ).close()
    return cert_der


def accept(
    sock: socket.socket,
    identity: Identity,
    trusted_certs: Iterable[bytes],
    timeout: float,
) -> SecureChannel:
    """Authenticate a client on a freshly accepted socket (server side).

    Args:
        sock: a connected socket from ``listener.accept()``; this function owns it from now on
            (it is closed on failure).
        identity: our certificate and key.
        trusted_certs: DER certificates of the paired peers, as they are now.
        timeout: seconds for the whole handshake, then the channel's send/recv timeout.

    Returns:
        An open channel; map ``channel.peer_fingerprint`` to the peer's name.

    Raises:
        PeerRefused: the client's certificate is not a paired peer's (``refused_by ==
            "local"``; the client was sent a TLS alert and sees ``PeerRefused`` too), or the
            client sent a certificate alert (``"remote"``).
        LinkTimeout: the handshake did not complete within ``timeout``.
        LinkBroken: the client went away during the handshake (our ``connect`` does this when
            our fingerprint is not the one it expects).
        ValueError: ``trusted_certs`` holds something that is not a DER certificate.
    """
    try:
        _check_timeout(timeout)
        trusted = frozenset(bytes(cert) for cert in trusted_certs)
        ctx = _server_context(identity, trusted)
        try:
            where = _format_address(sock.getpeername())
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:  # the client is already gone
            raise LinkBroken(f"accepted connection is unusable: {exc}") from exc
        tls = _Tls(ctx, server_side=True)
        setup = _Setup(sock, tls, timeout=timeout, deadline=time.monotonic() + timeout, where=where)
        setup.handshake(identity.fingerprint)
        cert_der = setup.tls.obj.getpeercert(binary_form=True)
        if cert_der is None or cert_der not in trusted:
            # Verification passed through a chain rather than on a paired certificate itself.
            # Our session ticket (the client's "accepted" signal) is still in the BIO and is
            # dropped: the client sees the connection close without a verdict.
            raise PeerRefused(
                f"refused {where}: its certificate chains to a paired peer but is not one",
                refused_by="local",
                reason="certificate is not a paired peer's certificate",
                peer_fingerprint=None if cert_der is None else fingerprint_of(cert_der),
            )
        setup.flush()  # the session ticket: tells the client we accepted it
    except BaseException:
        sock.close()
        raise
    return SecureChannel(
        sock, setup.tls, timeout=timeout, role="server", peer=where, peer_cert_der=cert_der
    )


# --------------------------------------------------------------------------------------------
# The channel


class _State(enum.Enum):
    OPEN = "open"
    FINISHED = "finished"  # the peer closed with close_notify and recv() returned b""
    CLOSED = "closed"  # we called close()
    BROKEN = "broken"  # an error left the TLS stream unusable


def _byte_view(piece: bytes | bytearray | memoryview) -> memoryview:
    view = memoryview(piece)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def _batches(
    pieces: Iterable[bytes | bytearray | memoryview],
) -> Iterator[tuple[list[bytes | memoryview], int]]:
    """Group pieces into batches of about SEND_CHUNK plaintext bytes.

    Large pieces are cut into views of the caller's buffer (no copy); runs of small pieces are
    joined into one bytes object, so they share TLS records.
    """
    batch: list[bytes | memoryview] = []
    size = 0
    small: list[memoryview] = []
    small_size = 0
    for piece in pieces:
        view = _byte_view(piece)
        if len(view) < SMALL_PIECE:
            small.append(view)
            small_size += len(view)
            if small_size < SMALL_PIECE:
                continue
            parts: list[bytes | memoryview] = [b"".join(small)]
        else:
            parts = [b"".join(small)] if small else []
            parts += [view[i : i + SEND_CHUNK] for i in range(0, len(view), SEND_CHUNK)]
        small, small_size = [], 0
        for part in parts:
            batch.append(part)
            size += len(part)
            if size >= SEND_CHUNK:
                yield batch, size
                batch, size = [], 0
    if small_size:
        batch.append(b"".join(small))
        size += small_size
    if size:
        yield batch, size


class SecureChannel:
    """An authenticated TLS 1.3 link on a blocking socket, for one sender and one receiver.

    Made by ``connect`` or ``accept``. Thread safety: one thread may ``send`` while another
    ``recv``s; concurrent senders (or receivers) are serialized, and one ``send`` call is never
    interleaved with another. ``close`` may be called from any thread and wakes both.

    Timeouts: every send or receive waits at most ``timeout`` seconds for progress (for
    ``send``, per socket write, not for the whole buffer).

    Locks: ``_send_lock`` orders ciphertext on the socket (its holder drains the outgoing BIO
    and writes it, so records leave in the order OpenSSL produced them); ``_tls_lock`` guards the
    SSL object, its BIOs and ``_state``, and is never held during socket I/O; ``_recv_lock``
    serializes receivers. A thread takes ``_tls_lock`` last.
    """

    def __init__(
        self,
        sock: socket.socket,
        tls: _Tls,
        *,
        timeout: float,
        role: Literal["client", "server"],
        peer: str,
        peer_cert_der: bytes,
        early_data: bytes = b"",
    ) -> None:
        _check_timeout(timeout)
        self._sock = sock
        self._tls = tls
        self._timeout = timeout
        self._role = role
        self._peer = peer
        self._peer_cert_der = peer_cert_der
        self._peer_fingerprint = fingerprint_of(peer_cert_der)
        self._state = _State.OPEN
        self._why_broken = ""
        self._tls_lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._recv_lock = threading.Lock()
        self._early = early_data
        self._ciphertext = bytearray(RECV_CHUNK)
        self._plaintext = bytearray(DEFAULT_MAX_RECV)
        self._bytes_sent = 0
        self._bytes_received = 0
        sock.settimeout(timeout)

    # -- public -------------------------------------------------------------------------------

    @property
    def peer_fingerprint(self) -> str:
        """SHA-256 fingerprint of the peer's certificate (64 lowercase hex digits)."""
        return self._peer_fingerprint

    @property
    def peer_cert_der(self) -> bytes:
        """The peer's certificate, DER encoded."""
        return self._peer_cert_der

    @property
    def timeout(self) -> float:
        """Longest wait, in seconds, for progress on any send or receive."""
        return self._timeout

    def send(self, pieces: Sequence[bytes | bytearray | memoryview]) -> None:
        """Send the concatenation of ``pieces``, all of it or raise.

        Large pieces are encrypted straight from the caller's buffers (which must not change
        until this returns); small ones are joined first.

        Raises:
            LinkTimeout: no progress for ``timeout`` seconds; the channel is then broken.
            LinkBroken: the peer or the OS broke the link (now, or before).
            LinkClosed: we closed the channel, or the peer had closed it (recv returned b"").
        """
        with self._send_lock:
            self._check_usable("send")
            encrypted = False
            try:
                for batch, size in _batches(pieces):
                    with self._tls_lock:
                        encrypted = True
                        for part in batch:
                            self._tls.obj.write(part)
                        data = self._tls.outgoing.read()
                    self._write_socket(data)
                    self._bytes_sent += size
            except OSError as exc:  # ssl.SSLError included
                raise self._failure("send", exc) from exc
            except BaseException:
                if encrypted:  # e.g. KeyboardInterrupt between encrypting and writing a record
                    self._mark_broken("a send was interrupted mid-stream")
                raise  # else a bad argument (TypeError...): nothing was sent, no harm done

    def recv(self, max_bytes: int = DEFAULT_MAX_RECV) -> bytes:
        """Receive up to ``max_bytes`` bytes: whatever has arrived, waiting for at least one.

        Returns:
            The bytes, or ``b""`` once, when the peer closed the link in order (TLS
            close_notify); later calls raise ``LinkClosed``.

        Raises:
            LinkTimeout: nothing arrived for ``timeout`` seconds; the channel stays usable.
            LinkBroken: reset, TCP closed without close_notify (the peer died), or a record
                that does not decrypt.
            LinkClosed: we closed the channel, or recv already returned b"".
        """
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
        with self._recv_lock:
            self._check_usable("recv")
            if self._early:
                data, self._early = self._early[:max_bytes], self._early[max_bytes:]
                self._bytes_received += len(data)
                return data
            try:
                return self._recv(max_bytes)
            except OSError as exc:  # ssl.SSLError included
                raise self._failure("recv", exc) from exc

    def close(self) -> None:
        """Close the link: send close_notify if that cannot block, then close the socket.

        Idempotent; may be called from any thread, and wakes a thread blocked in send or recv
        (which then raises ``LinkClosed``).
        """
        with self._tls_lock:
            if self._state is _State.CLOSED:
                return
            healthy = self._state in (_State.OPEN, _State.FINISHED)
            self._state = _State.CLOSED
        # A sender blocked on a full socket holds _send_lock: then skip close_notify rather
        # than wait; the shutdown below wakes that sender.
        if healthy and self._send_lock.acquire(blocking=False):
            try:
                self._send_close_notify()
            finally:
                self._send_lock.release()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()

    def __enter__(self) -> SecureChannel:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<SecureChannel {self._role} peer={self._peer} "
            f"fingerprint={self._peer_fingerprint[:16]}... {self._state.value} "
            f"sent={self._bytes_sent} received={self._bytes_received}>"
        )

    # -- internals ------------------------------------------------------------------------------

    def _check_usable(self, operation: str) -> None:
        state = self._state
        if state is _State.OPEN:
            return
        if state is _State.CLOSED:
            raise LinkClosed(f"{operation} on {self!r}: we closed this link")
        if state is _State.FINISHED:
            raise LinkClosed(
                f"{operation} on {self!r}: the peer closed this link in order and recv() "
                'already returned b""'
            )
        raise LinkBroken(f"{operation} on {self!r}: the link broke earlier: {self._why_broken}")

    def _mark_broken(self, why: str) -> None:
        with self._tls_lock:
            if self._state is not _State.CLOSED:
                self._state = _State.BROKEN
                self._why_broken = why

    def _failure(self, operation: str, exc: OSError) -> LinkError:
        """Translate a socket or TLS error into our errors; decide whether it is sticky."""
        if self._state is _State.CLOSED:
            return LinkClosed(f"{operation} on {self!r}: we closed this link meanwhile")
        if isinstance(exc, TimeoutError):
            error: LinkError = LinkTimeout(
                f"{operation} with {self._peer}: no progress for {self._timeout:g} s"
            )
            if operation == "recv":
                return error  # nothing was consumed: the stream is intact
        elif isinstance(exc, ssl.SSLEOFError):
            error = LinkBroken(
                f"{self._peer} closed TCP without TLS close_notify (it died or the connection "
                "was cut)"
            )
        elif isinstance(exc, ssl.SSLError):
            error = LinkBroken(f"TLS error on the link with {self._peer}: {exc}")
        else:
            error = LinkBroken(f"{operation} with {self._peer} failed: {exc}")
        self._mark_broken(str(error))
        return error

    def _write_socket(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[self._sock.send(view) :]

    def _recv(self, max_bytes: int) -> bytes:
        if len(self._plaintext) < max_bytes:
            self._plaintext = bytearray(max_bytes)
        plaintext = memoryview(self._plaintext)[:max_bytes]
        ciphertext = memoryview(self._ciphertext)
        arrived: int | None = None  # ciphertext bytes just read from the socket; 0 = TCP EOF
        while True:
            with self._tls_lock:
                if self._state is _State.CLOSED:
                    raise LinkClosed(f"recv on {self!r}: we closed this link meanwhile")
                if arrived:
                    self._tls.incoming.write(ciphertext[:arrived])
                elif arrived == 0:
                    self._tls.incoming.write_eof()
                # In TLS 1.3 reading never needs to send: OpenSSL defers the reply to a
                # KeyUpdate to the next SSL_write, which send() drains in order. (A fatal alert
                # written on a decryption error is dropped: that link is dead anyway.)
                count, finished = self._decrypt_into(plaintext)
            if count:
                self._bytes_received += count
                return bytes(plaintext[:count])
            if finished:
                with self._tls_lock:
                    if self._state is _State.OPEN:
                        self._state = _State.FINISHED
                return b""
            arrived = self._sock.recv_into(ciphertext)

    def _decrypt_into(self, plaintext: memoryview) -> tuple[int, bool]:
        """Decrypt buffered records into ``plaintext``; return (bytes, peer sent close_notify).

        Several records per call: one SSL_read returns at most one 16 KiB record.
        """
        count = 0
        limit = len(plaintext)
        while count < limit:
            try:
                # typeshed says bytes; with a buffer, read() returns the count written into it.
                got = cast("int", self._tls.obj.read(limit - count, plaintext[count:]))
            except ssl.SSLWantReadError:
                return count, False
            except ssl.SSLZeroReturnError:
                return count, True
            if not got:
                return count, True
            count += got
        return count, False

    def _send_close_notify(self) -> None:
        with self._tls_lock:
            # SSLWantReadError here means: close_notify written, the peer's not awaited.
            with contextlib.suppress(ssl.SSLError):
                self._tls.obj.unwrap()
            data = self._tls.outgoing.read()
        # Never block in close(): a full socket buffer means the peer is not reading anyway.
        with contextlib.suppress(OSError):
            self._sock.setblocking(False)
            self._sock.send(data)
