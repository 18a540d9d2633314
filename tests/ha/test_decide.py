"""decide(): every rule with its exact reason sentence, then invariants over random views.

The scenario "files" has two hosts: alpha (active at epoch 5) and beta (its standby); gamma
appears where a third host or a witness is needed. Times are seconds around NOW.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from standby.config import parse_scenario
from standby.ha._actions import (
    AcquireLease,
    Action,
    Alert,
    AlertCode,
    Decision,
    Demote,
    DrainReplication,
    Promote,
    RaiseEpoch,
    Redirect,
    ReleaseLease,
    RenewLease,
    Resynchronize,
    StartReverseReplication,
    StartWorkload,
    StopWorkload,
)
from standby.ha._decide import decide
from standby.ha._model import (
    Arbiter,
    Arbitration,
    CheckState,
    CheckStatus,
    EtcdArbiter,
    HaConfig,
    HaView,
    OperatorRequest,
    PeerArbiter,
    PeerStatus,
    ReplicationState,
    WitnessArbiter,
    WorkloadState,
)

NOW = 1000.0
CFG = HaConfig()  # peer arbitration, automatic failover off
AUTO = HaConfig(auto_failover=True)
WITNESS = HaConfig(auto_failover=True, arbitration="witness")
ETCD = HaConfig(auto_failover=True, arbitration="etcd")


def heard(name: str, ago: float | None = 0.5, epoch: int = 5, active: str = "alpha") -> PeerStatus:
    """A peer whose last heartbeat, ``ago`` seconds before NOW, carried (epoch, active)."""
    return PeerStatus(name, None if ago is None else NOW - ago, epoch, active)


def stream(replica: str = "beta", **changes: Any) -> ReplicationState:
    """A healthy replication stream into ``replica``: connected, consistent, caught up."""
    state = ReplicationState(replica, connected=True, consistent=True, lag_seconds=0.1,
                             durable_seq=100, master_seq=100)
    return dataclasses.replace(state, **changes)


def standby(**changes: Any) -> HaView:
    """beta, following alpha at epoch 5, alpha heard 0.5 s ago; no workload running."""
    view = HaView("files", "beta", 5, "alpha", monitoring_since=NOW - 600,
                  peers=(heard("alpha"),), replication=(stream(),), workload="stopped")
    return dataclasses.replace(view, **changes)


def active(**changes: Any) -> HaView:
    """alpha, active at epoch 5, beta heard 0.5 s ago; the workload running."""
    view = HaView("files", "alpha", 5, "alpha", monitoring_since=NOW - 600,
                  peers=(heard("beta"),), replication=(stream(),), workload="running")
    return dataclasses.replace(view, **changes)


def failover(target: str | None = None) -> OperatorRequest:
    return OperatorRequest("failover", target)


def witness(**changes: Any) -> WitnessArbiter:
    """A witness that answered now, saw nothing of alpha, and keeps the record (5, alpha)."""
    return dataclasses.replace(WitnessArbiter(reachable=True, last_contact=NOW,
                                              sees_master=False, epoch=5, active="alpha"),
                               **changes)


def etcd(**changes: Any) -> EtcdArbiter:
    """etcd, answering, nobody holding the lease, epoch 5 the highest ever granted."""
    return dataclasses.replace(EtcdArbiter(reachable=True, highest_epoch=5), **changes)


def held(host: str, epoch: int = 5, expires_in: float = 4.0, **changes: Any) -> EtcdArbiter:
    """etcd as seen by ``host``, which holds the lease at ``epoch``."""
    return etcd(held=True, expires_at=NOW + expires_in, holder=host, holder_epoch=epoch,
                highest_epoch=max(epoch, 5), **changes)


def dead_alpha(**changes: Any) -> HaView:
    """beta, alpha silent for 12 s (timeout 10 s), no checks configured."""
    return standby(peers=(heard("alpha", ago=12.0),), **changes)


PROMOTE_6 = (RaiseEpoch(6, "beta"), Promote(6), StartWorkload(), Redirect(6, "beta"))
HOST_DEAD = Alert(AlertCode.HOST_DEAD, "alpha is dead (no heartbeat for 12.0 s)")


def waiting(reason: str) -> Alert:
    return Alert(AlertCode.FAILOVER_WAITING_FOR_OPERATOR, f"alpha is dead (no heartbeat for "
                 f"12.0 s); not failing over: {reason}. Run `standby failover files` to promote "
                 "beta")


def refused(message: str) -> Alert:
    return Alert(AlertCode.REQUEST_REFUSED, message)


CONFLICT = ("epoch 5 is claimed for different active hosts: alpha (this host), beta (peer beta)")
CONFLICT_ALERT = Alert(AlertCode.EPOCH_CONFLICT, f"{CONFLICT}. Make sure the workload runs on one "
                       "host at most, then run `standby failover files` on the host that should "
                       "be active")
RETURNING = ("this host is stored as active at epoch 5, but no peer or arbiter has confirmed the "
             "current epoch since the engine started")
RETURNING_ALERT = Alert(AlertCode.WAITING_FOR_EPOCH, f"{RETURNING}. Bring a peer or the arbiter "
                        "back; if the other hosts are lost for good, run `standby failover files` "
                        "here")
FOLLOWING = "standby following alpha at epoch 5"
HANDOVER_6 = (StopWorkload(), DrainReplication("beta"), RaiseEpoch(6, "beta"), Redirect(6, "beta"),
              Demote(6, "beta"))

# (view, config, expected actions, expected reason), one per rule and branch.
CASES = {
    # Rule 1: two hosts claim the same epoch.
    "conflict-stops-the-workload": (
        active(peers=(heard("beta", epoch=5, active="beta"),)), CFG,
        (StopWorkload(), CONFLICT_ALERT),
        f"{CONFLICT}: keeping the workload stopped"),
    "conflict-with-workload-stopped": (
        active(peers=(heard("beta", epoch=5, active="beta"),), workload="stopped"), CFG,
        (CONFLICT_ALERT,),
        f"{CONFLICT}: keeping the workload stopped"),
    "conflict-resolved-by-the-operator": (
        active(peers=(heard("beta", epoch=5, active="beta"),), request=failover()), CFG,
        (RaiseEpoch(6, "alpha"), Promote(6), StartWorkload(), Redirect(6, "alpha")),
        f"{CONFLICT}; failover requested by the operator: promoting this host at epoch 6"),
    "conflict-failover-waits-for-the-lease": (
        active(peers=(heard("beta", epoch=5, active="beta"),), request=failover(),
               arbiter=etcd()), ETCD,
        (StopWorkload(), AcquireLease(6)),
        f"{CONFLICT}; failover requested by the operator, waiting: this host does not hold the "
        "etcd lease (acquiring it at epoch 6)"),
    "conflict-failover-refused-without-witness": (
        active(peers=(heard("beta", epoch=5, active="beta"),), request=failover(),
               arbiter=witness(reachable=False, epoch=None, active=None)), WITNESS,
        (StopWorkload(), CONFLICT_ALERT, refused("failover refused: the witness is unreachable")),
        f"failover refused: the witness is unreachable; {CONFLICT}: keeping the workload "
        "stopped"),
    # Rule 2: a higher epoch names another host: stop and demote, first.
    "returning-master-learns-a-higher-epoch": (
        active(peers=(heard("beta", epoch=6, active="beta"),)), CFG,
        (StopWorkload(), Redirect(6, "beta"), Demote(6, "beta")),
        "peer beta reports epoch 6 with beta active (this host had epoch 5 with alpha active): "
        "stepping down to follow beta"),
    "higher-epoch-even-with-a-switchover-asked": (
        active(peers=(heard("beta", epoch=6, active="beta"),),
               request=OperatorRequest("switchover"), workload="stopped"), CFG,
        (Redirect(6, "beta"), Demote(6, "beta")),
        "peer beta reports epoch 6 with beta active (this host had epoch 5 with alpha active): "
        "stepping down to follow beta"),
    "standby-follows-a-new-active-host": (
        standby(peers=(heard("alpha", ago=30.0), heard("gamma", epoch=6, active="gamma"))), AUTO,
        (Redirect(6, "gamma"), Demote(6, "gamma")),
        "peer gamma reports epoch 6 with gamma active (this host had epoch 5 with alpha active): "
        "stepping down to follow gamma"),
    "etcd-names-a-higher-epoch-holder": (
        active(arbiter=etcd(holder="beta", holder_epoch=6, highest_epoch=6),
               peers=(heard("beta", ago=None),)), ETCD,
        (StopWorkload(), Redirect(6, "beta"), Demote(6, "beta")),
        "etcd reports epoch 6 with beta active (this host had epoch 5 with alpha active): "
        "stepping down to follow beta"),
    "step-down-releases-a-held-lease": (
        active(arbiter=held("alpha"), peers=(heard("beta", epoch=6, active="beta"),)), ETCD,
        (StopWorkload(), Redirect(6, "beta"), Demote(6, "beta"), ReleaseLease()),
        "peer beta reports epoch 6 with beta active (this host had epoch 5 with alpha active): "
        "stepping down to follow beta"),
    "the-witness-rules-a-tie": (
        active(arbiter=witness(active="beta")), WITNESS,
        (StopWorkload(), Redirect(5, "beta"), Demote(5, "beta")),
        "the witness reports epoch 5 with beta active (this host had epoch 5 with alpha active): "
        "stepping down to follow beta"),
    # Rule 3: a record above this host's names it active.
    "handover-promotes-with-reverse-replication": (
        standby(peers=(heard("alpha", epoch=6, active="beta"),)), CFG,
        (Promote(6), StartWorkload(), Redirect(6, "beta"), StartReverseReplication("alpha")),
        "peer alpha names this host active at epoch 6 (it had epoch 5 with alpha active): "
        "promoting"),
    "handover-without-reverse-replication": (
        standby(peers=(heard("alpha", epoch=6, active="beta"),)),
        dataclasses.replace(CFG, reverse_replication=False),
        (Promote(6), StartWorkload(), Redirect(6, "beta")),
        "peer alpha names this host active at epoch 6 (it had epoch 5 with alpha active): "
        "promoting"),
    "witness-record-promotes-without-reverse-replication": (
        standby(peers=(heard("alpha", ago=20.0),), arbiter=witness(epoch=6, active="beta")),
        WITNESS,
        (Promote(6), StartWorkload(), Redirect(6, "beta")),
        "the witness names this host active at epoch 6 (it had epoch 5 with alpha active): "
        "promoting"),
    "etcd-lease-won-promotes": (
        standby(peers=(heard("alpha", ago=20.0),), arbiter=held("beta", epoch=6)), ETCD,
        (RenewLease(), Promote(6), StartWorkload(), Redirect(6, "beta")),
        "etcd names this host active at epoch 6 (it had epoch 5 with alpha active): promoting"),
    "handover-acquires-the-lease-first": (
        standby(peers=(heard("alpha", epoch=6, active="beta"),), arbiter=etcd()), ETCD,
        (AcquireLease(6),),
        "peer alpha names this host active at epoch 6; waiting: this host does not hold the etcd "
        "lease (acquiring it at epoch 6)"),
    "handover-waits-while-the-lease-is-held": (
        standby(peers=(heard("alpha", epoch=6, active="beta"),),
                arbiter=etcd(holder="alpha", holder_epoch=5)), ETCD,
        (),
        "peer alpha names this host active at epoch 6; waiting: the etcd lease is held by alpha"),
    "handover-renews-an-expiring-lease": (
        standby(peers=(heard("alpha", epoch=6, active="beta"),),
                arbiter=held("beta", epoch=6, expires_in=0.5)), ETCD,
        (RenewLease(),),
        "etcd names this host active at epoch 6; waiting: the etcd lease is about to run out "
        "(before the next cycle) and has not been renewed"),
    "handover-releases-a-lease-at-another-epoch": (
        standby(peers=(heard("alpha", epoch=7, active="beta"),), arbiter=held("beta", epoch=6),
                workload="running"), ETCD,
        (StopWorkload(), ReleaseLease()),
        "peer alpha names this host active at epoch 7; waiting: this host holds the etcd lease at "
        "epoch 6, not 7 (releasing it)"),
    "handover-waits-for-etcd": (
        standby(peers=(heard("alpha", epoch=6, active="beta"),),
                arbiter=etcd(reachable=False)), ETCD,
        (),
        "peer alpha names this host active at epoch 6; waiting: etcd is unreachable and this "
        "host does not hold the lease"),
    # Rule 4: the active host without its arbiter's authority.
    "isolated-active-stops-its-workload": (
        active(peers=(heard("beta", ago=7.0),), arbiter=witness(reachable=False,
                                                                 last_contact=NOW - 6.5)),
        WITNESS,
        (StopWorkload(), Alert(AlertCode.ISOLATED, "active at epoch 5 without the arbiter's "
                               "authority: no contact with a standby or the witness for 6.5 s "
                               "(lease 5 s): stopping the workload of files, since this host may "
                               "be the isolated one")),
        "active at epoch 5 without the arbiter's authority: no contact with a standby or the "
        "witness for 6.5 s (lease 5 s): stopping the workload (this host may be the isolated "
        "one)"),
    "isolated-active-stops-before-the-lease-runs-out": (
        active(peers=(heard("beta", ago=4.5),), arbiter=witness(reachable=False,
                                                                 last_contact=NOW - 4.5),
               workload="stopped"),
        WITNESS,
        (),
        "active at epoch 5 without the arbiter's authority: no contact with a standby or the "
        "witness for 4.5 s (lease 5 s); the workload stays stopped"),
    "no-contact-since-start": (
        active(peers=(PeerStatus("beta"),), arbiter=witness(reachable=False, last_contact=None),
               workload="unknown"),
        WITNESS,
        (StopWorkload(), Alert(AlertCode.ISOLATED, "active at epoch 5 without the arbiter's "
                               "authority: no contact with a standby or the witness for 600.0 s "
                               "(lease 5 s): stopping the workload of files, since this host may "
                               "be the isolated one")),
        "active at epoch 5 without the arbiter's authority: no contact with a standby or the "
        "witness for 600.0 s (lease 5 s): stopping the workload (this host may be the isolated "
        "one)"),
    "a-just-started-engine-keeps-its-workload-for-a-lease": (
        active(peers=(PeerStatus("beta"),), arbiter=witness(reachable=False, last_contact=None,
                                                             epoch=None, active=None),
               monitoring_since=NOW - 1.0),
        WITNESS,
        (Alert(AlertCode.WAITING_FOR_EPOCH, "this host is stored as active at epoch 5, but no "
               "peer or arbiter has confirmed the current epoch since the engine started. Bring "
               "a peer or the arbiter back; if the other hosts are lost for good, run `standby "
               "failover files` here"),),
        "this host is stored as active at epoch 5, but no peer or arbiter has confirmed the "
        "current epoch since the engine started: not starting the workload until one does"),
    "replica-alone-keeps-the-active-host-serving": (
        active(arbiter=witness(reachable=False, last_contact=NOW - 60)), WITNESS,
        (),
        "active at epoch 5: workload running"),
    "lost-etcd-lease-stops-the-workload": (
        active(arbiter=held("alpha", expires_in=0.8)), ETCD,
        (RenewLease(), StopWorkload(), Alert(AlertCode.LEASE_LOST, "active at epoch 5 without "
                                             "the arbiter's authority: the etcd lease is about "
                                             "to run out (before the next cycle) and has not been "
                                             "renewed: stopping the workload of files, since "
                                             "this host may be the isolated one")),
        "active at epoch 5 without the arbiter's authority: the etcd lease is about to run out "
        "(before the next cycle) and has not been renewed: stopping the workload (this host may "
        "be the isolated one)"),
    "active-regains-a-free-lease-at-a-new-epoch": (
        active(arbiter=etcd(), workload="stopped"), ETCD,
        (AcquireLease(6),),
        "active at epoch 5 without the arbiter's authority: this host does not hold the etcd "
        "lease (acquiring it at epoch 6); nobody holds it, so the workload is left as it is"),
    "an-engine-restart-does-not-stop-the-workload-for-a-free-lease": (
        active(arbiter=etcd(), workload="running"), ETCD,
        (AcquireLease(6),),
        "active at epoch 5 without the arbiter's authority: this host does not hold the etcd "
        "lease (acquiring it at epoch 6); nobody holds it, so the workload is left as it is"),
    "stale-active-never-regains-on-its-own": (
        active(arbiter=etcd(highest_epoch=7), peers=(heard("beta", ago=None),),
               workload="stopped"), ETCD,
        (),
        "active at epoch 5 without the arbiter's authority: etcd has granted epoch 7 to another "
        "host since; the workload stays stopped"),
    "stale-active-regains-on-the-operators-word": (
        active(arbiter=etcd(highest_epoch=7), peers=(heard("beta", ago=None),),
               workload="stopped", request=failover()), ETCD,
        (AcquireLease(8),),
        "active at epoch 5 without the arbiter's authority: etcd has granted epoch 7 to another "
        "host since; failover requested by the operator, waiting: this host does not hold the "
        "etcd lease (acquiring it at epoch 8)"),
    "isolated-active-failover-refused": (
        active(peers=(PeerStatus("beta"),), request=failover(), workload="stopped",
               arbiter=witness(reachable=False, last_contact=None)), WITNESS,
        (refused("failover refused: the witness is unreachable"),),
        "failover refused: the witness is unreachable; active at epoch 5 without the arbiter's "
        "authority: no contact with a standby or the witness for 600.0 s (lease 5 s); the "
        "workload stays stopped"),
    # Rule 5: a returning active host stays passive until it learns the epoch.
    "returning-master-stays-passive": (
        active(peers=(PeerStatus("beta"),), workload="stopped"), CFG,
        (RETURNING_ALERT,),
        f"{RETURNING}: not starting the workload until one does"),
    "returning-master-started-by-the-operator": (
        active(peers=(PeerStatus("beta"),), workload="stopped", request=failover()), CFG,
        (RaiseEpoch(6, "alpha"), Promote(6), StartWorkload(), Redirect(6, "alpha")),
        f"{RETURNING}; failover requested by the operator: promoting this host at epoch 6"),
    "returning-master-refused-without-its-witness": (
        active(peers=(PeerStatus("beta"),), workload="stopped", request=failover(),
               arbiter=witness(reachable=False, last_contact=NOW - 1, epoch=None, active=None)),
        WITNESS,
        (RETURNING_ALERT, refused("failover refused: the witness is unreachable")),
        f"failover refused: the witness is unreachable; {RETURNING}: not starting the workload "
        "until one does"),
    # Rule 6: planned switchover and switchback from the active host.
    "switchover": (
        active(request=OperatorRequest("switchover"), replication=(stream(durable_seq=90),)),
        CFG,
        HANDOVER_6,
        "switchover to beta: stopping the workload, draining replication (10 changes to go), "
        "then handing over at epoch 6"),
    "switchover-in-etcd-mode-releases-the-lease": (
        active(request=OperatorRequest("switchover", "beta"), arbiter=held("alpha")), ETCD,
        (RenewLease(), *HANDOVER_6, ReleaseLease()),
        "switchover to beta: stopping the workload, draining replication (0 changes to go), "
        "then handing over at epoch 6"),
    "switchover-to-an-unknown-host": (
        active(request=OperatorRequest("switchover", "gamma")), CFG,
        (refused("switchover refused: files has no standby named 'gamma'"),),
        "switchover refused: files has no standby named 'gamma'; active at epoch 5: workload "
        "running"),
    "switchover-to-a-silent-host": (
        active(request=OperatorRequest("switchover"), peers=(heard("beta", ago=15.0),)), CFG,
        (Alert(AlertCode.REPLICA_UNREACHABLE, "beta has sent no heartbeat for 15.0 s: files has "
                                              "no standby there until it returns"),
         refused("switchover refused: beta is not reachable (no heartbeat for 15.0 s)")),
        "switchover refused: beta is not reachable (no heartbeat for 15.0 s); active at epoch 5: "
        "workload running; no heartbeat from beta for 15.0 s"),
    "switchover-to-an-inconsistent-replica": (
        active(request=OperatorRequest("switchover"), replication=(stream(consistent=False),)),
        CFG,
        (refused("switchover refused: beta is not a connected, consistent replica yet (let its "
                 "synchronization finish, or run `standby switchback files` to resynchronize it "
                 "first)"),),
        "switchover refused: beta is not a connected, consistent replica yet (let its "
        "synchronization finish, or run `standby switchback files` to resynchronize it first); "
        "active at epoch 5: workload running"),
    "switchback-resynchronizes-first": (
        active(request=OperatorRequest("switchback"), replication=()), CFG,
        (Resynchronize("beta"),),
        "switchback to beta: resynchronizing it from this host (differences only) before "
        "switching over; active at epoch 5: workload running"),
    "switchback-once-replication-runs": (
        active(request=OperatorRequest("switchback")), CFG,
        HANDOVER_6,
        "switchback to beta: stopping the workload, draining replication (0 changes to go), "
        "then handing over at epoch 6"),
    # Rule 7: the active host serves.
    "active-serves": (
        active(), CFG, (), "active at epoch 5: workload running"),
    "active-starts-its-stopped-workload": (
        active(workload="stopped"), CFG,
        (StartWorkload(), Redirect(5, "alpha")),
        "active at epoch 5: starting the workload"),
    "active-completes-an-interrupted-promotion": (
        active(oriented=False), CFG, (Promote(5),),
        "active at epoch 5: workload running; completing the promotion (the scenario still "
        "names another master here)"),
    "standby-completes-an-interrupted-step-down": (
        standby(oriented=False, workload="unknown"), CFG,
        (StopWorkload(), Redirect(5, "alpha"), Demote(5, "alpha")),
        "this host follows alpha at epoch 5 but still holds the scenario as its master: "
        "completing the step down"),
    "a-restarted-engine-keeps-only-what-was-left-of-its-lease": (
        active(peers=(PeerStatus("beta"),), arbiter=witness(reachable=False, last_contact=None,
                                                             epoch=None, active=None),
               monitoring_since=NOW - 1.0, carried_contact=NOW - 8.0),
        WITNESS,
        (StopWorkload(), Alert(AlertCode.ISOLATED, "active at epoch 5 without the arbiter's "
                               "authority: no contact with a standby or the witness for 8.0 s "
                               "(lease 5 s): stopping the workload of files, since this host may "
                               "be the isolated one")),
        "active at epoch 5 without the arbiter's authority: no contact with a standby or the "
        "witness for 8.0 s (lease 5 s): stopping the workload (this host may be the isolated "
        "one)"),
    "automatic-failover-waits-for-a-resynchronization": (
        dead_alpha(replication=(stream(synchronizing=True),)), AUTO,
        (HOST_DEAD, waiting("alpha was still resynchronizing this replica when it was last "
                            "heard (its changes since then wait on it)")),
        "alpha is dead (no heartbeat for 12.0 s); not failing over: alpha was still "
        "resynchronizing this replica when it was last heard (its changes since then wait on "
        "it)"),
    "active-redirects-again-after-a-failed-redirection": (
        active(redirected=False), CFG, (Redirect(5, "alpha"),),
        "active at epoch 5: workload running; the clients are not redirected here yet: "
        "redirecting them"),
    "active-does-not-restart-an-unknown-workload": (
        active(workload="unknown"), CFG, (),
        "active at epoch 5: workload state unknown, not starting it"),
    "active-renews-its-lease": (
        active(arbiter=held("alpha")), ETCD, (RenewLease(),),
        "active at epoch 5: workload running"),
    "active-with-a-silent-standby": (
        active(peers=(heard("beta", ago=10.0),)), CFG,
        (Alert(AlertCode.REPLICA_UNREACHABLE, "beta has sent no heartbeat for 10.0 s: files has "
                                              "no standby there until it returns"),),
        "active at epoch 5: workload running; no heartbeat from beta for 10.0 s"),
    "active-resynchronizes-a-standby-that-came-back": (
        active(replication=(), replicating=True), CFG, (Resynchronize("beta"),),
        "active at epoch 5: workload running; beta follows without a stream: resynchronizing "
        "it (differences only), then replicating to it"),
    "active-leaves-a-stopped-scenario-alone": (
        active(replication=(), replicating=False), CFG, (),
        "active at epoch 5: workload running"),
    "active-without-reverse-replication-leaves-it-alone": (
        active(replication=(), replicating=True), HaConfig(reverse_replication=False), (),
        "active at epoch 5: workload running"),
    "active-waits-for-a-standby-to-follow-its-epoch": (
        active(replication=(), replicating=True, peers=(heard("beta", epoch=4),)), CFG, (),
        "active at epoch 5: workload running"),
    "switchback-resynchronizes-once": (
        active(request=OperatorRequest("switchback"), replication=(), replicating=True), CFG,
        (Resynchronize("beta"),),
        "switchback to beta: resynchronizing it from this host (differences only) before "
        "switching over; active at epoch 5: workload running; beta follows without a stream: "
        "resynchronizing it (differences only), then replicating to it"),
    "failover-asked-of-the-active-host": (
        active(request=failover()), CFG,
        (refused("failover refused: this host is already the active host"),),
        "failover refused: this host is already the active host; active at epoch 5: workload "
        "running"),
    # Rule 8: the operator asks a standby to take over.
    "failover-while-the-active-host-is-heard": (
        standby(request=failover(), workload="unknown"), CFG,
        (StopWorkload(), refused("failover refused: alpha sent a heartbeat 0.5 s ago (use "
                                 "`standby switchover files` to move the workload from a live "
                                 "host)")),
        "failover refused: alpha sent a heartbeat 0.5 s ago (use `standby switchover files` to "
        f"move the workload from a live host); {FOLLOWING}"),
    "failover-of-an-inconsistent-replica": (
        dead_alpha(request=failover(), replication=(stream(consistent=False),)), CFG,
        (refused("failover refused: this replica is not a consistent copy (its synchronization "
                 "has not completed)"),),
        "failover refused: this replica is not a consistent copy (its synchronization has not "
        f"completed); {FOLLOWING}"),
    "failover-on-the-operators-word": (
        dead_alpha(request=failover(), replication=(stream(lag_seconds=40.0),)), CFG,
        PROMOTE_6,
        "alpha silent for 12.0 s; failover requested by the operator: promoting this host at "
        "epoch 6"),
    "failover-with-the-witness-consenting": (
        dead_alpha(request=failover(), arbiter=witness()), WITNESS,
        PROMOTE_6,
        "alpha silent for 12.0 s; failover requested by the operator: promoting this host at "
        "epoch 6"),
    "failover-refused-while-the-witness-sees-alpha": (
        dead_alpha(request=failover(), arbiter=witness(sees_master=True)), WITNESS,
        (refused("failover refused: the witness still sees alpha"),),
        f"failover refused: the witness still sees alpha; {FOLLOWING}"),
    "failover-acquires-the-lease": (
        dead_alpha(request=failover(), arbiter=etcd()), ETCD,
        (AcquireLease(6),),
        "alpha silent for 12.0 s; failover requested by the operator, waiting: this host does not "
        "hold the etcd lease (acquiring it at epoch 6)"),
    # Rule 9: the standby follows a live active host.
    "standby-follows": (
        standby(), CFG, (), f"{FOLLOWING} (last heartbeat 0.5 s ago)"),
    "standby-stops-a-stray-workload-and-lease": (
        standby(workload="running", arbiter=held("beta", epoch=4)), ETCD,
        (StopWorkload(), ReleaseLease()),
        f"{FOLLOWING} (last heartbeat 0.5 s ago)"),
    "standby-releases-a-lease-it-won-too-late": (
        standby(arbiter=held("beta", epoch=6),
                peers=(heard("alpha", epoch=7, active="alpha"),)), ETCD,
        (Redirect(7, "alpha"), Demote(7, "alpha"), ReleaseLease()),
        "peer alpha reports epoch 7 with alpha active (this host had epoch 5 with alpha active): "
        "stepping down to follow alpha"),
    "standby-ignores-a-switchover-request": (
        standby(request=OperatorRequest("switchover")), CFG, (),
        f"{FOLLOWING} (last heartbeat 0.5 s ago)"),
    "a-passing-check-keeps-alpha-alive": (
        dead_alpha(checks=(CheckState("tcp 10.0.0.10:5432", "tcp", "ok", NOW - 50),)), AUTO, (),
        f"{FOLLOWING}: no heartbeat for 12.0 s, but tcp 10.0.0.10:5432 is ok, so it is not "
        "declared dead"),
    "never-heard-alpha-since-start": (
        standby(peers=(PeerStatus("alpha"),), monitoring_since=NOW - 3), AUTO, (),
        f"{FOLLOWING} (last heartbeat 3.0 s ago)"),
    # Rule 10: the active host is dead.
    "dead-and-automatic-failover-off": (
        dead_alpha(checks=(CheckState("tcp 10.0.0.10:5432", "tcp", "failed", NOW - 20),
                           CheckState("script probe", "script", "timeout", NOW - 9))), CFG,
        (Alert(AlertCode.HOST_DEAD, "alpha is dead (no heartbeat for 12.0 s, tcp 10.0.0.10:5432 "
                                    "failed, script probe timed out)"),
         Alert(AlertCode.FAILOVER_WAITING_FOR_OPERATOR, "alpha is dead (no heartbeat for 12.0 s, "
               "tcp 10.0.0.10:5432 failed, script probe timed out); not failing over: automatic "
               "failover is off. Run `standby failover files` to promote beta")),
        "alpha is dead (no heartbeat for 12.0 s, tcp 10.0.0.10:5432 failed, script probe timed "
        "out); not failing over: automatic failover is off"),
    "automatic-failover-of-a-caught-up-replica": (
        dead_alpha(replication=(stream(lag_seconds=None),)), AUTO,
        (HOST_DEAD, *PROMOTE_6),
        "alpha is dead (no heartbeat for 12.0 s); failing over: promoting this host at epoch 6"),
    "automatic-failover-within-max-lag": (
        dead_alpha(replication=(stream(lag_seconds=4.0, durable_seq=90),)), AUTO,
        (HOST_DEAD, *PROMOTE_6),
        "alpha is dead (no heartbeat for 12.0 s); failing over: promoting this host at epoch 6"),
    "automatic-failover-waits-for-a-lagging-replica": (
        dead_alpha(replication=(stream(lag_seconds=40.0, durable_seq=90),)), AUTO,
        (HOST_DEAD, waiting("the replica was not caught up (10 changes not durable, lag 40.0 s; "
                            "max_lag 5 s)")),
        "alpha is dead (no heartbeat for 12.0 s); not failing over: the replica was not caught up "
        "(10 changes not durable, lag 40.0 s; max_lag 5 s)"),
    "automatic-failover-waits-when-the-lag-is-unknown": (
        dead_alpha(replication=(stream(lag_seconds=None, durable_seq=90),)), AUTO,
        (HOST_DEAD, waiting("the replica was not caught up (10 changes not durable, lag unknown; "
                            "max_lag 5 s)")),
        "alpha is dead (no heartbeat for 12.0 s); not failing over: the replica was not caught up "
        "(10 changes not durable, lag unknown; max_lag 5 s)"),
    "automatic-failover-needs-a-confirmed-epoch": (
        standby(peers=(PeerStatus("alpha"),)), AUTO,
        (Alert(AlertCode.HOST_DEAD, "alpha is dead (no heartbeat for 600.0 s)"),
         Alert(AlertCode.FAILOVER_WAITING_FOR_OPERATOR, "alpha is dead (no heartbeat for 600.0 "
               "s); not failing over: this host has not learned the current epoch from a peer or "
               "the arbiter since the engine started. Run `standby failover files` to promote "
               "beta")),
        "alpha is dead (no heartbeat for 600.0 s); not failing over: this host has not learned "
        "the current epoch from a peer or the arbiter since the engine started"),
    "automatic-failover-needs-a-consistent-replica": (
        dead_alpha(replication=()), AUTO,
        (HOST_DEAD, waiting("this replica is not a consistent copy (its synchronization has not "
                            "completed)")),
        "alpha is dead (no heartbeat for 12.0 s); not failing over: this replica is not a "
        "consistent copy (its synchronization has not completed)"),
    "automatic-failover-needs-a-running-scenario": (
        dead_alpha(protected=False), AUTO,
        (HOST_DEAD, waiting("the scenario was not running on alpha when it was last heard "
                            "(replication stopped)")),
        "alpha is dead (no heartbeat for 12.0 s); not failing over: the scenario was not running "
        "on alpha when it was last heard (replication stopped)"),
    "witness-consents-to-failover": (
        dead_alpha(arbiter=witness()), WITNESS,
        (HOST_DEAD, *PROMOTE_6),
        "alpha is dead (no heartbeat for 12.0 s); failing over: promoting this host at epoch 6"),
    "witness-consent-needs-a-caught-up-replica-too": (
        dead_alpha(arbiter=witness(), replication=(stream(lag_seconds=60.0, durable_seq=1),)),
        WITNESS,
        (HOST_DEAD, waiting("the replica was not caught up (99 changes not durable, lag 60.0 s; "
                            "max_lag 5 s)")),
        "alpha is dead (no heartbeat for 12.0 s); not failing over: the replica was not caught "
        "up (99 changes not durable, lag 60.0 s; max_lag 5 s)"),
    "witness-still-sees-alpha": (
        dead_alpha(arbiter=witness(sees_master=True)), WITNESS,
        (HOST_DEAD, waiting("the witness still sees alpha")),
        "alpha is dead (no heartbeat for 12.0 s); not failing over: the witness still sees "
        "alpha"),
    "witness-unreachable": (
        dead_alpha(arbiter=witness(reachable=False)), WITNESS,
        (HOST_DEAD, waiting("the witness is unreachable")),
        "alpha is dead (no heartbeat for 12.0 s); not failing over: the witness is unreachable"),
    "etcd-failover-acquires-the-lease": (
        dead_alpha(arbiter=etcd()), ETCD,
        (AcquireLease(6), HOST_DEAD),
        "alpha is dead (no heartbeat for 12.0 s); not failing over: this host does not hold the "
        "etcd lease (acquiring it at epoch 6)"),
    "etcd-failover-above-the-highest-grant": (
        dead_alpha(arbiter=etcd(highest_epoch=8)), ETCD,
        (AcquireLease(9), HOST_DEAD),
        "alpha is dead (no heartbeat for 12.0 s); not failing over: this host does not hold the "
        "etcd lease (acquiring it at epoch 9)"),
    "etcd-lease-still-held-by-alpha": (
        dead_alpha(arbiter=etcd(holder="alpha", holder_epoch=5), workload="unknown"), ETCD,
        (StopWorkload(), HOST_DEAD, waiting("the etcd lease is held by alpha")),
        "alpha is dead (no heartbeat for 12.0 s); not failing over: the etcd lease is held by "
        "alpha"),
}


@pytest.mark.parametrize(("view", "cfg", "actions", "reason"), CASES.values(), ids=CASES.keys())
def test_rule(view: HaView, cfg: HaConfig, actions: tuple[Action, ...], reason: str) -> None:
    """Each rule of the module docstring: the actions, in order, and the exact sentence."""
    assert Decision(actions, reason) == decide(view, NOW, cfg)


def test_the_arbiter_must_be_the_configured_one() -> None:
    """A view loaded with another arbiter than the scenario's is a controller bug."""
    with pytest.raises(ValueError, match="the view holds a peer arbiter, but the scenario uses "
                                         "etcd arbitration"):
        decide(standby(), NOW, ETCD)


