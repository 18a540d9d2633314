"""The catalog of events: stable IDs, severities, and what the operator should do.

IDs never change meaning and are never reused. The first digit groups them: 1 engine and peers,
2 scenarios and synchronization, 3 protocol and security, 4 high availability. docs/events.md lists every one (a test
keeps the two in step).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Severity(enum.StrEnum):
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


@dataclass(frozen=True, slots=True)
class EventType:
    code: str
    severity: Severity
    title: str
    action: str  # what the operator should do; empty for routine events


def _e(code: str, severity: Severity, title: str, action: str = "") -> EventType:
    return EventType(code, severity, title, action)


INFO, WARN, ERR = Severity.INFO, Severity.WARNING, Severity.ERROR

ENGINE_STARTED = _e("SB1001", INFO, "engine started")
ENGINE_STOPPED = _e("SB1002", INFO, "engine stopped")
PEER_ADDED = _e("SB1101", INFO, "peer paired")
PEER_REFUSED = _e(
    "SB1102", WARN, "incoming connection refused: certificate not paired",
    "If this host should be trusted, run `standby peer add NAME HOST:PORT FINGERPRINT` here.",
)
PEER_MISMATCH = _e(
    "SB1103", ERR, "peer presented another fingerprint than the one paired",
    "Check that the address points at the right host; if its identity was recreated on purpose, "
    "remove and add the peer again with the new fingerprint (`standby id` on that host).",
)
PEER_UNREACHABLE = _e(
    "SB1104", WARN, "peer unreachable",
    "Check that the peer engine runs and that its peer port is reachable from here.",
)
PEER_REMOVED = _e("SB1105", INFO, "peer removed")
PEER_NOT_TRUSTING = _e(
    "SB1106", WARN, "peer does not trust this engine yet",
    "Run `standby peer add` on the peer too, naming this engine and its fingerprint.",
)
SESSIONS_FULL = _e(
    "SB1107", ERR, "a peer's connection was refused: the engine serves its most sessions",
    "Peers retry, but heartbeats may go unanswered: spread the scenarios over more engines.",
)
SCENARIO_ADDED = _e("SB2001", INFO, "scenario added")
SCENARIO_REMOVED = _e("SB2002", INFO, "scenario removed")
SCENARIO_STARTED = _e("SB2003", INFO, "scenario started")
SCENARIO_STOPPED = _e("SB2004", INFO, "scenario stopped")
SCENARIO_RECEIVED = _e("SB2005", INFO, "scenario received from its master engine")
SYNC_STARTED = _e("SB2101", INFO, "synchronization started")
SYNC_COMPLETED = _e("SB2102", INFO, "synchronization completed")
SYNC_FAILED = _e(
    "SB2103", ERR, "synchronization failed",
    "Read the reason; fix it and run `standby sync NAME` again. The replica stays marked "
    "inconsistent until a synchronization completes.",
)
DELETION_GUARD = _e(
    "SB2104", ERR, "deletion guard: nothing deleted",
    "The master root could not be listed or is empty while the replica root is not. Check that "
    "the master root is mounted and readable; if it really is empty, empty the replica root by "
    "hand.",
)
SPECIAL_SKIPPED = _e("SB2105", WARN, "special files skipped (sockets, FIFOs, devices)")
FILE_REDONE = _e(
    "SB2106", WARN, "file digest mismatch after transfer; file sent again whole",
    "Repeated mismatches point at failing storage or memory on one of the hosts.",
)
FILE_FAILED = _e(
    "SB2107", ERR, "file could not be synchronized",
    "Read the reason (permissions, disk full, file vanished); fix it and synchronize again.",
)
REPLICA_INCONSISTENT = _e("SB2108", WARN, "replica marked inconsistent until synchronization completes")
REPLICATION_STARTED = _e("SB2201", INFO, "real-time replication started")
REPLICATION_SYNCHRONIZED = _e(
    "SB2202", INFO, "replica synchronized: the initial synchronization completed and every "
    "change made during it is replicated")
LINK_LOST = _e(
    "SB2203", WARN, "replication link lost; changes wait in the spool",
    "Check that the replica engine runs and is reachable; replication resumes by itself.",
)
LINK_RESTORED = _e("SB2204", INFO, "replication link restored; the spool drains")
SPOOL_FULL = _e(
    "SB2205", WARN, "spool over its limit: changes degrade to a list of dirty paths",
    "Nothing is lost: once the link catches up, only the dirty paths are compared and their "
    "differing blocks sent. Raise replication.spool_max, or the bandwidth, if it recurs.",
)
SPOOL_RECOVERED = _e("SB2206", INFO, "spool back under its limit; dirty paths resynchronized")
RESCAN = _e(
    "SB2207", WARN, "change notifications lost; the root is rescanned",
    "Only files whose size, time, mode or inode changed are compared. If it recurs, raise "
    "fs.inotify.max_queued_events or fs.inotify.max_user_watches (sysctl).",
)
SUSPENDED = _e("SB2208", INFO, "replica suspended: changes are spooled, not applied")
RESUMED = _e("SB2209", INFO, "replica resumed: spooled changes are applied")
APPLY_FAILED = _e(
    "SB2210", ERR, "applying changes on the replica failed",
    "Read the reason (disk full, permissions); fix it. The master keeps the changes in its "
    "spool and sends them again.",
)
REPLICA_AHEAD = _e(
    "SB2211", ERR, "the replica holds changes the master's spool does not: synchronizing",
    "The master's spool was lost or replaced. A synchronization runs to bring the replica back "
    "to the master's state.",
)
CAPTURE_FAILED = _e(
    "SB2212", ERR, "change capture failed; replication stopped",
    "Read the reason (a root was removed or unmounted); fix it and start the scenario again.",
)
ASSESSMENT_SAMPLE = _e("SB2213", INFO, "assessment sample recorded")
PROTOCOL_ERROR = _e(
    "SB3001", ERR, "protocol error: session ended",
    "The peer sent something malformed or out of order. Check both engines run the same "
    "standby version; if they do, report it as a bug with both engines' logs.",
)
PATH_REFUSED = _e(
    "SB3002", ERR, "path outside the replica root refused: session ended",
    "A peer asked to write outside the configured replica root. If the peer is not yours, "
    "remove it (`standby peer remove`); otherwise report it as a bug.",
)
SESSION_ERROR = _e("SB3003", ERR, "peer session ended by an error")

# --- high availability: Is Alive ----------------------------------------------------------------
HOST_HEARD = _e("SB4001", INFO, "heartbeats from a host of the scenario arrive again")
HOST_DEAD = _e(
    "SB4002", ERR, "the active host is declared dead: no heartbeat within the timeout and no "
    "check passes",
    "If automatic failover is off or not allowed, the next event says why; check the host, and "
    "run `standby failover NAME` on the standby to promote it if the active host is lost.",
)
REPLICA_UNREACHABLE = _e(
    "SB4003", WARN, "a standby sends no heartbeats: the scenario has no standby there",
    "Check that the standby's engine runs and that its peer port is reachable.",
)
CHECK_FAILED = _e(
    "SB4004", WARN, "an Is Alive check of the active host failed",
    "Read the reason; the active host is declared dead only when its heartbeats stop too.",
)
CHECK_RECOVERED = _e("SB4005", INFO, "an Is Alive check of the active host passes again")
ARBITER_UNREACHABLE = _e(
    "SB4006", WARN, "the arbiter (witness or etcd) does not answer",
    "Check the witness engine or the etcd endpoints: without them no host can be promoted, and "
    "an active host that also loses its standbys stops its workload.",
)
ARBITER_REACHABLE = _e("SB4007", INFO, "the arbiter (witness or etcd) answers again")
# --- high availability: decisions -----------------------------------------------------------------
DECISION = _e("SB4100", INFO, "high-availability decision: what this host does now, and why")
FAILOVER_WAITING = _e(
    "SB4101", WARN, "no automatic failover: waiting for the operator",
    "Read the reason. If the active host is really lost, run `standby failover NAME` on this "
    "host; with peer arbitration make sure the old master cannot come back on its own first.",
)
ISOLATED = _e(
    "SB4102", ERR, "the active host lost its arbiter's authority: its workload is stopped",
    "This host could reach neither its standbys nor the arbiter (or lost its etcd lease). It "
    "stays stopped until it learns the current epoch; check its network.",
)
WAITING_FOR_EPOCH = _e(
    "SB4103", WARN, "a returning active host stays passive until it learns the current epoch",
    "Bring a peer or the arbiter back. If the other hosts are lost for good, run "
    "`standby failover NAME` on this host.",
)
EPOCH_CONFLICT = _e(
    "SB4104", ERR, "two hosts claim the same epoch: the workload is kept stopped",
    "Make sure the workload runs on one host at most, then run `standby failover NAME` on the "
    "host that should be active.",
)
REQUEST_ACCEPTED = _e("SB4105", INFO, "switchover, failover or switchback requested")
REQUEST_REFUSED = _e(
    "SB4106", WARN, "switchover, failover or switchback refused",
    "Read the reason: it says what must hold first (a reachable, consistent replica; a silent "
    "active host for a failover) and what to run instead.",
)
# --- high availability: actions -------------------------------------------------------------------
EPOCH_RAISED = _e("SB4201", INFO, "epoch raised: a new host is active from this epoch on")
PROMOTED = _e("SB4202", INFO, "this host became the active host of the scenario")
DEMOTED = _e("SB4203", INFO, "this host became a standby of the scenario")
WORKLOAD_STARTED = _e("SB4204", INFO, "workload started")
WORKLOAD_STOPPED = _e("SB4205", INFO, "workload stopped")
REDIRECTED = _e("SB4206", INFO, "clients redirected to the active host")
REPLICATION_DRAINED = _e("SB4207", INFO, "every change is durable on the new active host")
REVERSE_REPLICATION = _e("SB4208", INFO, "replication to the other host started")
UNREPLICATED_CHANGES = _e(
    "SB4209", WARN, "changes made here never reached the host that took over",
    "They stay only in this host's previous copy, and the resynchronization from the active "
    "host overwrites them: copy them aside first if they matter.",
)
HA_ACTION_FAILED = _e(
    "SB4210", ERR, "a high-availability action failed",
    "Read the reason (a workload that does not start, a redirection refused, a drain that timed "
    "out); the controller decides again at its next cycle.",
)
STALE_EPOCH = _e(
    "SB4211", WARN, "a request from an older epoch was refused",
    "A host that has not learned the current epoch tried to replicate or claim: it steps down "
    "once it hears from the active host.",
)

CATALOG: dict[str, EventType] = {
    ev.code: ev for ev in list(globals().values()) if isinstance(ev, EventType)
}
