"""Service IP redirection between two host namespaces, watched by a client namespace.

The topology, created per test with unique names and removed afterwards::

    [h1] eth0 ---- p1 \\
                      br0 (10.1.0.2/24)  [c]  the client
    [h2] eth0 ---- p2 /

h1 holds the service address 10.1.0.10 first; the client talks to it and caches h1's MAC. Then
h1 releases it and h2 acquires it: the client's ARP cache must name h2's MAC without the
client sending anything, which only the gratuitous ARP can do.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from pyroute2 import IPRoute  # type: ignore[import-untyped]
from pyroute2.netns import create_socket  # type: ignore[import-untyped]

from standby.ha.redirect import (
    IpRedirect,
    Redirect,
    RedirectError,
    StaleEpochError,
    garp_frames,
)

SERVICE = "10.1.0.10/24"
SERVICE_IP = "10.1.0.10"

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None,
    reason="moving addresses between network namespaces needs root and iproute2's `ip`",
)


@dataclass(frozen=True)
class Lan:
    client: str
    h1: str
    h2: str

    def mac(self, netns: str) -> str:
        with IPRoute(netns=netns, flags=0) as ipr:
            link: Any = ipr.get_links(ifname="eth0")[0]
            mac: str = link.get("IFLA_ADDRESS")
            return mac

    def client_sees(self) -> str | None:
        """The MAC the client's ARP cache holds for the service address (None if no entry)."""
        with IPRoute(netns=self.client, flags=0) as ipr:
            for neighbour in ipr.get_neighbours(family=socket.AF_INET):
                if neighbour.get("NDA_DST") == SERVICE_IP:
                    lladdr: str | None = neighbour.get("NDA_LLADDR")
                    return lladdr
        return None

    def client_sends_to_service(self) -> None:
        """One UDP datagram from the client: resolves the service address over ARP."""
        sock: socket.socket = create_socket(self.client, socket.AF_INET, socket.SOCK_DGRAM,
                                            flags=0)
        with sock:
            sock.sendto(b"hello", (SERVICE_IP, 9))

    def wait_client_sees(self, mac: str, within: float = 2.0) -> str | None:
        deadline = time.monotonic() + within
        while (seen := self.client_sees()) != mac and time.monotonic() < deadline:
            time.sleep(0.02)
        return seen


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def lan() -> Iterator[Lan]:
    prefix = f"sbr{os.getpid() % 100000}{secrets.token_hex(2)}"
    lan = Lan(f"{prefix}c", f"{prefix}h1", f"{prefix}h2")
    created: list[str] = []
    try:
        for ns in (lan.client, lan.h1, lan.h2):
            _ip("netns", "add", ns)
            created.append(ns)
        _ip("-n", lan.client, "link", "add", "br0", "type", "bridge")
        _ip("-n", lan.client, "addr", "add", "10.1.0.2/24", "dev", "br0")
        _ip("-n", lan.client, "link", "set", "br0", "up")
        for port, host, own in (("p1", lan.h1, "10.1.0.3/24"), ("p2", lan.h2, "10.1.0.4/24")):
            _ip("-n", lan.client, "link", "add", port, "type", "veth", "peer", "name", "eth0",
                "netns", host)
            _ip("-n", lan.client, "link", "set", port, "master", "br0", "up")
            _ip("-n", host, "addr", "add", own, "dev", "eth0")
            _ip("-n", host, "link", "set", "eth0", "up")
        yield lan
    finally:
        for ns in created:
            subprocess.run(["ip", "netns", "del", ns], check=False, timeout=10)


@needs_root
def test_the_client_follows_the_address_by_gratuitous_arp(lan: Lan) -> None:
    """h1 -> h2: the client's cached MAC changes to h2's with no traffic from the client."""
    h1 = IpRedirect(SERVICE, "eth0", netns=lan.h1)
    h2 = IpRedirect(SERVICE, "eth0", netns=lan.h2)
    h1.acquire(1)
    lan.client_sends_to_service()
    assert lan.wait_client_sees(lan.mac(lan.h1)) == lan.mac(lan.h1)

    h1.release()
    h2.acquire(2)

    assert lan.wait_client_sees(lan.mac(lan.h2)) == lan.mac(lan.h2)
    assert (h1.held(), h2.held()) == (False, True)


