"""The engine's side of high availability without a network: heartbeat statuses and the
board, durable epochs, fencing, role changes on a real engine, and the witness's judgement of
epoch claims."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from standby.blocks import block_digests
from standby.config import parse_document, parse_scenario
from standby.engine import roles
from standby.engine.engine import Engine, EngineError
from standby.engine.ha_controller import HaController
from standby.engine.ha_status import HostStatus, LinkStatus, StatusBoard
from standby.engine.store import Store
from standby.engine.witness import judge_claim, sight_window
from standby.protocol import EpochClaim, RecMakeDir, RecTruncate, RecWrite

BS = 65536


# --- statuses -----------------------------------------------------------------------------------

STATUS = HostStatus(epoch=3, active="alpha", role="active", workload="running",
                    protecting=True, last_seq=120, lag_s=0.25,
                    links={"beta": LinkStatus(True, 118)}, heard={"beta": 0.4, "wit": None})


def test_a_status_survives_the_wire() -> None:
    """from_wire(to_wire(s)) == s, every field included."""
    assert HostStatus.from_wire(STATUS.to_wire()) == STATUS


@pytest.mark.parametrize(("change", "error"), [
    ({"epoch": 0}, "status.epoch must be an integer >= 1"),
    ({"epoch": True}, "status.epoch must be an integer >= 1"),
    ({"active": "no spaces"}, "status.active must hold engine names"),
    ({"role": "boss"}, "status.role must be one of active, standby, witness"),
    ({"workload": None}, "status.workload must be one of running, stopped, unknown"),
    ({"protecting": 1}, "status.protecting must be true or false"),
    ({"lag_s": -1.0}, "status.lag_s must be a number of seconds >= 0"),
    ({"lag_s": float("inf")}, "status.lag_s must be a number of seconds >= 0"),
    ({"links": []}, "status.links must be a table"),
    ({"links": {"beta": 5}}, "status.links entries must be tables"),
    ({"heard": {"../x": 1.0}}, "status.heard must hold engine names"),
    ({"heard": {f"h{n}": 1.0 for n in range(65)}}, "status.heard must be a table of at most 64"),
])
def test_a_malformed_status_is_refused(change: dict[str, Any], error: str) -> None:
    """Each field is checked: a peer's status is not trusted blindly."""
    with pytest.raises(ValueError, match=error.replace(".", r"\.")):
        HostStatus.from_wire({**STATUS.to_wire(), **change})


def test_the_board_keeps_the_latest_and_tells_of_record_changes() -> None:
    """A late arrival changes nothing; listeners hear of a new epoch record only."""
    board = StatusBoard()
    changes: list[tuple[str, str]] = []
    board.on_record_change(lambda scenario, host: changes.append((scenario, host)))
    board.heard("files", "alpha", STATUS, 10.0)
    board.heard("files", "alpha", STATUS, 11.0)  # the same record: no news
    older = HostStatus(epoch=2, active="beta", role="standby")
    board.heard("files", "alpha", older, 9.0)  # arrived late: ignored
    heard = board.get("files", "alpha")
    assert heard is not None
    assert (heard.status, heard.at) == (STATUS, 11.0)
    assert changes == [("files", "alpha")]
    board.heard("files", "alpha", HostStatus(epoch=4, active="beta", role="standby"), 12.0)
    assert changes == [("files", "alpha"), ("files", "alpha")]
    assert board.ages("files", ("alpha", "gamma"), 14.5) == {"alpha": 2.5, "gamma": None}
    board.forget("files")
    assert board.get("files", "alpha") is None


# --- durable epochs -----------------------------------------------------------------------------


def test_epochs_only_go_up(tmp_path: Path) -> None:
    """raise_epoch stores a higher epoch, accepts the record it holds, refuses the rest."""
    store = Store(tmp_path / "state.db")
    try:
        assert store.epoch("files") is None
        assert store.raise_epoch("files", 1, "alpha")
        assert store.raise_epoch("files", 1, "alpha")  # the same record: fine
        assert not store.raise_epoch("files", 1, "beta")  # the same epoch, another host
        assert not store.raise_epoch("files", 0, "beta")
        assert store.raise_epoch("files", 5, "beta")
        assert store.epoch("files") == (5, "beta")
    finally:
        store.close()
    reopened = Store(tmp_path / "state.db")  # durable
    try:
        assert reopened.epoch("files") == (5, "beta")
    finally:
        reopened.close()


def test_an_older_database_gains_the_witness_role(tmp_path: Path) -> None:
    """A state.db made before the witness existed is migrated, its scenarios kept."""
    db = sqlite3.connect(tmp_path / "state.db")
    db.executescript("""
        CREATE TABLE scenarios (name TEXT PRIMARY KEY,
            role TEXT NOT NULL CHECK (role IN ('master', 'replica')), document TEXT NOT NULL,
            state TEXT NOT NULL, consistent INTEGER NOT NULL DEFAULT 0,
            stats TEXT NOT NULL DEFAULT '{}', updated_at REAL NOT NULL);
        INSERT INTO scenarios VALUES ('old', 'master', '{}', 'stopped', 1, '{}', 0);
    """)
    db.close()
    store = Store(tmp_path / "state.db")
    try:
        store.put_scenario("w", "witness", {"name": "w"}, "witness")
        assert [(row.name, row.role, row.consistent) for row in store.scenarios()] == \
            [("old", "master", True), ("w", "witness", False)]
    finally:
        store.close()


