"""PeerArbiter: two hosts and no third party, so it always answers and grants any higher
epoch; the consent rules for ``peer`` mode are the controller's."""

from __future__ import annotations

import dataclasses

import pytest

from standby.ha.arbiter import Arbiter, ArbiterState, PeerArbiter

from .contract import check_single_host_contract


def test_peer_arbiter_keeps_the_contract() -> None:
    check_single_host_contract(PeerArbiter("db1"), "db1")


def test_peer_arbiter_is_an_arbiter() -> None:
    arbiter: Arbiter = PeerArbiter("db1")
    assert "db1" in repr(arbiter)


def test_peer_arbiter_is_always_reachable_and_never_expires() -> None:
    arbiter = PeerArbiter("db1")
    assert arbiter.try_acquire("db1", 3)
    far_future = arbiter.state(1e12)
    assert far_future.reachable
    assert far_future.we_hold
    assert far_future.expires_at is None
    assert "db1 holds it at epoch 3" in far_future.detail


def test_peer_arbiter_epochs_only_go_up() -> None:
    arbiter = PeerArbiter("db1")
    assert arbiter.try_acquire("db1", 4)
    arbiter.release()
    assert arbiter.try_acquire("db1", 4) is False
    assert arbiter.try_acquire("db1", 3) is False
    assert arbiter.try_acquire("db1", 7)
    assert arbiter.state(0.0).highest_epoch == 7


def test_arbiter_state_is_frozen_and_keyword_only() -> None:
    state = ArbiterState(holder=None, holder_epoch=None, highest_epoch=0, we_hold=False,
                         expires_at=None, reachable=True, detail="x")
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.we_hold = True  # type: ignore[misc]
    with pytest.raises(TypeError):
        ArbiterState(None, None, 0, False, None, True, "x")  # type: ignore[call-arg]
