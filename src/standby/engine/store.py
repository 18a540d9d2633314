"""The engine's durable state in SQLite: peers, scenarios, epochs, events and reports.

One connection shared by the engine's threads behind a lock; WAL mode so readers (the API) do
not wait for writers. Every write is its own transaction, committed before the call returns.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .events import EventType

_SCENARIOS = """
CREATE TABLE IF NOT EXISTS scenarios (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL CHECK (role IN ('master', 'replica', 'witness')),
    document TEXT NOT NULL,
    state TEXT NOT NULL,
    consistent INTEGER NOT NULL DEFAULT 0,
    stats TEXT NOT NULL DEFAULT '{}',
    updated_at REAL NOT NULL
);
"""
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS peers (
    name TEXT PRIMARY KEY,
    address TEXT NOT NULL,
    fingerprint TEXT NOT NULL UNIQUE,
    cert_der BLOB NOT NULL,
    added_at REAL NOT NULL
);
""" + _SCENARIOS + """
CREATE TABLE IF NOT EXISTS epochs (
    scenario TEXT PRIMARY KEY,
    epoch INTEGER NOT NULL CHECK (epoch >= 1),
    active TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    code TEXT NOT NULL,
    severity TEXT NOT NULL,
    scenario TEXT,
    message TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_scenario ON events (scenario, id);
CREATE TABLE IF NOT EXISTS reports (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    scenario TEXT NOT NULL,
    ts REAL NOT NULL,
    report TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS reports_scenario ON reports (scenario, id);
"""

#: Events and reports kept per engine; older rows are trimmed.
MAX_EVENTS = 100_000
MAX_REPORTS_PER_SCENARIO = 100


@dataclass(frozen=True, slots=True)
class Peer:
    name: str
    address: str
    fingerprint: str
    cert_der: bytes
    added_at: float

    def public(self) -> dict[str, Any]:
        return {"name": self.name, "address": self.address, "fingerprint": self.fingerprint,
                "added_at": self.added_at}


@dataclass(frozen=True, slots=True)
class ScenarioRow:
    name: str
    role: str
    document: dict[str, Any]
    state: str
    consistent: bool
    stats: dict[str, Any]
    updated_at: float


@dataclass(frozen=True, slots=True)
class EventRow:
    id: int
    ts: float
    code: str
    severity: str
    scenario: str | None
    message: str

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "ts": self.ts, "code": self.code, "severity": self.severity,
                "scenario": self.scenario, "message": self.message}


