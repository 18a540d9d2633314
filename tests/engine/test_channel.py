"""SecureChannel: real TLS 1.3 over real loopback TCP sockets.

What a refused client sees: ``connect`` itself raises ``PeerRefused`` with ``refused_by ==
"remote"`` (reason "unknown ca"); it never returns a channel whose first ``recv`` fails. The
client waits for the server's verdict (a session ticket when accepted, a TLS alert when not),
see channel.py's module docstring.
"""

from __future__ import annotations

import array
import datetime
import hashlib
import os
import queue
import re
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from standby.engine.channel import (
    LinkBroken,
    LinkClosed,
    LinkError,
    LinkTimeout,
    PeerMismatch,
    PeerRefused,
    SecureChannel,
    accept,
    connect,
    fetch_peer_certificate,
)
from standby.engine.identity import Identity, fingerprint_of

TIMEOUT = 10.0  # generous: the machine may be loaded; tests that time out use their own


@pytest.fixture(scope="module")
def alpha(tmp_path_factory: pytest.TempPathFactory) -> Identity:
    return Identity.load_or_create(tmp_path_factory.mktemp("alpha"), "alpha")


@pytest.fixture(scope="module")
def beta(tmp_path_factory: pytest.TempPathFactory) -> Identity:
    return Identity.load_or_create(tmp_path_factory.mktemp("beta"), "beta")


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory) -> Identity:
    return Identity.load_or_create(tmp_path_factory.mktemp("stranger"), "stranger")


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.create_server(("127.0.0.1", 0))
    sock.settimeout(TIMEOUT)  # a test that never connects fails instead of hanging
    yield sock
    sock.close()


def address_of(sock: socket.socket) -> tuple[str, int]:
    host, port = sock.getsockname()[:2]
    return host, port


def serve_once(
    listener: socket.socket, identity: Identity, trusted: list[bytes], timeout: float = TIMEOUT
) -> Future[SecureChannel]:
    """Accept one connection in a thread and authenticate it; the future holds the outcome."""
    outcome: Future[SecureChannel] = Future()

    def run() -> None:
        try:
            sock, _ = listener.accept()
            outcome.set_result(accept(sock, identity, trusted, timeout))
        except BaseException as exc:
            outcome.set_exception(exc)

    threading.Thread(target=run, daemon=True).start()
    return outcome


@pytest.fixture
def pair(
    listener: socket.socket, alpha: Identity, beta: Identity
) -> Iterator[tuple[SecureChannel, SecureChannel]]:
    """(client alpha, server beta), paired both ways."""
    served = serve_once(listener, beta, [alpha.cert_der])
    client = connect(
        address_of(listener), alpha, expected_fingerprint=beta.fingerprint, timeout=TIMEOUT
    )
    server = served.result(TIMEOUT)
    yield client, server
    client.close()
    server.close()


# --- authentication ---------------------------------------------------------------------------


def test_mutual_authentication(
    pair: tuple[SecureChannel, SecureChannel], alpha: Identity, beta: Identity
) -> None:
    """Each side sees the other's certificate, and data flows both ways."""
    client, server = pair

    client.send([b"hello ", b"beta"])
    assert server.recv() == b"hello beta"
    server.send([memoryview(b"hello alpha")])
    assert client.recv() == b"hello alpha"

    assert client.peer_fingerprint == beta.fingerprint
    assert client.peer_cert_der == beta.cert_der
    assert server.peer_fingerprint == alpha.fingerprint
    assert server.peer_cert_der == alpha.cert_der
    assert repr(client).startswith("<SecureChannel client peer=127.0.0.1:")
    assert f"fingerprint={beta.fingerprint[:16]}... open sent=10 received=11>" in repr(client)


def test_unknown_client_is_refused_and_told(
    listener: socket.socket, alpha: Identity, beta: Identity, stranger: Identity
) -> None:
    """A client the server has not paired with: both sides raise PeerRefused, naming who.

    The client learns it from ``connect`` (the server's TLS alert), not on a later recv.
    """
    served = serve_once(listener, beta, [alpha.cert_der])

    with pytest.raises(PeerRefused) as client_error:
        connect(
            address_of(listener), stranger, expected_fingerprint=beta.fingerprint, timeout=TIMEOUT
        )
    with pytest.raises(PeerRefused) as server_error:
        served.result(TIMEOUT)

    assert client_error.value.refused_by == "remote"
    assert client_error.value.reason == "unknown ca"
    assert stranger.fingerprint in str(client_error.value)  # what to give the other host
    assert server_error.value.refused_by == "local"
    assert server_error.value.reason == "self-signed certificate"


