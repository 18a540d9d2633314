"""What the three redirections share: the :class:`Redirect` protocol, the errors, the epoch fence.

Every redirection is blocking I/O bounded by its own timeout (a DNS exchange, netlink calls and a
few gratuitous ARP frames, a user script). The controller runs :meth:`Redirect.apply` off its
event loop, e.g. ``await asyncio.to_thread(redirect.apply, host, address, epoch)``.

Epochs: a redirection carries the epoch of the promotion that asked for it. Each redirection
object remembers the highest epoch it has been given (:class:`EpochFence`) and refuses an
older one with :class:`StaleEpochError`; DNS also guards the record on the server itself, so a
stale host on another machine cannot swing it back (see :mod:`standby.ha.redirect.dns`).
"""

from __future__ import annotations

import threading
from typing import Protocol, runtime_checkable


class RedirectError(Exception):
    """A redirection did not happen. The message says why and what to do.

    The controller treats every redirection alike: it catches this, reports the message as an
    event and retries in a later cycle if the promotion still stands.
    """


class StaleEpochError(RedirectError):
    """Refused here: a redirection for a newer epoch (or this very epoch, elsewhere) exists.

    Attributes:
        ours: the epoch this host asked for.
        current: the epoch already in force (``>= ours``).
    """

    def __init__(self, message: str, *, ours: int, current: int) -> None:
        super().__init__(message)
        self.ours = ours
        self.current = current


@runtime_checkable
class Redirect(Protocol):
    """Makes clients follow the active host. Implemented by DNS, service IP and user script."""

    def apply(self, active_host: str, address: str | None, epoch: int) -> None:
        """Point clients at ``active_host`` for ``epoch``.

        Args:
            active_host: the name of the engine that is now active.
            address: the address clients should reach it at, when known (DNS needs it; the
                service IP redirection ignores it, its address is configured).
            epoch: the epoch of the promotion; an older one than already applied is refused.

        Raises:
            StaleEpochError: a newer epoch already owns the redirection.
            RedirectError: anything else that kept the redirection from happening.
        """
        ...

    def release(self) -> None:
        """Give up what this host holds because it is no longer active (idempotent).

        A no-op for redirections that hold nothing on the host (DNS, script).
        """
        ...


class EpochFence:
    """The highest epoch seen by one redirection object; refuses older ones. Thread-safe."""

    def __init__(self, what: str) -> None:
        self._what = what
        self._lock = threading.Lock()
        self._highest = 0

    @property
    def highest(self) -> int:
        return self._highest

    def admit(self, epoch: int) -> None:
        """Record ``epoch``, or raise :class:`StaleEpochError` if a higher one was seen."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        with self._lock:
            if epoch < self._highest:
                raise StaleEpochError(
                    f"{self._what}: refused epoch {epoch}, this host already applied epoch "
                    f"{self._highest}; a host with an older epoch must step down, not redirect",
                    ours=epoch,
                    current=self._highest,
                )
            self._highest = epoch
