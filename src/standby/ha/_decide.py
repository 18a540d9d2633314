"""The HA decision: one pure function from a view of the scenario to actions and a reason.

``decide(view, now, cfg)`` reads no clock, socket or file: the controller loads the
:class:`~standby.ha._model.HaView`, calls it once per cycle, logs the reason and runs the
actions in order (see the execution contract in :mod:`standby.ha._actions`).

Vocabulary. An *epoch record* (epoch, active host) is kept by this host, carried by every
peer's heartbeat, and kept by the witness or by etcd (the lease holder and its epoch). The *top*
is the highest epoch among them. When the arbiter's record is at the top it names the active
host; otherwise every record at the top must name the same host, or there is a *conflict*.
This host is *confirmed* once a peer or the arbiter has told it an epoch, or the arbiter has
answered, since the engine started. The active host is *silent* after ``timeout`` seconds
without a heartbeat (counted from ``monitoring_since`` before the first one), and *dead* when it
is silent and no extra check is ok. A *new epoch* is one above every epoch known (etcd's highest
grant included). The *arbiter consents* to this host becoming active at an epoch:

============  ====================================================================================
arbitration   consent
============  ====================================================================================
peer          always (the operator's word)
witness       the witness answered this cycle and does not see the active host
etcd          this host holds the lease at that epoch until after the next cycle. Otherwise,
              when the lease is free, AcquireLease(epoch) now and promote next cycle (rule 3)
============  ====================================================================================

Rules, first match wins (``e`` is this host's epoch; "stop" means StopWorkload unless the
workload is known stopped; "promote at N" means RaiseEpoch(N, this host), Promote(N),
StartWorkload, Redirect(N); "operator failover" means promote at a new epoch if the arbiter
consents, else wait for it or refuse with Alert REQUEST_REFUSED):

===  ==========================================  ==================================================
 #   when                                        then
===  ==========================================  ==================================================
 1   records at the top disagree (conflict)      stop; Alert EPOCH_CONFLICT. A failover request:
                                                 operator failover
 2   the top record is not this host's and       stop, Redirect(top, X) to release what this
     names another host X                        host held, Demote(top, X), ReleaseLease if
                                                 held: always, first
2b   a standby whose stored scenario still       stop, Redirect (release), Demote(e, active),
     names it master (a demotion cut short)      ReleaseLease if held
 3   the top record is not this host's and       Promote(top), StartWorkload, Redirect; and
     names this host (a handover, or a won       StartReverseReplication to the previous active
     etcd lease)                                 host when it handed over itself and
                                                 ``reverse_replication``. etcd: only with the lease
                                                 at the top epoch
 4   active without the arbiter's authority      stop; Alert ISOLATED / LEASE_LOST while the
     (witness: no heartbeat nor witness          workload was not known stopped (this host may be
     answer for ``lease_seconds``, counted from  the isolated one); keep trying for the lease,
     the last contact before the engine          unless etcd granted a higher epoch. A lease that
     started, else its start; etcd: no lease at  nobody holds is acquired without stopping. A
     ``e`` until after the next cycle)           failover request: operator failover
 5   active, not confirmed (a returning host)    stay passive, never StartWorkload; Alert
                                                 WAITING_FOR_EPOCH. A failover request: operator
                                                 failover
 6   active, switchover/switchback requested     the target must be heard. When the stream to it
                                                 is connected and consistent: StopWorkload,
                                                 DrainReplication, RaiseEpoch(e+1, target),
                                                 Redirect (release), Demote, ReleaseLease.
                                                 Otherwise a switchback Resynchronizes the target
                                                 first and a switchover is refused
 7   active                                      RenewLease (etcd); StartWorkload + Redirect when
                                                 the workload is stopped, Redirect again while
                                                 the last one did not complete; Alert
                                                 REPLICA_UNREACHABLE per silent standby;
                                                 Promote(e) first when the stored scenario still
                                                 names another master;
                                                 Resynchronize a standby that follows this epoch
                                                 without a stream, when the scenario is started
                                                 here and ``reverse_replication``; a failover
                                                 request is refused
 8   standby, failover requested                 refused while the active host is heard or when
                                                 this replica is not a consistent copy; otherwise
                                                 operator failover
 9   standby, active host not dead               follow it: stop, ReleaseLease if held
10   standby, active host dead                   Alert HOST_DEAD. Automatic failover needs
                                                 ``auto_failover``, a confirmed host, a consistent
                                                 replica that was caught up (durable up to the
                                                 master's last sequence, or lag <= ``max_lag``)
                                                 and not being resynchronized,
                                                 a scenario that was running on the active host
                                                 and the arbiter's consent: promote at a
                                                 new epoch. Otherwise Alert
                                                 FAILOVER_WAITING_FOR_OPERATOR (not while an etcd
                                                 lease is being won)
===  ==========================================  ==================================================

Requests concern one host each: switchover and switchback the active host, failover a standby
(or a host stuck by rules 1, 4 and 5). Elsewhere they are ignored or refused.

Invariants (tested with Hypothesis in tests/ha/test_decide.py): never both Promote and Demote;
StartWorkload only when this host is, or is being promoted, active at the highest epoch it
knows; a higher epoch naming another host always demotes and stops the workload; no promotion
without the arbiter's consent in witness and etcd modes; RaiseEpoch and AcquireLease are always
above every epoch known; the reason is never empty.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._actions import (
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
from ._model import (
    EtcdArbiter,
    HaConfig,
    HaView,
    PeerArbiter,
    PeerStatus,
    ReplicationState,
    RequestKind,
)

__all__ = ["Decision", "decide"]

_ARBITER_NAME = {"witness": "the witness", "etcd": "etcd"}
_AUTHORITY_LOST = {"witness": AlertCode.ISOLATED, "etcd": AlertCode.LEASE_LOST}
_WORKLOAD_NOTE = {"stopped": "starting the workload", "running": "workload running",
                  "unknown": "workload state unknown, not starting it"}
_CHECK_NOTE = {"ok": "ok", "failed": "failed", "timeout": "timed out"}


def decide(view: HaView, now: float, cfg: HaConfig) -> Decision:
    """Decide this cycle's actions for one scenario on this host (rules: module docstring).

    Args:
        view: what the controller loaded at the start of the cycle.
        now: the engine's monotonic clock, the clock of every time in ``view``.
        cfg: the scenario's HA settings.

    Returns:
        The actions to run in order, and one sentence saying why.

    Raises:
        ValueError: when the view's arbiter is not the configured arbitration (a controller
            bug: consent would be judged by the wrong rules).
    """
    if view.arbiter.mode != cfg.arbitration:
        raise ValueError(f"the view holds a {view.arbiter.mode} arbiter, but the scenario uses "
                         f"{cfg.arbitration} arbitration")
    top = _top(view)
    if top.conflict:
        return _conflict(view, now, cfg, top)
    if (top.epoch, top.active) != (view.epoch, view.active):
        if top.active == view.host:
            return _take_over(view, now, cfg, top)
        return _step_down(view, top)
    if view.role == "standby" and not view.oriented:
        return _finish_step_down(view)
    if view.role == "active":
        return _as_active(view, now, cfg)
    return _as_standby(view, now, cfg)


# -- epoch records ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Record:
    epoch: int
    active: str
    source: str  # "this host", "peer beta", "the witness", "etcd"
    arbiter: bool = False


@dataclass(frozen=True, slots=True)
class _Top:
    epoch: int
    active: str  # "" in a conflict
    source: str
    claims: tuple[_Record, ...]  # every record at this epoch
    conflict: bool = False


def _records(view: HaView) -> list[_Record]:
    """Every epoch record this host knows: its own, the peers', the arbiter's."""
    records = [_Record(view.epoch, view.active, "this host")]
    records += [_Record(peer.epoch, peer.active, f"peer {peer.name}") for peer in view.peers
                if peer.epoch is not None and peer.active is not None]
    arbiter = view.arbiter
    if not isinstance(arbiter, PeerArbiter) and arbiter.record is not None:
        epoch, active = arbiter.record
        records.append(_Record(epoch, active, _ARBITER_NAME[arbiter.mode], arbiter=True))
    return records


def _top(view: HaView) -> _Top:
    """The highest epoch known and who is active at it; the arbiter's record wins a tie."""
    records = _records(view)
    epoch = max(record.epoch for record in records)
    claims = tuple(record for record in records if record.epoch == epoch)
    ruling = [record for record in claims if record.arbiter] or list(claims)
    if len({record.active for record in ruling}) > 1:
        return _Top(epoch, "", "", claims, conflict=True)
    return _Top(epoch, ruling[-1].active, ruling[-1].source, claims)