def test_server_with_no_peers_refuses_everyone(
    listener: socket.socket, alpha: Identity, beta: Identity
) -> None:
    """An empty trust store is valid and accepts no client."""
    served = serve_once(listener, beta, [])

    with pytest.raises(PeerRefused, match="refused our certificate"):
        connect(address_of(listener), alpha, expected_fingerprint=beta.fingerprint, timeout=TIMEOUT)
    with pytest.raises(PeerRefused):
        served.result(TIMEOUT)


def test_fingerprint_mismatch_stops_the_client_before_it_sends_anything(
    listener: socket.socket, alpha: Identity, beta: Identity, stranger: Identity
) -> None:
    """PeerMismatch carries both fingerprints, and the server never completes the handshake.

    The server here *trusts* the client, so had the client sent its certificate and Finished,
    ``accept`` would have returned a channel. It breaks instead: the client stopped before its
    half of the handshake, hence before any application data could exist.
    """
    served = serve_once(listener, beta, [alpha.cert_der])

    with pytest.raises(PeerMismatch) as error:
        connect(
            address_of(listener), alpha, expected_fingerprint=stranger.fingerprint, timeout=TIMEOUT
        )

    assert error.value.expected == stranger.fingerprint
    assert error.value.actual == beta.fingerprint
    assert error.value.refused_by == "local"
    assert isinstance(error.value, PeerRefused)
    with pytest.raises(LinkBroken, match="closed the connection during the TLS handshake"):
        served.result(TIMEOUT)


def test_expected_fingerprint_accepts_operator_spelling(
    listener: socket.socket, alpha: Identity, beta: Identity
) -> None:
    """An upper-case, colon-separated fingerprint (openssl's format) works as is."""
    served = serve_once(listener, beta, [alpha.cert_der])
    spelled = ":".join(beta.fingerprint[i : i + 2] for i in range(0, 64, 2)).upper()

    with connect(address_of(listener), alpha, expected_fingerprint=spelled, timeout=TIMEOUT):
        served.result(TIMEOUT).close()


def test_malformed_expected_fingerprint_is_a_value_error(alpha: Identity) -> None:
    """Checked before any connection is attempted (port 9 is never contacted)."""
    with pytest.raises(ValueError, match="hex digits"):
        connect(("127.0.0.1", 9), alpha, expected_fingerprint="abcd", timeout=TIMEOUT)


def test_peers_with_the_same_common_name_are_all_accepted(
    listener: socket.socket, beta: Identity, tmp_path: Path
) -> None:
    """Two hosts both called "standby": each is matched by its exact certificate."""
    twins = [Identity.load_or_create(tmp_path / str(i), "standby") for i in range(3)]

    for twin in twins:
        served = serve_once(listener, beta, [t.cert_der for t in twins])
        with connect(
            address_of(listener), twin, expected_fingerprint=beta.fingerprint, timeout=TIMEOUT
        ):
            assert served.result(TIMEOUT).peer_fingerprint == twin.fingerprint


