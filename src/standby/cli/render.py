"""Human output of the CLI: rich tables and short lines built from the API's JSON.

Text from the engine (names, paths, messages) is never read as rich markup: a path such as
``/srv/[old]`` must print as it is.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from .formatting import counter, progress_line, timestamp

#: Per-host counters shown first, in this order; others follow as the engine reports them.
_HOST_COLUMNS = ("files_compared", "bytes_compared", "files_sent", "bytes_sent",
                 "files_received", "bytes_received")


def _text(value: Any, style: str = "") -> Text:
    return Text("-" if value is None else str(value), style=style)


def _table(*columns: str) -> Table:
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in columns:
        table.add_column(column)
    return table


# --- peers and scenarios ------------------------------------------------------------------------


def peers_table(peers: Iterable[Mapping[str, Any]]) -> Table:
    table = _table("NAME", "ADDRESS", "FINGERPRINT", "ADDED")
    for peer in peers:
        table.add_row(_text(peer["name"]), _text(peer["address"]), _text(peer["fingerprint"]),
                      _text(timestamp(peer["added_at"])))
    return table


def _consistency(scenario: Mapping[str, Any]) -> Text:
    if scenario["consistent"]:
        return Text("consistent", style="green")
    return Text("inconsistent", style="yellow")


def _state(state: str) -> Text:
    styles = {"running": "green", "syncing": "cyan", "failed": "red", "stopped": "dim"}
    return Text(state, style=styles.get(state, ""))


def scenarios_table(scenarios: Iterable[Mapping[str, Any]]) -> Table:
    table = _table("NAME", "ROLE", "STATE", "CONSISTENCY", "MASTER -> REPLICA", "METHOD", "ROOTS")
    for s in scenarios:
        table.add_row(_text(s["name"]), _text(s["role"]), _state(s["state"]), _consistency(s),
                      _text(f"{s['master']} -> {s['replica']}"), _text(s["method"]),
                      _text(len(s["roots"])))
    return table


def _heading(s: Mapping[str, Any]) -> Text:
    return Text.assemble((s["name"], "bold"), "  ", _state(s["state"]), "  ", _consistency(s),
                         f"  {s['master']} -> {s['replica']}  ({s['role']} here)")


def roots_table(roots: Iterable[Mapping[str, Any]]) -> Table:
    table = _table("MASTER ROOT", "REPLICA ROOT", "INCLUDE", "EXCLUDE")
    for root in roots:
        table.add_row(_text(root["master"]), _text(root["replica"]),
                      _text(" ".join(root.get("include", ())) or "-"),
                      _text(" ".join(root.get("exclude", ())) or "-"))
    return table


def _pairs(items: Mapping[str, Any]) -> Table:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    for key, value in items.items():
        grid.add_row(_text(_label(key)), _text(counter(key, value)))
    return grid


def scenario_detail(s: Mapping[str, Any]) -> RenderableType:
    document = s["document"]
    parts: list[RenderableType] = [_heading(s)]
    if document.get("description"):
        parts.append(_text(document["description"], "italic"))
    parts += [Text(), roots_table(document["roots"]), Text(), Text("sync", style="bold"),
              _pairs(document["sync"]), Text(f"updated {timestamp(s['updated_at'])}", "dim")]
    return Group(*parts)


# --- status, reports, events --------------------------------------------------------------------


def hosts_table(hosts: Mapping[str, Mapping[str, Any]]) -> Table:
    """Per-host counters, one column per host (two hosts fit any terminal): files and bytes
    compared, sent and received first, then whatever else the engine counts, unless zero."""
    seen = list(dict.fromkeys(key for counters in hosts.values() for key in counters))
    keys = [k for k in _HOST_COLUMNS if k in seen]
    keys += [k for k in seen if k not in keys and any(c.get(k) for c in hosts.values())]
    names = sorted(hosts)
    table = _table("", *(name.upper() for name in names))
    for key in keys:
        table.add_row(_text(_label(key)), *(_text(counter(key, hosts[name].get(key)))
                                              for name in names))
    return table


def _label(key: str) -> str:
    """``bytes_sent`` -> ``bytes sent``; ``duration_s`` -> ``duration``."""
    return key.removesuffix("_s").replace("_", " ")


def scenario_status(s: Mapping[str, Any]) -> RenderableType:
    parts: list[RenderableType] = [_heading(s)]
    parts += [Text(f"  {root['master']} -> {root['replica']}") for root in s["roots"]]
    job = s.get("job")
    if job:
        parts.append(Text(f"  sync {job['id']}: {progress_line(job)}", style="cyan"))
    replication = dict(s.get("replication") or {})
    if replication:
        hosts = replication.pop("hosts", None)
        replication.pop("links", None)  # per replica link: in --json
        parts += [Text("  replication", style="bold"), _pairs(
            {k: v for k, v in replication.items() if v is not None and v != ""})]
        if hosts:
            parts += [Text("  replication per host:"), hosts_table(hosts)]
    if s.get("ha"):
        parts += ha_view(s["ha"])
    if s.get("hosts"):
        parts += [Text(f"  totals over {s.get('syncs', 0)} synchronization(s):"),
                  hosts_table(s["hosts"])]
    else:
        parts.append(Text("  no synchronization has finished yet", style="dim"))
    return Group(*parts)


def status_view(scenarios: list[Mapping[str, Any]]) -> RenderableType:
    if not scenarios:
        return Text("no scenarios; add one with `standby scenario add FILE`")
    parts: list[RenderableType] = []
    for s in scenarios:
        parts += [scenario_status(s), Text()]
    return Group(*parts[:-1])


def report_view(name: str, report: Mapping[str, Any]) -> RenderableType:
    """The last synchronization's report: its scalar facts, per-host counters, then lists
    (such as the files that failed), each cut to its first 20 items."""
    scalars = {k: v for k, v in report.items()
               if k != "scenario" and not isinstance(v, dict | list)}
    parts: list[RenderableType] = [Text(f"last synchronization of {name}", style="bold"),
                                   _pairs(scalars)]
    if isinstance(report.get("hosts"), dict) and report["hosts"]:
        parts += [Text(), hosts_table(report["hosts"])]
    for key, value in report.items():
        if isinstance(value, list) and value:
            parts += [Text(), Text(f"{key.replace('_', ' ')} ({len(value)})", style="bold")]
            parts += [_text(f"  {item}") for item in value[:20]]
            if len(value) > 20:
                parts.append(Text(f"  ... and {len(value) - 20} more", style="dim"))
    return Group(*parts)


_SEVERITY_STYLE = {"info": "", "warning": "yellow", "error": "bold red"}


def event_line(event: Mapping[str, Any]) -> Text:
    """``2024-05-01 12:00:03  SB2001  info     web  scenario web added``."""
    return Text.assemble(
        timestamp(event["ts"]), "  ", event["code"], "  ",
        (f"{event['severity']:<7}", _SEVERITY_STYLE.get(event["severity"], "")), "  ",
        f"{event['scenario'] or '-'}  ", event["message"],
    )


_HA_STYLE = {"serving": "green", "following": "green", "acting": "cyan", "witnessing": "green",
             "isolated": "bold red", "conflict": "bold red", "active host dead": "bold red",
             "waiting for the epoch": "yellow"}


def ha_view(ha: Mapping[str, Any]) -> list[RenderableType]:
    """High availability: this host's role, the epoch and the state, then each other host as
    this host last heard it."""
    head = Text.assemble("  high availability: ", (ha["role"], "bold"),
                         f" at epoch {ha['epoch']} ({ha['active']} active), ",
                         (ha["state"], _HA_STYLE.get(ha["state"], "")))
    parts: list[RenderableType] = [head]
    details = {"workload": ha.get("workload"), "arbitration": ha.get("arbitration"),
               "action": ha.get("action"), "reason": ha.get("reason")}
    request = ha.get("request")
    if request:
        details["request"] = f"{request['kind']} {request['state']}" + (
            f": {request['message']}" if request.get("message") else "")
    parts.append(_pairs({k: v for k, v in details.items() if v}))
    hosts = ha.get("hosts") or {}
    if hosts:
        table = _table("  HOST", "ROLE", "EPOCH", "ACTIVE", "WORKLOAD", "LAST HEARD")
        for name, host in sorted(hosts.items()):
            heard = host.get("last_heard_s")
            table.add_row(_text(f"  {name}"), _text(host.get("role")), _text(host.get("epoch")),
                          _text(host.get("active")), _text(host.get("workload")),
                          _text("never" if heard is None else f"{heard:.1f} s ago"))
        parts.append(table)
    for check in ha.get("checks") or ():
        parts.append(_text(f"  check {check['name']}: {check['status']}"))
    return parts
