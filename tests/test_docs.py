"""The documentation that is derived from code stays in step with it."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_events_doc_lists_every_event() -> None:
    """docs/events.md is exactly what scripts/events-doc.py renders from the catalog."""
    spec = importlib.util.spec_from_file_location("events_doc", ROOT / "scripts" / "events-doc.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    expected = module.render()
    actual = (ROOT / "docs" / "events.md").read_text()
    assert expected == actual, "run .venv/bin/python scripts/events-doc.py"