def _mint(
    issuer_key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate, ca: bool, home: Path
) -> Identity:
    """A certificate for a new key, signed by ``issuer_key``, saved as an Identity."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "minted")]))
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
        .sign(issuer_key, hashes.SHA256())
    )
    home.mkdir()
    key_path, cert_path = home / "key.pem", home / "cert.pem"
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    der = cert.public_bytes(serialization.Encoding.DER)
    return Identity(
        cert_pem=cert_path.read_bytes(),
        cert_der=der,
        key_path=key_path,
        cert_path=cert_path,
        fingerprint=fingerprint_of(der),
    )


def _key_of(identity: Identity) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(identity.key_path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def test_certificate_minted_by_a_paired_peer_is_refused(
    listener: socket.socket, alpha: Identity, beta: Identity, tmp_path: Path
) -> None:
    """Alpha is paired; a certificate alpha's key signed for someone else is not alpha.

    Our certificates are CA=False, so OpenSSL already rejects the chain.
    """
    minted = _mint(
        _key_of(alpha), x509.load_der_x509_certificate(alpha.cert_der), False, tmp_path / "m"
    )
    served = serve_once(listener, beta, [alpha.cert_der])

    with pytest.raises(PeerRefused) as client_error:
        connect(
            address_of(listener), minted, expected_fingerprint=beta.fingerprint, timeout=TIMEOUT
        )
    with pytest.raises(PeerRefused, match="invalid CA certificate"):
        served.result(TIMEOUT)
    assert client_error.value.refused_by == "remote"


def test_chain_through_a_trusted_ca_certificate_is_still_refused(
    listener: socket.socket, beta: Identity, tmp_path: Path
) -> None:
    """Were a CA=True certificate ever in the trust set, only that exact certificate counts.

    OpenSSL accepts the chain minted -> ca; accept() refuses because the client's own
    certificate is not in the set. The client gets no verdict, so it sees LinkBroken.
    """
    ca_key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "legacy-ca")])
    now = datetime.datetime.now(datetime.UTC)
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    minted = _mint(ca_key, ca_cert, False, tmp_path / "m")
    served = serve_once(listener, beta, [ca_cert.public_bytes(serialization.Encoding.DER)])

    with pytest.raises(LinkBroken, match="before accepting our certificate"):
        connect(
            address_of(listener), minted, expected_fingerprint=beta.fingerprint, timeout=TIMEOUT
        )
    with pytest.raises(PeerRefused, match="not one") as server_error:
        served.result(TIMEOUT)
    assert server_error.value.peer_fingerprint == minted.fingerprint


# --- pairing ----------------------------------------------------------------------------------


def test_pairing_fetch_works_before_the_peer_trusts_us(
    listener: socket.socket, alpha: Identity, beta: Identity
) -> None:
    """TLS 1.3 sends the server's certificate before judging the client's."""
    served = serve_once(listener, beta, [])

    cert = fetch_peer_certificate(address_of(listener), alpha, beta.fingerprint, TIMEOUT)

    assert cert == beta.cert_der
    with pytest.raises(PeerRefused):
        served.result(TIMEOUT)


def test_pairing_fetch_from_a_peer_that_trusts_us_closes_cleanly(
    listener: socket.socket, alpha: Identity, beta: Identity
) -> None:
    """The server sees an orderly close (b""), not a broken link."""
    served = serve_once(listener, beta, [alpha.cert_der])

    cert = fetch_peer_certificate(address_of(listener), alpha, beta.fingerprint, TIMEOUT)

    assert cert == beta.cert_der
    with served.result(TIMEOUT) as server:
        assert server.recv() == b""


def test_pairing_fetch_checks_the_fingerprint(
    listener: socket.socket, alpha: Identity, beta: Identity, stranger: Identity
) -> None:
    """A fetch from the wrong host fails; nothing is returned to be stored."""
    served = serve_once(listener, beta, [])

    with pytest.raises(PeerMismatch):
        fetch_peer_certificate(address_of(listener), alpha, stranger.fingerprint, TIMEOUT)
    with pytest.raises(LinkBroken):
        served.result(TIMEOUT)


def test_pairing_both_ways_then_connect_both_ways(alpha: Identity, beta: Identity) -> None:
    """`peer add` on A (B refuses A), then on B (A now trusts B): both directions work."""
    trusted: dict[str, list[bytes]] = {"alpha": [], "beta": []}
    identities = {"alpha": alpha, "beta": beta}
    with (
        socket.create_server(("127.0.0.1", 0)) as alpha_listener,
        socket.create_server(("127.0.0.1", 0)) as beta_listener,
    ):
        listeners = {"alpha": alpha_listener, "beta": beta_listener}

        def fetch(me: str, other: str) -> tuple[bytes, Future[SecureChannel]]:
            served = serve_once(listeners[other], identities[other], list(trusted[other]))
            cert = fetch_peer_certificate(
                address_of(listeners[other]), identities[me], identities[other].fingerprint, TIMEOUT
            )
            return cert, served

        # A adds B: B does not know A yet and refuses it, but A got B's certificate.
        cert, served = fetch("alpha", "beta")
        trusted["alpha"].append(cert)
        with pytest.raises(PeerRefused):
            served.result(TIMEOUT)
        # B adds A: A already trusts B, so this fetch is accepted.
        cert, served = fetch("beta", "alpha")
        trusted["beta"].append(cert)
        served.result(TIMEOUT).close()

        for me, other in (("alpha", "beta"), ("beta", "alpha")):
            served = serve_once(listeners[other], identities[other], trusted[other])
            with (
                connect(
                    address_of(listeners[other]),
                    identities[me],
                    expected_fingerprint=identities[other].fingerprint,
                    timeout=TIMEOUT,
                ) as client,
                served.result(TIMEOUT) as server,
            ):
                client.send([me.encode()])
                assert server.recv() == me.encode()
                assert server.peer_fingerprint == identities[me].fingerprint


# --- data -------------------------------------------------------------------------------------

STREAM_BYTES = 256 << 20  # each way


def _pieces(seed: int) -> Iterator[list[bytes | memoryview]]:
    """Messages of mixed shapes: tiny headers, small bodies, 1 MiB blocks, odd sizes."""
    block = memoryview(hashlib.shake_256(seed.to_bytes(8, "big")).digest(1 << 20))
    sizes = [1 << 20, 1, 300, 70_000, 16_383, 16_385, 1 << 20, 5_000, 262_145]
    sent = 0
    i = 0
    while sent < STREAM_BYTES:
        size = min(sizes[i % len(sizes)], STREAM_BYTES - sent - 8)
        start = (i * 7919) % ((1 << 20) - size + 1)
        header = (i.to_bytes(4, "big") + size.to_bytes(4, "big"))[: STREAM_BYTES - sent]
        yield [header, block[start : start + size]]
        sent += len(header) + max(size, 0)
        i += 1


def _send_all(channel: SecureChannel, seed: int, digest: list[str]) -> None:
    hasher = hashlib.sha256()
    for message in _pieces(seed):
        channel.send(message)
        for piece in message:
            hasher.update(piece)
    digest.append(hasher.hexdigest())


def _recv_all(channel: SecureChannel, digest: list[str]) -> None:
    hasher = hashlib.sha256()
    received = 0
    while received < STREAM_BYTES:
        data = channel.recv()
        assert data, "stream ended early"
        hasher.update(data)
        received += len(data)
    assert received == STREAM_BYTES
    digest.append(hasher.hexdigest())


def test_concurrent_send_and_recv_both_ways_keep_every_byte(
    pair: tuple[SecureChannel, SecureChannel],
) -> None:
    """One sender and one receiver thread per side, 256 MiB each way at once, hashes equal."""
    client, server = pair
    digests: dict[str, list[str]] = {k: [] for k in ("c_out", "c_in", "s_out", "s_in")}
    errors: list[BaseException] = []

    def guarded(target: Callable[..., None], *args: object) -> threading.Thread:
        def run() -> None:
            try:
                target(*args)
            except BaseException as exc:
                errors.append(exc)

        return threading.Thread(target=run)

    threads = [
        guarded(_send_all, client, 1, digests["c_out"]),
        guarded(_recv_all, client, digests["c_in"]),
        guarded(_send_all, server, 2, digests["s_out"]),
        guarded(_recv_all, server, digests["s_in"]),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)

    assert errors == []
    assert digests["c_out"] == digests["s_in"]
    assert digests["s_out"] == digests["c_in"]
    assert digests["c_out"] != digests["s_out"]  # the two streams really differ
    assert f"sent={STREAM_BYTES} received={STREAM_BYTES}>" in repr(client)


def test_any_buffer_shape_is_sent_as_bytes(pair: tuple[SecureChannel, SecureChannel]) -> None:
    """bytes, bytearray, memoryviews of other formats, empty pieces and an empty list."""
    client, server = pair
    words = array.array("I", [1, 2, 3])

    client.send([])
    client.send([b"", bytearray(b"ab"), memoryview(words), b""])

    expected = b"ab" + words.tobytes()
    received = b""
    while len(received) < len(expected):
        received += server.recv()
    assert received == expected


def test_a_bad_argument_to_send_does_not_break_the_channel(
    pair: tuple[SecureChannel, SecureChannel],
) -> None:
    """A TypeError before anything was encrypted leaves the stream intact."""
    client, server = pair

    with pytest.raises(TypeError):
        client.send(["not bytes"])  # type: ignore[list-item]
    client.send([b"still fine"])

    assert server.recv() == b"still fine"


def test_recv_returns_at_most_max_bytes(pair: tuple[SecureChannel, SecureChannel]) -> None:
    """Data beyond max_bytes stays for the next call, in order."""
    client, server = pair
    payload = os.urandom(100_000)
    client.send([payload])

    chunks = [server.recv(1000)]
    while sum(map(len, chunks)) < len(payload):
        chunks.append(server.recv(1000))

    assert max(map(len, chunks)) <= 1000
    assert b"".join(chunks) == payload


def _lines(proc: subprocess.Popen[str]) -> queue.Queue[str]:
    """The process's output lines, read by a thread, so waits can have a timeout."""
    lines: queue.Queue[str] = queue.Queue()
    assert proc.stdout is not None
    stdout = proc.stdout

    def pump() -> None:
        for line in stdout:
            lines.put(line.rstrip("\n"))

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _wait_for(lines: queue.Queue[str], pattern: str) -> tuple[re.Match[str], list[str]]:
    seen: list[str] = []
    deadline = time.monotonic() + TIMEOUT
    while True:
        seen.append(lines.get(timeout=max(0.0, deadline - time.monotonic())))
        if match := re.search(pattern, seen[-1]):
            return match, seen


