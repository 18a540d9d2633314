"""The engine's high availability: one :class:`~standby.engine.ha_controller.HaController` per
scenario this engine is a master or replica of, the board of what the other hosts last said,
and the answers to their heartbeats and epoch claims.

The manager is the only way in from the rest of the engine (``engine.ha``): the peer server
hands it incoming heartbeats and claims, the API its operators' requests and status reads,
and scenario changes (add, receive, remove) call :meth:`HaManager.refresh` and
:meth:`HaManager.remove`.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from ..config import ConfigError, Scenario, parse_document
from ..protocol import EpochClaim, HaHeartbeat, RemoteProtocolError, Reply
from .ha_status import HostStatus, LinkStatus, StatusBoard
from .witness import judge_claim, witness_status

if TYPE_CHECKING:
    from .engine import Engine
    from .ha_controller import HaController

log = logging.getLogger("standby.ha")


class HaManager:
    """High availability for every scenario of one engine."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.board = StatusBoard()
        #: When this engine started: a host never heard counts as silent since then.
        self.started = time.monotonic()
        self._controllers: dict[str, HaController] = {}
        self._lock = threading.Lock()
        self._closed = False
        self.board.on_record_change(self._peer_record_changed)

    def __repr__(self) -> str:
        with self._lock:
            return f"<HaManager {self.engine.name} controllers={sorted(self._controllers)}>"

    # --- lifetime -------------------------------------------------------------------------------

    def start_all(self) -> None:
        """Start a controller for every scenario this engine is a master or replica of."""
        for row in self.engine.store.scenarios():
            self.refresh(row.name)

    def refresh(self, name: str) -> None:
        """(Re)start the scenario's controller after its definition changed; a scenario that
        only turned around (a switchover) keeps its controller."""
        from .ha_controller import HaController

        scenario = self.scenario(name)
        wanted = scenario is not None and self._controlled(name) and \
            scenario.master != scenario.replica
        with self._lock:
            if self._closed:
                return
            old = self._controllers.get(name)
            if old is not None and wanted and scenario is not None \
                    and old.signature == HaController.signature_of(scenario):
                return
            self._controllers.pop(name, None)
        if old is not None:
            old.stop()
        if not wanted or scenario is None:
            return
        controller = HaController(self, scenario)
        with self._lock:
            if self._closed or name in self._controllers:
                return
            self._controllers[name] = controller
        controller.start()

    def remove(self, name: str) -> None:
        with self._lock:
            controller = self._controllers.pop(name, None)
        if controller is not None:
            controller.stop()
        self.board.forget(name)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            controllers, self._controllers = list(self._controllers.values()), {}
        for controller in controllers:
            controller.stop()

    def controller(self, name: str) -> HaController | None:
        with self._lock:
            return self._controllers.get(name)

    def scenario(self, name: str) -> Scenario | None:
        row = self.engine.store.scenario(name)
        if row is None:
            return None
        try:
            return parse_document(row.document, f"scenario {name!r}")
        except ConfigError as exc:
            log.error("%s", exc)
            return None

    def _controlled(self, name: str) -> bool:
        row = self.engine.store.scenario(name)
        return row is not None and row.role in ("master", "replica")

    # --- epoch records --------------------------------------------------------------------------

    def record_changed(self, name: str) -> None:
        """This host's epoch record changed: tell the other hosts now, and decide again."""
        controller = self.controller(name)
        if controller is not None:
            controller.record_changed()

    def _peer_record_changed(self, scenario: str, host: str) -> None:
        controller = self.controller(scenario)
        if controller is not None:
            controller.kick()

    # --- what other hosts ask ---------------------------------------------------------------------

    def on_heartbeat(self, peer: str, message: HaHeartbeat) -> Reply:
        """A heartbeat from ``peer``: record its status, answer with ours."""
        scenario = self.scenario(message.scenario)
        if scenario is None:
            return Reply(ok=False, message=f"{self.engine.name} has no scenario "
                         f"{message.scenario!r}", data={})
        if peer not in scenario.hosts:
            return Reply(ok=False, message=f"{peer} is not a host of scenario "
                         f"{scenario.name!r}", data={})
        try:
            status = HostStatus.from_wire(message.status)
        except ValueError as exc:
            raise RemoteProtocolError(f"heartbeat from {peer}: {exc}") from None
        self.board.heard(scenario.name, peer, status, time.monotonic())
        row = self.engine.store.scenario(scenario.name)
        if row is not None and row.role == "witness" \
                and status.epoch > self.engine.epoch_record(scenario.name)[0]:
            # Epochs only go up, and a higher one is a fact: a witness that lost its state
            # (or was added later) must not rule with an older record.
            self.engine.store.raise_epoch(scenario.name, status.epoch, status.active)
        return Reply(ok=True, message="", data=self.local_status(scenario).to_wire())

    def on_claim(self, peer: str, claim: EpochClaim) -> Reply:
        return judge_claim(self.engine, self.board, peer, claim)

    def local_status(self, scenario: Scenario) -> HostStatus:
        """This host's status for ``scenario``, as heartbeats carry it."""
        engine = self.engine
        row = engine.store.scenario(scenario.name)
        if row is not None and row.role == "witness":
            return witness_status(engine, scenario, self.board)
        epoch, active = engine.epoch_record(scenario.name)
        controller = self.controller(scenario.name)
        others = tuple(host for host in (*scenario.hosts, scenario.ha.witness)
                       if host and host != engine.name)
        fields: dict[str, Any] = {
            "epoch": epoch, "active": active,
            "role": "active" if active == engine.name else "standby",
            "workload": controller.workload_state if controller is not None else "unknown",
            "heard": self.board.ages(scenario.name, others, time.monotonic())}
        runtime = engine.runtime(scenario.name)
        streams = getattr(runtime, "streams", None)
        if runtime is not None and streams is not None and runtime.capturing \
                and scenario.replication.mode == "online":
            status = runtime.status()
            fields.update(protecting=True, last_seq=status["last_seq"],
                          lag_s=status["durable_lag_s"], synchronizing=status["synchronizing"],
                          links={replica: LinkStatus(up, durable)
                                 for replica, up, durable in streams()})
        elif row is not None and row.role == "replica":
            _, durable = engine.replica_target(scenario.name).positions()
            fields.update(consistent=row.consistent, durable_seq=durable)
        return HostStatus(**fields)

    # --- the operator -----------------------------------------------------------------------------

    def status(self, name: str) -> dict[str, Any] | None:
        """The scenario's HA state for `standby status`; None when this engine has none."""
        controller = self.controller(name)
        if controller is not None:
            return controller.status()
        row = self.engine.store.scenario(name)
        if row is None or row.role != "witness":
            return None
        scenario = self.scenario(name)
        epoch, active = self.engine.epoch_record(name)
        hosts = scenario.hosts if scenario is not None else ()
        return {"role": "witness", "epoch": epoch, "active": active,
                "state": "witnessing", "hosts": {
                    host: {"last_heard_s": age} for host, age in
                    self.board.ages(name, hosts, time.monotonic()).items()}}

    def request(self, name: str, kind: str, target: str | None) -> dict[str, Any]:
        return self._controller_for(name).request(kind, target)

    def cancel(self, name: str) -> dict[str, Any]:
        return self._controller_for(name).cancel()

    def _controller_for(self, name: str) -> HaController:
        from .engine import EngineError

        controller = self.controller(name)
        if controller is None:
            raise EngineError(409, f"scenario {name!r} has no high availability on this engine "
                              "(a witness, or a scenario replicating between two roots of one "
                              "engine)")
        return controller