class Store:
    """Thread-safe access to the state database."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._migrate()
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def _migrate(self) -> None:
        """Bring a database made by an older release to the current schema."""
        row = self._db.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND "
                               "name = 'scenarios'").fetchone()
        if row is not None and "'witness'" not in row[0]:
            # Scenarios gained the witness role: SQLite cannot alter a CHECK, so copy.
            self._db.executescript(
                "BEGIN IMMEDIATE; ALTER TABLE scenarios RENAME TO scenarios_old;" + _SCENARIOS
                + "INSERT INTO scenarios SELECT * FROM scenarios_old; DROP TABLE scenarios_old;"
                  " COMMIT;")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # --- meta -----------------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return rows[0][0] if rows else None

    def delete_meta(self, key: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM meta WHERE key = ?", (key,))

    def set_meta(self, key: str, value: str) -> None:
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    # --- peers ----------------------------------------------------------------------------------

    def peers(self) -> list[Peer]:
        rows = self._query("SELECT name, address, fingerprint, cert_der, added_at FROM peers "
                           "ORDER BY name")
        return [Peer(*row) for row in rows]

    def peer(self, name: str) -> Peer | None:
        return next((p for p in self.peers() if p.name == name), None)

    def put_peer(self, peer: Peer) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM peers WHERE name = ? OR fingerprint = ?",
                       (peer.name, peer.fingerprint))
            db.execute("INSERT INTO peers VALUES (?, ?, ?, ?, ?)",
                       (peer.name, peer.address, peer.fingerprint, peer.cert_der, peer.added_at))

    def remove_peer(self, name: str) -> bool:
        with self._tx() as db:
            return db.execute("DELETE FROM peers WHERE name = ?", (name,)).rowcount > 0

    # --- scenarios ------------------------------------------------------------------------------

    def scenarios(self) -> list[ScenarioRow]:
        rows = self._query("SELECT name, role, document, state, consistent, stats, updated_at "
                           "FROM scenarios ORDER BY name")
        return [ScenarioRow(r[0], r[1], json.loads(r[2]), r[3], bool(r[4]), json.loads(r[5]),
                            r[6]) for r in rows]

    def scenario(self, name: str) -> ScenarioRow | None:
        return next((s for s in self.scenarios() if s.name == name), None)

    def put_scenario(self, name: str, role: str, document: dict[str, Any], state: str) -> None:
        """Create or replace a scenario's definition, keeping its consistency and statistics."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO scenarios (name, role, document, state, updated_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (name) DO UPDATE SET role = excluded.role, "
                "document = excluded.document, state = excluded.state, "
                "updated_at = excluded.updated_at",
                (name, role, json.dumps(document), state, time.time()),
            )

    def update_scenario(self, name: str, *, state: str | None = None,
                        consistent: bool | None = None,
                        stats: dict[str, Any] | None = None) -> None:
        sets: list[str] = ["updated_at = ?"]
        args: list[Any] = [time.time()]
        if state is not None:
            sets.append("state = ?")
            args.append(state)
        if consistent is not None:
            sets.append("consistent = ?")
            args.append(int(consistent))
        if stats is not None:
            sets.append("stats = ?")
            args.append(json.dumps(stats))
        with self._tx() as db:
            db.execute(f"UPDATE scenarios SET {', '.join(sets)} WHERE name = ?", (*args, name))

    def remove_scenario(self, name: str) -> bool:
        with self._tx() as db:
            db.execute("DELETE FROM epochs WHERE scenario = ?", (name,))
            return db.execute("DELETE FROM scenarios WHERE name = ?", (name,)).rowcount > 0

    # --- epochs ---------------------------------------------------------------------------------

    def epoch(self, scenario: str) -> tuple[int, str] | None:
        """The scenario's epoch record on this host: (epoch, active host), or None."""
        rows = self._query("SELECT epoch, active FROM epochs WHERE scenario = ?", (scenario,))
        return (int(rows[0][0]), str(rows[0][1])) if rows else None

    def raise_epoch(self, scenario: str, epoch: int, active: str) -> bool:
        """Record (epoch, active) durably if ``epoch`` is above the stored one (or none is
        stored). Epochs only go up: returns False, and changes nothing, otherwise; storing the
        record already held is a no-op that returns True."""
        with self._tx() as db:
            row = db.execute("SELECT epoch, active FROM epochs WHERE scenario = ?",
                             (scenario,)).fetchone()
            if row is not None:
                if (row[0], row[1]) == (epoch, active):
                    return True
                if row[0] >= epoch:
                    return False
            db.execute("INSERT OR REPLACE INTO epochs (scenario, epoch, active, updated_at) "
                       "VALUES (?, ?, ?, ?)", (scenario, epoch, active, time.time()))
            return True

    # --- events ---------------------------------------------------------------------------------

    def add_event(self, event: EventType, message: str, scenario: str | None = None) -> EventRow:
        now = time.time()
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO events (ts, code, severity, scenario, message) VALUES (?, ?, ?, ?, ?)",
                (now, event.code, event.severity.value, scenario, message),
            )
            row_id = int(cur.lastrowid or 0)
            if row_id % 1000 == 0:
                db.execute("DELETE FROM events WHERE id <= ?", (row_id - MAX_EVENTS,))
        return EventRow(row_id, now, event.code, event.severity.value, scenario, message)

    def events(self, scenario: str | None = None, after: int = 0,
               limit: int = 1000) -> list[EventRow]:
        if scenario is None:
            rows = self._query("SELECT * FROM (SELECT id, ts, code, severity, scenario, message "
                               "FROM events WHERE id > ? ORDER BY id DESC LIMIT ?) ORDER BY id",
                               (after, limit))
        else:
            rows = self._query("SELECT * FROM (SELECT id, ts, code, severity, scenario, message "
                               "FROM events WHERE scenario = ? AND id > ? ORDER BY id DESC "
                               "LIMIT ?) ORDER BY id", (scenario, after, limit))
        return [EventRow(*row) for row in rows]

    # --- reports --------------------------------------------------------------------------------

    def add_report(self, scenario: str, report: dict[str, Any]) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO reports (scenario, ts, report) VALUES (?, ?, ?)",
                       (scenario, time.time(), json.dumps(report)))
            db.execute("DELETE FROM reports WHERE scenario = ? AND id NOT IN (SELECT id FROM "
                       "reports WHERE scenario = ? ORDER BY id DESC LIMIT ?)",
                       (scenario, scenario, MAX_REPORTS_PER_SCENARIO))

    def last_report(self, scenario: str) -> dict[str, Any] | None:
        rows = self._query("SELECT report FROM reports WHERE scenario = ? ORDER BY id DESC "
                           "LIMIT 1", (scenario,))
        return json.loads(rows[0][0]) if rows else None
