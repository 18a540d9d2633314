"""Arbiters: who may be the active host of a scenario (see ``base`` for the contract).

``peer`` (two hosts, consent by the controller's rules) is :class:`PeerArbiter`; ``etcd`` (a
leader lease) is :class:`~standby.ha.arbiter.etcd.EtcdArbiter`, imported on first use because
its HTTP client stack costs about 0.3 s to import.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .base import Arbiter, ArbiterState, PeerArbiter

if TYPE_CHECKING:
    from .etcd import EtcdArbiter

__all__ = ["Arbiter", "ArbiterState", "EtcdArbiter", "PeerArbiter"]


def __getattr__(name: str) -> object:
    if name == "EtcdArbiter":
        from .etcd import EtcdArbiter

        return EtcdArbiter
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
