"""The immutable view the HA controller loads once per cycle, and the HA settings.

The controller builds a :class:`HaView` at the start of each cycle from what the engine knows
(heartbeats received, check results, replication state, the arbiter's last answer, the
workload's state, the operator's pending request) and hands it to the pure
:func:`standby.ha._decide.decide`. Nothing here reads a clock, a socket or a file.

Times are seconds on the engine's monotonic clock, the same clock as the ``now`` given to
``decide``. An *epoch record* is a pair (epoch, active host): "from this epoch on, this host is
the active one". Every host stores one for each scenario, heartbeats carry it, and the witness
and etcd keep one too; epochs only ever rise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal, Protocol

#: A host's role in a scenario: the *active* host serves the workload, a *standby* receives.
Role = Literal["active", "standby"]
#: The result of an Is Alive check: a check that hangs past its timeout counts as failed.
CheckStatus = Literal["ok", "failed", "timeout"]
CheckKind = Literal["tcp", "icmp", "script"]
#: What the workload adapter last found; "unknown" when its check could not tell.
WorkloadState = Literal["running", "stopped", "unknown"]
#: Who consents to a promotion (see docs/configuration.md, "High availability").
Arbitration = Literal["peer", "witness", "etcd"]
RequestKind = Literal["switchover", "failover", "switchback"]


@dataclass(frozen=True, slots=True)
class PeerStatus:
    """Another host of the scenario, as its heartbeats describe it.

    ``epoch`` and ``active`` are the epoch record of the peer's last heartbeat; they stay in
    the view after the peer falls silent (an epoch, once announced, is a fact).
    """

    name: str
    last_heartbeat: float | None = None  # when its last heartbeat arrived; None: never, this run
    epoch: int | None = None
    active: str | None = None

    @property
    def role(self) -> Role | None:
        """The role the peer reported for itself, or None before its first heartbeat."""
        if self.active is None:
            return None
        return "active" if self.active == self.name else "standby"


@dataclass(frozen=True, slots=True)
class CheckState:
    """The latest result of one extra Is Alive check (run from a standby, against the active
    host), and since when it has had that status."""

    name: str  # for messages, e.g. "tcp 10.0.0.1:5432"
    kind: CheckKind
    status: CheckStatus
    since: float


@dataclass(frozen=True, slots=True)
class ReplicationState:
    """The stream from the active host to one replica, as last known.

    On a standby, the stream into this host; on the active host, one per replica. When the
    master falls silent, the values stay as they were when it was last heard, which is what
    peer-mode failover judges.
    """

    replica: str
    connected: bool  # the replication session is up
    consistent: bool  # the replica is a whole copy as of some moment (no synchronization running)
    lag_seconds: float | None  # age of the oldest change not yet durable on the replica
    durable_seq: int  # the last sequence number durable on the replica
    master_seq: int  # the master's last sequence number, as the replica last heard it
    #: On a standby: the master was still (re)synchronizing this replica when last heard, so
    #: changes made meanwhile wait as dirty paths, counted in no sequence number.
    synchronizing: bool = False

    @property
    def caught_up(self) -> bool:
        """The replica had made durable every change the master had announced."""
        return self.durable_seq >= self.master_seq


@dataclass(frozen=True, slots=True)
class PeerArbiter:
    """Two hosts and their peer link: no third party. The operator's word is the consent to a
    manual failover; automatic failover also needs a caught-up replica."""

    mode: ClassVar[Arbitration] = "peer"


@dataclass(frozen=True, slots=True)
class WitnessArbiter:
    """A third engine that sees both hosts and keeps an epoch record.

    ``reachable`` is this cycle's answer; ``last_contact`` keeps the time of the last answer,
    which extends the active host's authority (see ``HaConfig.lease_seconds``). A
    :class:`~standby.ha._actions.RaiseEpoch` is a compare-and-set at the witness.
    """

    mode: ClassVar[Arbitration] = "witness"
    reachable: bool
    last_contact: float | None
    sees_master: bool  # the witness has heard from HaView.active within its timeout
    epoch: int | None = None  # the epoch record the witness keeps (None: none yet)
    active: str | None = None

    @property
    def record(self) -> tuple[int, str] | None:
        """The witness's epoch record, when it has one."""
        if self.epoch is None or self.active is None:
            return None
        return self.epoch, self.active