@needs_root
def test_without_the_announcement_the_client_keeps_the_old_mac(lan: Lan) -> None:
    """The control: the address alone does not move the client; announce() does."""
    h1 = IpRedirect(SERVICE, "eth0", netns=lan.h1)
    h2 = IpRedirect(SERVICE, "eth0", netns=lan.h2, garp_count=0)
    h1.acquire(1)
    lan.client_sends_to_service()
    lan.wait_client_sees(lan.mac(lan.h1))
    h1.release()

    h2.acquire(2)
    time.sleep(0.5)
    assert lan.client_sees() == lan.mac(lan.h1)

    IpRedirect(SERVICE, "eth0", netns=lan.h2).announce()
    assert lan.wait_client_sees(lan.mac(lan.h2)) == lan.mac(lan.h2)


@needs_root
def test_acquire_and_release_are_idempotent(lan: Lan) -> None:
    """Acquiring twice keeps one address (and announces again); releasing twice is fine."""
    redirect: Redirect = IpRedirect(SERVICE, "eth0", netns=lan.h1)
    ip = IpRedirect(SERVICE, "eth0", netns=lan.h1)

    redirect.apply("node-a", None, 1)
    ip.acquire(1)
    assert ip.held()
    ip.release()
    redirect.release()

    assert not ip.held()


@needs_root
def test_an_older_epoch_is_refused_locally(lan: Lan) -> None:
    """Once this host acquired for epoch 3, a late request for epoch 2 is refused."""
    ip = IpRedirect(SERVICE, "eth0", netns=lan.h1)
    ip.acquire(3)
    ip.release()

    with pytest.raises(StaleEpochError, match="already applied epoch 3"):
        ip.acquire(2)
    assert not ip.held()


@needs_root
def test_a_missing_interface_or_namespace_is_an_error_to_acquire_not_to_release(lan: Lan
                                                                                 ) -> None:
    """Configuration mistakes say what to fix; release has nothing to do then."""
    no_iface = IpRedirect(SERVICE, "eth9", netns=lan.h1)
    no_ns = IpRedirect(SERVICE, "eth0", netns=f"{lan.h1}-gone")

    with pytest.raises(RedirectError, match="no interface eth9"):
        no_iface.acquire(1)
    with pytest.raises(RedirectError, match=r"network namespace .* is not usable"):
        no_ns.acquire(1)
    no_iface.release()
    no_ns.release()

    assert not os.path.exists(f"/run/netns/{lan.h1}-gone")  # never created by mistake


@needs_root
def test_a_down_interface_cannot_be_announced(lan: Lan) -> None:
    """The address is added, but the announcement fails with a hint; a retry after the link
    comes up succeeds."""
    _ip("-n", lan.h1, "link", "set", "eth0", "down")
    ip = IpRedirect(SERVICE, "eth0", netns=lan.h1)

    with pytest.raises(RedirectError, match="interface is down"):
        ip.acquire(1)
    _ip("-n", lan.h1, "link", "set", "eth0", "up")
    ip.acquire(1)

    assert ip.held()


def test_garp_frames_claim_the_address_in_both_forms() -> None:
    """Request: target MAC zero; reply: target MAC ours; both broadcast, sender = target IP."""
    mac = bytes.fromhex("020000000001")
    request, reply = garp_frames(mac, SERVICE_IP)

    for frame, op, target_mac in ((request, 1, b"\0" * 6), (reply, 2, mac)):
        assert len(frame) == 60
        assert frame[:14] == b"\xff" * 6 + mac + b"\x08\x06"
        htype, ptype, hlen, plen, oper = struct.unpack("!HHBBH", frame[14:22])
        assert (htype, ptype, hlen, plen, oper) == (1, 0x0800, 6, 4, op)
        ip = socket.inet_aton(SERVICE_IP)
        assert frame[22:42] == mac + ip + target_mac + ip
        assert frame[42:] == b"\0" * 18


def test_ipv6_is_refused_with_a_reason() -> None:
    """Only IPv4 service addresses; the error points at DNS for IPv6."""
    with pytest.raises(ValueError, match="only IPv4"):
        IpRedirect("fd00::10/64", "eth0")