def test_timeline_switchover_then_switchback() -> None:
    """Both hosts through a planned switchover: alpha hands over, beta promotes, then back."""
    alpha = active(request=OperatorRequest("switchover"))
    first = decide(alpha, NOW, CFG)
    assert first.actions[:3] == (StopWorkload(), DrainReplication("beta"), RaiseEpoch(6, "beta"))
    beta = standby(peers=(heard("alpha", epoch=6, active="beta"),))
    assert Promote(6) in decide(beta, NOW, CFG).actions
    alpha_after = active(epoch=6, active="beta", workload="stopped", request=None,
                         peers=(heard("beta", epoch=6, active="beta"),))
    after = decide(alpha_after, NOW, CFG)
    assert Decision((), "standby following beta at epoch 6 (last heartbeat 0.5 s ago)") == after
    beta_active = standby(epoch=6, active="beta", workload="running",
                          peers=(heard("alpha", epoch=6, active="beta"),),
                          replication=(stream("alpha"),), request=OperatorRequest("switchback"))
    back = decide(beta_active, NOW, CFG)
    assert back.actions[:3] == (StopWorkload(), DrainReplication("alpha"),
                                RaiseEpoch(7, "alpha"))


def test_config_maps_to_the_decision_settings() -> None:
    """HaConfig.from_options reads a validated [ha] table field for field."""
    scenario = parse_scenario('name = "f"\nmaster = "a"\nreplica = "b"\n[[roots]]\n'
                              'master = "/srv/a"\nreplica = "/srv/b"\n[ha]\ninterval = 0.5\n'
                              'timeout = 4\nauto_failover = true\nmax_lag = 2\n'
                              'arbitration = "etcd"\netcd_endpoints = ["http://e:2379"]\n'
                              'lease_seconds = 3\nreverse_replication = false\n')
    assert HaConfig(interval=0.5, timeout=4.0, auto_failover=True, arbitration="etcd",
                    max_lag=2.0, lease_seconds=3, reverse_replication=False) == \
        HaConfig.from_options(scenario.ha)
    assert HaConfig() == HaConfig.from_options(parse_scenario(
        'name = "f"\nmaster = "a"\nreplica = "b"\n[[roots]]\nmaster = "/a"\nreplica = "/b"\n').ha)


