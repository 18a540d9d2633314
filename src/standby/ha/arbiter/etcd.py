"""The ``etcd`` arbiter: a leader lease in etcd, for sites with many hosts.

Two keys per scenario, under ``/standby/<scenario>/``:

- ``leader``: JSON ``{"host": ..., "epoch": ...}`` attached to the holder's lease. It exists
  only while that lease lives; etcd deletes it when the lease expires or is revoked.
- ``epoch``: the highest epoch ever granted, with no lease. It outlives the leader key, so a
  newcomer learns the epoch to beat even after the old holder's lease ran out.

Acquire reads both keys, then (if nobody holds the leader key and our epoch is higher) grants a
fresh lease and runs one transaction: *if* ``leader`` does not exist *and* ``epoch`` was not
changed since we read it, put both. Exactly one contender wins; the others see the winner.
Renew is a lease keepalive followed by a read of the leader key: a lease that expired, or a key
that now names another holder or lease, ends our hold. Release revokes our lease, which deletes
only keys attached to it, so it can never remove another host's hold.

Time: every public call gets a budget of ``timeout`` seconds, and each HTTP request is given
what is left of it (requests applies it to the connect and to each read). When an endpoint
fails to connect or answer, the next one is tried within the same budget, and later calls start
from the endpoint that last worked. Our hold ends, on our own clock, ``lease_seconds`` after
the last successful renewal was *sent*: etcd starts the lease's clock when the request arrives,
so we always stop believing we hold before etcd frees the key for someone else (an etcd leader
change extends leases, which only widens that margin).

We use etcd3gw (etcd's HTTP/JSON gateway) only for its session, URL and error mapping, and
build the JSON bodies of the v3 API ourselves: its ``lease()`` drops the granted TTL, and its
``create()`` cannot compare a second key. etcd 3.4 or later (the ``/v3/`` gateway path).

All calls block; the controller runs them in a worker thread. A lock serializes them.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, cast
from urllib.parse import urlsplit

import etcd3gw
from etcd3gw.exceptions import ConnectionFailedError, ConnectionTimeoutError, Etcd3Exception

from standby.config import check_name

from .base import ArbiterState, check_acquire

__all__ = ["EtcdArbiter"]

#: The gateway path of etcd 3.4 and later; fixed, so no discovery request is spent on it.
API_PATH = "/v3/"


class _Unavailable(Exception):
    """etcd could not be asked: no endpoint answered usefully within the budget."""


@dataclass(frozen=True, slots=True)
class _Leader:
    """The leader key as read from etcd."""

    host: str | None  # None: the value is not our JSON
    epoch: int | None
    lease: int  # 0: not attached to a lease


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """The two keys, read together."""

    leader: _Leader | None
    highest: int  # the highest epoch granted (0: none)
    epoch_mod: int  # the epoch key's mod_revision (0: absent), for the acquire compare


class EtcdArbiter:
    """Leader lease for one scenario, acting for ``host``; see the module docstring."""

    def __init__(self, endpoints: list[str], scenario: str, host: str, lease_seconds: int,
                 timeout: float = 2.0, *, clock: Callable[[], float] = time.monotonic) -> None:
        """
        Args:
            endpoints: client URLs of the etcd cluster, e.g. ``["http://10.0.0.5:2379"]``.
            scenario: the scenario name (keys live under ``/standby/<scenario>/``).
            host: the engine name this arbiter acts for.
            lease_seconds: the lease TTL; etcd may raise it to its minimum (2 s with the default
                election timeout), and we then use what it granted.
            timeout: the budget of each call, in seconds; below ``lease_seconds``.
            clock: the monotonic clock the controller's ``now`` comes from.
        """
        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        if lease_seconds < 1:
            raise ValueError(f"lease_seconds must be at least 1, got {lease_seconds}")
        if not 0 < timeout < lease_seconds:
            raise ValueError(f"timeout must be positive and below lease_seconds "
                             f"({lease_seconds}), got {timeout}")
        self.scenario = check_name("scenario", scenario)
        self.host = check_name("host", host)
        self.lease_seconds = lease_seconds
        self.timeout = timeout
        self._clock = clock
        self._clients = [_client(url, timeout) for url in endpoints]
        self._current = 0
        self._lock = threading.Lock()
        prefix = f"/standby/{scenario}/"
        self._leader_key = _b64(prefix + "leader")
        self._epoch_key = _b64(prefix + "epoch")
        # Our hold: the lease id, the epoch we acquired with, and our local expiry bound.
        self._lease: int | None = None
        self._epoch: int | None = None
        self._expires: float | None = None
        # The last answer etcd gave, reported (marked unreachable) when it cannot be asked.
        self._known = ArbiterState(holder=None, holder_epoch=None, highest_epoch=0,
                                   we_hold=False, expires_at=None, reachable=False,
                                   detail="etcd not asked yet")

    def __repr__(self) -> str:
        return (f"<EtcdArbiter scenario={self.scenario} host={self.host} lease={self._lease} "
                f"epoch={self._epoch}>")

    # -- the Arbiter interface -------------------------------------------------------------

    def state(self, now: float) -> ArbiterState:
        with self._lock:
            deadline = time.monotonic() + self.timeout
            try:
                with _answers():
                    seen = self._read(deadline)
                    leader, ttl = seen.leader, None
                    if leader is not None and leader.lease and leader.lease != self._lease:
                        ttl = self._lease_ttl(deadline, leader.lease)
            except _Unavailable as exc:
                return self._unreachable(now, str(exc))
            self._known = self._describe(now, leader, seen.highest, ttl)
            return self._known

    def try_acquire(self, host: str, epoch: int) -> bool:
        with self._lock:
            check_acquire(self.host, host, epoch, self._epoch)
            deadline = time.monotonic() + self.timeout
            if self._lease is not None:  # already ours at this epoch: keep it
                return self._renew(deadline)
            try:
                with _answers():
                    return self._acquire(deadline, epoch)
            except _Unavailable:
                return False

    def renew(self) -> bool:
        with self._lock:
            if self._lease is None:
                return False
            return self._renew(time.monotonic() + self.timeout)

    def release(self) -> None:
        with self._lock:
            if self._lease is None:
                return
            lease, self._lease, self._epoch, self._expires = self._lease, None, None, None
            # If etcd cannot be told, the lease still runs out by itself within its TTL.
            self._revoke(time.monotonic() + self.timeout, lease)

    def close(self) -> None:
        """Close the HTTP sessions (does not release the hold)."""
        for client in self._clients:
            client.session.close()

    # -- steps -----------------------------------------------------------------------------

    def _acquire(self, deadline: float, epoch: int) -> bool:
        seen = self._read(deadline)
        if seen.leader is not None or epoch <= seen.highest:
            return False
        sent = self._clock()
        answer = self._post(deadline, "lease/grant", {"TTL": self.lease_seconds, "ID": 0})
        lease, ttl = int(answer["ID"]), int(answer["TTL"])
        value = json.dumps({"host": self.host, "epoch": epoch}, separators=(",", ":"))
        won, now_leader = self._create(deadline, lease, value, epoch, seen.epoch_mod)
        # After a timeout the transaction may have been applied before we failed over to
        # another endpoint: a leader key carrying our fresh lease is then our own.
        if won or (now_leader is not None and now_leader.lease == lease):
            self._lease, self._epoch, self._expires = lease, epoch, sent + ttl
            return True
        self._revoke(deadline, lease)
        return False

    def _create(self, deadline: float, lease: int, value: str, epoch: int,
                epoch_mod: int) -> tuple[bool, _Leader | None]:
        """The acquire transaction; returns whether it won and the leader key if it lost."""
        txn = {
            "compare": [
                {"key": self._leader_key, "target": "VERSION", "result": "EQUAL", "version": 0},
                {"key": self._epoch_key, "target": "MOD", "result": "EQUAL",
                 "mod_revision": epoch_mod},
            ],
            "success": [
                {"request_put": {"key": self._leader_key, "value": _b64(value), "lease": lease}},
                {"request_put": {"key": self._epoch_key, "value": _b64(str(epoch))}},
            ],
            "failure": [{"request_range": {"key": self._leader_key}}],
        }
        answer = self._post(deadline, "kv/txn", txn)
        if answer.get("succeeded"):
            return True, None
        kvs = answer["responses"][0]["response_range"].get("kvs", [])
        return False, _parse_leader(kvs[0]) if kvs else None

    def _renew(self, deadline: float) -> bool:
        assert self._lease is not None
        sent = self._clock()
        try:
            with _answers():
                answer = self._post(deadline, "lease/keepalive", {"ID": self._lease})
                ttl = int(answer["result"].get("TTL", -1))
                leader = self._read(deadline).leader if ttl > 0 else None
        except _Unavailable:
            return False
        if ttl <= 0 or leader is None or not self._is_ours(leader):
            lease, self._lease, self._epoch, self._expires = self._lease, None, None, None
            if ttl > 0:  # alive but guarding nothing of ours: let it go now
                self._revoke(deadline, lease)
            return False
        self._expires = sent + ttl
        return True

    def _read(self, deadline: float) -> _Snapshot:
        """The leader key and the highest epoch granted, in one consistent read."""
        txn = {"compare": [], "success": [{"request_range": {"key": self._leader_key}},
                                          {"request_range": {"key": self._epoch_key}}]}
        answer = self._post(deadline, "kv/txn", txn)
        leader_kvs, epoch_kvs = (r["response_range"].get("kvs", []) for r in answer["responses"])
        leader = _parse_leader(leader_kvs[0]) if leader_kvs else None
        epoch_mod = int(epoch_kvs[0]["mod_revision"]) if epoch_kvs else 0
        highest = int(_unb64(epoch_kvs[0].get("value", ""))) if epoch_kvs else 0
        if leader is not None and leader.epoch is not None:
            highest = max(highest, leader.epoch)
        return _Snapshot(leader, highest, epoch_mod)

    def _lease_ttl(self, deadline: float, lease: int) -> int:
        """Seconds left on a lease; -1 when it has expired.

        The gateway leaves out fields that are zero (proto3 JSON): in a lease's last second
        the answer has no TTL at all, which means 0, not a malformed answer."""
        return int(self._post(deadline, "kv/lease/timetolive", {"ID": lease}).get("TTL", 0))

    def _revoke(self, deadline: float, lease: int) -> None:
        """Revoke a lease, best effort: an unreachable etcd lets it run out by itself."""
        with suppress(_Unavailable):
            self._post(deadline, "kv/lease/revoke", {"ID": lease}, missing_ok=True)

    def _is_ours(self, leader: _Leader) -> bool:
        return leader.lease == self._lease and leader.host == self.host

    # -- reports ---------------------------------------------------------------------------

    def _describe(self, now: float, leader: _Leader | None, highest: int,
                  ttl: int | None) -> ArbiterState:
        if leader is None:
            if self._lease is not None:
                self._lease = self._epoch = self._expires = None
            return ArbiterState(holder=None, holder_epoch=None, highest_epoch=highest,
                                we_hold=False, expires_at=None, reachable=True,
                                detail=f"nobody holds the etcd lease; highest epoch {highest}")
        holder = leader.host if leader.host is not None else "(unreadable leader key)"
        if self._lease is not None and self._is_ours(leader):
            assert self._expires is not None
            we_hold = now < self._expires
            detail = (f"we hold the etcd lease at epoch {leader.epoch}, "
                      f"{self._expires - now:.1f} s left on our clock" if we_hold else
                      f"the etcd lease is ours at epoch {leader.epoch} but was not renewed "
                      f"in time ({now - self._expires:.1f} s late)")
            return ArbiterState(holder=holder, holder_epoch=leader.epoch,
                                highest_epoch=highest, we_hold=we_hold,
                                expires_at=self._expires, reachable=True, detail=detail)
        if self._lease is not None:  # the key names another holder or lease: ours is moot
            self._lease = self._epoch = self._expires = None
        expires_at = None if ttl is None else now + max(ttl, 0)
        left = "no lease" if ttl is None else f"{max(ttl, 0)} s left"
        return ArbiterState(holder=holder, holder_epoch=leader.epoch, highest_epoch=highest,
                            we_hold=False, expires_at=expires_at, reachable=True,
                            detail=f"{holder} holds the etcd lease at epoch {leader.epoch} "
                                   f"({left})")

    def _unreachable(self, now: float, error: str) -> ArbiterState:
        known = self._known
        if self._lease is None:
            return ArbiterState(holder=known.holder, holder_epoch=known.holder_epoch,
                                highest_epoch=known.highest_epoch, we_hold=False,
                                expires_at=known.expires_at, reachable=False,
                                detail=f"etcd unreachable ({error}); last seen: {known.detail}")
        assert self._expires is not None
        we_hold = now < self._expires
        hold = (f"our lease runs out in {self._expires - now:.1f} s unless renewed" if we_hold
                else f"our lease ran out {now - self._expires:.1f} s ago: stop the workload")
        return ArbiterState(holder=self.host, holder_epoch=self._epoch,
                            highest_epoch=max(known.highest_epoch, self._epoch or 0),
                            we_hold=we_hold, expires_at=self._expires, reachable=False,
                            detail=f"etcd unreachable ({error}); {hold}")

    # -- transport -------------------------------------------------------------------------

    def _post(self, deadline: float, path: str, body: dict[str, Any], *,
              missing_ok: bool = False) -> dict[str, Any]:
        """One v3 API request within the budget, failing over between endpoints."""
        errors = []
        for _ in self._clients:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            client = self._clients[self._current]
            client.timeout = remaining
            try:
                return cast(dict[str, Any], client.post(client.get_url(path), json=body))
            except (ConnectionFailedError, ConnectionTimeoutError, OSError) as exc:
                # OSError: requests' other errors (a cut-off or undecodable answer).
                errors.append(f"{client.base_url}: {_first_line(exc)}")
                self._current = (self._current + 1) % len(self._clients)
            except Etcd3Exception as exc:
                if missing_ok and "not found" in (exc.detail_text or ""):
                    return {}
                raise _Unavailable(f"{client.base_url} refused {path}: "
                                   f"{_first_line(exc)}") from exc
        if not errors:
            errors.append(f"no answer within {self.timeout:g} s")
        raise _Unavailable("; ".join(errors))


@contextmanager
def _answers() -> Iterator[None]:
    """Count a malformed answer from etcd as no answer."""
    try:
        yield
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise _Unavailable(f"malformed answer from etcd ({type(exc).__name__}: {exc})") from exc


def _client(url: str, timeout: float) -> etcd3gw.Etcd3Client:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"etcd endpoint {url!r} is not an http:// or https:// URL")
    return etcd3gw.Etcd3Client(host=parts.hostname, port=parts.port or 2379,
                               protocol=parts.scheme, timeout=timeout, api_path=API_PATH)


def _parse_leader(kv: dict[str, Any]) -> _Leader:
    lease = int(kv.get("lease", 0))
    try:
        data = json.loads(_unb64(kv.get("value", "")))
        host, epoch = data["host"], data["epoch"]
        if isinstance(host, str) and isinstance(epoch, int):
            return _Leader(host, epoch, lease)
    except (ValueError, TypeError, KeyError):
        pass
    return _Leader(None, None, lease)


def _first_line(exc: BaseException) -> str:
    parts = [str(exc), getattr(exc, "detail_text", None) or ""]
    text = " ".join(part for part in parts if part) or type(exc).__name__
    return text.splitlines()[0][:200]


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode("ascii")


def _unb64(text: str) -> str:
    return base64.b64decode(text).decode(errors="replace")