# --- an engine: fencing and roles ---------------------------------------------------------------


@pytest.fixture
def beta(tmp_path: Path) -> Iterator[Engine]:
    """An engine named beta that replicates scenario "files" from alpha (stored directly:
    no network is needed for what these tests do)."""
    engine = Engine(tmp_path / "home", name="beta")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    scenario = parse_scenario(
        f'name = "files"\nmaster = "alpha"\nreplica = "beta"\n[[roots]]\n'
        f'master = "{tmp_path / "a"}"\nreplica = "{tmp_path / "b"}"\n', "files.toml")
    engine.store.put_scenario("files", "replica", scenario.document(), "running")
    engine.store.update_scenario("files", consistent=True)
    yield engine
    engine.close()


def test_fencing_refuses_an_older_epoch_and_another_host(beta: Engine) -> None:
    """The record (1, alpha): alpha may write at 1 or above; beta's own name at 1 may not;
    after epoch 2 names gamma, alpha's epoch 1 is refused, with an event."""
    assert beta.epoch_record("files") == (1, "alpha")
    assert beta.fence("files", "alpha", 1) is None
    assert beta.fence("files", "alpha", 7) is None
    assert beta.fence("files", "gamma", 1) is not None
    beta.store.raise_epoch("files", 2, "gamma")
    refusal = beta.fence("files", "alpha", 1)
    assert refusal == ("scenario files: alpha writes at epoch 1, but this host knows epoch 2 "
                       "with gamma active; alpha must step down")
    assert [e["code"] for e in beta.events("files")][-1] == "SB4211"


def test_promotion_applies_what_a_suspended_replica_held(beta: Engine, tmp_path: Path) -> None:
    """Changes spooled on a suspended replica are applied before it takes over: nothing it
    received is lost. The scenario turns around; a second promote changes nothing."""
    target = beta.replica_target("files")
    target.suspend()
    payload = b"received while suspended\n"
    target.receive(1, [RecMakeDir(root=0, path=b"d", mode=0o755, mtime_ns=0),
                       RecTruncate(root=0, path=b"d/f", size=0),
                       RecWrite(root=0, path=b"d/f", offset=0,
                                digests=block_digests(payload, BS), payload=payload)],
                   "durable")
    assert not (tmp_path / "b" / "d").exists()

    assert roles.promote(beta, "files", 2)

    assert (tmp_path / "b" / "d" / "f").read_bytes() == payload
    row = beta.store.scenario("files")
    assert row is not None
    assert (row.role, row.document["master"], row.document["replica"]) == \
        ("master", "beta", "alpha")
    assert row.document["roots"][0]["master"] == str(tmp_path / "b")
    assert row.state == "running"  # reverse replication (the default) keeps it protected
    assert not row.consistent  # alpha is no copy of beta yet
    assert beta.epoch_record("files") == (2, "beta")
    assert not roles.promote(beta, "files", 2)
    assert beta.store.get_meta("replica-stream:files") is None


def test_demotion_turns_the_scenario_back(beta: Engine, tmp_path: Path) -> None:
    """beta, promoted at 2, follows alpha from 3: a replica of alpha again, inconsistent until
    alpha resynchronizes it; an older epoch is refused."""
    roles.promote(beta, "files", 2)
    assert roles.demote(beta, "files", 3, "alpha")
    row = beta.store.scenario("files")
    assert row is not None
    assert (row.role, row.document["master"], row.consistent) == ("replica", "alpha", False)
    assert row.document["roots"][0]["replica"] == str(tmp_path / "b")
    assert not roles.demote(beta, "files", 3, "alpha")
    with pytest.raises(roles.RoleError, match="already knows epoch 3"):
        roles.promote(beta, "files", 2)
    codes = [e["code"] for e in beta.events("files")]
    assert codes[-2:] == ["SB4202", "SB4203"]


# --- the witness ----------------------------------------------------------------------------------


@pytest.fixture
def witness(tmp_path: Path) -> Iterator[Engine]:
    """An engine "wit", witness of "files" (alpha active at epoch 1, beta its standby)."""
    engine = Engine(tmp_path / "wit-home", name="wit")
    scenario = parse_scenario(
        'name = "files"\nmaster = "alpha"\nreplica = "beta"\n[[roots]]\nmaster = "/a"\n'
        'replica = "/b"\n[ha]\ninterval = 0.5\ntimeout = 3\narbitration = "witness"\n'
        'witness = "wit"\nlease_seconds = 2\n', "files.toml")
    engine.store.put_scenario("files", "witness", scenario.document(), "witness")
    engine.store.raise_epoch("files", 1, "alpha")
    yield engine
    engine.close()


def claim(epoch: int, active: str, failover: bool) -> EpochClaim:
    return EpochClaim(scenario="files", epoch=epoch, active=active, failover=failover)