def test_view_helpers() -> None:
    """Roles come from the epoch records; lookups by name return None when unknown."""
    assert active().role == "active"
    assert standby().role == "standby"
    assert heard("beta").role == "standby"
    assert heard("alpha").role == "active"
    assert PeerStatus("beta").role is None
    assert standby().peer("gamma") is None
    assert standby().replication_of("gamma") is None
    assert stream(durable_seq=99).caught_up is False
    assert witness(epoch=None).record is None
    assert held("alpha").record == (5, "alpha")
    assert etcd().record is None


# -- invariants ------------------------------------------------------------------------------

HOSTS = ("alpha", "beta", "gamma")
# Strategies are built once: building them inside the composite costs more than deciding.
hosts = st.sampled_from(HOSTS)
times = st.none() | st.floats(NOW - 40, NOW)
epochs = st.integers(1, 4)
records = st.none() | st.tuples(epochs, hosts)
flags = st.booleans()
lags = st.none() | st.floats(0, 30)
seqs = st.integers(0, 5)
requests = st.none() | st.builds(OperatorRequest,
                                 st.sampled_from(["switchover", "failover", "switchback"]),
                                 st.none() | hosts)
modes: st.SearchStrategy[Arbitration] = st.sampled_from(["peer", "witness", "etcd"])
statuses: st.SearchStrategy[CheckStatus] = st.sampled_from(["ok", "failed", "timeout"])
workloads: st.SearchStrategy[WorkloadState] = st.sampled_from(["running", "stopped", "unknown"])
expiries = st.sampled_from([-1.0, 0.5, 1.5, 5.0])
grants = st.integers(0, 5)
starts = st.floats(NOW - 40, NOW)
counts = st.integers(0, 2)
intervals = st.sampled_from([0.5, 1.0, 2.0])
timeouts = st.sampled_from([5.0, 10.0, 30.0])
max_lags = st.sampled_from([0.0, 5.0, 60.0])
leases = st.sampled_from([3.0, 5.0, 20.0])


