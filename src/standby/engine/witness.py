"""The witness: a third engine that arbitrates a scenario's promotions (``arbitration =
"witness"``).

The witness holds the scenario (role ``witness``: no data, no workload) and a durable epoch
record of its own. It never sends heartbeats; it answers those of the scenario's hosts, and
its answers say how long ago it last heard each host. That is how a standby that no longer
hears the active host learns whether the witness still does: if so, the link between the two
hosts is cut, not the active host dead, and the standby does not promote.

A promotion raises the epoch at the witness first, with an :class:`~standby.protocol.EpochClaim`
(a compare-and-set, :func:`judge_claim`): the witness records a claim only when its epoch is
above the witness's record, and

- a *failover* claim (a standby promoting itself) only names its sender, and only once the
  witness has not heard the active host for :func:`sight_window` seconds;
- a *handover* claim (a planned switchover) only comes from the host the record names active.

So two standbys cannot both win an epoch, and a standby cannot take over from an active host
the witness still hears.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from ..config import ConfigError, HaOptions, Scenario, parse_document
from ..protocol import PURPOSE_HA, EpochClaim, ProtocolError, Reply
from . import events as ev
from .channel import LinkError
from .ha_status import HostStatus, StatusBoard
from .session import PeerFailure

if TYPE_CHECKING:
    from .engine import Engine

log = logging.getLogger("standby.witness")


def sight_window(ha: HaOptions) -> float:
    """Seconds within which the witness must have heard a host to *see* it.

    ``lease_seconds + 2 x interval``: an active host stops its workload once it has had no
    contact with a standby or the witness for ``lease_seconds``, checked every ``interval``.
    So when the witness has not heard it for this long, it has stopped serving (or is about
    to, within one more cycle); the configuration keeps this at most ``timeout``.
    """
    return ha.lease_seconds + 2 * ha.interval


def witness_status(engine: Engine, scenario: Scenario, board: StatusBoard) -> HostStatus:
    """What the witness answers a heartbeat with: its record, and when it heard each host."""
    epoch, active = engine.epoch_record(scenario.name)
    return HostStatus(epoch=epoch, active=active, role="witness",
                      heard=board.ages(scenario.name, scenario.hosts, time.monotonic()))


#: Claims are judged one at a time: two standbys claiming the same epoch at once must not both
#: read the old record and both be told they won.
_JUDGING = threading.Lock()


def judge_claim(engine: Engine, board: StatusBoard, peer: str, claim: EpochClaim) -> Reply:
    """Record ``claim`` from ``peer`` if the rules of the module docstring allow it."""
    with _JUDGING:
        return _judge(engine, board, peer, claim)


def _judge(engine: Engine, board: StatusBoard, peer: str, claim: EpochClaim) -> Reply:
    row = engine.store.scenario(claim.scenario)
    if row is None or row.role != "witness":
        return Reply(ok=False, message=f"{engine.name} is not the witness of "
                     f"{claim.scenario!r}", data={})
    try:
        scenario = parse_document(row.document, f"scenario {claim.scenario!r}")
    except ConfigError as exc:
        return Reply(ok=False, message=str(exc), data={})
    epoch, active = engine.epoch_record(scenario.name)
    record = {"epoch": epoch, "active": active}
    if (claim.epoch, claim.active) == (epoch, active):
        return Reply(ok=True, message="already recorded", data=record)
    refusal = None
    if peer not in scenario.hosts or claim.active not in scenario.hosts:
        refusal = f"{peer} and {claim.active} must both be hosts of {scenario.name}"
    elif claim.epoch <= epoch:
        refusal = f"epoch {claim.epoch} is not above the witness's record (epoch {epoch}, " \
                  f"{active} active)"
    elif claim.failover:
        heard = board.get(scenario.name, active)  # never heard: count from our start
        age = time.monotonic() - (engine.ha.started if heard is None else heard.at)
        window = sight_window(scenario.ha)
        if claim.active != peer:
            refusal = f"a failover claim must name its sender {peer}, not {claim.active}"
        elif active != peer and age < window:
            refusal = f"the witness still sees {active} (heard {age:.1f} s ago, within " \
                      f"{window:g} s)"
    elif peer != active:
        refusal = f"only the active host {active} may hand over at epoch {epoch}"
    if refusal is not None:
        if claim.epoch <= epoch:
            engine.emit(ev.STALE_EPOCH, f"scenario {scenario.name}: claim of {peer} for "
                        f"epoch {claim.epoch} refused: {refusal}", scenario.name)
        log.info("scenario %s: claim of %s refused: %s", scenario.name, peer, refusal)
        return Reply(ok=False, message=refusal, data=record)
    if not engine.store.raise_epoch(scenario.name, claim.epoch, claim.active):
        epoch, active = engine.epoch_record(scenario.name)
        return Reply(ok=False, message=f"epoch {claim.epoch} is not above the witness's record "
                     f"(epoch {epoch}, {active} active)",
                     data={"epoch": epoch, "active": active})
    kind = "failover" if claim.failover else "handover"
    engine.emit(ev.EPOCH_RAISED, f"scenario {scenario.name}: {claim.active} active from epoch "
                f"{claim.epoch} ({kind} claimed by {peer}, granted by the witness)",
                scenario.name)
    return Reply(ok=True, message="recorded",
                 data={"epoch": claim.epoch, "active": claim.active})


class ClaimRefused(Exception):
    """The witness did not record an epoch claim; the message says why."""


def claim_at_witness(engine: Engine, scenario: str, witness: str, epoch: int, active: str, *,
                     failover: bool, timeout: float) -> None:
    """Ask ``witness`` to record (epoch, active) for ``scenario``.

    Raises:
        ClaimRefused: the witness refused, or could not be asked within ``timeout``.
    """
    from .engine import EngineError

    try:
        session = engine.open_session(witness, PURPOSE_HA, timeout=timeout, report=False)
    except EngineError as exc:
        raise ClaimRefused(f"cannot reach the witness {witness}: {exc.message}") from None
    try:
        session.send(EpochClaim(scenario=scenario, epoch=epoch, active=active,
                                failover=failover))
        reply = session.expect(Reply)
    except (LinkError, OSError, PeerFailure, ProtocolError) as exc:
        raise ClaimRefused(f"the witness {witness} did not answer: {exc}") from None
    finally:
        session.close()
    if not reply.ok:
        raise ClaimRefused(f"the witness {witness} refused epoch {epoch}: {reply.message}")