@pytest.mark.skipif(
    shutil.which("openssl") is None or shutil.which("stdbuf") is None,
    reason="needs the openssl and stdbuf commands",
)
def test_key_update_requested_by_an_independent_tls_stack(alpha: Identity, beta: Identity) -> None:
    """openssl s_server rekeys mid-stream and asks us to rekey too; data flows both ways after.

    OpenSSL answers a KeyUpdate on its next write, so our reply goes out with send(), ahead of
    the data: the server could not decrypt "reply" otherwise.
    """
    # stdbuf: s_server reports the KeyUpdate with printf, block-buffered on a pipe.
    command = [
        "stdbuf",
        "-oL",
        "openssl",
        "s_server",
        "-accept",
        "127.0.0.1:0",
        "-naccept",
        "1",
        "-tls1_3",
    ]
    command += ["-cert", str(beta.cert_path), "-key", str(beta.key_path)]
    command += ["-Verify", "1", "-CAfile", str(alpha.cert_path), "-ign_eof"]
    proc = subprocess.Popen(
        command,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.stdin is not None
    try:
        lines = _lines(proc)
        port = int(_wait_for(lines, r"^ACCEPT .*:(\d+)$")[0].group(1))
        with connect(
            ("127.0.0.1", port), alpha, expected_fingerprint=beta.fingerprint, timeout=TIMEOUT
        ) as client:
            proc.stdin.write("K\n")  # KeyUpdate, update_requested
            proc.stdin.flush()
            _, output = _wait_for(lines, r"^SSL_do_handshake -> 1$")  # s_server: rekeyed
            proc.stdin.write("after\n")
            proc.stdin.flush()
            received = b""
            while not received.endswith(b"\n"):
                received += client.recv()
            client.send([b"reply\n"])

            output += _wait_for(lines, r"^reply$")[1]
        assert received == b"after\n"
        assert not any("error" in line.lower() for line in output)
    finally:
        proc.kill()
        proc.wait()


# --- timeouts ---------------------------------------------------------------------------------


def test_recv_timeout_raises_link_timeout_and_the_channel_survives(
    listener: socket.socket, alpha: Identity, beta: Identity
) -> None:
    """A quiet peer is not an error of the stream: after the timeout, data still arrives."""
    served = serve_once(listener, beta, [alpha.cert_der])
    with (
        connect(
            address_of(listener), alpha, expected_fingerprint=beta.fingerprint, timeout=0.3
        ) as client,
        served.result(TIMEOUT) as server,
    ):
        started = time.monotonic()
        with pytest.raises(LinkTimeout) as error:
            client.recv()
        elapsed = time.monotonic() - started

        assert isinstance(error.value, TimeoutError)
        assert 0.25 < elapsed < 3.0
        server.send([b"late"])
        assert client.recv() == b"late"


def test_send_timeout_breaks_the_channel(
    listener: socket.socket, alpha: Identity, beta: Identity
) -> None:
    """A peer that stops reading: send times out, and the half-written stream is unusable."""
    served = serve_once(listener, beta, [alpha.cert_der])
    with (
        connect(
            address_of(listener), alpha, expected_fingerprint=beta.fingerprint, timeout=0.3
        ) as client,
        served.result(TIMEOUT),
    ):
        block = bytes(1 << 20)
        with pytest.raises(LinkTimeout):
            client.send([block] * 256)  # far more than the socket buffers hold

        with pytest.raises(LinkBroken, match="broke earlier"):
            client.send([b"more"])
        with pytest.raises(LinkBroken):
            client.recv()
        assert " broken " in repr(client)


def test_connect_times_out_when_the_server_never_answers(
    listener: socket.socket, alpha: Identity, beta: Identity
) -> None:
    """The kernel completes TCP (listen backlog) but nobody speaks TLS."""
    started = time.monotonic()

    with pytest.raises(LinkTimeout):
        connect(address_of(listener), alpha, expected_fingerprint=beta.fingerprint, timeout=0.3)

    assert time.monotonic() - started < 3.0


def test_accept_times_out_when_the_client_sends_nothing(
    listener: socket.socket, beta: Identity
) -> None:
    """A silent client holds a server thread for at most the timeout."""
    served = serve_once(listener, beta, [], timeout=0.3)
    with socket.create_connection(address_of(listener)), pytest.raises(LinkTimeout):
        served.result(TIMEOUT)


def test_connection_refused_is_link_broken(alpha: Identity, beta: Identity) -> None:
    """Nobody listening: the OS broke it."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        address = address_of(sock)  # closed on leaving: the port is free and refuses

    with pytest.raises(LinkBroken, match="cannot connect"):
        connect(address, alpha, expected_fingerprint=beta.fingerprint, timeout=TIMEOUT)


# --- closing ----------------------------------------------------------------------------------


def test_peer_close_gives_remaining_data_then_empty_then_link_closed(
    pair: tuple[SecureChannel, SecureChannel],
) -> None:
    """Orderly close: data sent before it arrives, then b"" once, then LinkClosed."""
    client, server = pair
    server.send([b"last words"])
    server.close()

    received = b""
    while (data := client.recv()) != b"":
        received += data

    assert received == b"last words"
    with pytest.raises(LinkClosed, match="peer closed"):
        client.recv()
    with pytest.raises(LinkClosed):
        client.send([b"anyone?"])
    assert " finished " in repr(client)


def test_using_a_channel_we_closed_raises_link_closed(
    pair: tuple[SecureChannel, SecureChannel],
) -> None:
    """close() is idempotent; later send/recv name the cause: we closed it."""
    client, _ = pair
    client.close()
    client.close()

    with pytest.raises(LinkClosed, match="we closed"):
        client.send([b"x"])
    with pytest.raises(LinkClosed, match="we closed"):
        client.recv()
    assert " closed " in repr(client)


def test_close_from_another_thread_wakes_a_blocked_receiver(
    pair: tuple[SecureChannel, SecureChannel],
) -> None:
    """The receiver raises LinkClosed promptly, not after its 10 s timeout."""
    client, _ = pair
    outcome: Future[bytes] = Future()

    def receive() -> None:
        try:
            outcome.set_result(client.recv())
        except BaseException as exc:
            outcome.set_exception(exc)

    threading.Thread(target=receive, daemon=True).start()
    time.sleep(0.2)  # let it block in recv
    started = time.monotonic()
    client.close()

    with pytest.raises(LinkClosed):
        outcome.result(TIMEOUT)
    assert time.monotonic() - started < 2.0


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("fin", "without TLS close_notify"),  # closed with nothing unread: TCP FIN
        ("reset", "Connection reset"),  # closed with unread data: TCP RST
    ],
)
def test_peer_vanishing_without_close_notify_is_link_broken(
    listener: socket.socket, alpha: Identity, beta: Identity, how: str, message: str
) -> None:
    """TCP closed with no TLS close_notify (a killed process, a cut link) is not an orderly end.

    The peer is a stock ssl.SSLSocket, whose close() sends no close_notify.
    """
    served = serve_once(listener, beta, [alpha.cert_der])
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.load_cert_chain(alpha.cert_path, alpha.key_path)
    peer = ctx.wrap_socket(socket.create_connection(address_of(listener), timeout=TIMEOUT))
    with served.result(TIMEOUT) as server:
        peer.sendall(b"partial")
        assert server.recv() == b"partial"
        if how == "fin":
            server.send([b"ok"])
            assert peer.recv(2) == b"ok"  # also consumes the session ticket sent before it
        peer.close()

        with pytest.raises(LinkBroken, match=message):
            server.recv()
        with pytest.raises(LinkBroken, match="broke earlier"):
            server.recv()


def test_errors_are_link_errors(pair: tuple[SecureChannel, SecureChannel]) -> None:
    """Callers can catch the whole family with one except clause."""
    client, _ = pair
    client.close()

    with pytest.raises(LinkError):
        client.recv()
