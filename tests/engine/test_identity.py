"""An engine's identity: created once, reloaded byte for byte, key kept private."""

from __future__ import annotations

import datetime
import os
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from standby.engine.identity import (
    CERT_FILE,
    IDENTITY_DIR,
    KEY_FILE,
    Identity,
    fingerprint_of,
    parse_fingerprint,
)


def test_created_once_then_reloaded_identically(tmp_path: Path) -> None:
    """A second load returns the same identity and leaves both files untouched."""
    first = Identity.load_or_create(tmp_path, "alpha")
    key_before = first.key_path.read_bytes()
    stamps = (first.key_path.stat().st_mtime_ns, first.cert_path.stat().st_mtime_ns)

    second = Identity.load_or_create(tmp_path, "alpha")

    assert second == first
    assert first.key_path.read_bytes() == key_before
    assert (first.key_path.stat().st_mtime_ns, first.cert_path.stat().st_mtime_ns) == stamps


def test_key_is_private_and_no_temporary_file_is_left(tmp_path: Path) -> None:
    """Key file 0600, identity directory 0700, and only the two final files exist."""
    identity = Identity.load_or_create(tmp_path, "alpha")
    directory = tmp_path / IDENTITY_DIR

    assert stat.S_IMODE(identity.key_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert sorted(p.name for p in directory.iterdir()) == sorted([KEY_FILE, CERT_FILE])
    assert identity.key_path == directory / KEY_FILE
    assert identity.cert_path == directory / CERT_FILE


def test_certificate_shape(tmp_path: Path) -> None:
    """Self-signed P-256, not a CA, usable as TLS server and client, valid about 20 years."""
    identity = Identity.load_or_create(tmp_path, "alpha")
    cert = x509.load_der_x509_certificate(identity.cert_der)
    now = datetime.datetime.now(datetime.UTC)

    public_key = cert.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert public_key.curve.name == "secp256r1"
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alpha"
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert cert.not_valid_before_utc < now
    assert cert.not_valid_after_utc - now > datetime.timedelta(days=365 * 19.9)
    assert x509.load_pem_x509_certificate(identity.cert_pem) == cert


def test_fingerprint_is_sha256_of_der(tmp_path: Path) -> None:
    """64 lowercase hex digits, the same as cryptography's SHA-256 fingerprint."""
    identity = Identity.load_or_create(tmp_path, "alpha")
    cert = x509.load_der_x509_certificate(identity.cert_der)

    assert identity.fingerprint == cert.fingerprint(hashes.SHA256()).hex()
    assert fingerprint_of(identity.cert_der) == identity.fingerprint
    assert len(identity.fingerprint) == 64
    assert identity.fingerprint == identity.fingerprint.lower()


def test_two_homes_give_two_identities(tmp_path: Path) -> None:
    """Each engine gets its own key, so its own fingerprint."""
    a = Identity.load_or_create(tmp_path / "a", "same-name")
    b = Identity.load_or_create(tmp_path / "b", "same-name")

    assert a.fingerprint != b.fingerprint


@pytest.mark.parametrize(
    "spelling",
    [
        "{fp}",
        "{FP}",
        "{colons}",
        "{COLONS}",
        "  {spaced}\n",
    ],
)
def test_parse_fingerprint_accepts_common_spellings(spelling: str) -> None:
    """Upper case, colons (openssl's format) and spaces all normalize to 64 lowercase hex."""
    fp = fingerprint_of(b"any certificate bytes")
    pairs = [fp[i : i + 2] for i in range(0, 64, 2)]
    text = spelling.format(
        fp=fp,
        FP=fp.upper(),
        colons=":".join(pairs),
        COLONS=":".join(pairs).upper(),
        spaced=" ".join(pairs),
    )

    assert parse_fingerprint(text) == fp


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ab" * 31, "has 62 hex digits, expected 64"),
        ("ab" * 33, "has 66 hex digits, expected 64"),
        ("", "has 0 hex digits"),
        ("zz" + "ab" * 31, "contains 'z'"),
        ("sha256:" + "ab" * 32, "contains 'hs'"),
        ("ab-" * 32, "contains '-'"),
    ],
)
def test_parse_fingerprint_rejects_with_a_clear_message(text: str, message: str) -> None:
    """The error says what is wrong with the text."""
    with pytest.raises(ValueError, match=message):
        parse_fingerprint(text)


def test_interrupted_creation_is_completed_with_the_same_key(tmp_path: Path) -> None:
    """A key without a certificate (a crash between the two writes) is kept, not replaced."""
    identity = Identity.load_or_create(tmp_path, "alpha")
    key_pem = identity.key_path.read_bytes()
    identity.cert_path.unlink()

    again = Identity.load_or_create(tmp_path, "alpha")

    assert again.key_path.read_bytes() == key_pem
    assert (
        x509.load_der_x509_certificate(again.cert_der).public_key()
        == x509.load_der_x509_certificate(identity.cert_der).public_key()
    )


def test_certificate_without_key_is_an_error_and_nothing_is_overwritten(tmp_path: Path) -> None:
    """A lost key is the operator's problem to solve; we never silently make a new identity."""
    identity = Identity.load_or_create(tmp_path, "alpha")
    identity.key_path.unlink()

    with pytest.raises(FileNotFoundError, match="private key"):
        Identity.load_or_create(tmp_path, "alpha")
    assert identity.cert_path.read_bytes() == identity.cert_pem
    assert not identity.key_path.exists()


def test_group_readable_key_is_refused(tmp_path: Path) -> None:
    """Like ssh, refuse a private key that others can read, and say how to fix it."""
    identity = Identity.load_or_create(tmp_path, "alpha")
    os.chmod(identity.key_path, 0o640)

    with pytest.raises(PermissionError, match="chmod 600"):
        Identity.load_or_create(tmp_path, "alpha")


def test_key_and_certificate_that_do_not_match_are_refused(tmp_path: Path) -> None:
    """A certificate copied from another engine next to our key is detected."""
    ours = Identity.load_or_create(tmp_path / "a", "alpha")
    theirs = Identity.load_or_create(tmp_path / "b", "beta")
    ours.cert_path.write_bytes(theirs.cert_pem)

    with pytest.raises(ValueError, match="does not belong"):
        Identity.load_or_create(tmp_path / "a", "alpha")


def test_common_name_of_an_existing_identity_is_kept(tmp_path: Path) -> None:
    """The name given at creation stays: renaming the engine does not change its identity."""
    first = Identity.load_or_create(tmp_path, "alpha")

    second = Identity.load_or_create(tmp_path, "renamed")

    assert second.fingerprint == first.fingerprint


def test_concurrent_creation_yields_one_identity(tmp_path: Path) -> None:
    """Engines started at once on one home all end up with the same identity."""
    results: list[Identity] = []
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def create() -> None:
        start.wait()
        try:
            results.append(Identity.load_or_create(tmp_path, "alpha"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert {identity.fingerprint for identity in results} == {
        Identity.load_or_create(tmp_path, "alpha").fingerprint
    }
