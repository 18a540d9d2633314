"""The HA controller of one scenario on one host: a loop that loads an immutable view, calls
the pure :func:`standby.ha.decide`, and carries out the actions.

Each cycle (every ``interval`` seconds, sooner when a peer's epoch record changes):

1. load the view: this host's epoch record, what each other host last said (heartbeats,
   :class:`~standby.engine.ha_status.StatusBoard`), the Is Alive checks, the replication
   streams, the arbiter (the witness's last answer, or etcd asked now), the workload's state
   and the operator's pending request;
2. ``decide(view, now, cfg)``: actions and a reason sentence;
3. note it: the reason is logged when it changes, alerts become events when they first appear
   (not at every cycle while they stand), a refused request is answered;
4. run the actions in order; the first that fails ends the decision (an event says why), and
   the next cycle decides again from a fresh view.

Long actions (the workload's start and stop, a drain, redirections, a promotion) run one
decision at a time in a worker thread, so the loop goes on meanwhile: it keeps an etcd lease
renewed and the status current, and decides nothing new until the worker is done.

Threads: the loop, the worker, a monitor (Is Alive checks on a standby, and a probe of the
workload's state every few seconds), and one heartbeat thread per other host.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .. import config
from ..config import Scenario
from ..ha._actions import (
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
from ..ha._decide import decide
from ..ha._model import (
    Arbiter,
    CheckState,
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
from ..ha.checks import Check, IcmpCheck, ScriptCheck, TcpCheck, run_checks
from ..ha.redirect import DnsRedirect, IpRedirect, RedirectError, ScriptRedirect
from ..ha.redirect import Redirect as Redirection
from ..ha.workload import ScriptWorkload, ServiceWorkload, Workload, WorkloadContext, WorkloadError
from . import events as ev
from . import roles
from .heartbeat import HeartbeatLink, link_timeout
from .replication import DrainError
from .witness import ClaimRefused, claim_at_witness, sight_window

if TYPE_CHECKING:
    from ..ha.arbiter.etcd import EtcdArbiter as EtcdClient
    from .ha_manager import HaManager

log = logging.getLogger("standby.ha")


class HaActionError(Exception):
    """An action did not happen; the message says why."""


#: Seconds between probes of the workload's state (each probe runs its check command).
WORKLOAD_PROBE = 5.0
#: Actions that return at once (or within the etcd call budget): run in the loop itself.
_QUICK = (Alert, AcquireLease, RenewLease, ReleaseLease)

#: What actions raise when they fail for a reason the event explains (anything else is a bug,
#: logged with its traceback).
_EXPECTED = (HaActionError, roles.RoleError, OSError, WorkloadError, RedirectError, DrainError,
             ClaimRefused)

#: Each alert's event.
ALERT_EVENTS = {
    AlertCode.HOST_DEAD: ev.HOST_DEAD,
    AlertCode.REPLICA_UNREACHABLE: ev.REPLICA_UNREACHABLE,
    AlertCode.FAILOVER_WAITING_FOR_OPERATOR: ev.FAILOVER_WAITING,
    AlertCode.REQUEST_REFUSED: ev.REQUEST_REFUSED,
    AlertCode.ISOLATED: ev.ISOLATED,
    AlertCode.LEASE_LOST: ev.ISOLATED,
    AlertCode.WAITING_FOR_EPOCH: ev.WAITING_FOR_EPOCH,
    AlertCode.EPOCH_CONFLICT: ev.EPOCH_CONFLICT,
}


@dataclass
class _Request:
    """An operator's request and what became of it."""

    kind: str
    target: str | None
    record: tuple[int, str]  # the epoch record when it was made: done once it changes
    deadline: float | None
    state: str = "pending"  # pending, done, refused
    message: str = ""

    def public(self) -> dict[str, Any]:
        return {"kind": self.kind, "target": self.target, "state": self.state,
                "message": self.message}