def arbiter(draw: st.DrawFn, mode: str, host: str) -> Arbiter:
    if mode == "peer":
        return PeerArbiter()
    epoch, chosen = draw(records) or (None, None)
    if mode == "witness":
        return WitnessArbiter(reachable=draw(flags), last_contact=draw(times),
                              sees_master=draw(flags), epoch=epoch, active=chosen)
    we_hold = chosen == host and draw(flags)
    return EtcdArbiter(reachable=draw(flags), held=we_hold,
                       expires_at=NOW + draw(expiries)
                       if we_hold else None,
                       holder=chosen, holder_epoch=epoch,
                       highest_epoch=max(epoch or 0, draw(grants)))


@st.composite
def situations(draw: st.DrawFn) -> tuple[HaView, HaConfig]:
    """A random view from one host, and settings with the matching arbitration."""
    mode = draw(modes)
    host = draw(hosts)
    peers = []
    for name in HOSTS:
        if name != host and draw(flags):
            epoch, chosen = draw(records) or (None, None)
            peers.append(PeerStatus(name, draw(times), epoch, chosen))
    checks = tuple(CheckState(f"check {index}", "tcp",
                              draw(statuses), NOW - 1)
                   for index in range(draw(counts)))
    replication = tuple(ReplicationState(name, draw(flags), draw(flags), draw(lags), draw(seqs),
                                         draw(seqs))
                        for name in HOSTS if draw(flags))
    view = HaView("files", host, draw(epochs), draw(hosts),
                  monitoring_since=draw(starts), peers=tuple(peers),
                  checks=checks, replication=replication, arbiter=arbiter(draw, mode, host),
                  workload=draw(workloads),
                  request=draw(requests))
    cfg = HaConfig(interval=draw(intervals), timeout=draw(timeouts), auto_failover=draw(flags),
                   arbitration=mode,
                   max_lag=draw(max_lags), lease_seconds=draw(leases),
                   reverse_replication=draw(flags))
    return view, cfg