def _new_epoch(view: HaView, top: int) -> int:
    """An epoch above every epoch known, etcd's highest grant included."""
    granted = view.arbiter.highest_epoch if isinstance(view.arbiter, EtcdArbiter) else 0
    return max(top, granted) + 1


def _confirmed(view: HaView) -> bool:
    """A peer or the arbiter has told this host an epoch, or the arbiter answered."""
    if any(peer.epoch is not None for peer in view.peers):
        return True
    arbiter = view.arbiter
    return not isinstance(arbiter, PeerArbiter) and (arbiter.reachable
                                                     or arbiter.record is not None)


# -- small helpers ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Verdict:
    """An arbiter's answer: ``refusal`` is None when it consents. ``pending``: refused for now,
    but ``actions`` (on an etcd lease) may win it by the next cycle."""

    actions: tuple[Action, ...] = ()
    refusal: str | None = None
    pending: bool = False
    acquiring: bool = False  # pending only because nobody holds the lease yet: no danger


def _stop(view: HaView) -> tuple[Action, ...]:
    return () if view.workload == "stopped" else (StopWorkload(),)


def _release(view: HaView) -> tuple[Action, ...]:
    held = isinstance(view.arbiter, EtcdArbiter) and view.arbiter.held
    return (ReleaseLease(),) if held else ()