class HaController:
    """High availability of one scenario on this host (see the module docstring)."""

    def __init__(self, manager: HaManager, scenario: Scenario) -> None:
        self.manager = manager
        self.engine = manager.engine
        self.name = scenario.name
        self.ha = scenario.ha
        self.cfg = HaConfig.from_options(scenario.ha)
        self.hosts = scenario.hosts
        self._switchable = not (scenario.replicas or scenario.cascade)
        self.signature = self.signature_of(scenario)
        me = self.engine.name
        self.peers = tuple(host for host in self.hosts if host != me)
        self.monitoring_since = time.monotonic()
        status = self._status_for_peers
        timeout = self.ha.timeout
        self._links = [HeartbeatLink(self.engine, self.name, peer, interval=self.ha.interval,
                                     timeout=timeout, status=status, board=manager.board)
                       for peer in (*self.peers, *([self.ha.witness] if self.ha.witness else []))]
        self._workload = build_workload(scenario)
        self.workload_state: WorkloadState = "unknown" if self._workload else "stopped"
        self._workload_generation = 0
        self._redirects = build_redirects(scenario)
        self._checks = build_checks(scenario)
        self._check_states: dict[str, CheckState] = {}
        self._checks_reported: set[str] = set()  # checks whose failure is an event
        self._etcd: EtcdClient | None = None
        if self.ha.arbitration == "etcd":
            from ..ha.arbiter.etcd import EtcdArbiter as EtcdClient

            self._etcd = EtcdClient(list(self.ha.etcd_endpoints), self.name, me,
                                    self.ha.lease_seconds,
                                    timeout=min(2.0, self.ha.lease_seconds / 2))
        self._lock = threading.Lock()
        self._request: _Request | None = None
        self._alerts: set[AlertCode] = set()
        self._silent: set[str] = set()  # hosts past the timeout, for the "heard again" event
        self._arbiter_reachable: bool | None = None
        self._failures: dict[str, str] = {}  # the last failure reported per action kind
        self.reason = "starting"
        self._view: HaView | None = None
        self._task: threading.Thread | None = None
        self._task_name = ""
        self._drained = False
        self._announced: str | None = None  # the shape of the last decision made an event
        self._preempted = False  # the running decision is to stop after its current action
        self._task_actions: tuple[Action, ...] = ()
        self._probed = threading.Event()  # the workload's state was probed once
        self._redirected = 0  # the epoch whose redirections all completed here
        self._first_probe_wait = scenario.ha.workload.check_timeout + 1 \
            if scenario.ha.workload is not None else 0.0
        self._carried_contact = self._load_contact()
        self._saved_contact = 0.0  # the last contact written to the store (monotonic)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._main, name=f"ha-{self.name}", daemon=True)
        self._monitor = threading.Thread(target=self._monitor_main,
                                         name=f"ha-monitor-{self.name}", daemon=True)

    def __repr__(self) -> str:
        return f"<HaController {self.name} on {self.engine.name}: {self.reason}>"

    @staticmethod
    def signature_of(scenario: Scenario) -> str:
        """What a controller depends on: the hosts and the [ha] settings (not the direction)."""
        return json.dumps([sorted(scenario.hosts), scenario.ha.model_dump(mode="json")],
                          sort_keys=True)

    # --- lifetime -------------------------------------------------------------------------------

    def start(self) -> None:
        for link in self._links:
            link.start()
        self._thread.start()
        self._monitor.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        for link in self._links:
            link.stop()
        for thread in (self._thread, self._monitor):
            if thread.is_alive() and thread is not threading.current_thread():
                thread.join(timeout=10)
        task = self._task
        if task is not None and task is not threading.current_thread():
            task.join(timeout=10)
        if self._etcd is not None:
            self._etcd.close()

    def kick(self) -> None:
        """Decide again now rather than at the next tick."""
        self._wake.set()

    def record_changed(self) -> None:
        for link in self._links:
            link.kick()
        self.kick()

    # --- the loop -------------------------------------------------------------------------------

    def _main(self) -> None:
        next_run = time.monotonic()
        while not self._stop.is_set():
            try:
                self._cycle(time.monotonic())
            except Exception:  # one catch-all: the loop must go on
                log.exception("scenario %s: HA cycle failed", self.name)
                self.reason = "unexpected error in the HA cycle, please report it as a bug"
            next_run += self.ha.interval
            nap = next_run - time.monotonic()
            if nap <= 0:
                next_run = time.monotonic()
                nap = 0.0
            if self._wake.wait(nap):
                self._wake.clear()
                next_run = time.monotonic()

    def _cycle(self, now: float) -> None:
        view = self._load_view(now)
        self._view = view
        self._note_hosts(view, now)
        self._save_contact(view, now)
        if self._busy():
            self._while_busy(view, now)
            return
        decision = decide(view, now, self.cfg)
        if self._workload is not None and not self._probed.is_set() and \
                now - self.monitoring_since < self._first_probe_wait and not _gives_up(decision):
            return  # learn first whether the workload runs here rather than act on "unknown"
        self._note(view, decision, now)
        actions = [action for action in decision.actions if not isinstance(action, Alert)]
        if not actions:
            return
        changes = [action for action in actions if not isinstance(action, RenewLease)]
        if not changes:
            self._announced = None
        elif _shape(decision.reason) != self._announced:  # once, not at every repeat
            self._announced = _shape(decision.reason)
            self.engine.emit(ev.DECISION, f"scenario {self.name}: {decision.reason}", self.name)
        if all(isinstance(action, _QUICK) for action in actions):
            self._run(view, actions)
            return
        if all(isinstance(action, Resynchronize) for action in actions) and \
                self.engine.runtime(self.name) is not None:
            self._run(view, actions)  # it runs already: a nudge, not a task
            return
        self._task_name = ", ".join(type(action).__name__ for action in actions)
        self._task_actions = tuple(actions)
        self._task = threading.Thread(target=self._run_task, args=(view, actions),
                                      name=f"ha-action-{self.name}", daemon=True)
        self._task.start()

    # --- the last contact, kept across engine restarts (witness mode) ---------------------------

    @property
    def _contact_key(self) -> str:
        return f"ha-contact:{self.name}"

    def _load_contact(self) -> float | None:
        """The last contact with a standby or the witness recorded before this start, on our
        monotonic clock (None: none recorded, or no lease to keep)."""
        if self.ha.arbitration != "witness":
            return None
        stored = self.engine.store.get_meta(self._contact_key)
        if stored is None:
            return None
        try:
            wall = float(stored)
        except ValueError:
            return None
        return time.monotonic() - max(0.0, time.time() - wall)

    def _save_contact(self, view: HaView, now: float) -> None:
        """Record the last contact (wall clock) every so often, so that a restarted engine
        keeps only what was left of its lease (see HaView.carried_contact)."""
        if self.ha.arbitration != "witness" or view.role != "active":
            return
        contacts = [peer.last_heartbeat for peer in view.peers if peer.last_heartbeat]
        if isinstance(view.arbiter, WitnessArbiter) and view.arbiter.last_contact is not None:
            contacts.append(view.arbiter.last_contact)
        last = max(contacts, default=0.0)
        if last - self._saved_contact >= max(self.ha.interval, self.ha.lease_seconds / 4):
            self._saved_contact = last
            self.engine.store.set_meta(self._contact_key, repr(time.time() - (now - last)))

    def _busy(self) -> bool:
        task = self._task
        return task is not None and task.is_alive()

    def _while_busy(self, view: HaView, now: float) -> None:
        """A long action runs: keep the etcd lease, and look whether this host must give up
        (a higher epoch names another host, the arbiter let it go): then the rest of the
        running decision is skipped, and the next cycle stops the workload."""
        if self._etcd is not None and isinstance(view.arbiter, EtcdArbiter) \
                and view.arbiter.held and not self._etcd.renew():
            self._preempt(f"the etcd lease could not be renewed during {self._task_name}")
            return
        decision = decide(view, now, self.cfg)
        if _gives_up(decision) and not any(isinstance(action, Demote)
                                           for action in self._task_actions):
            self._preempt(decision.reason)  # (a task that steps down itself goes on)

    def _preempt(self, reason: str) -> None:
        if not self._preempted:
            self._preempted = True
            log.warning("scenario %s: %s: the rest of %s is skipped", self.name, reason,
                        self._task_name)
        self.kick()

    def _run_task(self, view: HaView, actions: Sequence[Action]) -> None:
        changed = False
        try:
            changed = self._run(view, actions)
        finally:
            self._task_name = ""
            if changed:  # decide again now; after a decision that changed nothing, at the tick
                self.kick()

    def _run(self, view: HaView, actions: Sequence[Action]) -> bool:
        """Run actions in order; the first that fails ends the decision. Returns whether any
        action changed something (an action that found its work done returns False)."""
        self._drained = False  # set by a DrainReplication that succeeded in this decision
        self._preempted = False
        changed = False
        for action in actions:
            if self._stop.is_set() or self._preempted:
                return changed
            kind = type(action).__name__
            try:
                changed = self._do(view, action) is not False or changed
            except Exception as exc:  # every failure is reported; the next cycle decides
                if not isinstance(exc, _EXPECTED):
                    log.exception("scenario %s: %s failed", self.name, kind)
                message = f"scenario {self.name}: {_describe(action)} failed: {exc}"
                if self._failures.get(kind) != message:
                    self._failures[kind] = message
                    self.engine.emit(ev.HA_ACTION_FAILED, message, self.name)
                else:
                    log.info("%s", message)
                return changed
            self._failures.pop(kind, None)
        return changed

    # --- the view ---------------------------------------------------------------------------------

    def _load_view(self, now: float) -> HaView:
        engine = self.engine
        epoch, active = engine.epoch_record(self.name)
        board = self.manager.board
        peers = []
        for host in self.peers:
            heard = board.get(self.name, host)
            if heard is None:
                peers.append(PeerStatus(host))
            else:
                peers.append(PeerStatus(host, heard.at, heard.status.epoch, heard.status.active))
        role = "active" if active == engine.name else "standby"
        row = engine.store.scenario(self.name)
        replicating = row is not None and row.role == "master" and \
            row.state in ("running", "syncing")
        oriented = row is not None and row.document["master"] == active and \
            row.role == ("master" if role == "active" else "replica")
        return HaView(
            scenario=self.name, host=engine.name, epoch=epoch, active=active,
            monitoring_since=self.monitoring_since, peers=tuple(peers),
            checks=tuple(self._check_states.values()) if role == "standby" else (),
            replication=self._replication(role, active), arbiter=self._arbiter(active, now),
            workload=self.workload_state, request=self._operator_request((epoch, active)),
            protected=self._protected(role, active), replicating=replicating,
            redirected=not self._redirects or self._redirected == epoch, oriented=oriented,
            carried_contact=self._carried_contact)

    def _replication(self, role: str, active: str) -> tuple[ReplicationState, ...]:
        engine = self.engine
        board = self.manager.board
        if role == "active":
            runtime = engine.runtime(self.name)
            streams = getattr(runtime, "streams", None)
            if runtime is None or streams is None or not runtime.capturing:
                return ()
            status = runtime.status()
            replicating = status["phase"] in ("replicating", "degraded", "rescanning")
            states = []
            for replica, up, durable in streams():
                heard = board.get(self.name, replica)
                consistent = replicating and heard is not None and heard.status.consistent
                states.append(ReplicationState(replica, up, consistent, status["durable_lag_s"],
                                               durable, status["last_seq"],
                                               synchronizing=status["synchronizing"]))
            return tuple(states)
        row = engine.store.scenario(self.name)
        if row is None or row.role != "replica":
            return ()
        _, durable = engine.replica_target(self.name).positions()
        master = board.get(self.name, active)
        link = master.status.links.get(engine.name) if master is not None else None
        return (ReplicationState(
            engine.name, connected=link.connected if link is not None else False,
            consistent=row.consistent,
            lag_seconds=master.status.lag_s if master is not None else None,
            durable_seq=durable, master_seq=master.status.last_seq if master else durable,
            synchronizing=master.status.synchronizing if master is not None else False),)

    def _protected(self, role: str, active: str) -> bool:
        if role == "active":
            return True
        heard = self.manager.board.get(self.name, active)
        return heard is not None and heard.status.protecting

    def _arbiter(self, active: str, now: float) -> Arbiter:
        if self.ha.arbitration == "peer":
            return PeerArbiter()
        if self._etcd is not None:
            state = self._etcd.state(now)
            self._note_arbiter(state.reachable, f"etcd: {state.detail}")
            return EtcdArbiter(reachable=state.reachable, held=state.we_hold,
                               expires_at=state.expires_at, holder=state.holder,
                               holder_epoch=state.holder_epoch, highest_epoch=state.highest_epoch)
        heard = self.manager.board.get(self.name, self.ha.witness)
        if heard is None:
            self._note_arbiter(False, f"the witness {self.ha.witness} has not answered yet")
            return WitnessArbiter(reachable=False, last_contact=None, sees_master=False)
        reachable = now - heard.at <= link_timeout(self.ha.interval, self.ha.timeout) + \
            self.ha.interval
        self._note_arbiter(reachable, f"the witness {self.ha.witness} "
                           f"{'answers' if reachable else 'does not answer'}")
        age = heard.status.heard.get(active)
        sees = age is not None and age + (now - heard.at) < sight_window(self.ha)
        return WitnessArbiter(reachable=reachable, last_contact=heard.at, sees_master=sees,
                              epoch=heard.status.epoch, active=heard.status.active)

    # --- what happened: events ---------------------------------------------------------------------

    def _note(self, view: HaView, decision: Decision, now: float) -> None:
        if _shape(decision.reason) != _shape(self.reason):  # not each new "0.4 s ago"
            log.info("scenario %s: %s", self.name, decision.reason)
        self.reason = decision.reason
        alerts = {action.code: action for action in decision.actions
                  if isinstance(action, Alert)}
        for code, alert in alerts.items():
            if code is AlertCode.WAITING_FOR_EPOCH and \
                    now - self.monitoring_since < self.cfg.timeout:
                continue  # at start-up the first heartbeats are still on their way
            if code not in self._alerts:
                self.engine.emit(ALERT_EVENTS[code], f"scenario {self.name}: {alert.message}",
                                 self.name)
            self._alerts.add(code)
        self._alerts &= set(alerts)
        with self._lock:
            request = self._request
            if request is None or request.state != "pending":
                return
            refused = alerts.get(AlertCode.REQUEST_REFUSED)
            if refused is not None:
                request.state, request.message = "refused", refused.message

    def _note_hosts(self, view: HaView, now: float) -> None:
        for peer in view.peers:
            heard = peer.last_heartbeat
            silence = now - (view.monitoring_since if heard is None else heard)
            if silence >= self.cfg.timeout:
                self._silent.add(peer.name)
            elif peer.name in self._silent:
                self._silent.discard(peer.name)
                self.engine.emit(ev.HOST_HEARD, f"scenario {self.name}: {peer.name} is heard "
                                 f"again (epoch {peer.epoch}, {peer.active} active)", self.name)

    def _note_arbiter(self, reachable: bool, detail: str) -> None:
        """Events when the arbiter stops or starts answering; during the first ``timeout``
        seconds an arbiter not heard yet is not reported (its first answer is on its way)."""
        was = self._arbiter_reachable
        if reachable:
            if was is False:
                self.engine.emit(ev.ARBITER_REACHABLE, f"scenario {self.name}: {detail}",
                                 self.name)
            self._arbiter_reachable = True
        elif was is not False and \
                time.monotonic() - self.monitoring_since >= self.cfg.timeout:
            self.engine.emit(ev.ARBITER_UNREACHABLE, f"scenario {self.name}: {detail}",
                             self.name)
            self._arbiter_reachable = False

    # --- the operator ------------------------------------------------------------------------------

    def _operator_request(self, record: tuple[int, str]) -> OperatorRequest | None:
        """The pending request for decide(); one made before the epoch record changed is done
        (its promotion or handover happened) and is not shown to decide() again."""
        with self._lock:
            request = self._request
            if request is None or request.state != "pending":
                return None
            if record != request.record:
                request.state = "done"
                request.message = f"{record[1]} is active at epoch {record[0]}"
                return None
            if request.deadline is not None and time.monotonic() > request.deadline:
                request.state = "refused"
                request.message = f"{request.kind} not done within " \
                                  f"{self.ha.switchover_timeout:g} s: {self.reason}"
                self.engine.emit(ev.REQUEST_REFUSED, f"scenario {self.name}: "
                                 f"{request.message}", self.name)
                return None
            return OperatorRequest(request.kind, request.target)  # type: ignore[arg-type]

    def request(self, kind: str, target: str | None) -> dict[str, Any]:
        """Hand an operator's request to the next cycle (see Engine.ha_request)."""
        from .engine import EngineError

        if kind not in ("switchover", "failover", "switchback"):
            raise EngineError(400, f"unknown request {kind!r}")
        if not self._switchable:
            raise EngineError(409, f"scenario {self.name} has several replicas (replicas, "
                              f"cascade): a {kind} is not supported for it yet")
        epoch, active = self.engine.epoch_record(self.name)
        me = self.engine.name
        if kind != "failover" and active != me:
            raise EngineError(409, f"{me} is not the active host of {self.name} ({active} is, "
                              f"at epoch {epoch}): run `standby {kind} {self.name}` on {active}")
        if target is not None and target not in self.peers:
            raise EngineError(400, f"{target!r} is not another host of {self.name} (hosts: "
                              f"{', '.join(self.hosts)})")
        if kind == "failover" and target not in (None, me):
            raise EngineError(400, "a failover promotes the host it is run on: run it there")
        deadline = None if kind == "switchback" else \
            time.monotonic() + self.ha.switchover_timeout
        with self._lock:
            if self._request is not None and self._request.state == "pending":
                raise EngineError(409, f"a {self._request.kind} of {self.name} is already "
                                  "pending")
            self._request = _Request(kind, target, (epoch, active), deadline)
        self.engine.emit(ev.REQUEST_ACCEPTED, f"scenario {self.name}: {kind} requested on {me}"
                         + (f" (to {target})" if target else ""), self.name)
        self.kick()
        return self.status()

    def cancel(self) -> dict[str, Any]:
        """Withdraw the pending request. What its decision already did stays done (a workload
        stopped for a switchover is started again by the next cycle, on the active host)."""
        from .engine import EngineError

        with self._lock:
            request = self._request
            if request is None or request.state != "pending":
                raise EngineError(409, f"no switchover, failover or switchback of {self.name} "
                                  "is pending")
            request.state, request.message = "refused", "withdrawn by the operator"
        self.engine.emit(ev.REQUEST_REFUSED, f"scenario {self.name}: {request.kind} withdrawn "
                         "by the operator", self.name)
        self.kick()
        return self.status()

    # --- status ------------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        view = self._view
        now = time.monotonic()
        epoch, active = self.engine.epoch_record(self.name)
        me = self.engine.name
        board = self.manager.board
        hosts: dict[str, Any] = {}
        for host in (*self.peers, *([self.ha.witness] if self.ha.witness else [])):
            heard = board.get(self.name, host)
            hosts[host] = {"last_heard_s": None if heard is None else round(now - heard.at, 3)}
            if heard is not None:
                hosts[host].update(role=heard.status.role, epoch=heard.status.epoch,
                                   active=heard.status.active, workload=heard.status.workload)
        with self._lock:
            request = self._request.public() if self._request is not None else None
        state = self._state(active == me)
        return {"role": "active" if active == me else "standby", "epoch": epoch,
                "active": active, "state": state, "reason": self.reason,
                "workload": self.workload_state, "action": self._task_name or None,
                "redirected": active == me and (not self._redirects
                                                or self._redirected == epoch),
                "request": request, "arbitration": self.ha.arbitration,
                "auto_failover": self.ha.auto_failover, "hosts": hosts,
                "checks": [{"name": check.name, "status": check.status,
                            "since_s": round(now - check.since, 3)}
                           for check in (view.checks if view is not None else ())]}

    def _state(self, is_active: bool) -> str:
        if self._busy():
            return "acting"
        alerts = self._alerts
        if AlertCode.EPOCH_CONFLICT in alerts:
            return "conflict"
        if is_active:
            if alerts & {AlertCode.ISOLATED, AlertCode.LEASE_LOST}:
                return "isolated"
            if AlertCode.WAITING_FOR_EPOCH in alerts or self.reason.startswith("this host is "
                                                                               "stored as active"):
                return "waiting for the epoch"
            return {"running": "serving", "stopped": "stopped"}.get(self.workload_state,
                                                                      "active")
        return "active host dead" if AlertCode.HOST_DEAD in alerts else "following"

    def _status_for_peers(self) -> Any:
        scenario = self.manager.scenario(self.name)
        if scenario is None:
            raise ValueError(f"scenario {self.name} is gone")  # the link reports it, quietly
        return self.manager.local_status(scenario)

    # --- actions ------------------------------------------------------------------------------------

    def _do(self, view: HaView, action: Action) -> bool | None:
        """Carry out one action; False when there was nothing to do."""
        me = self.engine.name
        if isinstance(action, StartWorkload):
            self._start_workload()
        elif isinstance(action, StopWorkload):
            self._stop_workload()
        elif isinstance(action, RaiseEpoch):
            self._raise_epoch(view, action.epoch, action.active)
        elif isinstance(action, Promote):
            return roles.promote(self.engine, self.name, action.epoch)
        elif isinstance(action, Demote):
            return roles.demote(self.engine, self.name, action.epoch, action.active,
                                drained=self._drained)
        elif isinstance(action, Redirect):
            self._redirect(action.epoch, action.active)
        elif isinstance(action, DrainReplication):
            self._drain(action.replica)
        elif isinstance(action, StartReverseReplication | Resynchronize):
            return roles.replicate_to(self.engine, self.name, action.replica)
        elif isinstance(action, AcquireLease):
            assert self._etcd is not None
            if not self._etcd.try_acquire(me, action.epoch):
                raise HaActionError(f"etcd did not grant the lease at epoch {action.epoch}")
        elif isinstance(action, RenewLease):
            assert self._etcd is not None
            if not self._etcd.renew():
                raise HaActionError("etcd did not renew the lease")
        elif isinstance(action, ReleaseLease):
            assert self._etcd is not None
            self._etcd.release()
        return None

    def _context(self, role: str) -> WorkloadContext:
        epoch, active = self.engine.epoch_record(self.name)
        return WorkloadContext(self.name, role, epoch, active)

    def _start_workload(self) -> None:
        epoch, active = self.engine.epoch_record(self.name)
        if active != self.engine.name:  # never start below the current epoch
            raise HaActionError(f"this host's record names {active} active at epoch {epoch}")
        roles.promote(self.engine, self.name, epoch)  # completes an interrupted promotion
        self._workload_generation += 1
        if self._workload is not None:
            self._workload.start(self._context("master"))
            self.engine.emit(ev.WORKLOAD_STARTED, f"scenario {self.name}: "
                             f"{self._workload.describe()} started on {self.engine.name} "
                             f"(epoch {epoch})", self.name)
        self.workload_state = "running"

    def _stop_workload(self) -> None:
        self._workload_generation += 1
        if self._workload is not None:
            self._workload.stop(self._context("replica"))
            self.engine.emit(ev.WORKLOAD_STOPPED, f"scenario {self.name}: "
                             f"{self._workload.describe()} stopped on {self.engine.name}",
                             self.name)
        self.workload_state = "stopped"

    def _raise_epoch(self, view: HaView, epoch: int, active: str) -> None:
        me = self.engine.name
        if self.ha.arbitration == "witness":
            try:
                claim_at_witness(self.engine, self.name, self.ha.witness, epoch, active,
                                 failover=active == me,
                                 timeout=link_timeout(self.ha.interval, self.ha.timeout))
            except Exception as exc:
                raise HaActionError(str(exc)) from None
        if not self.engine.store.raise_epoch(self.name, epoch, active):
            current = self.engine.epoch_record(self.name)
            raise HaActionError(f"this host already knows epoch {current[0]} "
                                f"({current[1]} active)")
        what = "failover" if active == me else "handover"
        self.engine.emit(ev.EPOCH_RAISED, f"scenario {self.name}: {active} is active from epoch "
                         f"{epoch} ({what}; it had epoch {view.epoch} with {view.active} active)",
                         self.name)
        self.manager.record_changed(self.name)

    def _redirect(self, epoch: int, active: str) -> None:
        me = self.engine.name
        if active != me:
            for redirect in self._redirects:
                redirect.release()
            return
        address = self.ha.addresses.get(me)
        for redirect in self._redirects:
            redirect.apply(me, address, epoch)
        self._redirected = epoch
        if self._redirects:
            self.engine.emit(ev.REDIRECTED, f"scenario {self.name}: clients redirected to {me} "
                             f"(epoch {epoch}: {', '.join(_redirect_kind(r) for r in self._redirects)})",
                             self.name)

    def _drain(self, replica: str) -> None:
        runtime = self.engine.runtime(self.name)
        drain = getattr(runtime, "drain", None)
        if runtime is None or drain is None:
            raise HaActionError("the scenario does not replicate from this host")
        seq = drain(replica, self.ha.switchover_timeout, link_grace=self.ha.timeout)
        self._drained = True
        self.engine.emit(ev.REPLICATION_DRAINED, f"scenario {self.name}: every change up to "
                         f"{seq} is durable on {replica}", self.name)

    # --- the monitor: Is Alive checks and the workload's state ---------------------------------------

    def _monitor_main(self) -> None:
        probed = 0.0
        while not self._stop.wait(self.ha.interval if self._checks or self._workload else 5.0):
            try:
                view = self._view
                if self._checks and view is not None and view.role == "standby":
                    self._run_checks()
                if self._workload is not None and not self._busy() and (
                        time.monotonic() - probed >= WORKLOAD_PROBE
                        or self.workload_state == "unknown"):
                    probed = time.monotonic()
                    self._probe_workload()
            except Exception:
                log.exception("scenario %s: HA monitor failed", self.name)

    def _run_checks(self) -> None:
        results = run_checks(self._checks)
        now = time.monotonic()
        for check, result in zip(self._checks, results, strict=True):
            status = "ok" if result.ok else ("timeout" if "within" in result.detail
                                              else "failed")
            old = self._check_states.get(check.name)
            if old is not None and old.status == status:
                continue
            kind = "tcp" if isinstance(check, TcpCheck) else (
                "icmp" if isinstance(check, IcmpCheck) else "script")
            self._check_states[check.name] = CheckState(check.name, kind, status,  # type: ignore[arg-type]
                                                        now)
            if status != "ok" and (old.status == "ok" if old is not None
                                   else self._active_serves()):  # not failed<->timeout
                self.engine.emit(ev.CHECK_FAILED, f"scenario {self.name}: {check.name}: "
                                 f"{result.detail}", self.name)
                self._checks_reported.add(check.name)
            elif status == "ok" and check.name in self._checks_reported:
                self._checks_reported.discard(check.name)
                self.engine.emit(ev.CHECK_RECOVERED, f"scenario {self.name}: {check.name} "
                                 "passes again", self.name)

    def _active_serves(self) -> bool:
        """The active host said it runs the workload (a check failing before that, at start-up,
        is no news)."""
        view = self._view
        heard = self.manager.board.get(self.name, view.active) if view is not None else None
        return heard is not None and heard.status.workload == "running"

    def _probe_workload(self) -> None:
        assert self._workload is not None
        generation = self._workload_generation
        running = self._workload.check(self._context("master"))
        if generation == self._workload_generation and not self._busy():
            self.workload_state = "running" if running else "stopped"
        self._probed.set()
        self.kick()