def test_the_witness_refuses_a_failover_while_it_sees_the_active_host(witness: Engine) -> None:
    """beta claims epoch 2 for itself: refused while the witness heard alpha within the sight
    window, granted once it has not."""
    board = witness.ha.board
    board.heard("files", "alpha", HostStatus(epoch=1, active="alpha", role="active"),
                time.monotonic())
    reply = judge_claim(witness, board, "beta", claim(2, "beta", True))
    assert not reply.ok
    assert reply.message.startswith("the witness still sees alpha (heard 0.0 s ago")
    row = witness.store.scenario("files")
    assert row is not None
    window = sight_window(parse_document(row.document).ha)
    assert window == 3.0
    board.forget("files")  # nothing heard: the silence counts from the engine's start
    witness.ha.started = time.monotonic() - window - 1
    reply = judge_claim(witness, board, "beta", claim(2, "beta", True))
    assert reply.ok, reply.message
    assert witness.epoch_record("files") == (2, "beta")
    assert judge_claim(witness, board, "beta", claim(2, "beta", True)).ok  # idempotent


@pytest.mark.parametrize(("peer", "request_", "message"), [
    ("beta", claim(1, "beta", True), "epoch 1 is not above the witness's record (epoch 1, "
                                     "alpha active)"),
    ("beta", claim(2, "alpha", False), "only the active host alpha may hand over at epoch 1"),
    ("beta", claim(2, "alpha", True), "a failover claim must name its sender beta, not alpha"),
    ("gamma", claim(2, "gamma", True), "gamma and gamma must both be hosts of files"),
])
def test_the_witness_refuses_claims_that_break_its_rules(witness: Engine, peer: str,
                                                         request_: EpochClaim,
                                                         message: str) -> None:
    """Old epochs, handovers from a standby, failovers for someone else, strangers."""
    witness.ha.started = time.monotonic() - 60  # nobody heard for long: sight is no reason
    reply = judge_claim(witness, witness.ha.board, peer, request_)
    assert (reply.ok, reply.message) == (False, message)
    assert witness.epoch_record("files") == (1, "alpha")


def test_the_active_host_hands_over_through_the_witness(witness: Engine) -> None:
    """A handover claim from the active host is recorded (no sight rule: it is alive)."""
    witness.ha.board.heard("files", "alpha", HostStatus(epoch=1, active="alpha", role="active"),
                           time.monotonic())
    reply = judge_claim(witness, witness.ha.board, "alpha", claim(2, "beta", False))
    assert (reply.ok, reply.data) == (True, {"epoch": 2, "active": "beta"})
    assert [e["code"] for e in witness.events("files")][-1] == "SB4201"


# --- operator requests ---------------------------------------------------------------------------


@pytest.fixture
def alpha(tmp_path: Path) -> Iterator[Engine]:
    """An engine named alpha, master of "files" (to beta), at epoch 1."""
    engine = Engine(tmp_path / "alpha-home", name="alpha")
    (tmp_path / "a").mkdir()
    scenario = parse_scenario(
        f'name = "files"\nmaster = "alpha"\nreplica = "beta"\n[[roots]]\n'
        f'master = "{tmp_path / "a"}"\nreplica = "/b"\n', "files.toml")
    engine.store.put_scenario("files", "master", scenario.document(), "running")
    engine.store.raise_epoch("files", 1, "alpha")
    yield engine
    engine.close()


def _controller(engine: Engine) -> HaController:
    row = engine.store.scenario("files")
    assert row is not None
    return HaController(engine.ha, parse_document(row.document))  # not started: no cycles


def test_a_pending_request_can_be_withdrawn(alpha: Engine) -> None:
    """One request at a time; the operator withdraws it; then there is nothing to withdraw."""
    controller = _controller(alpha)
    assert controller.request("switchback", None)["request"]["state"] == "pending"
    with pytest.raises(EngineError, match="a switchback of files is already pending"):
        controller.request("switchover", None)
    request = controller.cancel()["request"]
    assert (request["state"], request["message"]) == ("refused", "withdrawn by the operator")
    with pytest.raises(EngineError, match="no switchover, failover or switchback of files"):
        controller.cancel()
    codes = [e["code"] for e in alpha.events("files")]
    assert codes[-2:] == ["SB4105", "SB4106"]


@pytest.mark.parametrize(("kind", "target", "message"), [
    ("switchover", "gamma", "'gamma' is not another host of files"),
    ("failover", "beta", "a failover promotes the host it is run on"),
    ("reboot", None, "unknown request 'reboot'"),
])
def test_requests_that_cannot_be_met_are_refused_at_once(alpha: Engine, kind: str,
                                                          target: str | None,
                                                          message: str) -> None:
    with pytest.raises(EngineError, match=message):
        _controller(alpha).request(kind, target)


def test_only_the_active_host_switches_over(alpha: Engine) -> None:
    """After a promotion elsewhere, alpha is told where to run the command."""
    alpha.store.raise_epoch("files", 2, "beta")
    with pytest.raises(EngineError, match="run `standby switchover files` on beta"):
        _controller(alpha).request("switchover", None)