def _asked(view: HaView, kind: RequestKind) -> bool:
    return view.request is not None and view.request.kind == kind


def _silence(view: HaView, peer: PeerStatus | None, now: float) -> float:
    """Seconds since ``peer``'s last heartbeat (or since monitoring began, before the first)."""
    heard = peer.last_heartbeat if peer is not None else None
    return now - (view.monitoring_since if heard is None else heard)


def _checks_text(view: HaView) -> str:
    return "".join(f", {check.name} {_CHECK_NOTE[check.status]}" for check in view.checks)


def _lag_text(state: ReplicationState) -> str:
    lag = "unknown" if state.lag_seconds is None else f"{state.lag_seconds:.1f} s"
    return f"{max(0, state.master_seq - state.durable_seq)} changes not durable, lag {lag}"


def _consistent(view: HaView) -> bool:
    state = view.replication_of(view.host)
    return state is not None and state.consistent


def _refused(message: str, base: Decision) -> Decision:
    """``base`` (what the host does anyway), plus the refusal of an operator's request."""
    return Decision((*base.actions, Alert(AlertCode.REQUEST_REFUSED, message)),
                    f"{message}; {base.reason}")


# -- consent ---------------------------------------------------------------------------------


def _lease(view: HaView, arbiter: EtcdArbiter, now: float, cfg: HaConfig, epoch: int) -> _Verdict:
    """etcd's consent to this host being active at ``epoch``: the lease, held at that epoch
    until after the next cycle, or what to do to get it."""
    if arbiter.held and arbiter.holder_epoch == epoch >= arbiter.highest_epoch:
        if arbiter.expires_at is not None and now + cfg.interval < arbiter.expires_at:
            return _Verdict((RenewLease(),))
        return _Verdict((RenewLease(),), "the etcd lease is about to run out (before the next "
                        "cycle) and has not been renewed", pending=True)
    if arbiter.held:
        return _Verdict((ReleaseLease(),), f"this host holds the etcd lease at epoch "
                        f"{arbiter.holder_epoch}, not {epoch} (releasing it)", pending=True)
    if not arbiter.reachable:
        return _Verdict(refusal="etcd is unreachable and this host does not hold the lease")
    if arbiter.holder is not None and arbiter.holder != view.host:
        return _Verdict(refusal=f"the etcd lease is held by {arbiter.holder}")
    wanted = max(epoch, arbiter.highest_epoch + 1)
    return _Verdict((AcquireLease(wanted),), f"this host does not hold the etcd lease "
                    f"(acquiring it at epoch {wanted})", pending=True, acquiring=True)