# --- building the adapters from the configuration ----------------------------------------------------


def build_workload(scenario: Scenario) -> Workload | None:
    wanted = scenario.ha.workload
    if wanted is None:
        return None
    if isinstance(wanted, config.ServiceWorkload):
        if wanted.unit:
            return ServiceWorkload.systemd(wanted.unit, timeout=wanted.timeout,
                                           check_timeout=wanted.check_timeout)
        return ServiceWorkload(wanted.start, wanted.stop, wanted.check, timeout=wanted.timeout,
                               check_timeout=wanted.check_timeout)
    return ScriptWorkload(path=wanted.path, timeout=wanted.timeout,
                          check_timeout=wanted.check_timeout)


def build_redirects(scenario: Scenario) -> list[Redirection]:
    redirects: list[Redirection] = []
    for wanted in scenario.ha.redirect:
        if isinstance(wanted, config.IpRedirect):
            redirects.append(IpRedirect(wanted.address, wanted.interface))
        elif isinstance(wanted, config.DnsRedirect):
            redirects.append(DnsRedirect(wanted.server, wanted.port, wanted.zone, wanted.name,
                                         wanted.key_name, wanted.key_secret,
                                         wanted.key_algorithm, wanted.ttl, wanted.timeout))
        else:
            redirects.append(ScriptRedirect(wanted.path, scenario=scenario.name,
                                            timeout=wanted.timeout))
    return redirects


