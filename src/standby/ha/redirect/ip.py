"""Service IP redirection: move an IPv4 address to the active host and announce it.

:meth:`IpRedirect.acquire` adds the address to an interface over netlink (pyroute2), then sends
gratuitous ARP from a raw ``AF_PACKET`` socket on that interface, in both forms (an ARP request
and an ARP reply for the address, each claiming it for the interface's MAC), a few times about
100 ms apart. Neighbours that have the address cached replace the old host's MAC at once
instead of waiting for their entry to expire (Linux overrides its ``locktime`` for a gratuitous
ARP; other systems accept one form or the other, hence both). Hosts that never talked to the
address learn it when they next ask, as usual.

IPv4 only: an IPv6 service address would need unsolicited neighbour advertisements (RFC 4861
section 7.2.6) instead of ARP; the constructor refuses IPv6 until that exists.

Caveats an operator should know:

- The address must be in a subnet the interface's neighbours are on, and the other host must have
  released it (or be dead): a live old master that still holds the address answers ARP too. The
  epoch and the arbiter make the old master step down; this module only refuses, on one host,
  to acquire for an older epoch than it already did.
- Give the service address its own prefix or make sure the interface already has a primary
  address in that subnet: deleting a *primary* address also deletes the secondaries of its
  subnet unless ``net.ipv4.conf.IFACE.promote_secondaries=1``.
"""

from __future__ import annotations

import errno
import functools
import importlib
import ipaddress
import socket
import struct
import time
from typing import Any

from standby.ha.redirect.base import EpochFence, RedirectError


@functools.cache
def _pyroute2(module: str = "pyroute2") -> Any:
    """pyroute2, imported on first use: it takes about half a second, which an engine that
    redirects only by DNS should not pay. Typed as Any because pyroute2 ships no type
    information (an ignore comment would break if the mypy configuration learned about it)."""
    return importlib.import_module(module)


ETH_P_ARP = 0x0806
ETH_P_IP = 0x0800
ARPHRD_ETHER = 1
ARPOP_REQUEST = 1
ARPOP_REPLY = 2
BROADCAST_MAC = b"\xff" * 6
_MIN_FRAME = 60  # Ethernet minimum without the FCS; short frames are padded with zeros

# Three rounds ~100 ms apart: what keepalived (vrrp_garp_master_repeat) and arping -U -c 3 do,
# enough to survive a lost frame without delaying the failover.
DEFAULT_GARP_COUNT = 3
DEFAULT_GARP_INTERVAL = 0.1


def garp_frames(mac: bytes, address: str) -> tuple[bytes, bytes]:
    """Build the two gratuitous ARP Ethernet frames that claim ``address`` for ``mac``.

    Returns:
        ``(request, reply)``: both broadcast, sender and target protocol address ``address``.
        The request's target hardware address is zero; the reply's is ``mac`` (Linux treats a
        reply as gratuitous only when its target and sender hardware addresses are equal).
    """
    if len(mac) != 6:
        raise ValueError(f"an Ethernet MAC has 6 bytes, got {len(mac)}")
    ip = ipaddress.IPv4Address(address).packed

    def frame(op: int, target_mac: bytes) -> bytes:
        ether = BROADCAST_MAC + mac + struct.pack("!H", ETH_P_ARP)
        arp = struct.pack("!HHBBH", ARPHRD_ETHER, ETH_P_IP, 6, 4, op)
        arp += mac + ip + target_mac + ip
        return (ether + arp).ljust(_MIN_FRAME, b"\0")

    return frame(ARPOP_REQUEST, b"\0" * 6), frame(ARPOP_REPLY, mac)