def _consent(view: HaView, now: float, cfg: HaConfig, epoch: int) -> _Verdict:
    """Whether the arbiter lets this host become active at ``epoch`` (module docstring)."""
    arbiter = view.arbiter
    if isinstance(arbiter, EtcdArbiter):
        return _lease(view, arbiter, now, cfg, epoch)
    if isinstance(arbiter, PeerArbiter):
        return _Verdict()
    if not arbiter.reachable:
        return _Verdict(refusal="the witness is unreachable")
    if arbiter.sees_master:
        return _Verdict(refusal=f"the witness still sees {view.active}")
    return _Verdict()


def _authority(view: HaView, now: float, cfg: HaConfig) -> _Verdict:
    """Whether the active host may keep its workload: its arbiter has not let it go."""
    arbiter = view.arbiter
    if isinstance(arbiter, PeerArbiter):
        return _Verdict()
    if isinstance(arbiter, EtcdArbiter):
        if arbiter.highest_epoch > view.epoch:
            return _Verdict(refusal=f"etcd has granted epoch {arbiter.highest_epoch} to another "
                                    "host since")
        return _lease(view, arbiter, now, cfg, view.epoch)
    # The start of monitoring counts as a contact: an engine that has just started has its
    # lease to hear from someone before it counts itself isolated (rule 5 keeps it passive).
    contacts = [view.monitoring_since if view.carried_contact is None else view.carried_contact]
    contacts += [peer.last_heartbeat for peer in view.peers if peer.last_heartbeat is not None]
    if arbiter.last_contact is not None:
        contacts.append(arbiter.last_contact)
    last = max(contacts)
    if now + cfg.interval < last + cfg.lease_seconds:
        return _Verdict()
    return _Verdict(refusal=f"no contact with a standby or the witness for {now - last:.1f} s "
                            f"(lease {cfg.lease_seconds:g} s)")


# -- rules -----------------------------------------------------------------------------------


def _promotion(view: HaView, epoch: int, first: tuple[Action, ...], reason: str) -> Decision:
    """Raise the epoch naming this host and become active (a failover)."""
    return Decision((*first, RaiseEpoch(epoch, view.host), Promote(epoch), StartWorkload(),
                     Redirect(epoch, view.host)), reason)


def _operator_failover(view: HaView, now: float, cfg: HaConfig, top: int, context: str,
                       base: Decision) -> Decision:
    """The operator asks this host to become active at a new epoch; the arbiter decides."""
    epoch = _new_epoch(view, top)
    verdict = _consent(view, now, cfg, epoch)
    if verdict.refusal is None:
        return _promotion(view, epoch, verdict.actions, f"{context}; failover requested by the "
                          f"operator: promoting this host at epoch {epoch}")
    if verdict.pending:
        return Decision((*_stop(view), *verdict.actions), f"{context}; failover requested by "
                        f"the operator, waiting: {verdict.refusal}")
    return _refused(f"failover refused: {verdict.refusal}", base)


