"""What a decision asks the controller to do, and the decision itself.

Execution contract (the controller's side):

- A decision's actions run in the order given. The first that fails ends the decision: the
  rest are skipped, and the next cycle decides again from a fresh view. A switchover relies on
  this: the epoch is never raised when the drain did not finish.
- Every action is idempotent: a workload that already runs is not started twice, a held
  address is not added twice. ``decide`` may repeat an action in the next cycle when the view
  has not caught up with it yet.
- :class:`RaiseEpoch` is a compare-and-set at the witness in witness mode: it refuses an epoch
  not above its record, and a failover while it still sees the active host. A refusal is a
  failure (see above). In etcd mode a promotion's epoch is raised by :class:`AcquireLease`
  (etcd grants each hold at a higher epoch), and RaiseEpoch only stores the record on this host.
- An :class:`Alert` becomes an event when its code first appears in a decision, not at every
  cycle while it stays; the engine maps each :class:`AlertCode` to a stable event ID.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class AlertCode(enum.StrEnum):
    """What an alert is about; symbolic, the engine's event catalog gives each its ID."""

    HOST_DEAD = "HOST_DEAD"  # the active host is declared dead (seen from a standby)
    REPLICA_UNREACHABLE = "REPLICA_UNREACHABLE"  # a standby fell silent (seen from the active)
    FAILOVER_WAITING_FOR_OPERATOR = "FAILOVER_WAITING_FOR_OPERATOR"
    REQUEST_REFUSED = "REQUEST_REFUSED"  # an operator's switchover/failover/switchback
    ISOLATED = "ISOLATED"  # witness mode: the active lost both the standbys and the witness
    LEASE_LOST = "LEASE_LOST"  # etcd mode: the active cannot keep the lease
    WAITING_FOR_EPOCH = "WAITING_FOR_EPOCH"  # a returning active host stays passive
    EPOCH_CONFLICT = "EPOCH_CONFLICT"  # two hosts claim the same epoch


@dataclass(frozen=True, slots=True)
class StartWorkload:
    """Start the scenario's workload (VM, service or script) on this host."""


@dataclass(frozen=True, slots=True)
class StopWorkload:
    """Stop the scenario's workload on this host."""


@dataclass(frozen=True, slots=True)
class RaiseEpoch:
    """Record (epoch, active) at the arbiter, then durably on this host: from ``epoch`` on,
    ``active`` is the active host. ``epoch`` is above every epoch this host has seen."""

    epoch: int
    active: str


@dataclass(frozen=True, slots=True)
class Promote:
    """Become the active host at ``epoch``: stop applying, become the source of the stream."""

    epoch: int


@dataclass(frozen=True, slots=True)
class Demote:
    """Become (or stay) a standby following ``active`` at ``epoch``, storing that record."""

    epoch: int
    active: str


@dataclass(frozen=True, slots=True)
class Redirect:
    """Make clients follow ``active`` as of ``epoch``, by every redirection configured (service
    IP, DNS update guarded by the epoch, user script). The active host claims; a host stepping
    down releases what it held."""

    epoch: int
    active: str


@dataclass(frozen=True, slots=True)
class DrainReplication:
    """Wait until every change is durable on ``replica``; fails when it cannot finish."""

    replica: str


@dataclass(frozen=True, slots=True)
class StartReverseReplication:
    """Replicate from this (new active) host to ``replica``, the host that handed over."""

    replica: str


@dataclass(frozen=True, slots=True)
class Resynchronize:
    """Bring ``replica`` to this host's state, sending only the differences (what changed since
    the failover when known, else a block comparison), then replicate to it."""

    replica: str


@dataclass(frozen=True, slots=True)
class AcquireLease:
    """etcd: take the leader lease at ``epoch`` (above every epoch etcd granted before) if
    nobody holds it. Winning it *is* the promotion's epoch raise: the next cycle sees etcd's
    record naming this host and promotes."""

    epoch: int


@dataclass(frozen=True, slots=True)
class RenewLease:
    """etcd: renew the lease this host holds."""


@dataclass(frozen=True, slots=True)
class ReleaseLease:
    """etcd: give up the lease this host holds."""


@dataclass(frozen=True, slots=True)
class Alert:
    """Tell the operator: ``message`` says what happened and what to do."""

    code: AlertCode
    message: str


Action = (StartWorkload | StopWorkload | RaiseEpoch | Promote | Demote | Redirect
          | DrainReplication | StartReverseReplication | Resynchronize | AcquireLease
          | RenewLease | ReleaseLease | Alert)


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of one cycle: actions to run in order, and why, in one sentence."""

    actions: tuple[Action, ...]
    reason: str
