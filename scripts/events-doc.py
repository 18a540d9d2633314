"""Write docs/events.md from the event catalog (tests/test_docs.py checks they agree)."""

from pathlib import Path

from standby.engine.events import CATALOG

GROUPS = {"1": "Engine and peers", "2": "Scenarios and synchronization",
          "3": "Protocol and security", "4": "High availability"}
HEADER = """# Events

Every event the engine records has a stable ID, a severity and a message. IDs never change
meaning and are never reused: scripts and monitoring may match on them. `standby events
[--scenario NAME] [--json]` lists them; the API serves them at `GET /v1/events`.

This page is generated from `src/standby/engine/events.py` by `scripts/events-doc.py`.
"""


def render() -> str:
    out = [HEADER]
    group = None
    for code, event in CATALOG.items():
        if code[2] != group:
            group = code[2]
            out += ["", f"## {GROUPS[group]}", "", "| ID | severity | event | what to do |",
                    "| --- | --- | --- | --- |"]
        out.append(f"| {code} | {event.severity.value} | {event.title} | {event.action} |")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    Path(__file__).resolve().parent.parent.joinpath("docs", "events.md").write_text(render())
