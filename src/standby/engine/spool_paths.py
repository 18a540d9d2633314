"""Where a scenario's master-side spool and index live (the runtime, removal and tests agree)."""

from __future__ import annotations

from pathlib import Path

from ..config import Scenario


def spool_directory(engine_home: Path, scenario: Scenario) -> Path:
    """``replication.spool_dir`` (or the engine's home) / spool / the scenario's name."""
    base = Path(scenario.replication.spool_dir) if scenario.replication.spool_dir \
        else engine_home / "spool"
    return base / scenario.name