def _conflict(view: HaView, now: float, cfg: HaConfig, top: _Top) -> Decision:
    """Rule 1: two hosts claim the same epoch; nobody runs the workload until it is settled."""
    claims = ", ".join(f"{record.active} ({record.source})" for record in top.claims)
    what = f"epoch {top.epoch} is claimed for different active hosts: {claims}"
    alert = Alert(AlertCode.EPOCH_CONFLICT, f"{what}. Make sure the workload runs on one host "
                  f"at most, then run `standby failover {view.scenario}` on the host that should "
                  "be active")
    stopped = Decision((*_stop(view), alert), f"{what}: keeping the workload stopped")
    if _asked(view, "failover"):
        return _operator_failover(view, now, cfg, top.epoch, what, stopped)
    return stopped


def _step_down(view: HaView, top: _Top) -> Decision:
    """Rule 2: a higher (or arbiter-ruled) epoch names another host: follow it, first."""
    # Release what this host holds (the service address) before the demotion, which takes a
    # moment (replication stops): the address must not stay on two hosts meanwhile.
    actions = (*_stop(view), Redirect(top.epoch, top.active), Demote(top.epoch, top.active),
               *_release(view))
    return Decision(actions, f"{top.source} reports epoch {top.epoch} with {top.active} active "
                             f"(this host had epoch {view.epoch} with {view.active} active): "
                             f"stepping down to follow {top.active}")


def _finish_step_down(view: HaView) -> Decision:
    """Rule 2b: this host's record names another host, but it still stores the scenario as
    its master (a demotion cut short: an engine stop, a failed release): complete it."""
    actions = (*_stop(view), Redirect(view.epoch, view.active), Demote(view.epoch, view.active),
               *_release(view))
    return Decision(actions, f"this host follows {view.active} at epoch {view.epoch} but still "
                             "holds the scenario as its master: completing the step down")


def _take_over(view: HaView, now: float, cfg: HaConfig, top: _Top) -> Decision:
    """Rule 3: a record above this host's names it active: promote (etcd: with the lease)."""
    named = f"{top.source} names this host active at epoch {top.epoch}"
    verdict = _Verdict()  # a handover: the host handing over (or the witness) has consented
    if isinstance(view.arbiter, EtcdArbiter):
        verdict = _lease(view, view.arbiter, now, cfg, top.epoch)
    if verdict.refusal is not None:
        return Decision((*_stop(view), *verdict.actions), f"{named}; waiting: {verdict.refusal}")
    actions: tuple[Action, ...] = (*verdict.actions, Promote(top.epoch), StartWorkload(),
                                   Redirect(top.epoch, view.host))
    previous = view.peer(view.active)
    handed_over = previous is not None and (previous.epoch, previous.active) == (top.epoch,
                                                                                 view.host)
    if handed_over and cfg.reverse_replication:
        actions += (StartReverseReplication(view.active),)
    return Decision(actions, f"{named} (it had epoch {view.epoch} with {view.active} active): "
                             "promoting")


def _as_active(view: HaView, now: float, cfg: HaConfig) -> Decision:
    """Rules 4 to 7: this host is the active one at the top epoch."""
    authority = _authority(view, now, cfg)
    if authority.refusal is not None:
        return _without_authority(view, now, cfg, authority)
    if not _confirmed(view):
        return _returning(view, now, cfg, authority.actions)
    request = view.request
    if request is None:
        return _serve(view, now, cfg, authority.actions)
    if request.kind == "failover":
        return _refused("failover refused: this host is already the active host",
                        _serve(view, now, cfg, authority.actions))
    return _hand_over(view, now, cfg, authority.actions, request.kind, request.target)


def _without_authority(view: HaView, now: float, cfg: HaConfig, authority: _Verdict) -> Decision:
    """Rule 4: the arbiter no longer backs this active host: its workload stops (not while
    it only acquires a lease nobody holds: nobody else can be active meanwhile)."""
    reason = f"active at epoch {view.epoch} without the arbiter's authority: {authority.refusal}"
    if authority.acquiring and not _asked(view, "failover"):
        return Decision(authority.actions, f"{reason}; nobody holds it, so the workload is "
                        "left as it is")
    if view.workload == "stopped":
        decision = Decision(authority.actions, f"{reason}; the workload stays stopped")
    else:
        alert = Alert(_AUTHORITY_LOST[view.arbiter.mode], f"{reason}: stopping the workload of "
                      f"{view.scenario}, since this host may be the isolated one")
        decision = Decision((*authority.actions, StopWorkload(), alert),
                            f"{reason}: stopping the workload (this host may be the isolated one)")
    if _asked(view, "failover"):
        return _operator_failover(view, now, cfg, view.epoch, reason, decision)
    return decision


