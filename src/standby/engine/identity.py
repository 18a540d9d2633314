"""An engine's TLS identity: one private key and one self-signed certificate, kept for life.

Peers pair by the SHA-256 fingerprint of each other's certificate (like SSH known_hosts or
Syncthing device IDs), so the certificate is the engine's name on the network: it is created
once, never replaced behind the operator's back, and reloaded byte for byte at every start.

Key type: ECDSA P-256. OpenSSL 3.0 handles both it and Ed25519 in TLS 1.3, but P-256 is the
better fit here:

- ``ecdsa_secp256r1_sha256`` is the signature scheme RFC 8446 (section 9.1) says every TLS 1.3
  implementation MUST support; Ed25519 is optional, so P-256 keeps any future peer stack
  (another language, an HSM, a FIPS build of OpenSSL) able to talk to us.
- It is faster in this OpenSSL: ``openssl speed ecdsap256 ed25519`` on our 2-core test machine
  gives 41,000 signs/s and 14,500 verifies/s for P-256 (assembler nistz256 code) against
  23,000 and 8,500 for Ed25519 (portable C).

Certificate shape: self-signed, ``BasicConstraints(ca=False)``, ``KeyUsage(digitalSignature)``,
``ExtendedKeyUsage(serverAuth, clientAuth)``. A paired peer's exact certificate is its own
trust anchor (the server's trust store holds the peers' certificates and uses
``VERIFY_X509_PARTIAL_CHAIN``, see ``channel.py``). We deliberately do *not* set ``ca=True``:
a CA certificate in the trust store would let any paired peer mint new certificates, under any
name, that chain to it and pass verification; with ``ca=False`` OpenSSL refuses such a chain
("invalid CA certificate").

Files, under ``<home>/identity/`` (directory mode 0700):

- ``key.pem``: PKCS#8 PEM private key, mode 0600, unencrypted (the engine starts unattended;
  the file mode is the protection, as for SSH host keys).
- ``cert.pem``: the certificate. It is written after the key and is the commit point: a key
  without a certificate is the trace of an interrupted creation and is completed, never
  discarded; a certificate without its key is an error an operator must look at.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import os
import re
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["Identity", "fingerprint_of", "parse_fingerprint"]

IDENTITY_DIR = "identity"
KEY_FILE = "key.pem"
CERT_FILE = "cert.pem"

# 20 years: an engine's certificate is its paired name, and letting it expire would silently
# unpair every host on the same day. 20 * 365.25 days, rounded to whole days.
VALIDITY = datetime.timedelta(days=7305)
# Start validity a day in the past: the *server* checks the client certificate's dates, and a
# freshly installed host whose clock is a few hours behind must still be able to connect.
CLOCK_SKEW_ALLOWANCE = datetime.timedelta(days=1)

_FINGERPRINT_SEPARATORS = re.compile(r"[:\s]")
_HEX64 = re.compile(r"[0-9a-f]{64}")


def fingerprint_of(cert_der: bytes) -> str:
    """Return the SHA-256 fingerprint of a DER certificate: 64 lowercase hex characters."""
    return hashlib.sha256(cert_der).hexdigest()


def parse_fingerprint(text: str) -> str:
    """Normalize a fingerprint typed or pasted by an operator.

    Accepts upper or lower case and colons or whitespace between digits
    (``AB:CD:...`` as printed by ``openssl x509 -fingerprint -sha256``).

    Returns:
        The fingerprint as 64 lowercase hex characters.

    Raises:
        ValueError: the text is not a SHA-256 fingerprint; the message says what is wrong.
    """
    digits = _FINGERPRINT_SEPARATORS.sub("", text).lower()
    bad = sorted(set(re.sub(r"[0-9a-f]", "", digits)))
    if bad:
        raise ValueError(
            f"not a SHA-256 fingerprint: {text!r} contains {''.join(bad)!r}; "
            "expected 64 hex digits, optionally separated by colons or spaces"
        )
    if not _HEX64.fullmatch(digits):
        raise ValueError(
            f"not a SHA-256 fingerprint: {text!r} has {len(digits)} hex digits, expected 64"
        )
    return digits


@dataclass(frozen=True, slots=True)
class Identity:
    """This engine's certificate and where its private key lives.

    The private key itself is never held in memory here: ``ssl.SSLContext.load_cert_chain``
    reads it from ``key_path`` when a TLS context is built.
    """

    cert_pem: bytes
    cert_der: bytes
    key_path: Path
    cert_path: Path
    fingerprint: str

    @classmethod
    def load_or_create(cls, home: Path, common_name: str) -> Identity:
        """Load the identity stored under ``home``, creating it the first time.

        ``common_name`` is only used at creation: it is cosmetic (peers are identified by
        fingerprint), and an existing identity is never changed.

        Raises:
            PermissionError: the key file is readable by group or others (as ssh refuses an
                unprotected private key), or cannot be read.
            FileNotFoundError: a certificate exists without its key.
            ValueError: the stored key and certificate do not belong together.
        """
        directory = home / IDENTITY_DIR
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        key_path, cert_path = directory / KEY_FILE, directory / CERT_FILE
        if not key_path.exists():
            if cert_path.exists():
                raise FileNotFoundError(
                    f"{cert_path} exists but its private key {key_path} is missing; restore the "
                    "key from backup, or move both files away to create a new identity "
                    "(every peer will then have to pair again)"
                )
            # Another process creating the same identity at the same moment wins the race;
            # we then load what it wrote.
            with contextlib.suppress(FileExistsError):
                _publish(key_path, _key_pem(ec.generate_private_key(ec.SECP256R1())), mode=0o600)
        key = _load_key(key_path)
        if not cert_path.exists():
            with contextlib.suppress(FileExistsError):
                _publish(cert_path, _self_signed_pem(key, common_name), mode=0o644)
        return cls._load(key, key_path, cert_path)

    @classmethod
    def _load(cls, key: ec.EllipticCurvePrivateKey, key_path: Path, cert_path: Path) -> Identity:
        cert_pem = cert_path.read_bytes()
        cert = x509.load_pem_x509_certificate(cert_pem)
        if cert.public_key() != key.public_key():
            raise ValueError(f"{cert_path} does not belong to the private key {key_path}")
        cert_der = cert.public_bytes(serialization.Encoding.DER)
        return cls(
            cert_pem=cert_pem,
            cert_der=cert_der,
            key_path=key_path,
            cert_path=cert_path,
            fingerprint=fingerprint_of(cert_der),
        )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_key(key_path: Path) -> ec.EllipticCurvePrivateKey:
    mode = stat.S_IMODE(key_path.stat().st_mode)
    if mode & 0o077:
        raise PermissionError(
            f"private key {key_path} has mode {mode:04o}; it must not be readable by group or "
            f"others: run chmod 600 {key_path}"
        )
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_path} holds a {type(key).__name__}, expected an ECDSA key")
    return key


def _self_signed_pem(key: ec.EllipticCurvePrivateKey, common_name: str) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    public_key = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW_ALLOWANCE)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def _publish(path: Path, data: bytes, *, mode: int) -> None:
    """Write ``data`` to ``path`` atomically, failing if ``path`` already exists.

    temp file in the same directory (created with ``mode``, so a key is never readable by
    others even for an instant) -> write -> fsync -> ``os.link`` to the final name (atomic,
    and unlike ``rename`` it refuses to replace an existing file, so two engines racing on one
    home cannot overwrite each other's identity) -> fsync the directory.

    Raises:
        FileExistsError: ``path`` appeared meanwhile (another process created it).
    """
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
