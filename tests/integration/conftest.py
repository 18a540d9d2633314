"""Fixtures that start real engine processes on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .harness import EngineProcess, pair


@pytest.fixture
def engines(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[tuple[EngineProcess, EngineProcess]]:
    """Two paired engines, alpha (master) and beta (replica), each with its own home."""
    alpha = EngineProcess(tmp_path / "alpha-home", "alpha", tmp_path)
    beta = EngineProcess(tmp_path / "beta-home", "beta", tmp_path)
    started = []
    try:
        for engine in (alpha, beta):
            engine.start()
            started.append(engine)
        pair(alpha, beta)
        yield alpha, beta
    finally:
        for engine in started:
            engine.stop()
        failed = getattr(request.node, "rep_call", None)
        if failed is not None and failed.failed:
            for engine in started:
                print(f"----- log of {engine.name} -----\n{engine.log()[-20000:]}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, "rep_" + report.when, report)