class IpRedirect:
    """Holds a service IPv4 address on one interface of this host (or of a network namespace).

    Args:
        address: the service address with its prefix, e.g. ``"10.1.0.10/24"``.
        interface: the interface to put it on, e.g. ``"eth0"``.
        netns: a named network namespace (``ip netns``) holding the interface; ``None`` for the
            engine's own. It must exist: it is never created.
        garp_count: rounds of gratuitous ARP after acquiring (each round sends both forms).
        garp_interval: seconds between rounds.

    Raises:
        ValueError: the address is not an IPv4 interface address.
    """

    def __init__(
        self,
        address: str,
        interface: str,
        netns: str | None = None,
        *,
        garp_count: int = DEFAULT_GARP_COUNT,
        garp_interval: float = DEFAULT_GARP_INTERVAL,
    ) -> None:
        iface = ipaddress.ip_interface(address)
        if not isinstance(iface, ipaddress.IPv4Interface):
            raise ValueError(
                f"service address {address}: only IPv4 is supported (IPv6 would need "
                "unsolicited neighbour advertisements); use DNS redirection for IPv6"
            )
        if garp_count < 0 or garp_interval < 0:
            raise ValueError("garp_count and garp_interval must be >= 0")
        self._iface = iface
        self._interface = interface
        self._netns = netns
        self._garp_count = garp_count
        self._garp_interval = garp_interval
        self._fence = EpochFence(f"service IP {iface} on {self._where}")

    def __repr__(self) -> str:
        return f"<IpRedirect {self._iface} on {self._where}, epoch {self._fence.highest}>"

    @property
    def address(self) -> str:
        """The service address without its prefix."""
        return str(self._iface.ip)

    @property
    def _where(self) -> str:
        return self._interface + (f" in netns {self._netns}" if self._netns else "")

    # -- the Redirect protocol --------------------------------------------------------------

    def apply(self, active_host: str, address: str | None, epoch: int) -> None:
        """Take the service address on this host, which is becoming active (:meth:`acquire`).

        ``active_host`` and ``address`` are not needed: the service address is configured.
        """
        self.acquire(epoch)

    # -- operations ---------------------------------------------------------------------------

    def acquire(self, epoch: int) -> None:
        """Add the address to the interface (if missing) and announce it with gratuitous ARP.

        Idempotent: when the address is already there, only the announcement is sent again.

        Raises:
            StaleEpochError: this object already acquired for a newer epoch.
            RedirectError: the namespace or interface is missing, netlink refused, or the
                announcement could not be sent (the interface is down).
        """
        self._fence.admit(epoch)
        with self._ipr() as ipr:
            index = self._index(ipr)
            try:
                ipr.addr("add", index=index, address=self.address,
                         prefixlen=self._iface.network.prefixlen)
            except _pyroute2().NetlinkError as e:
                if e.code != errno.EEXIST:
                    raise RedirectError(
                        f"could not add {self._iface} to {self._where}: {e}; check the address "
                        "and that the engine runs with CAP_NET_ADMIN"
                    ) from None
        self.announce()

    def release(self) -> None:
        """Remove the address from the interface. Idempotent: a missing address, interface or
        namespace means there is nothing to release.

        Raises:
            RedirectError: netlink refused the removal (for another reason than absence).
        """
        try:
            ipr_context = self._ipr()
        except RedirectError:
            return  # the namespace is gone, and the address with it
        with ipr_context as ipr:
            indexes = ipr.link_lookup(ifname=self._interface)
            if not indexes:
                return
            try:
                ipr.addr("del", index=indexes[0], address=self.address,
                         prefixlen=self._iface.network.prefixlen)
            except _pyroute2().NetlinkError as e:
                if e.code not in (errno.EADDRNOTAVAIL, errno.ENODEV):
                    raise RedirectError(
                        f"could not remove {self._iface} from {self._where}: {e}"
                    ) from None

    def held(self) -> bool:
        """Whether the interface has the service address now."""
        with self._ipr() as ipr:
            addrs = ipr.get_addr(index=self._index(ipr), address=self.address)
            return any(a["prefixlen"] == self._iface.network.prefixlen for a in addrs)

    def announce(self) -> None:
        """Send the gratuitous ARP rounds (also part of :meth:`acquire`).

        Interfaces without an Ethernet address (loopback, tunnels) have no ARP: nothing is sent.
        """
        if self._garp_count == 0:
            return
        try:
            sock = self._packet_socket()
            with sock:
                sock.bind((self._interface, ETH_P_ARP))
                hatype, mac = sock.getsockname()[3:5]
                if hatype != ARPHRD_ETHER:
                    return
                frames = garp_frames(mac, self.address)
                for round_ in range(self._garp_count):
                    if round_:
                        time.sleep(self._garp_interval)
                    for frame in frames:
                        sock.send(frame)
        except OSError as e:
            hint = " (the interface is down: bring it up)" if e.errno == errno.ENETDOWN else ""
            raise RedirectError(
                f"could not send gratuitous ARP for {self.address} on {self._where}: "
                f"{e.strerror or e}{hint}; neighbours will learn the move only when their ARP "
                "entries expire"
            ) from None

    # -- internals ----------------------------------------------------------------------------

    def _ipr(self) -> Any:
        """An IPRoute in the right namespace (flags=0: never create a missing namespace)."""
        if self._netns is None:
            return _pyroute2().IPRoute()
        try:
            return _pyroute2().IPRoute(netns=self._netns, flags=0)
        except OSError as e:
            raise RedirectError(
                f"network namespace {self._netns} is not usable ({e.strerror or e}); create it "
                "or fix the scenario's netns"
            ) from None

    def _index(self, ipr: Any) -> int:
        indexes: list[int] = ipr.link_lookup(ifname=self._interface)
        if not indexes:
            raise RedirectError(
                f"no interface {self._where} for service IP {self._iface}; fix the scenario's "
                "interface name"
            )
        return indexes[0]

    def _packet_socket(self) -> socket.socket:
        proto = socket.htons(ETH_P_ARP)
        if self._netns is None:
            return socket.socket(socket.AF_PACKET, socket.SOCK_RAW, proto)
        sock: socket.socket = _pyroute2("pyroute2.netns").create_socket(
            self._netns, socket.AF_PACKET, socket.SOCK_RAW, proto, flags=0
        )
        return sock
