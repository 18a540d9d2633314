"""Moving a scenario's roles between hosts: what Promote, Demote and reverse replication do
to an engine's state.

A scenario is stored on each host *oriented* by its active host: the document's ``master`` is
the host that is active at the highest epoch this host knows, its ``replica`` the other one,
and each root's two paths follow their hosts. A switchover turns the document around on both
hosts (:meth:`standby.config.Scenario.reoriented`), and with it the direction of replication.

Every function here is idempotent (the HA controller may repeat an action whose effect the
next view has not shown yet) and stores the epoch record before anything else, so a crash in
the middle leaves a host that knows the new epoch and completes the move at its next cycle.

What does not survive a move, on purpose:

- the master's spool and index: they describe what the *other* host held in the old
  direction. The new master starts with a synchronization (a block comparison: only the
  differences travel) before it replicates.
- a demoted master's unsent changes, after an unplanned failover: they never reached the host
  that took over, which is now the reference. They are counted in an event (SB4209).
"""

from __future__ import annotations

import logging
import shutil
from typing import TYPE_CHECKING

from ..config import Scenario, parse_document
from . import events as ev
from .spool_paths import spool_directory

if TYPE_CHECKING:
    from .engine import Engine

log = logging.getLogger("standby.roles")


class RoleError(Exception):
    """A role change could not be made; the message says why."""


def _load(engine: Engine, name: str) -> tuple[Scenario, str]:
    row = engine.store.scenario(name)
    if row is None:
        raise RoleError(f"scenario {name!r} is gone from this engine")
    return parse_document(row.document, f"scenario {name!r}"), row.role


def _record(engine: Engine, name: str, epoch: int, active: str) -> None:
    if not engine.store.raise_epoch(name, epoch, active):
        current = engine.epoch_record(name)
        raise RoleError(f"scenario {name}: this host already knows epoch {current[0]} "
                        f"({current[1]} active), not going back to epoch {epoch}")
    engine.ha.record_changed(name)


def promote(engine: Engine, name: str, epoch: int) -> bool:
    """Make this host the scenario's active host at ``epoch``.

    The replica side ends: changes still held in the replica's spool are applied first (a
    suspended replica included), then its stream state is dropped; the document is turned to
    name this host master. Replication to the other host starts later, with
    :func:`replicate_to`. Returns whether anything changed.

    Raises:
        RoleError: a higher epoch is known, or the held changes could not be applied (a full
            disk): the host stays a replica and the controller retries.
    """
    _record(engine, name, epoch, engine.name)
    scenario, role = _load(engine, name)
    if role == "master" and scenario.master == engine.name:
        return False
    for sync in list(engine.incoming_syncs(name)):  # the old master writes no more here
        sync.cancelled = True
    try:
        engine.retire_target(name)
    except OSError as exc:
        raise RoleError(f"scenario {name}: the changes held on this replica could not be "
                        f"applied before taking over: {exc}") from None
    oriented = scenario.reoriented(engine.name)
    shutil.rmtree(spool_directory(engine.home, oriented), ignore_errors=True)
    # "running" with reverse replication: the scenario is to be protected from here on, and
    # the controller starts replicating once the other host follows (rule 7 of decide()).
    state = "running" if scenario.ha.reverse_replication else "stopped"
    engine.store.put_scenario(name, "master", oriented.document(), state)
    engine.store.update_scenario(name, consistent=False)  # the other host is not synced yet
    then = f"it replicates to {oriented.replica} once that host follows" \
        if state == "running" else f"start replication to {oriented.replica} with `standby " \
        f"scenario start {name}`"
    engine.emit(ev.PROMOTED, f"scenario {name}: {engine.name} is the active host from epoch "
                f"{epoch}; {then}", name)
    return True


def demote(engine: Engine, name: str, epoch: int, active: str, *, drained: bool = False) -> bool:
    """Make this host a standby following ``active`` from ``epoch`` on.

    Replication from this host stops, and its spool and index are dropped (after a planned
    switchover they hold nothing unsent; after a failover what they hold is superseded, and
    counted in an event). The document is turned to name ``active`` master. ``drained``: a
    planned handover made every change durable on ``active`` first, so this host's copy is
    exactly ``active``'s as of the handover and stays consistent; otherwise (stepping down
    after a failover) it may hold changes ``active`` lacks, and is marked inconsistent until
    ``active`` has resynchronized it. Returns whether anything changed.

    Raises:
        RoleError: a higher epoch is known.
    """
    _record(engine, name, epoch, active)
    scenario, role = _load(engine, name)
    if role == "replica" and scenario.master == active:
        return False
    unsent = engine.stop_replication(name)
    if unsent:
        engine.emit(ev.UNREPLICATED_CHANGES, f"scenario {name}: {unsent} change(s) captured "
                    f"on {engine.name} were not durable on {active} when it took over at epoch "
                    f"{epoch}; the resynchronization from {active} replaces them", name)
    shutil.rmtree(spool_directory(engine.home, scenario), ignore_errors=True)
    engine.drop_target(name)
    oriented = scenario.reoriented(active)
    engine.store.put_scenario(name, "replica", oriented.document(), "stopped")
    engine.store.update_scenario(name, consistent=drained and unsent == 0)
    copy = f"its copy is {active}'s as of the handover" if drained and unsent == 0 else \
        f"its copy is inconsistent until {active} has resynchronized it"
    engine.emit(ev.DEMOTED, f"scenario {name}: {engine.name} is a standby of {active} from "
                f"epoch {epoch}; {copy}", name)
    return True


def replicate_to(engine: Engine, name: str, replica: str) -> bool:
    """Start replicating the scenario from this (active) host to ``replica``: a
    synchronization that sends only the differences, then real-time replication. Nothing
    happens when it already runs. Returns whether it started.

    Raises:
        RoleError: this host is not the scenario's master, or ``replica`` not its replica.
    """
    from .engine import EngineError

    scenario, role = _load(engine, name)
    if role != "master" or scenario.master != engine.name:
        raise RoleError(f"scenario {name}: {engine.name} is not its active host")
    if replica not in scenario.targets:
        raise RoleError(f"scenario {name}: {replica} is not its replica")
    runtime = engine.runtime(name)
    if runtime is not None and getattr(runtime, "capturing", True):
        retry_now = getattr(runtime, "retry_now", None)
        if retry_now is not None:
            retry_now()  # a synchronization waiting to retry: the replica may be ready now
        return False
    try:
        engine.start_scenario(name)
    except EngineError as exc:
        raise RoleError(f"scenario {name}: replication to {replica} did not start: "
                        f"{exc.message}") from None
    engine.emit(ev.REVERSE_REPLICATION, f"scenario {name}: replicating from {engine.name} to "
                f"{replica}, starting with a synchronization that sends only the differences",
                name)
    return True
