"""The arbiter interface: who may be the active host of a scenario.

The HA controller calls an arbiter once per cycle: ``state(now)`` goes into the immutable view
that the pure ``decide()`` reads, and ``try_acquire``/``renew``/``release`` are what its actions
ask for. The rules that use the answers (promote only with consent, stop the workload once the
lease has run out) live in ``decide()``, not here: an arbiter only reports and grants.

The contract every arbiter keeps:

- **One holder.** At most one host holds the arbiter at a time; ``we_hold`` is True on at most
  one host, for as long as its ``expires_at`` has not passed.
- **Epochs only go up.** ``try_acquire(host, epoch)`` succeeds only with an epoch above every
  epoch granted before (``ArbiterState.highest_epoch``), so two hosts can never both hold the
  same epoch. Calling it again while holding with the same epoch renews.
- **Expiry is conservative.** ``expires_at`` is a bound computed on our own clock from the time
  a renewal was *sent*, so the holder always believes its hold ends before the arbiter frees it
  for another host. A holder that cannot renew before ``expires_at`` must stop its workload.
- **Bounded calls.** Every method returns within the arbiter's timeout; an arbiter that cannot
  be asked reports ``reachable=False`` rather than raising.

Calls may block on the network: the controller runs them in a worker thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = ["Arbiter", "ArbiterState", "PeerArbiter"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ArbiterState:
    """What an arbiter said at one moment (``now`` on the controller's monotonic clock)."""

    #: The host that holds the arbiter, or None when nobody does.
    holder: str | None
    #: The epoch the holder acquired with; None when nobody holds it (or it is unreadable).
    holder_epoch: int | None
    #: The highest epoch this arbiter ever granted (0: none): the floor for the next acquire.
    highest_epoch: int
    #: True while this host holds the arbiter and its local expiry bound has not passed.
    we_hold: bool
    #: When the current hold ends unless renewed (controller clock); None when there is no
    #: lease (no holder, or an arbiter without leases).
    expires_at: float | None
    #: False when the arbiter could not be asked; the other fields are then our last knowledge.
    reachable: bool
    #: One sentence for logs and events.
    detail: str


class Arbiter(Protocol):
    """What the HA controller needs from an arbiter (peer, witness, etcd)."""

    def state(self, now: float) -> ArbiterState:
        """Ask who holds the arbiter; never raises for an unreachable arbiter."""
        ...

    def try_acquire(self, host: str, epoch: int) -> bool:
        """Become the holder with ``epoch`` (above ``highest_epoch``); True if we now hold it."""
        ...

    def renew(self) -> bool:
        """Extend our hold; False when we do not hold it (any more) or could not renew."""
        ...

    def release(self) -> None:
        """Give up our hold (if any) so another host can acquire at once; best effort."""
        ...


class PeerArbiter:
    """Arbitration by the peer link alone: two hosts, no third party.

    Deliberately trivial. With two hosts there is nobody to ask, so this arbiter is always
    reachable and grants every acquire whose epoch is above the ones it granted before; it
    never expires a hold. Consent is entirely the controller's rules for ``peer`` mode:
    automatic failover only after the Is Alive timeout and only when the replica was caught up,
    otherwise wait for the operator. The epoch floor is kept in memory only; durable epochs are
    the controller's job.
    """

    def __init__(self, host: str) -> None:
        self.host = host
        self._holder: str | None = None
        self._epoch: int | None = None
        self._highest = 0

    def __repr__(self) -> str:
        return f"<PeerArbiter host={self.host} holder={self._holder} epoch={self._epoch}>"

    def state(self, now: float) -> ArbiterState:
        we_hold = self._holder == self.host
        if self._holder is None:
            detail = "peer arbitration: nobody holds it; consent is the controller's rules"
        else:
            detail = f"peer arbitration: {self._holder} holds it at epoch {self._epoch}"
        return ArbiterState(holder=self._holder, holder_epoch=self._epoch,
                            highest_epoch=self._highest, we_hold=we_hold, expires_at=None,
                            reachable=True, detail=detail)

    def try_acquire(self, host: str, epoch: int) -> bool:
        check_acquire(self.host, host, epoch, self._epoch if self._holder == host else None)
        if self._holder == host and epoch == self._epoch:
            return True
        if epoch <= self._highest:
            return False
        self._holder, self._epoch, self._highest = host, epoch, epoch
        return True

    def renew(self) -> bool:
        return self._holder == self.host

    def release(self) -> None:
        if self._holder == self.host:
            self._holder = self._epoch = None


def check_acquire(our_host: str, host: str, epoch: int, held_epoch: int | None) -> None:
    """Refuse calls that are bugs in the caller (not answers from the arbiter)."""
    if host != our_host:
        raise ValueError(f"this arbiter acts for {our_host!r}, not {host!r}")
    if epoch < 1:
        raise ValueError(f"epoch must be at least 1, got {epoch}")
    if held_epoch is not None and epoch != held_epoch:
        raise ValueError(f"{host} already holds the arbiter at epoch {held_epoch}; "
                         f"release it before acquiring at epoch {epoch}")
