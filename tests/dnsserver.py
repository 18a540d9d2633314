"""A real BIND9 ``named`` for the DNS redirection tests, started from a temporary directory.

The server runs from its own directory (configuration, zone, journal, pid file) on a free high
port with no control channel, so it touches nothing of the system's own BIND. ``address`` may
be an address inside a network namespace (``netns``), for tests whose hosts live in several.
"""

from __future__ import annotations

import base64
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rdatatype

NAMED = "/usr/sbin/named"
ZONE = "standby.test."
KEY = "standby-test-key"


@dataclass(frozen=True)
class Named:
    port: int
    secret: str
    log: Path
    address: str = "127.0.0.1"


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (named needs both)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind(("127.0.0.1", 0))
            port: int = udp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
                try:
                    tcp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port


def _write_config(directory: Path, address: str, port: int, secret: str) -> Path:
    (directory / "standby.test.db").write_text(
        "$TTL 60\n"
        f"@ IN SOA ns.{ZONE} admin.{ZONE} 1 60 60 600 60\n"
        f"@ IN NS ns.{ZONE}\n"
        f"ns IN A {address}\n"
    )
    conf = directory / "named.conf"
    conf.write_text(f"""
options {{
    directory "{directory}";
    pid-file "{directory}/named.pid";
    session-keyfile "{directory}/session.key";
    managed-keys-directory "{directory}";
    listen-on port {port} {{ {address}; }};
    listen-on-v6 {{ none; }};
    recursion no;
    dnssec-validation no;
    notify no;
}};
controls {{ }};
key "{KEY}" {{ algorithm hmac-sha256; secret "{secret}"; }};
zone "{ZONE}" {{
    type primary;
    file "{directory}/standby.test.db";
    update-policy {{ grant {KEY} zonesub ANY; }};
}};
""")
    return conf


def _wait_answering(named: Named, proc: subprocess.Popen[bytes], netns: str | None) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"named exited with {proc.returncode}:\n"
                               f"{named.log.read_text()[-3000:]}")
        if query(named, ZONE, "SOA", netns=netns, timeout=0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"named did not answer SOA queries:\n{named.log.read_text()[-3000:]}")


def query(named: Named, name: str, rdtype: str = "A", *, netns: str | None = None,
          timeout: float = 2.0) -> list[str]:
    """What any client asking the server sees (an unsigned query); [] when it does not
    answer. ``netns``: ask from inside that network namespace."""
    message = dns.message.make_query(name, rdtype)
    sock = None
    try:
        if netns is not None:
            from pyroute2.netns import create_socket  # type: ignore[import-untyped]

            sock = create_socket(netns, socket.AF_INET, socket.SOCK_DGRAM, flags=0)
            sock.setblocking(False)  # dnspython waits with select(): a blocking one hangs
        response = dns.query.udp(message, named.address, timeout, named.port, sock=sock)
    except (dns.exception.Timeout, OSError):
        return []
    finally:
        if sock is not None:
            sock.close()
    return sorted(rd.to_text() for rrset in response.answer
                  if rrset.rdtype == dns.rdatatype.from_text(rdtype) for rd in rrset)


@contextmanager
def start_named(directory: Path, *, address: str = "127.0.0.1", port: int | None = None,
                netns: str | None = None) -> Iterator[Named]:
    """Run a BIND9 server with one zone (ZONE) that accepts updates signed by a fresh TSIG
    key (KEY), listening on ``address`` (inside ``netns`` when given)."""
    secret = base64.b64encode(secrets.token_bytes(32)).decode()
    port = port or free_port()
    conf = _write_config(directory, address, port, secret)
    named = Named(port, secret, directory / "named.log", address)
    prefix = ["ip", "netns", "exec", netns] if netns else []
    with named.log.open("wb") as log_file:
        # -g: foreground, log to stderr; no -u: it keeps our user and never touches /etc/bind
        # beyond reading the built-in trust anchors; -n 1: one worker thread is plenty.
        proc = subprocess.Popen([*prefix, NAMED, "-g", "-4", "-n", "1", "-c", str(conf)],
                                stdout=log_file, stderr=subprocess.STDOUT)
    try:
        _wait_answering(named, proc, netns)
        yield named
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