def build_checks(scenario: Scenario) -> list[Check]:
    checks: list[Check] = []
    for wanted in scenario.ha.checks:
        if isinstance(wanted, config.TcpCheck):
            checks.append(TcpCheck(wanted.host, wanted.port, wanted.timeout))
        elif isinstance(wanted, config.IcmpCheck):
            checks.append(IcmpCheck(wanted.host, wanted.timeout))
        else:
            checks.append(ScriptCheck(wanted.command, wanted.timeout))
    return checks


def _gives_up(decision: Decision) -> bool:
    """The decision makes this host give up the workload: a higher epoch names another host,
    or the arbiter no longer backs it. Nothing may delay that."""
    kinds = {type(action) for action in decision.actions}
    alerts = {action.code for action in decision.actions if isinstance(action, Alert)}
    stepping_down = Demote in kinds and RaiseEpoch not in kinds  # not this host's handover
    return stepping_down or \
        bool(alerts & {AlertCode.ISOLATED, AlertCode.LEASE_LOST, AlertCode.EPOCH_CONFLICT})


def _shape(reason: str) -> str:
    """A reason without its numbers: what decides whether it is worth a new log line."""
    return _NUMBERS.sub("#", reason)


_NUMBERS = re.compile(r"\d+(\.\d+)?")


def _redirect_kind(redirect: Redirection) -> str:
    if isinstance(redirect, IpRedirect):
        return f"service address {redirect.address}"
    if isinstance(redirect, DnsRedirect):
        return "DNS update"
    return "script"


def _describe(action: Action) -> str:
    """``Demote(epoch=3, active=beta)``: an action as events name it."""
    values = ", ".join(f"{f.name}={getattr(action, f.name)}" for f in dataclasses.fields(action))
    return f"{type(action).__name__}({values})" if values else type(action).__name__