def known(view: HaView) -> list[tuple[int, str]]:
    """Every epoch record the view holds besides this host's own."""
    found = [(peer.epoch, peer.active) for peer in view.peers
             if peer.epoch is not None and peer.active is not None]
    if not isinstance(view.arbiter, PeerArbiter) and view.arbiter.record is not None:
        found.append(view.arbiter.record)
    return found


def highest(view: HaView) -> int:
    granted = view.arbiter.highest_epoch if isinstance(view.arbiter, EtcdArbiter) else 0
    return max([view.epoch, granted, *(epoch for epoch, _ in known(view))])


def of(decision: Decision, kind: type[Any]) -> list[Any]:
    return [action for action in decision.actions if isinstance(action, kind)]


@settings(max_examples=1000)
@given(situations())
def test_invariants(situation: tuple[HaView, HaConfig]) -> None:
    """Whatever the view: one role change at most, a workload only at the highest epoch, a
    higher epoch always obeyed, the arbiter always asked, and always a reason."""
    view, cfg = situation
    decision = decide(view, NOW, cfg)
    promote, demote = of(decision, Promote), of(decision, Demote)
    top = highest(view)

    assert not (promote and demote), decision
    assert len(promote) <= 1
    assert not (of(decision, StartWorkload) and of(decision, StopWorkload)), decision
    assert decision.reason.strip()
    assert all(alert.message.strip() for alert in of(decision, Alert))

    if of(decision, StartWorkload):
        if promote:
            assert promote[0].epoch >= top
        else:
            assert view.role == "active"
            assert view.epoch == top
            assert all(epoch < top or chosen == view.host for epoch, chosen in known(view))

    for raised in of(decision, RaiseEpoch):
        assert raised.epoch > top
    for acquire in of(decision, AcquireLease):
        assert isinstance(view.arbiter, EtcdArbiter)
        assert acquire.epoch > view.arbiter.highest_epoch
        assert acquire.epoch >= top

    above = [(epoch, chosen) for epoch, chosen in known(view) if epoch == top > view.epoch]
    if above and {chosen for _, chosen in above} == {above[0][1]} != {view.host}:
        # a higher epoch names one other host (and the arbiter does not rule otherwise)
        assert demote == [Demote(top, above[0][1])], decision
        assert view.workload == "stopped" or of(decision, StopWorkload)

    if promote and (promote[0].epoch, view.host) not in known(view):
        # not taking over a record that names this host: the arbiter consented
        match view.arbiter:
            case WitnessArbiter() as witness:
                assert witness.reachable
                assert not witness.sees_master
            case EtcdArbiter():
                raise AssertionError(f"etcd promotes only once its record names this host: "
                                     f"{decision}")
        assert view.request is not None or cfg.auto_failover
    if promote and isinstance(view.arbiter, EtcdArbiter):
        lease = view.arbiter
        assert lease.held
        assert lease.holder_epoch == promote[0].epoch
        assert lease.expires_at is not None
        assert lease.expires_at > NOW + cfg.interval

    if view.role == "active" and view.request is None and not known(view) and (
            isinstance(view.arbiter, PeerArbiter) or not view.arbiter.reachable):
        # a returning active host that has heard nobody never starts its workload
        assert not of(decision, StartWorkload)
    assert decide(view, NOW, cfg) == decision
