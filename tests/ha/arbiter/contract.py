"""The single-host part of the arbiter contract (standby.ha.arbiter.base), for any arbiter.

Run on a fresh arbiter acting for ``host`` over an empty store.
"""

from __future__ import annotations

import time

import pytest

from standby.ha.arbiter import Arbiter


def check_single_host_contract(arbiter: Arbiter, host: str) -> None:
    now = time.monotonic()
    fresh = arbiter.state(now)
    assert (fresh.holder, fresh.holder_epoch, fresh.we_hold) == (None, None, False)
    assert fresh.highest_epoch == 0
    assert fresh.reachable
    assert arbiter.renew() is False, "nothing to renew before acquiring"

    assert arbiter.try_acquire(host, 1)
    held = arbiter.state(time.monotonic())
    assert (held.holder, held.holder_epoch, held.highest_epoch, held.we_hold) == (host, 1, 1, True)
    assert held.expires_at is None or held.expires_at > time.monotonic()
    assert arbiter.renew()
    assert arbiter.try_acquire(host, 1), "acquiring again at the held epoch renews"
    with pytest.raises(ValueError, match="already holds"):
        arbiter.try_acquire(host, 2)
    with pytest.raises(ValueError, match="acts for"):
        arbiter.try_acquire(host + "-other", 1)

    arbiter.release()
    released = arbiter.state(time.monotonic())
    assert (released.holder, released.we_hold, released.highest_epoch) == (None, False, 1)
    assert arbiter.renew() is False
    arbiter.release()  # releasing nothing is harmless

    assert arbiter.try_acquire(host, 1) is False, "epoch 1 was granted before"
    with pytest.raises(ValueError, match="at least 1"):
        arbiter.try_acquire(host, 0)
    assert arbiter.try_acquire(host, 5)
    assert arbiter.state(time.monotonic()).holder_epoch == 5
