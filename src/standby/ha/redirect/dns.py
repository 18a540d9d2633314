"""DNS redirection: RFC 2136 dynamic updates signed with TSIG, guarded by the epoch.

The service name (``svc.example.com.``) has an A (or AAAA) record pointing at the active host.
Next to it, a TXT record ``_standby-epoch.svc.example.com.`` holds the epoch of the promotion
that last wrote it, as the single string ``standby-epoch=N``.

The guard. RFC 2136 prerequisites test only existence or exact values, never "lower than", so
:meth:`DnsRedirect.point_to` works in two steps:

1. Read the epoch record (a TSIG-signed query to the same server). If it holds our epoch or a
   newer one, refuse here (:class:`~standby.ha.redirect.base.StaleEpochError`), unless it is
   our own earlier update of the same address (a retry after a lost answer), which succeeds
   without sending anything.
2. Send one update message whose prerequisite is *the epoch record is exactly what we read*
   ("RRset exists, value dependent", or "RRset does not exist" the first time) and whose update
   section replaces both the address record and the epoch record. The server applies the
   message atomically: if another host updated the record between our read and our update, the
   prerequisite fails (NXRRSET, or YXRRSET when both created it) and nothing changes, so of two
   hosts racing with the same belief exactly one wins, and a stale host can never swing the
   record back to an older epoch.

The epoch record must be written only by standby. If someone edits it by hand into another form,
updates stop with a message saying how to repair it; they never guess.

Every exchange is bounded by ``timeout`` (one deadline for the whole operation). Updates go over
TCP (no retransmission guesswork); queries over UDP, falling back to TCP when truncated.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import time
from typing import NamedTuple

import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.tsig
import dns.update

from standby.ha.redirect.base import RedirectError, StaleEpochError

EPOCH_LABEL = "_standby-epoch"
_EPOCH_TEXT = "standby-epoch={}"
_EPOCH_RE = re.compile(r"standby-epoch=(\d+)")

# TSIG algorithms dnspython signs with (RFC 8945 section 6; hmac-md5 only for old servers).
TSIG_ALGORITHMS = frozenset({
    "hmac-md5.sig-alg.reg.int", "hmac-md5", "hmac-sha1", "hmac-sha224", "hmac-sha256",
    "hmac-sha256-128", "hmac-sha384", "hmac-sha384-192", "hmac-sha512", "hmac-sha512-256",
})

# What to do about each answer that is not NOERROR. Keys are dnspython rcode names; the TSIG
# errors (BADSIG, BADKEY, BADTIME) come back in the TSIG record rather than the header.
_ADVICE = {
    "BADSIG": "the server could not verify our TSIG signature: the secret of key {key} differs "
              "from the server's; copy the key again from the server's configuration",
    "BADKEY": "the server does not know key {key} with algorithm {alg}: check the key name and "
              "algorithm against the server's configuration",
    "BADTIME": "the server rejected our signature's time: this host's clock is off by more than "
               "5 minutes; fix its time (NTP)",
    "BADTRUNC": "the server rejected our truncated TSIG MAC; use a full-length algorithm",
    "REFUSED": "the server refused the update: allow updates to zone {zone} by key {key} "
               "(allow-update or update-policy) on the primary server",
    "NOTAUTH": "the server is not authoritative for zone {zone} (or did not accept the key): "
               "send updates to the zone's primary server",
    "NOTZONE": "{name} is not inside zone {zone} on the server: check the zone and name",
    "SERVFAIL": "the server failed to apply the update (see its log); it will be retried",
    "NXRRSET": "another host changed the epoch record between our read and our update",
    "YXRRSET": "another host created the epoch record between our read and our update",
}


class DnsRedirectError(RedirectError):
    """The DNS server did not apply the update, or could not be asked.

    Attributes:
        rcode: the server's answer (``"BADSIG"``, ``"BADKEY"``, ``"REFUSED"``, ``"NXRRSET"``,
            ``"YXRRSET"``, ...), or ``None`` when no answer came (timeout, network error).
    """

    def __init__(self, message: str, *, rcode: str | None) -> None:
        super().__init__(message)
        self.rcode = rcode

    @property
    def lost_race(self) -> bool:
        """Another host updated the record between our read and our update."""
        return self.rcode in ("NXRRSET", "YXRRSET")


class DnsRecord(NamedTuple):
    """What the server holds for the service name: ``(address, epoch)``.

    ``address`` is ``None`` when the name has no A or AAAA record; ``epoch`` is 0 when no epoch
    record exists yet.
    """

    address: str | None
    epoch: int


class DnsRedirect:
    """Points a DNS name at the active host with TSIG-signed RFC 2136 updates.

    Args:
        server: IP address of the zone's primary server (updates and reads go there).
        port: its DNS port.
        zone: the zone to update, e.g. ``"example.com."``.
        name: the service name, absolute or relative to ``zone``.
        key_name: the TSIG key's name, as in the server's configuration.
        key_secret: the key's secret, base64.
        key_algorithm: the key's algorithm (``hmac-sha256`` by default).
        ttl: TTL of the records written; clients follow a move within about this long.
        timeout: seconds for a whole operation (read and update).

    Raises:
        ValueError: an argument that can never work (bad IP, name outside the zone, secret not
            base64, unknown algorithm).
    """

    def __init__(
        self,
        server: str,
        port: int,
        zone: str,
        name: str,
        key_name: str,
        key_secret: str,
        key_algorithm: str = "hmac-sha256",
        ttl: int = 60,
        timeout: float = 5.0,
    ) -> None:
        ipaddress.ip_address(server)  # dnspython sends to literal addresses only
        self._server = server
        self._port = port
        self._zone = dns.name.from_text(zone)
        self._name = dns.name.from_text(name, origin=self._zone)
        if not self._name.is_subdomain(self._zone):
            raise ValueError(f"name {self._name} is not inside zone {self._zone}")
        self._epoch_name = dns.name.from_text(EPOCH_LABEL, origin=self._name)
        if key_algorithm.rstrip(".").lower() not in TSIG_ALGORITHMS:
            raise ValueError(f"unknown TSIG algorithm {key_algorithm!r}; use hmac-sha256")
        try:
            base64.b64decode(key_secret, validate=True)
        except binascii.Error as e:
            raise ValueError(f"TSIG secret of key {key_name} is not base64: {e}") from None
        self._key = dns.tsig.Key(key_name, key_secret, key_algorithm)
        if not 0 <= ttl <= 2**31 - 1:
            raise ValueError(f"ttl must be 0..2147483647, got {ttl}")
        self._ttl = ttl
        self._timeout = timeout

    def __repr__(self) -> str:
        return (f"<DnsRedirect {self._name} at {self._server}#{self._port}, zone {self._zone}, "
                f"key {self._key.name}>")

    @property
    def epoch_name(self) -> str:
        """The owner of the TXT record that holds the epoch."""
        return self._epoch_name.to_text()

    # -- the Redirect protocol --------------------------------------------------------------

    def apply(self, active_host: str, address: str | None, epoch: int) -> None:
        """Point the name at ``address``, the active host's (see :meth:`point_to`)."""
        if address is None:
            raise RedirectError(
                f"DNS redirection of {self._name} needs the address of {active_host}; "
                "set the host's service address in the scenario"
            )
        self.point_to(address, epoch)

    def release(self) -> None:
        """Nothing to give up: the next active host overwrites the record."""

    # -- operations ---------------------------------------------------------------------------

    def current(self) -> DnsRecord:
        """Read the address and the epoch the server holds for the name.

        Raises:
            DnsRedirectError: no answer, a TSIG error, or an epoch record standby did not write.
        """
        return self._read(time.monotonic() + self._timeout)

    def point_to(self, address: str, epoch: int, *, seen: DnsRecord | None = None) -> None:
        """Set the name's A (IPv4) or AAAA (IPv6) record to ``address``, for ``epoch``.

        The name's records of the other family are deleted in the same update, so that after
        it the name leads to the new active host only.

        Args:
            address: the active host's address.
            epoch: our promotion's epoch; must be newer than the one the server holds.
            seen: what :meth:`current` returned, if the caller has just read it; by default it
                is read now. The update applies only if the server still holds that epoch.

        Raises:
            StaleEpochError: the server holds a newer epoch, or this epoch for another address.
            DnsRedirectError: the server refused (the rcode says why; ``lost_race`` when
                another host won), or no answer came in time.
        """
        rdtype = "A" if ipaddress.ip_address(address).version == 4 else "AAAA"
        deadline = time.monotonic() + self._timeout
        if seen is None:
            seen = self._read(deadline)
        if seen.epoch > epoch or (seen.epoch == epoch and seen.address != address):
            raise StaleEpochError(
                f"DNS: refused to point {self._name} at {address} for epoch {epoch}: the server "
                f"holds epoch {seen.epoch} (address {seen.address}); this host is not the "
                "newest active host and must step down",
                ours=epoch, current=seen.epoch,
            )
        if seen.epoch == epoch:
            return  # our own earlier update (its answer was lost): already done
        update = self._update_message(seen.epoch)
        update.replace(self._name, self._ttl, rdtype, address)
        update.delete(self._name, "AAAA" if rdtype == "A" else "A")  # no stale other family
        update.replace(self._epoch_name, self._ttl, "TXT", _txt(epoch))
        response = self._exchange(update, deadline, tcp=True)
        rcode = dns.rcode.to_text(response.rcode())
        if rcode != "NOERROR":
            raise self._refused(
                rcode, f"point {self._name} at {address} for epoch {epoch}", deadline
            )

    # -- internals ----------------------------------------------------------------------------

    def _update_message(self, believed_epoch: int) -> dns.update.UpdateMessage:
        update = dns.update.UpdateMessage(self._zone)
        update.use_tsig(self._key)
        if believed_epoch == 0:
            update.absent(self._epoch_name, "TXT")
        else:
            update.present(self._epoch_name, "TXT", _txt(believed_epoch))
        return update

    def _read(self, deadline: float) -> DnsRecord:
        epoch = self._epoch(self._query(self._epoch_name, "TXT", deadline))
        address = None
        for rdtype in ("A", "AAAA"):
            rrset = self._query(self._name, rdtype, deadline)
            if rrset:
                address = min(rdata.to_text() for rdata in rrset)  # one, unless edited by hand
                break
        return DnsRecord(address, epoch)

    def _epoch(self, rrset: dns.rrset.RRset | None) -> int:
        if rrset is None:
            return 0
        texts = [b"".join(rdata.strings).decode(errors="replace") for rdata in rrset]
        match = _EPOCH_RE.fullmatch(texts[0]) if len(texts) == 1 else None
        if match is None:
            raise DnsRedirectError(
                f"DNS: the epoch record {self._epoch_name} TXT {texts} was not written by "
                f"standby; set it to the single string \"{_EPOCH_TEXT.format('N')}\" with N "
                "the scenario's current epoch, or delete it if no host is active",
                rcode=None,
            )
        return int(match.group(1))

    def _query(self, name: dns.name.Name, rdtype: str, deadline: float) -> dns.rrset.RRset | None:
        query = dns.message.make_query(name, rdtype)
        query.use_tsig(self._key)
        response = self._exchange(query, deadline, tcp=False)
        rcode = dns.rcode.to_text(response.rcode())
        if rcode not in ("NOERROR", "NXDOMAIN"):
            raise self._refused(rcode, f"read {name} {rdtype}")
        return response.get_rrset(
            response.answer, name, dns.rdataclass.IN, dns.rdatatype.from_text(rdtype)
        )

    def _exchange(self, message: dns.message.Message, deadline: float, *, tcp: bool
                  ) -> dns.message.Message:
        timeout = max(0.0, deadline - time.monotonic())
        where = f"{self._server}#{self._port}"
        try:
            if tcp:
                return dns.query.tcp(message, self._server, timeout, self._port)
            return dns.query.udp_with_fallback(message, self._server, timeout, self._port)[0]
        except dns.tsig.PeerBadSignature:
            raise self._refused("BADSIG", "sign a message") from None
        except dns.tsig.PeerBadKey:
            raise self._refused("BADKEY", "sign a message") from None
        except dns.tsig.PeerBadTime:
            raise self._refused("BADTIME", "sign a message") from None
        except dns.tsig.PeerBadTruncation:
            raise self._refused("BADTRUNC", "sign a message") from None
        except dns.exception.Timeout:
            raise DnsRedirectError(
                f"DNS: no answer from {where} within {self._timeout:g} s; check that the server "
                "runs and is reachable from this host", rcode=None,
            ) from None
        except (dns.exception.DNSException, OSError) as e:
            raise DnsRedirectError(
                f"DNS: exchange with {where} failed ({type(e).__name__}: {e}); check the "
                "server address, port and key", rcode=None,
            ) from None

    def _refused(self, rcode: str, doing: str, deadline: float | None = None
                 ) -> DnsRedirectError:
        advice = _ADVICE.get(rcode, "see the server's log").format(
            key=self._key.name, alg=self._key.algorithm, zone=self._zone, name=self._name
        )
        if rcode in ("NXRRSET", "YXRRSET") and deadline is not None:
            advice += self._now_holds(deadline)
        return DnsRedirectError(
            f"DNS: {self._server}#{self._port} answered {rcode} when asked to {doing}: {advice}",
            rcode=rcode,
        )

    def _now_holds(self, deadline: float) -> str:
        try:
            record = self._read(deadline)
        except RedirectError:
            return "; this host must not redirect until it learns the newer epoch"
        return (f" (it now holds epoch {record.epoch}, address {record.address}); this host must "
                "not redirect until it learns the newer epoch")


def _txt(epoch: int) -> str:
    return '"' + _EPOCH_TEXT.format(epoch) + '"'
