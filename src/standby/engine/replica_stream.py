"""The replica's side of real-time replication: receive the ordered stream, apply it (or hold
it in the replica's spool while apply is suspended), acknowledge.

Sequence numbers on the replica (one :class:`ReplicaTarget` per scenario):

- ``applied``: every record up to here was applied to the roots;
- ``applied_durable``: ... and made durable (persisted in the state store after each flush);
- the spool's ``last_seq``: records received while suspended (or behind a backlog), durable
  once the spool is synced.

``received`` (what the master need not send again) and ``durable`` (what the master may
forget) are derived from those. A record is applied only once: a Batch that repeats records
after a reconnect is cut to the new ones, and after a crash the stream restarts after
``durable``; see :mod:`standby.engine.apply` for why replaying from there is safe.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import Scenario, parse_document
from ..journal import Spool, SpoolError
from ..protocol import (
    Ack,
    Batch,
    Goodbye,
    Heartbeat,
    Message,
    RemoteProtocolError,
    ReplicateBegin,
    ReplicateReady,
    decode_records,
    decompress_batch,
    encode_record,
)
from . import events as ev
from .apply import Applier
from .session import Session
from .store import ScenarioRow

if TYPE_CHECKING:
    from .engine import Engine

log = logging.getLogger("standby.replica")

#: With ack levels other than "durable", applied records are made durable at least this often.
FLUSH_INTERVAL = 1.0
#: Records read from the replica's spool at a time when applying a backlog.
DRAIN_BYTES = 8 * 1024 * 1024


def replicated_here(engine_name: str, row: ScenarioRow, peer: str) -> bool:
    """Whether this engine is the replica of the scenario ``row`` and ``peer`` its master
    (one engine may also replicate between two of its own roots)."""
    document = row.document
    if row.role == "replica":
        return bool(document["master"] == peer)
    return bool(document["master"] == document["replica"] == peer == engine_name)


class ReplicaTarget:
    """The replica's state for one scenario, shared by its stream session and the backlog
    drain; every method takes the lock."""

    def __init__(self, engine: Engine, name: str) -> None:
        self.engine = engine
        self.name = name
        self.lock = threading.RLock()
        self._applier: Applier | None = None
        self._spool: Spool | None = None
        state = json.loads(engine.store.get_meta(self._key) or "{}")
        self.applied_durable: int = int(state.get("durable", 0))
        self.applied: int = self.applied_durable
        self.suspended: bool = bool(state.get("suspended", False))
        self.last_flush = time.monotonic()
        self.received_bytes = 0
        self.received_records = 0
        self._draining = False
        self.retired = False  # this host took over (retire()): nothing more is applied
        self.last_failure: str | None = None  # the last apply failure reported (SB2210)
        if self._spool_dir.exists():
            self._open_spool()

    @property
    def _key(self) -> str:
        return f"replica-stream:{self.name}"

    @property
    def _spool_dir(self) -> Path:
        return self.engine.home / "replica-spool" / self.name

    def _scenario(self) -> Scenario:
        row = self.engine.store.scenario(self.name)
        if row is None or not replicated_here(self.engine.name, row, row.document["master"]):
            raise RemoteProtocolError(f"scenario {self.name!r} is not replicated here")
        return parse_document(row.document, f"scenario {self.name!r}")

    def _open_spool(self) -> Spool:
        if self._spool is None:
            scenario = self._scenario()
            self._spool = Spool(self._spool_dir, max_bytes=scenario.replication.spool_max,
                                min_free_bytes=scenario.replication.spool_min_free)
        return self._spool

    def applier(self) -> Applier:
        if self._applier is None:
            scenario = self._scenario()
            self._applier = Applier([root.replica for root in scenario.roots],
                                    scenario.sync.block_size)
        return self._applier

    def close(self) -> None:
        with self.lock:
            if self._applier is not None:
                self._applier.flush()
                self._persist(self.applied)
                self._applier.close()
                self._applier = None
            if self._spool is not None:
                self._spool.close()
                self._spool = None

    def _persist(self, durable: int) -> None:
        self.applied_durable = durable
        self.engine.store.set_meta(self._key, json.dumps(
            {"durable": durable, "suspended": self.suspended}))

    # --- positions ------------------------------------------------------------------------------

    @property
    def spooled(self) -> int:
        return int(self._spool.last_seq) if self._spool is not None else 0

    @property
    def backlog(self) -> int:
        """Records held in the spool, not yet applied."""
        return max(0, self.spooled - self.applied)

    def positions(self) -> tuple[int, int]:
        """(received, durable) as the master needs them."""
        with self.lock:
            received = max(self.applied, self.spooled)
            durable = max(self.applied_durable, self.spooled)  # the spool is synced on append
            return received, durable

    def begin(self, base_seq: int) -> tuple[int, int]:
        """A master (re)connects: records up to ``base_seq`` were superseded by a
        synchronization (or are already applied)."""
        with self.lock:
            if self.applied < base_seq:
                if self._spool is not None and self._spool.last_seq <= base_seq:
                    self._spool.reset(base_seq)
                self.applied = base_seq
                self._persist(base_seq)
            return self.positions()

    # --- records --------------------------------------------------------------------------------

    def receive(self, first_seq: int, records: list[Message], ack: str) -> None:
        """Records ``first_seq..`` in order (already cut to the ones not received before)."""
        with self.lock:
            if self.retired:
                raise RemoteProtocolError(f"{self.engine.name} took over scenario {self.name}: "
                                          "it applies no more changes")
            if self.suspended or self.backlog:
                spool = self._open_spool()
                if spool.last_seq != first_seq - 1:
                    if spool.record_count == 0 and first_seq - 1 >= spool.last_seq:
                        spool.reset(first_seq - 1)
                    else:
                        raise RemoteProtocolError(
                            f"spool of {self.name} ends at {spool.last_seq}, got {first_seq}")
                spool.append([encode_record(r) for r in records])
                spool.sync()
                return
            applier = self.applier()
            seq = first_seq
            for record in records:
                applier.apply(record)
                self.applied = seq
                if applier.needs_barrier:  # a rename: durable before anything after it
                    self.flush()
                seq += 1
            if ack == "durable" or time.monotonic() - self.last_flush >= FLUSH_INTERVAL:
                self.flush()

    def flush(self) -> None:
        with self.lock:
            if self._applier is not None and self.applied > self.applied_durable:
                self._applier.flush()
                self._persist(self.applied)
            self.last_flush = time.monotonic()

    # --- suspend and resume ---------------------------------------------------------------------

    def suspend(self) -> None:
        with self.lock:
            self.flush()
            self.suspended = True
            self._persist(self.applied_durable)

    def resume(self) -> None:
        with self.lock:
            self.suspended = False
            self._persist(self.applied_durable)
        self.start_drain()

    def start_drain(self) -> None:
        with self.lock:
            if self._draining or not self.backlog or self.suspended:
                return
            self._draining = True
        threading.Thread(target=self._drain, name=f"drain-{self.name}", daemon=True).start()

    def _apply_spooled(self) -> None:
        """Apply the next slice of the spooled backlog and make it durable (under the lock)."""
        assert self._spool is not None
        batch = self._spool.read(self.applied + 1, DRAIN_BYTES)
        applier = self.applier()
        for seq, data in batch:
            (record,) = decode_records(data, 1)
            applier.apply(record)
            self.applied = seq
            if applier.needs_barrier:
                self.flush()
        self.flush()
        self._spool.trim(self.applied_durable)

    def retire(self) -> None:
        """This host takes over the scenario: apply every change held in the spool (a
        suspended replica's too), make it durable, close, and refuse anything more.

        Raises:
            OSError: applying failed (a full disk); the target stays usable, not retired.
        """
        with self.lock:
            self.suspended = False
            while self._spool is not None and self.backlog:
                self._apply_spooled()
            self.flush()
            self.retired = True
        self.close()

    def _drain(self) -> None:
        """Apply the spooled backlog in order, in slices, letting the stream in between."""
        try:
            while True:
                with self.lock:
                    if self.suspended or self.retired or not self.backlog or self._spool is None:
                        self.flush()
                        if self._spool is not None and not self.backlog:
                            self._spool.trim(self._spool.last_seq)
                        return
                    self._apply_spooled()
        except Exception as exc:  # OSError, SpoolError, RemoteProtocolError, or a bug
            if not isinstance(exc, OSError | SpoolError | RemoteProtocolError):
                log.exception("scenario %s: applying the spooled changes failed", self.name)
            self.engine.emit(ev.APPLY_FAILED, f"scenario {self.name}: applying the spooled "
                             f"changes failed: {exc}", self.name)
        finally:
            with self.lock:
                self._draining = False

    def status(self) -> dict[str, Any]:
        with self.lock:
            received, durable = self.positions()
            return {"suspended": self.suspended, "applied_seq": self.applied,
                    "durable_seq": durable, "received_seq": received,
                    "spool_bytes": self._spool.size_bytes if self._spool is not None else 0,
                    "backlog_records": self.backlog,
                    "received_bytes": self.received_bytes,
                    "received_records": self.received_records,
                    "applied_files": self._applier.counters.files if self._applier else 0,
                    "applied_bytes": self._applier.counters.bytes if self._applier else 0}


class ReplicaStream:
    """Serves one "replicate" session: the master's engine streams, we apply and acknowledge."""

    def __init__(self, engine: Engine, session: Session, peer: str) -> None:
        self.engine = engine
        self.session = session
        self.peer = peer
        self.scenario_name: str | None = None

    def run(self) -> None:
        begin = self.session.expect(ReplicateBegin)
        self.scenario_name = begin.scenario
        row = self.engine.store.scenario(begin.scenario)
        if row is None or not replicated_here(self.engine.name, row, self.peer):
            epoch, active = self.engine.epoch_record(begin.scenario)
            if row is not None and active != self.peer:  # a switchover moved the scenario
                self.session.fail(ev.STALE_EPOCH.code,
                                  f"{self.engine.name} follows {active} for scenario "
                                  f"{begin.scenario!r} since epoch {epoch}; {self.peer} must "
                                  f"step down (it does once it hears {active})")
                return
            self.session.fail(ev.PROTOCOL_ERROR.code,
                              f"{self.engine.name} does not replicate scenario "
                              f"{begin.scenario!r} for {self.peer}; add the scenario again")
            return
        refusal = self.engine.fence(begin.scenario, self.peer, begin.epoch)
        if refusal is not None:
            self.session.fail(ev.STALE_EPOCH.code, refusal)
            return
        scenario = parse_document(row.document, f"scenario {begin.scenario!r}")
        ack = scenario.replication.ack
        target = self.engine.replica_target(begin.scenario)
        received, durable = target.begin(begin.base_seq)
        self.session.send(ReplicateReady(received_seq=received, durable_seq=durable))
        target.start_drain()
        try:
            while True:
                message = self.session.recv()
                if isinstance(message, Batch):
                    try:
                        self._batch(target, message, ack)
                    except OSError as exc:  # disk full, permissions: say so, master retries
                        self._apply_failed(target, str(exc))
                        return
                    target.last_failure = None
                elif isinstance(message, Goodbye):
                    return  # the master stops (scenario stopped, engine shutting down)
                elif not isinstance(message, Heartbeat):
                    raise RemoteProtocolError(
                        f"unexpected {type(message).__name__} in a replicate session")
                if ack != "durable" and time.monotonic() - target.last_flush >= FLUSH_INTERVAL:
                    target.flush()
                received, durable = target.positions()
                self.session.send(Ack(received_seq=received, durable_seq=durable))
        finally:
            target.flush()

    def _apply_failed(self, target: ReplicaTarget, reason: str) -> None:
        """Report once per distinct reason (the master retries every few seconds)."""
        if target.last_failure != reason:
            target.last_failure = reason
            self.engine.emit(ev.APPLY_FAILED, f"scenario {self.scenario_name}: {reason}; the "
                             "master keeps the changes and sends them again",
                             self.scenario_name)
        self.session.fail(ev.APPLY_FAILED.code, f"{self.engine.name}: {reason}")

    def _batch(self, target: ReplicaTarget, batch: Batch, ack: str) -> None:
        received, _ = target.positions()
        last = batch.first_seq + batch.count - 1
        if last <= received:
            return  # all seen before a reconnect
        if batch.first_seq > received + 1:
            raise RemoteProtocolError(f"records {received + 1}..{batch.first_seq - 1} are "
                                      "missing from the stream")
        raw = (decompress_batch(batch.payload, batch.raw_size) if batch.compressed
               else batch.payload)
        records = decode_records(raw, batch.count)
        skip = received + 1 - batch.first_seq
        target.received_bytes += len(raw)
        target.received_records += batch.count - skip
        target.receive(received + 1, records[skip:], ack)