def _returning(view: HaView, now: float, cfg: HaConfig, lease: tuple[Action, ...]) -> Decision:
    """Rule 5: stored as active, but nobody has told this host the current epoch yet."""
    note = f"this host is stored as active at epoch {view.epoch}, but no peer or arbiter has " \
           "confirmed the current epoch since the engine started"
    alert = Alert(AlertCode.WAITING_FOR_EPOCH, f"{note}. Bring a peer or the arbiter back; if "
                  f"the other hosts are lost for good, run `standby failover {view.scenario}` "
                  "here")
    passive = Decision((*lease, alert), f"{note}: not starting the workload until one does")
    if _asked(view, "failover"):
        return _operator_failover(view, now, cfg, view.epoch, note, passive)
    return passive


def _serve(view: HaView, now: float, cfg: HaConfig, lease: tuple[Action, ...]) -> Decision:
    """Rule 7: keep the workload running, say which standbys fell silent, and give a stream
    to a standby that follows without one (the old master back after a failover)."""
    actions = list(lease)
    reason = f"active at epoch {view.epoch}: {_WORKLOAD_NOTE[view.workload]}"
    if not view.oriented:
        actions.append(Promote(view.epoch))
        reason += "; completing the promotion (the scenario still names another master here)"
    if view.workload == "stopped":
        actions += [StartWorkload(), Redirect(view.epoch, view.host)]
    if view.workload == "running" and not view.redirected:
        actions.append(Redirect(view.epoch, view.host))
        reason += "; the clients are not redirected here yet: redirecting them"
    for peer in view.peers:
        silence = _silence(view, peer, now)
        if silence >= cfg.timeout:
            actions.append(Alert(AlertCode.REPLICA_UNREACHABLE, f"{peer.name} has sent no "
                                 f"heartbeat for {silence:.1f} s: {view.scenario} has no "
                                 "standby there until it returns"))
            reason += f"; no heartbeat from {peer.name} for {silence:.1f} s"
        elif (view.replicating and cfg.reverse_replication
              and (peer.epoch, peer.active) == (view.epoch, view.host)
              and view.replication_of(peer.name) is None):
            actions.append(Resynchronize(peer.name))
            reason += f"; {peer.name} follows without a stream: resynchronizing it " \
                      "(differences only), then replicating to it"
    return Decision(tuple(actions), reason)


def _hand_over(view: HaView, now: float, cfg: HaConfig, lease: tuple[Action, ...],
               kind: RequestKind, target: str | None) -> Decision:
    """Rule 6: a planned switchover (or switchback) from this active host to ``target``."""
    serving = _serve(view, now, cfg, lease)
    name = target or next((peer.name for peer in view.peers), "")
    peer = view.peer(name)
    if peer is None:
        return _refused(f"{kind} refused: {view.scenario} has no standby named {name!r}", serving)
    silence = _silence(view, peer, now)
    if silence >= cfg.timeout:
        return _refused(f"{kind} refused: {name} is not reachable (no heartbeat for "
                        f"{silence:.1f} s)", serving)
    state = view.replication_of(name)
    if state is None or not (state.connected and state.consistent):
        if kind == "switchback":
            resync = () if Resynchronize(name) in serving.actions else (Resynchronize(name),)
            return Decision((*serving.actions, *resync),
                            f"switchback to {name}: resynchronizing it from this host "
                            f"(differences only) before switching over; {serving.reason}")
        return _refused(f"switchover refused: {name} is not a connected, consistent replica "
                        f"yet (let its synchronization finish, or run `standby switchback "
                        f"{view.scenario}` to resynchronize it first)", serving)
    epoch = view.epoch + 1
    behind = max(0, state.master_seq - state.durable_seq)
    return Decision((*lease, StopWorkload(), DrainReplication(name), RaiseEpoch(epoch, name),
                     Redirect(epoch, name), Demote(epoch, name), *_release(view)),
                    f"{kind} to {name}: stopping the workload, draining replication ({behind} "
                    f"changes to go), then handing over at epoch {epoch}")


