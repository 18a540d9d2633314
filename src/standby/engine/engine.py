"""The engine: one object that owns the state of a host and everything the API can ask of it.

The REST API (and through it the CLI and the dashboard) calls only the public methods here.
Each returns plain, JSON-ready data or raises :class:`EngineError` with an HTTP-like status and
a message that tells the operator what to do.

Threads: the API runs on the asyncio loop and calls these methods in a worker thread; peer
sessions and synchronization jobs run in their own threads. Shared state is the SQLite store
(thread-safe) and the job registry (under ``_lock``).
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import socket
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..config import ConfigError, Scenario, check_name, parse_document, parse_scenario
from ..protocol import ProtocolError, Reply, Role, ScenarioPut, ScenarioRemove
from . import events as ev
from .channel import LinkError, PeerMismatch, PeerRefused, connect, fetch_peer_certificate
from .ha_manager import HaManager
from .identity import Identity, fingerprint_of, parse_fingerprint
from .jobs import Job, JobState
from .replica_stream import ReplicaTarget
from .session import PeerFailure, Session
from .spool_paths import spool_directory
from .store import Peer, Store

if TYPE_CHECKING:
    from .replication import MasterReplication

log = logging.getLogger("standby.engine")

#: Default peer port (engines connect to each other here) and API port (localhost only).
DEFAULT_PEER_PORT = 7710
DEFAULT_API_PORT = 7711
#: Seconds for connecting to a peer and for each blocking read or write on a link.
LINK_TIMEOUT = 30.0
#: Finished jobs kept in memory for `GET /v1/jobs/{id}`.
JOB_HISTORY = 200


class EngineError(Exception):
    """A request the engine cannot honour. ``status`` follows HTTP: 400 bad input, 404 unknown
    name, 409 conflicts with the current state, 502 a peer failed."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def parse_address(text: str, default_port: int) -> tuple[str, int]:
    """``HOST:PORT``, ``HOST``, ``[V6]:PORT`` or a bare IPv6 address to (host, port)."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":") or str(default_port)
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:  # a name, an IPv4 address, or a bare IPv6 address: the default port
        host, port_text = text, str(default_port)
    try:
        port = int(port_text)
    except ValueError:
        raise EngineError(400, f"bad address {text!r}: the port must be a number") from None
    if not host or not 0 <= port <= 65535:
        raise EngineError(400, f"bad address {text!r}: use HOST:PORT")
    return host, port


class Engine:
    """The state and the operations of one engine."""

    def __init__(self, home: Path, name: str | None = None) -> None:
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        os.chmod(home, 0o700)
        self.store = Store(home / "state.db")
        stored = self.store.get_meta("name")
        if stored is None:
            self.name = check_name("engine", name or socket.gethostname().split(".")[0])
            self.store.set_meta("name", self.name)
        elif name is not None and name != stored:
            raise EngineError(409, f"this home belongs to engine {stored!r}, not {name!r}; "
                              "use another --home or drop --name")
        else:
            self.name = stored
        self.identity = Identity.load_or_create(home, self.name)
        self.api_token = _load_or_create_token(home / "api-token")
        self.peer_address = ""  # set by the peer server once it listens
        self._lock = threading.Lock()
        self._jobs: OrderedDict[str, Job] = OrderedDict()
        self._job_seq = 0
        self._runtimes: dict[str, MasterReplication] = {}
        self._targets: dict[str, ReplicaTarget] = {}
        self.ha = HaManager(self)
        self._incoming: dict[str, set[Any]] = {}  # scenario -> ReplicaSync sessions serving it

    def close(self) -> None:
        self.ha.close()
        with self._lock:
            runtimes, self._runtimes = list(self._runtimes.values()), {}
            targets, self._targets = list(self._targets.values()), {}
        for runtime in runtimes:
            runtime.stop()
        for job in self.running_jobs():
            job.cancel()
        for target in targets:
            try:
                target.close()
            except OSError as exc:
                log.warning("scenario %s: closing the replica side: %s", target.name, exc)
        self.store.close()

    def resume_scenarios(self) -> None:
        """After a restart: scenarios this engine was replicating as master run again, from
        where their spool and index say they stood (no full resynchronization)."""
        for row in self.store.scenarios():
            if row.role == "master" and row.state in ("running", "syncing"):
                try:
                    self.start_scenario(row.name)
                except EngineError as exc:
                    log.warning("scenario %s not resumed: %s", row.name, exc.message)
            elif row.role == "replica":
                target = self.replica_target(row.name)
                target.start_drain()
        self.ha.start_all()

    # --- identity and peers ---------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        return {"name": self.name, "fingerprint": self.identity.fingerprint,
                "version": __version__, "peer_address": self.peer_address}

    def trusted_certs(self) -> list[bytes]:
        """Certificates accepted on incoming links: the paired peers', and our own (a scenario
        may replicate between two roots of one engine)."""
        return [self.identity.cert_der, *(p.cert_der for p in self.store.peers())]

    def peer_by_fingerprint(self, fingerprint: str) -> str | None:
        if fingerprint == self.identity.fingerprint:
            return self.name
        return next((p.name for p in self.store.peers() if p.fingerprint == fingerprint), None)

    def list_peers(self) -> list[dict[str, Any]]:
        return [p.public() for p in self.store.peers()]

    def add_peer(self, name: str, address: str, fingerprint: str) -> dict[str, Any]:
        """Pair with another engine: fetch its certificate and check its fingerprint."""
        try:
            check_name("peer", name)
            expected = parse_fingerprint(fingerprint)
        except (ConfigError, ValueError) as exc:
            raise EngineError(400, str(exc)) from None
        if name == self.name:
            raise EngineError(400, f"{name!r} is this engine's own name")
        if expected == self.identity.fingerprint:
            raise EngineError(400, "that fingerprint is this engine's own")
        host_port = parse_address(address, DEFAULT_PEER_PORT)
        try:
            cert = fetch_peer_certificate(host_port, self.identity, expected, LINK_TIMEOUT)
        except PeerMismatch as exc:
            self.emit(ev.PEER_MISMATCH, f"peer {name} at {address}: {exc}")
            raise EngineError(502, f"{address} presented another certificate: {exc}") from None
        except (LinkError, OSError) as exc:
            self.emit(ev.PEER_UNREACHABLE, f"peer {name} at {address}: {exc}")
            raise EngineError(502, f"cannot reach {address}: {exc}") from None
        if fingerprint_of(cert) != expected:  # fetch_peer_certificate checks; be explicit
            raise EngineError(502, f"{address} presented another certificate")
        peer = Peer(name, f"{host_port[0]}:{host_port[1]}", expected, cert, time.time())
        self.store.put_peer(peer)
        self.emit(ev.PEER_ADDED, f"paired with {name} at {peer.address} ({expected[:16]}...)")
        return peer.public()

    def remove_peer(self, name: str) -> None:
        users = [s.name for s in self.store.scenarios()
                 if name in (s.document["master"], s.document["replica"],
                             *s.document.get("replicas", ()),
                             s.document.get("ha", {}).get("witness", ""))]
        if users:
            raise EngineError(409, f"peer {name!r} is used by scenario(s) {', '.join(users)}; "
                              "remove them first")
        if not self.store.remove_peer(name):
            raise EngineError(404, f"no peer named {name!r}")
        self.emit(ev.PEER_REMOVED, f"peer {name} removed")

    def open_session(self, engine_name: str, purpose: str, *, timeout: float = LINK_TIMEOUT,
                     report: bool = True) -> Session:
        """Connect to a paired engine (or to ourselves) and complete the handshake.

        ``timeout`` bounds the set-up and then each read and write; ``report=False`` keeps
        failures out of the event log (heartbeats retry every second and judge silence
        themselves)."""
        if engine_name == self.name:
            address, fingerprint = self.peer_address, self.identity.fingerprint
        else:
            peer = self.store.peer(engine_name)
            if peer is None:
                raise EngineError(400, f"engine {engine_name!r} is not paired; run "
                                  f"`standby peer add {engine_name} HOST:PORT FINGERPRINT`")
            address, fingerprint = peer.address, peer.fingerprint
        host_port = parse_address(address, DEFAULT_PEER_PORT)
        emit = self.emit if report else _quiet
        try:
            channel = connect(host_port, self.identity, expected_fingerprint=fingerprint,
                              timeout=timeout)
        except PeerMismatch as exc:
            self.emit(ev.PEER_MISMATCH, f"peer {engine_name} at {address}: {exc}")
            raise EngineError(502, f"peer {engine_name}: {exc}") from None
        except PeerRefused as exc:
            emit(ev.PEER_NOT_TRUSTING, f"peer {engine_name} at {address}: {exc}")
            raise EngineError(502, f"peer {engine_name} refused this engine ({exc}); run "
                              f"`standby peer add {self.name} ...` on {engine_name}") from None
        except (LinkError, OSError) as exc:
            emit(ev.PEER_UNREACHABLE, f"peer {engine_name} at {address}: {exc}")
            raise EngineError(502, f"cannot reach peer {engine_name} at {address}: {exc}") from None
        session = Session(channel, Role.INITIATOR, self.name)
        try:
            session.open(purpose)
        except (LinkError, OSError, PeerFailure, ProtocolError) as exc:
            session.close()
            raise EngineError(502, f"peer {engine_name}: handshake failed: {exc}") from None
        return session

    def control(self, engine_name: str, message: ScenarioPut | ScenarioRemove) -> Reply:
        """Send one control request to a peer and return its reply."""
        session = self.open_session(engine_name, "control")
        try:
            session.send(message)
            reply = session.expect(Reply)
        except (LinkError, OSError, PeerFailure) as exc:
            raise EngineError(502, f"peer {engine_name}: {exc}") from None
        finally:
            session.close()
        return reply

    # --- scenarios ------------------------------------------------------------------------------

    def add_scenario(self, text: str, source: str) -> dict[str, Any]:
        """Validate a scenario file, give it to the replica's engine, then store it here.

        Nothing is stored anywhere unless every step succeeds.
        """
        try:
            scenario = parse_scenario(text, source)
        except ConfigError as exc:
            raise EngineError(400, str(exc)) from None
        return self._add_scenario(scenario, source)

    def _add_scenario(self, scenario: Scenario, source: str) -> dict[str, Any]:
        if scenario.master != self.name:
            raise EngineError(400, f"{source}: master: this engine is {self.name!r}; add the "
                              f"scenario on its master engine {scenario.master!r}")
        existing = self.store.scenario(scenario.name)
        if existing is not None and existing.role != "master":
            raise EngineError(409, f"{source}: name: {scenario.name!r} is already a scenario "
                              "this engine replicates for another master")
        if existing is not None and existing.state in ("syncing",):
            raise EngineError(409, f"scenario {scenario.name!r} is synchronizing; stop it first")
        record = self.store.epoch(scenario.name)
        if record is not None and record[1] != self.name:
            raise EngineError(409, f"{source}: {record[1]} is the active host of "
                              f"{scenario.name!r} since epoch {record[0]}; change the "
                              "scenario there")
        if scenario.ha.witness:
            reply = self.control(scenario.ha.witness, ScenarioPut(
                name=scenario.name, document=scenario.document()))
            if not reply.ok:
                raise EngineError(502, f"witness engine {scenario.ha.witness!r} refused the "
                                  f"scenario: {reply.message}")
        for target in scenario.targets:
            if target != self.name:
                reply = self.control(target, ScenarioPut(
                    name=scenario.name, document=scenario.document()))
                if not reply.ok:
                    raise EngineError(502, f"replica engine {target!r} refused the "
                                      f"scenario: {reply.message}")
            else:
                self._prepare_replica_roots(scenario)
        self.store.put_scenario(scenario.name, "master", scenario.document(), "stopped")
        self.store.raise_epoch(scenario.name, *self.epoch_record(scenario.name))
        self.emit(ev.SCENARIO_ADDED, f"scenario {scenario.name} added ({len(scenario.roots)} "
                  f"root(s), {scenario.master} -> {scenario.replica})", scenario.name)
        self.ha.refresh(scenario.name)
        return self.show_scenario(scenario.name)

    def receive_scenario(self, peer: str, message: ScenarioPut) -> Reply:
        """Replica side of :meth:`add_scenario`: accept a scenario from its master's engine."""
        try:
            scenario = parse_document(message.document, f"scenario {message.name!r} from {peer}")
        except ConfigError as exc:
            return Reply(ok=False, message=str(exc), data={})
        if scenario.name != message.name or scenario.master != peer:
            return Reply(ok=False, message=f"engine {peer!r} may only send scenarios it is the "
                         "master of", data={})
        existing = self.store.scenario(scenario.name)
        record = self.store.epoch(scenario.name)
        if record is not None and record[1] != peer:
            return Reply(ok=False, message=f"{record[1]} is the active host of "
                         f"{scenario.name!r} since epoch {record[0]}, not {peer}", data={})
        if self.name == scenario.ha.witness:
            if existing is not None and existing.role != "witness":
                return Reply(ok=False, message=f"{scenario.name!r} is a scenario this engine "
                             "replicates", data={})
            self.store.put_scenario(scenario.name, "witness", scenario.document(), "witness")
            self.store.raise_epoch(scenario.name, *self.epoch_record(scenario.name))
            self.emit(ev.SCENARIO_RECEIVED, f"scenario {scenario.name} received from {peer}: "
                      "this engine is its witness", scenario.name)
            return Reply(ok=True, message="stored", data={})
        if self.name not in scenario.targets:
            return Reply(ok=False, message=f"this engine is {self.name!r}, not one of the "
                         f"scenario's replicas {', '.join(scenario.targets)}", data={})
        if existing is not None and existing.role != "replica":
            return Reply(ok=False, message=f"{scenario.name!r} is a scenario this engine is the "
                         f"{existing.role} of", data={})
        try:
            self._prepare_replica_roots(scenario)
        except EngineError as exc:
            return Reply(ok=False, message=exc.message, data={})
        if scenario.cascade and scenario.replica == self.name:
            try:  # forward to the cascade: as master of a derived scenario
                self._start_cascade(scenario)
            except EngineError as exc:
                return Reply(ok=False, message=f"cascade to {', '.join(scenario.cascade)}: "
                             f"{exc.message}", data={})
        self.store.put_scenario(scenario.name, "replica", scenario.document(),
                                existing.state if existing else "stopped")
        self.store.raise_epoch(scenario.name, *self.epoch_record(scenario.name))
        self.emit(ev.SCENARIO_RECEIVED, f"scenario {scenario.name} received from {peer}",
                  scenario.name)
        self.ha.refresh(scenario.name)
        return Reply(ok=True, message="stored", data={})

    def _start_cascade(self, scenario: Scenario) -> None:
        """Add (or update) and start the derived scenario that forwards ``scenario`` from this
        replica to the cascade engines: changes applied here are captured and sent on."""
        derived = scenario.cascaded()
        if self.runtime(derived.name) is not None:
            self.stop_scenario(derived.name)
        self._add_scenario(derived, f"cascade of {scenario.name}")
        self.start_scenario(derived.name)

    def _prepare_replica_roots(self, scenario: Scenario) -> None:
        for root in scenario.roots:
            try:
                Path(root.replica).mkdir(parents=True, exist_ok=True, mode=0o700)
            except OSError as exc:
                raise EngineError(400, f"replica root {root.replica}: cannot create it: "
                                  f"{exc.strerror}") from None
            if not Path(root.replica).is_dir() or Path(root.replica).is_symlink():
                raise EngineError(400, f"replica root {root.replica} is not a directory")

    def remove_received(self, peer: str, name: str) -> Reply:
        row = self.store.scenario(name)
        if row is None:
            return Reply(ok=True, message="not present", data={})
        if row.role == "master" or row.document["master"] != peer:
            return Reply(ok=False, message=f"{peer!r} is not the master of {name!r}", data={})
        self.ha.remove(name)
        derived = f"{name}.cascade"[:63]
        if self.store.scenario(derived) is not None:
            try:
                if self.runtime(derived) is not None:
                    self.stop_scenario(derived)
                self.remove_scenario(derived)
            except EngineError as exc:
                return Reply(ok=False, message=f"cascade {derived}: {exc.message}", data={})
        self.drop_target(name)
        self.store.remove_scenario(name)
        self.emit(ev.SCENARIO_REMOVED, f"scenario {name} removed by its master {peer} (replica "
                  "files are kept)", name)
        return Reply(ok=True, message="removed", data={})

    def _scenario(self, name: str) -> tuple[Scenario, str]:
        row = self.store.scenario(name)
        if row is None:
            raise EngineError(404, f"no scenario named {name!r} (see `standby scenario list`)")
        return parse_document(row.document, f"scenario {name!r}"), row.role

    def list_scenarios(self) -> list[dict[str, Any]]:
        return [self._scenario_summary(row.name) for row in self.store.scenarios()]

    def show_scenario(self, name: str) -> dict[str, Any]:
        summary = self._scenario_summary(name)
        row = self.store.scenario(name)
        assert row is not None
        summary["document"] = row.document
        return summary

    def _scenario_summary(self, name: str) -> dict[str, Any]:
        row = self.store.scenario(name)
        if row is None:
            raise EngineError(404, f"no scenario named {name!r} (see `standby scenario list`)")
        doc = row.document
        return {"name": row.name, "role": row.role, "state": row.state,
                "consistent": row.consistent, "master": doc["master"],
                "replica": doc["replica"], "method": doc["sync"]["method"],
                "roots": [{"master": r["master"], "replica": r["replica"]}
                          for r in doc["roots"]],
                "updated_at": row.updated_at}

    def remove_scenario(self, name: str) -> None:
        scenario, role = self._scenario(name)
        if role != "master":
            raise EngineError(409, f"scenario {name!r} is replicated here for "
                              f"{scenario.master!r}; remove it on that engine")
        if self._job_for(name) is not None or self.runtime(name) is not None:
            raise EngineError(409, f"scenario {name!r} is running; stop it first "
                              f"(`standby scenario stop {name}`)")
        for target in scenario.targets:
            if target == self.name:
                continue
            try:
                reply = self.control(target, ScenarioRemove(name=name))
            except EngineError as exc:
                raise EngineError(502, f"{exc.message}; the scenario is kept so that the "
                                  "engines stay in step") from None
            if not reply.ok:
                raise EngineError(502, f"replica engine {target} refused: {reply.message}")
        if scenario.ha.witness:
            try:
                self.control(scenario.ha.witness, ScenarioRemove(name=name))
            except EngineError as exc:  # a witness holds no data: forget it here regardless
                log.warning("scenario %s: the witness %s was not told of the removal: %s",
                            name, scenario.ha.witness, exc.message)
        self.ha.remove(name)
        self.drop_target(name)
        shutil.rmtree(spool_directory(self.home, scenario), ignore_errors=True)
        self.store.remove_scenario(name)
        self.emit(ev.SCENARIO_REMOVED, f"scenario {name} removed (replica files are kept)", name)

    def drop_target(self, name: str) -> None:
        """Forget the replica side of a scenario: its state and its spool (what it held is
        superseded: a scenario added again starts with a synchronization)."""
        with self._lock:
            target = self._targets.pop(name, None)
        if target is not None:
            target.close()
        self.store.delete_meta(f"replica-stream:{name}")
        shutil.rmtree(self.home / "replica-spool" / name, ignore_errors=True)

    def start_scenario(self, name: str) -> dict[str, Any]:
        """Start protecting: capture starts, then the initial synchronization runs (unless the
        index of a previous run is still valid), then changes replicate in real time. In
        scheduled mode, synchronizations run at the configured times instead.

        Returns the scenario's summary with ``job``: the synchronization job just started, if
        any, for the caller to follow."""
        from .replication import MasterReplication
        from .scheduler import ScheduledSync

        scenario, role = self._scenario(name)
        self._require_master(name, role, scenario)
        with self._lock:
            old = self._runtimes.get(name)
            if old is not None and getattr(old, "capturing", True):
                raise EngineError(409, f"scenario {name!r} is already running")
            self._runtimes.pop(name, None)
        if old is not None:  # its capture failed (see events): start afresh
            old.stop()
        runtime: MasterReplication | ScheduledSync
        try:
            if scenario.replication.mode == "scheduled":
                runtime = ScheduledSync(self, scenario)
            else:
                runtime = MasterReplication(self, scenario)
        except (OSError, ValueError) as exc:
            raise EngineError(500, f"scenario {name}: cannot open its spool or index: "
                              f"{exc}") from None
        with self._lock:
            self._runtimes[name] = runtime  # type: ignore[assignment]
        self.store.update_scenario(name, state="running")
        runtime.start()
        self.emit(ev.SCENARIO_STARTED, f"scenario {name} started "
                  f"({scenario.replication.mode} mode)", name)
        job = runtime.wait_for_sync_job(10.0) if isinstance(runtime, MasterReplication) else None
        summary = self._scenario_summary(name)
        summary["job"] = job.describe() if job is not None else None
        return summary

    def stop_scenario(self, name: str) -> dict[str, Any]:
        scenario, role = self._scenario(name)
        self._require_master(name, role, scenario)
        self.stop_replication(name)
        self.store.update_scenario(name, state="stopped")
        self.emit(ev.SCENARIO_STOPPED, f"scenario {name} stopped", name)
        return self._scenario_summary(name)

    def runtime(self, name: str) -> MasterReplication | None:
        with self._lock:
            return self._runtimes.get(name)

    def replica_target(self, name: str) -> ReplicaTarget:
        """The replica's state of a scenario replicated here (created on first use)."""
        with self._lock:
            target = self._targets.get(name)
            if target is None:
                target = self._targets[name] = ReplicaTarget(self, name)
            return target

    def suspend(self, name: str) -> dict[str, Any]:
        """Stop applying changes on the replica; they are spooled there until resume."""
        scenario, role = self._scenario(name)
        if role != "replica":
            raise EngineError(409, f"run `standby suspend {name}` on the replica engine "
                              f"{scenario.replica!r}")
        target = self.replica_target(name)
        if target.suspended:
            raise EngineError(409, f"scenario {name!r} is already suspended")
        target.suspend()
        self.emit(ev.SUSPENDED, f"scenario {name}: replica suspended at change "
                  f"{target.applied}", name)
        return target.status()

    def resume(self, name: str) -> dict[str, Any]:
        scenario, role = self._scenario(name)
        if role != "replica":
            raise EngineError(409, f"run `standby resume {name}` on the replica engine "
                              f"{scenario.replica!r}")
        target = self.replica_target(name)
        if not target.suspended:
            raise EngineError(409, f"scenario {name!r} is not suspended")
        backlog = target.backlog
        target.resume()
        self.emit(ev.RESUMED, f"scenario {name}: replica resumed; {backlog} spooled "
                  "change(s) to apply", name)
        return target.status()

    def _require_master(self, name: str, role: str, scenario: Scenario) -> None:
        if role != "master":
            raise EngineError(409, f"scenario {name!r} is controlled by its master engine "
                              f"{scenario.master!r}; run this command there")

    # --- epochs and roles (high availability) -----------------------------------------------------

    def epoch_record(self, name: str) -> tuple[int, str]:
        """The scenario's epoch record on this host: (epoch, active host). A scenario that has
        never had a promotion is at epoch 1 with its configured master active."""
        record = self.store.epoch(name)
        if record is not None:
            return record
        row = self.store.scenario(name)
        return 1, str(row.document["master"]) if row is not None else ""

    def fence(self, name: str, peer: str, epoch: int) -> str | None:
        """Whether ``peer`` may write this scenario's replica at ``epoch``: None when it may,
        else the refusal (an event says so). Changes from an older epoch, or from another host
        than the one this host's record names active, are refused."""
        ours, active = self.epoch_record(name)
        if epoch > ours or (epoch == ours and active == peer):
            return None
        refusal = (f"scenario {name}: {peer} writes at epoch {epoch}, but this host knows "
                   f"epoch {ours} with {active} active; {peer} must step down")
        self.emit(ev.STALE_EPOCH, refusal, name)
        return refusal

    def retire_target(self, name: str) -> None:
        """The replica side of a scenario ends because this host takes over: what it holds is
        applied (OSError when that fails), then its state and spool are dropped."""
        with self._lock:
            target = self._targets.get(name)
        if target is None and (self.home / "replica-spool" / name).exists():
            target = self.replica_target(name)
        if target is not None:
            target.retire()
        self.drop_target(name)

    def incoming_syncs(self, name: str) -> set[Any]:
        """The synchronizations a master is running into this host for ``name`` (ReplicaSync
        adds and removes itself); a promotion ends them."""
        with self._lock:
            return self._incoming.setdefault(name, set())

    def stop_replication(self, name: str) -> int:
        """Stop the scenario's replication from this host and cancel its synchronization;
        returns how many captured changes some replica had not made durable."""
        with self._lock:
            runtime = self._runtimes.pop(name, None)
        unsent = 0
        if runtime is not None:
            streams = getattr(runtime, "streams", None)
            if streams is not None:
                durable = min((seq for _, _, seq in streams()), default=0)
                unsent = max(0, runtime.spool.last_seq - durable)
            runtime.stop()
        job = self._job_for(name)
        if job is not None:
            job.cancel()
        return unsent

    def ha_request(self, name: str, kind: str, target: str | None) -> dict[str, Any]:
        """An operator's switchover, failover or switchback: handed to the scenario's HA
        controller, which acts on it at its next cycle. Returns the HA status."""
        self._scenario(name)
        return self.ha.request(name, kind, target)

    def ha_cancel(self, name: str) -> dict[str, Any]:
        """Withdraw the scenario's pending switchover, failover or switchback."""
        self._scenario(name)
        return self.ha.cancel(name)

    # --- synchronization jobs -------------------------------------------------------------------

    def start_sync(self, name: str, method: str | None,
                   ignore_same_size_time: bool | None) -> dict[str, Any]:
        """Start a synchronization job in a thread and return its description at once. While
        the scenario replicates in real time, its runtime runs the synchronization (capture
        goes on meanwhile, and the index is rebuilt after it)."""
        runtime = self.runtime(name)
        if runtime is not None and getattr(runtime, "capturing", False):
            if method is not None and method not in ("file", "block"):
                raise EngineError(400, f"method must be 'file' or 'block', got {method!r}")
            job = runtime.request_sync(method, ignore_same_size_time, 10.0)
            if job is None:
                raise EngineError(409, f"scenario {name!r}: the synchronization did not start "
                                  "(see `standby events`)")
            return job.describe()
        return self.start_sync_job(name, method, ignore_same_size_time)

    def start_sync_job(self, name: str, method: str | None,
                       ignore_same_size_time: bool | None,
                       target: str | None = None) -> dict[str, Any]:
        """Start the synchronization job itself (the runtime's way in); ``target``: one of
        the scenario's replica engines (default: its first)."""
        from .sync_master import MasterSync  # import here: sync_master imports this module

        scenario, role = self._scenario(name)
        if target is not None and target != scenario.replica:
            if target not in scenario.targets:
                raise EngineError(400, f"{target!r} is not a replica of scenario {name!r}")
            scenario = scenario.model_copy(update={"replica": target})
        self._require_master(name, role, scenario)
        if method is not None and method not in ("file", "block"):
            raise EngineError(400, f"method must be 'file' or 'block', got {method!r}")
        options = scenario.sync.model_copy(update={
            k: v for k, v in (("method", method), ("ignore_same_size_time",
                                                   ignore_same_size_time)) if v is not None})
        with self._lock:
            if self._job_for(name) is not None:
                raise EngineError(409, f"scenario {name!r} is already synchronizing")
            self._job_seq += 1
            job_id = f"{int(time.time())}-{self._job_seq}"
            sync = MasterSync(self, scenario, options)
            job = Job(job_id, name, "sync", sync)
            self._jobs[job_id] = job
            while len(self._jobs) > JOB_HISTORY:
                self._jobs.popitem(last=False)
        self.store.update_scenario(name, state="syncing")
        job.start(on_done=self._sync_finished)
        return job.describe()

    def _sync_finished(self, job: Job) -> None:
        if job.state is JobState.FAILED and job.report is None:  # not a failure it reported
            self.emit(ev.SYNC_FAILED, f"synchronization of {job.scenario} failed: {job.error}",
                      job.scenario)
        report = job.report
        if report is not None:
            self.store.add_report(job.scenario, report)
            row = self.store.scenario(job.scenario)
            stats = row.stats if row else {}
            _accumulate(stats, report)
            self.store.update_scenario(job.scenario, stats=stats)
        if self.runtime(job.scenario) is not None:
            if job.state is JobState.SUCCEEDED:  # the runtime goes on: replication
                self.store.update_scenario(job.scenario, state="running", consistent=True)
            return
        if job.state is JobState.SUCCEEDED:
            self.store.update_scenario(job.scenario, state="running", consistent=True)
        elif job.state is JobState.CANCELLED:
            self.store.update_scenario(job.scenario, state="stopped")
        else:
            self.store.update_scenario(job.scenario, state="failed")

    def job_object(self, job_id: str) -> Job:
        with self._lock:
            return self._jobs[job_id]

    def _job_for(self, scenario: str) -> Job | None:
        return next((j for j in self._jobs.values()
                     if j.scenario == scenario and j.state is JobState.RUNNING), None)

    def running_jobs(self) -> list[Job]:
        with self._lock:
            return [j for j in self._jobs.values() if j.state is JobState.RUNNING]

    def job(self, job_id: str, wait: float = 0.0) -> dict[str, Any]:
        """A job's description; with ``wait``, first wait up to that many seconds (at most 30)
        for it to end, so a client learns of the end at once without polling fast."""
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise EngineError(404, f"no job {job_id!r}")
        if wait > 0:
            job.wait_done(min(wait, 30.0))
        return job.describe()

    # --- status, events, reports ----------------------------------------------------------------

    def status(self, name: str | None = None) -> list[dict[str, Any]]:
        rows = self.store.scenarios() if name is None else [self.store.scenario(name)]
        if name is not None and rows[0] is None:
            raise EngineError(404, f"no scenario named {name!r}")
        out = []
        for row in rows:
            assert row is not None
            summary = self._scenario_summary(row.name)
            summary["hosts"] = row.stats.get("hosts", {})
            summary["syncs"] = row.stats.get("syncs", 0)
            job = self._job_for(row.name)
            summary["job"] = job.describe() if job else None
            runtime = self.runtime(row.name)
            if runtime is not None:
                summary["replication"] = runtime.status()
            elif row.role == "replica":
                summary["replication"] = self.replica_target(row.name).status()
            summary["ha"] = self.ha.status(row.name)
            out.append(summary)
        return out

    def events(self, scenario: str | None = None, after: int = 0,
               limit: int = 1000) -> list[dict[str, Any]]:
        return [e.public() for e in self.store.events(scenario, after, limit)]

    def report(self, name: str) -> dict[str, Any]:
        self._scenario(name)
        report = self.store.last_report(name)
        if report is None:
            raise EngineError(404, f"scenario {name!r} has no synchronization report yet")
        return report

    def emit(self, event: ev.EventType, message: str, scenario: str | None = None) -> None:
        row = self.store.add_event(event, message, scenario)
        level = {"info": logging.INFO, "warning": logging.WARNING}.get(row.severity,
                                                                        logging.ERROR)
        log.log(level, "%s %s", event.code, message)


def _quiet(event: ev.EventType, message: str, scenario: str | None = None) -> None:
    """``emit`` for failures nobody needs an event for (logged at debug level only)."""
    log.debug("%s %s", event.code, message)


def _accumulate(stats: dict[str, Any], report: dict[str, Any]) -> None:
    """Add a report's per-host counters to the scenario's running totals."""
    stats["syncs"] = stats.get("syncs", 0) + 1
    hosts = stats.setdefault("hosts", {})
    for host, counters in report.get("hosts", {}).items():
        total = hosts.setdefault(host, {})
        for key, value in counters.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                total[key] = total.get(key, 0) + value


def _load_or_create_token(path: Path) -> str:
    """The API bearer token, kept in a 0600 file; created on first start."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        pass
    token = secrets.token_urlsafe(32)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return token