@dataclass(frozen=True, slots=True)
class EtcdArbiter:
    """A leader lease in etcd: one holder at a time, each hold granted at an epoch above every
    epoch granted before (``standby.ha.arbiter.base`` has the contract).

    ``held`` says this host holds the lease; ``expires_at`` is when that hold runs out by this
    host's clock, counted from when the last renewal was *sent*, so it never outlives etcd's.
    """

    mode: ClassVar[Arbitration] = "etcd"
    reachable: bool
    held: bool = False
    expires_at: float | None = None
    holder: str | None = None  # who holds the lease (None: nobody, or unknown)
    holder_epoch: int | None = None  # the epoch the holder was granted
    highest_epoch: int = 0  # the highest epoch etcd ever granted (0: none); outlives the lease

    @property
    def record(self) -> tuple[int, str] | None:
        """The holder's epoch record, while somebody holds the lease."""
        if self.holder_epoch is None or self.holder is None:
            return None
        return self.holder_epoch, self.holder


Arbiter = PeerArbiter | WitnessArbiter | EtcdArbiter


@dataclass(frozen=True, slots=True)
class OperatorRequest:
    """A pending ``standby switchover|failover|switchback NAME``; it stands until the
    controller clears it (when the epoch changes, or when the operator withdraws it)."""

    kind: RequestKind
    target: str | None = None  # switchover/switchback: the host to hand over to


@dataclass(frozen=True, slots=True)
class HaView:
    """Everything one HA cycle decides on, for one scenario on this host. Never mutated."""

    scenario: str
    host: str  # this engine's name
    epoch: int  # this host's stored epoch record: (epoch, active)
    active: str
    #: When this engine started watching; a peer's silence before its first heartbeat counts
    #: from here.
    monitoring_since: float
    peers: tuple[PeerStatus, ...] = ()  # the scenario's other hosts, in scenario order
    checks: tuple[CheckState, ...] = ()
    replication: tuple[ReplicationState, ...] = ()
    arbiter: Arbiter = PeerArbiter()
    workload: WorkloadState = "unknown"
    request: OperatorRequest | None = None
    #: On a standby: the active host was replicating the scenario (it was started there) when
    #: it was last heard. A stopped scenario is not protected: no automatic failover.
    protected: bool = True
    #: On the active host: the operator wants the scenario replicated (it is started here), so
    #: a standby that follows this host without a stream gets one (reverse replication).
    replicating: bool = False
    #: On the active host: its redirections for this epoch completed (clients follow it). A
    #: failed one (a DNS server that did not answer) is tried again at the next cycle.
    redirected: bool = True
    #: This host's stored scenario is turned to the active host of its record (master = the
    #: active host). False after a promotion or demotion that stopped half-way: completed first.
    oriented: bool = True
    #: The last contact with a standby or the witness before this engine started (on the
    #: same clock), when it was recorded: an engine restart does not earn a fresh lease.
    carried_contact: float | None = None

    @property
    def role(self) -> Role:
        """This host's stored role: active when its own epoch record names it."""
        return "active" if self.active == self.host else "standby"

    def peer(self, name: str) -> PeerStatus | None:
        """The peer of that name, or None."""
        return next((peer for peer in self.peers if peer.name == name), None)

    def replication_of(self, replica: str) -> ReplicationState | None:
        """The stream into ``replica``, or None when nothing is known of it."""
        return next((state for state in self.replication if state.replica == replica), None)


class _HaSettings(Protocol):
    """The fields of ``standby.config.HaOptions`` that the decision reads."""

    @property
    def interval(self) -> float: ...
    @property
    def timeout(self) -> float: ...
    @property
    def auto_failover(self) -> bool: ...
    @property
    def arbitration(self) -> Arbitration: ...
    @property
    def max_lag(self) -> float: ...
    @property
    def lease_seconds(self) -> float: ...
    @property
    def reverse_replication(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class HaConfig:
    """The scenario's ``[ha]`` settings that ``decide`` reads (docs/configuration.md).

    ``lease_seconds`` is the etcd lease's time to live; in witness mode it is how long the
    active host keeps its workload after its last contact with a standby or the witness.
    """

    interval: float = 1.0
    timeout: float = 10.0
    auto_failover: bool = False
    arbitration: Arbitration = "peer"
    max_lag: float = 5.0
    lease_seconds: float = 5.0
    reverse_replication: bool = True

    @classmethod
    def from_options(cls, options: _HaSettings) -> HaConfig:
        """The settings of a validated ``HaOptions`` (kept apart so this module stays pure)."""
        return cls(interval=options.interval, timeout=options.timeout,
                   auto_failover=options.auto_failover, arbitration=options.arbitration,
                   max_lag=options.max_lag, lease_seconds=options.lease_seconds,
                   reverse_replication=options.reverse_replication)