def _as_standby(view: HaView, now: float, cfg: HaConfig) -> Decision:
    """Rules 8 to 10: this host follows the active host at the top epoch."""
    silence = _silence(view, view.peer(view.active), now)
    following = f"standby following {view.active} at epoch {view.epoch}"
    idle = (*_stop(view), *_release(view))
    if _asked(view, "failover"):
        base = Decision(idle, following)
        if silence < cfg.timeout:
            return _refused(f"failover refused: {view.active} sent a heartbeat {silence:.1f} s "
                            f"ago (use `standby switchover {view.scenario}` to move the workload "
                            "from a live host)", base)
        if not _consistent(view):
            return _refused("failover refused: this replica is not a consistent copy (its "
                            "synchronization has not completed)", base)
        return _operator_failover(view, now, cfg, view.epoch,
                                  f"{view.active} silent for {silence:.1f} s", base)
    if silence < cfg.timeout:
        return Decision(idle, f"{following} (last heartbeat {silence:.1f} s ago)")
    alive = next((check for check in view.checks if check.status == "ok"), None)
    if alive is not None:
        return Decision(idle, f"{following}: no heartbeat for {silence:.1f} s, but "
                              f"{alive.name} is ok, so it is not declared dead")
    dead = f"{view.active} is dead (no heartbeat for {silence:.1f} s{_checks_text(view)})"
    host_dead = Alert(AlertCode.HOST_DEAD, dead)
    epoch = _new_epoch(view, view.epoch)
    verdict = _automatic(view, now, cfg, epoch)
    if verdict.refusal is None:
        return _promotion(view, epoch, (*verdict.actions, host_dead),
                          f"{dead}; failing over: promoting this host at epoch {epoch}")
    actions: tuple[Action, ...] = (*_stop(view), *verdict.actions, host_dead)
    if not verdict.pending:
        actions += (Alert(AlertCode.FAILOVER_WAITING_FOR_OPERATOR, f"{dead}; not failing over: "
                          f"{verdict.refusal}. Run `standby failover {view.scenario}` to promote "
                          f"{view.host}"),)
    return Decision(actions, f"{dead}; not failing over: {verdict.refusal}")


def _automatic(view: HaView, now: float, cfg: HaConfig, epoch: int) -> _Verdict:
    """Whether a standby may fail over on its own, the active host being dead."""
    if not cfg.auto_failover:
        return _Verdict(refusal="automatic failover is off")
    if not _confirmed(view):
        return _Verdict(refusal="this host has not learned the current epoch from a peer or "
                                "the arbiter since the engine started")
    state = view.replication_of(view.host)
    if state is None or not state.consistent:
        return _Verdict(refusal="this replica is not a consistent copy (its synchronization "
                                "has not completed)")
    if not view.protected:
        return _Verdict(refusal=f"the scenario was not running on {view.active} when it was "
                                "last heard (replication stopped)")
    if state.synchronizing:
        return _Verdict(refusal=f"{view.active} was still resynchronizing this replica when it "
                                "was last heard (its changes since then wait on it)")
    if not (state.caught_up or (state.lag_seconds is not None
                                and state.lag_seconds <= cfg.max_lag)):
        return _Verdict(refusal=f"the replica was not caught up ({_lag_text(state)}; max_lag "
                                f"{cfg.max_lag:g} s)")
    return _consent(view, now, cfg, epoch)
