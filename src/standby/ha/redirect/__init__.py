"""Redirection: making clients follow the active host.

Three ways, one interface (:class:`Redirect`: ``apply(active_host, address, epoch)`` and
``release()``), so the controller treats them alike:

- :class:`DnsRedirect` (``dns``): an RFC 2136 update signed with TSIG, guarded on the server by an
  epoch record so a stale host cannot swing the name back.
- :class:`IpRedirect` (``ip``): the service IPv4 address added over netlink on the new active
  host, announced with gratuitous ARP; released by the host that steps down.
- :class:`ScriptRedirect` (``script``): the administrator's script, with the scenario, the active
  host, the epoch and the address in its environment.

Every call blocks (bounded by its timeout): run it off the event loop with
``asyncio.to_thread``. Errors are :class:`RedirectError`; an older epoch than one already in force
is refused with :class:`StaleEpochError`.
"""

from standby.ha.redirect.base import EpochFence, Redirect, RedirectError, StaleEpochError
from standby.ha.redirect.dns import DnsRecord, DnsRedirect, DnsRedirectError
from standby.ha.redirect.ip import IpRedirect, garp_frames
from standby.ha.redirect.script import ScriptRedirect

__all__ = [
    "DnsRecord",
    "DnsRedirect",
    "DnsRedirectError",
    "EpochFence",
    "IpRedirect",
    "Redirect",
    "RedirectError",
    "ScriptRedirect",
    "StaleEpochError",
    "garp_frames",
]
