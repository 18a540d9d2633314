"""What hosts tell each other about a scenario in their heartbeats, and the board that keeps
the latest word of each.

A :class:`HostStatus` is one host's account of itself for one scenario: its epoch record, its
role, its workload, and where its replication stands. Every Is Alive heartbeat carries the
sender's status, and every answer the receiver's, so each exchange tells both sides. The
witness answers with ``heard``: how long ago it last heard from each host, which is how a
standby learns whether the witness still sees the active host.

On the wire a status is plain data (``HaHeartbeat.status``, ``Reply.data``); :meth:`HostStatus.
from_wire` checks every field and raises ``ValueError`` on anything malformed, which the
sessions turn into a protocol error (the session ends, the engine goes on).

The :class:`StatusBoard` keeps, per (scenario, host), the last status heard and when (on this
engine's monotonic clock). It is shared by the heartbeat threads, the peer server and the HA
controllers; every method takes its lock.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from ..config import NAME_PATTERN

StatusRole = Literal["active", "standby", "witness"]
Workload = Literal["running", "stopped", "unknown"]

_NAME_RE = re.compile(NAME_PATTERN)
_ROLES = ("active", "standby", "witness")
_WORKLOADS = ("running", "stopped", "unknown")
#: Most hosts one status may name (links, heard): a scenario has a handful.
MAX_HOSTS = 64


@dataclass(frozen=True, slots=True)
class LinkStatus:
    """The active host's stream to one replica."""

    connected: bool
    durable_seq: int


@dataclass(frozen=True, slots=True, kw_only=True)
class HostStatus:
    """One host's account of one scenario (see the module docstring)."""

    epoch: int
    active: str
    role: StatusRole
    workload: Workload = "unknown"
    #: The active host runs the scenario's replication (the scenario is started there).
    protecting: bool = False
    #: A standby holds a consistent copy (its last synchronization completed).
    consistent: bool = False
    #: A standby: the last change durable here. The active host: its last change (spool).
    durable_seq: int = 0
    last_seq: int = 0
    #: The active host: the age of its oldest change not yet durable on every replica, at
    #: any acknowledgement level (None: unknown).
    lag_s: float | None = None
    #: The active host: a (re)synchronization runs, or its changes are not replicated yet.
    synchronizing: bool = False
    links: dict[str, LinkStatus] = field(default_factory=dict)
    #: Seconds since this host last heard each other host of the scenario (None: never).
    heard: dict[str, float | None] = field(default_factory=dict)

    def to_wire(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "active": self.active, "role": self.role,
                "workload": self.workload, "protecting": self.protecting,
                "consistent": self.consistent, "durable_seq": self.durable_seq,
                "last_seq": self.last_seq, "lag_s": self.lag_s,
                "synchronizing": self.synchronizing,
                "links": {name: {"connected": link.connected, "durable_seq": link.durable_seq}
                          for name, link in self.links.items()},
                "heard": dict(self.heard)}

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> HostStatus:
        """Check and read a status from a peer.

        Raises:
            ValueError: a field is missing, of the wrong type or out of range.
        """
        links = _mapping(data, "links")
        heard = _mapping(data, "heard")
        return cls(
            epoch=_int(data, "epoch", minimum=1), active=_name(data.get("active"), "active"),
            role=_choice(data, "role", _ROLES), workload=_choice(data, "workload", _WORKLOADS),
            protecting=_bool(data, "protecting"), consistent=_bool(data, "consistent"),
            durable_seq=_int(data, "durable_seq"), last_seq=_int(data, "last_seq"),
            lag_s=_seconds(data.get("lag_s"), "lag_s"),
            synchronizing=_bool(data, "synchronizing"),
            links={_name(name, "links"): _link(link) for name, link in links.items()},
            heard={_name(name, "heard"): _seconds(age, "heard") for name, age in heard.items()})


def _mapping(data: dict[str, Any], key: str) -> dict[str, Any]:
    value = data.get(key, {})
    if not isinstance(value, dict) or len(value) > MAX_HOSTS:
        raise ValueError(f"status.{key} must be a table of at most {MAX_HOSTS} hosts")
    return value


def _link(value: object) -> LinkStatus:
    if not isinstance(value, dict):
        raise ValueError("status.links entries must be tables")
    return LinkStatus(_bool(value, "connected"), _int(value, "durable_seq"))


def _int(data: dict[str, Any], key: str, *, minimum: int = 0) -> int:
    value = data.get(key)
    if type(value) is not int or not minimum <= value < 1 << 64:
        raise ValueError(f"status.{key} must be an integer >= {minimum}, got {value!r}")
    return value


def _bool(data: dict[str, Any], key: str) -> bool:
    value = data.get(key)
    if type(value) is not bool:
        raise ValueError(f"status.{key} must be true or false, got {value!r}")
    return value


def _choice(data: dict[str, Any], key: str, allowed: tuple[str, ...]) -> Any:
    value = data.get(key)
    if value not in allowed:
        raise ValueError(f"status.{key} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def _seconds(value: object, key: str) -> float | None:
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool) \
            or not math.isfinite(value) or value < 0:
        raise ValueError(f"status.{key} must be a number of seconds >= 0, got {value!r}")
    return float(value)


def _name(value: object, key: str) -> str:
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise ValueError(f"status.{key} must hold engine names, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class Heard:
    """A host's last status, and when it arrived (monotonic seconds)."""

    status: HostStatus
    at: float


class StatusBoard:
    """The last status heard from each host of each scenario (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._heard: dict[tuple[str, str], Heard] = {}
        self._listeners: list[Callable[[str, str], None]] = []

    def __repr__(self) -> str:
        with self._lock:
            return f"<StatusBoard {sorted(self._heard)}>"

    def heard(self, scenario: str, host: str, status: HostStatus, at: float) -> None:
        """Record ``status`` from ``host``; an older arrival than the one kept changes nothing.
        Listeners hear of a record that differs from the one kept before."""
        key = (scenario, host)
        with self._lock:
            old = self._heard.get(key)
            if old is not None and old.at > at:
                return
            self._heard[key] = Heard(status, at)
            listeners = list(self._listeners)
        changed = old is None or (old.status.epoch, old.status.active) != (status.epoch,
                                                                          status.active)
        if changed:
            for listener in listeners:
                listener(scenario, host)

    def get(self, scenario: str, host: str) -> Heard | None:
        with self._lock:
            return self._heard.get((scenario, host))

    def ages(self, scenario: str, hosts: tuple[str, ...], now: float) -> dict[str, float | None]:
        """Seconds since each of ``hosts`` was last heard for ``scenario`` (None: never)."""
        with self._lock:
            heard = {host: self._heard.get((scenario, host)) for host in hosts}
        return {host: None if h is None else round(max(0.0, now - h.at), 3)
                for host, h in heard.items()}

    def forget(self, scenario: str) -> None:
        with self._lock:
            for key in [key for key in self._heard if key[0] == scenario]:
                del self._heard[key]

    def on_record_change(self, listener: Callable[[str, str], None]) -> None:
        """Call ``listener(scenario, host)`` whenever a host's epoch record changes."""
        with self._lock:
            self._listeners.append(listener)
