"""The ``standby`` command: a client of the engine's REST API.

It finds the engine of a home directory through HOME/engine.json (written by the running
engine) and HOME/api-token. Only ``standby engine`` (which runs the engine) loads the engine's
code; ``standby id`` reads the engine's certificate file, so that it works while the engine is
stopped; every other command is an HTTP request.

Exit statuses: 0 done; 1 the engine refused the request or the job failed; 2 bad input (usage
errors, or the engine said 400); 3 the engine is not running or cannot be reached; 130
interrupted while waiting for a job (the job goes on in the engine).
"""

from __future__ import annotations

import base64
import enum
import hashlib
import json
import os
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from .client import ApiClient, ApiError, EngineLocation, EngineUnreachable, path, start_hint
from .formatting import job_outcome
from .plain_values import install as pass_plain_values
from .progress import wait_for_job

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

# Start-up time counts (a benchmark times `standby sync` end to end), so this module imports
# typer and the standard library only: http.client loads with the first request; rich (tables,
# the progress bar) in the functions that draw with it, .render with it; the engine's code and
# cryptography only for `standby engine`; and pydantic, which typer would load to coerce every
# parameter's value, only for values that need it (.plain_values). tests/cli/test_cli.py checks
# which modules `standby sync` and `standby status --json` load.

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_NO_ENGINE = 3
EXIT_INTERRUPTED = 130

#: Seconds between two polls of the event list with ``standby events --follow``.
FOLLOW_INTERVAL = 1.0

DEFAULT_HOME = "~/.standby"

pass_plain_values()

app = typer.Typer(
    name="standby",
    help="Real-time replication and failover. Every command but `engine` and `id` talks to the "
         "running engine of --home through its REST API.",
    epilog="Exit status: 0 done; 1 the engine refused or the synchronization failed; 2 bad "
           "input; 3 no engine running for --home (or unreachable); 130 interrupted.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
peer_app = typer.Typer(help="Pair with other engines.", no_args_is_help=True)
scenario_app = typer.Typer(help="Define, start and stop scenarios.", no_args_is_help=True)
app.add_typer(peer_app, name="peer")
app.add_typer(scenario_app, name="scenario")


class Method(enum.StrEnum):
    FILE = "file"
    BLOCK = "block"


# --- options shared between commands ------------------------------------------------------------

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON on stdout, nothing else.")]
NoWaitOption = Annotated[bool, typer.Option(
    "--no-wait", help="Print the job id and return at once instead of showing its progress.")]
ScenarioName = Annotated[str, typer.Argument(metavar="NAME", help="The scenario's name.")]


@app.callback()
def root(
    ctx: typer.Context,
    # A str, not a Path: typer coerces a Path through pydantic (see .plain_values).
    home: Annotated[str, typer.Option(
        "--home", envvar="STANDBY_HOME", metavar="DIR",
        help="The engine's home directory: its identity, state, api-token and engine.json. "
             "The engine and the commands must agree on it.")] = DEFAULT_HOME,
) -> None:
    """Real-time replication and failover."""
    ctx.obj = Path(home).expanduser().absolute()


def _home(ctx: typer.Context) -> Path:
    home: Path = ctx.find_root().obj
    return home


# --- commands -----------------------------------------------------------------------------------


@app.command("engine")
def engine_command(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Option(
        help="This engine's name (first start only; default: the host name).")] = None,
    listen: Annotated[str | None, typer.Option(
        metavar="HOST:PORT", help="Where peers connect (default: all addresses, port 7710).")
    ] = None,
    api: Annotated[str | None, typer.Option(
        metavar="HOST:PORT", help="Where the REST API listens (default: 127.0.0.1:7711).")
    ] = None,
) -> None:
    """Run this host's engine in the foreground until Ctrl-C or SIGTERM."""
    raise typer.Exit(_run_engine(_home(ctx), name, listen, api))


@app.command("id")
def id_command(ctx: typer.Context) -> None:
    """Print this engine's fingerprint (works while the engine is stopped)."""
    _print_fingerprint(_home(ctx))


@peer_app.command("add")
def peer_add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", help="The peer engine's name.")],
    address: Annotated[str, typer.Argument(metavar="HOST:PORT", help="Its peer address.")],
    fingerprint: Annotated[str, typer.Argument(
        metavar="FINGERPRINT", help="What `standby id` prints on that host.")],
) -> None:
    """Pair with another engine, checking that it presents FINGERPRINT."""
    _add_peer(_home(ctx), name, address, fingerprint)


@peer_app.command("list")
def peer_list(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List the paired engines."""
    peers = _query(_home(ctx), path("peers"), as_json)
    if not peers:
        typer.echo("no peers paired yet")
        return
    from . import render

    _print(render.peers_table(peers))


@peer_app.command("remove")
def peer_remove(ctx: typer.Context, name: Annotated[str, typer.Argument(metavar="NAME")]) -> None:
    """Forget a paired engine (no scenario may use it)."""
    _change(_home(ctx), "DELETE", path("peers", name), f"peer {name} removed")


@scenario_app.command("add")
def scenario_add(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(metavar="FILE", exists=True, dir_okay=False, readable=True,
                                         help="The scenario's TOML file.")],
) -> None:
    """Add a scenario from FILE, or replace the one of the same name."""
    _add_scenario(_home(ctx), file)


@scenario_app.command("list")
def scenario_list(ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List the scenarios, with their state."""
    scenarios = _query(_home(ctx), path("scenarios"), as_json)
    if not scenarios:
        typer.echo("no scenarios; add one with `standby scenario add FILE`")
        return
    from . import render

    _print(render.scenarios_table(scenarios))


@scenario_app.command("show")
def scenario_show(ctx: typer.Context, name: ScenarioName, as_json: JsonOption = False) -> None:
    """Show a scenario's definition."""
    scenario = _query(_home(ctx), path("scenarios", name), as_json)
    from . import render

    _print(render.scenario_detail(scenario))


@scenario_app.command("remove")
def scenario_remove(ctx: typer.Context, name: ScenarioName) -> None:
    """Remove a scenario here and on its replica engine; replica files are kept."""
    _change(_home(ctx), "DELETE", path("scenarios", name),
            f"scenario {name} removed (replica files are kept)")


@scenario_app.command("start")
def scenario_start(ctx: typer.Context, name: ScenarioName, no_wait: NoWaitOption = False) -> None:
    """Start protecting: capture starts, the initial synchronization runs (shown until it
    ends), then changes replicate in real time."""
    with _engine(_home(ctx)) as api:
        started = api.post(path("scenarios", name, "start"))
    job = started.get("job")
    if job is None:
        typer.echo(f"scenario {name} started: no synchronization needed, real-time "
                   "replication resumes")
        return
    _follow_job(_home(ctx), job, no_wait)
    typer.echo(f"scenario {name}: real-time replication goes on (see `standby status {name}`)")


@app.command("suspend")
def suspend_command(ctx: typer.Context, name: ScenarioName) -> None:
    """On the replica: stop applying changes (they are spooled there) until `resume`."""
    _change(_home(ctx), "POST", path("scenarios", name, "suspend"),
            f"scenario {name} suspended: changes are spooled on this replica")


@app.command("resume")
def resume_command(ctx: typer.Context, name: ScenarioName) -> None:
    """On the replica: apply the spooled changes and go on applying."""
    _change(_home(ctx), "POST", path("scenarios", name, "resume"),
            f"scenario {name} resumed: spooled changes are being applied")


@scenario_app.command("stop")
def scenario_stop(ctx: typer.Context, name: ScenarioName) -> None:
    """Stop protecting, cancelling a running synchronization."""
    _change(_home(ctx), "POST", path("scenarios", name, "stop"), f"scenario {name} stopped")


@app.command("sync")
def sync_command(
    ctx: typer.Context,
    name: ScenarioName,
    method: Annotated[Method | None, typer.Option(
        help="Compare whole files or blocks (default: the scenario's).")] = None,
    ignore_same_size_time: Annotated[bool, typer.Option(
        "--ignore-same-size-time",
        help="Skip files whose size and modification time match on both sides.")] = False,
    no_wait: NoWaitOption = False,
) -> None:
    """Synchronize the replica with the master now, and wait for it."""
    body = {"method": method.value if method else None,
            "ignore_same_size_time": True if ignore_same_size_time else None}
    _run_job(_home(ctx), path("scenarios", name, "sync"), body, no_wait)


TargetOption = Annotated[str | None, typer.Option(
    "--to", metavar="HOST", help="The host to hand over to (default: the other host).")]
HandoverWait = Annotated[bool, typer.Option(
    "--no-wait", help="Return once the request is accepted instead of following it.")]


@app.command("switchover")
def switchover_command(ctx: typer.Context, name: ScenarioName, to: TargetOption = None,
                       no_wait: HandoverWait = False) -> None:
    """On the active host: planned switchover. The workload stops here, every change is made
    durable on the replica, the replica becomes active, starts the workload and takes the
    clients; with reverse replication it then replicates back here."""
    _handover(_home(ctx), name, "switchover", to, no_wait)


@app.command("failover")
def failover_command(ctx: typer.Context, name: ScenarioName,
                     no_wait: HandoverWait = False) -> None:
    """On a standby: take over from an active host that is gone (refused while it still sends
    heartbeats: use switchover there)."""
    _handover(_home(ctx), name, "failover", None, no_wait)


@app.command("switchback")
def switchback_command(ctx: typer.Context, name: ScenarioName, to: TargetOption = None,
                       no_wait: HandoverWait = False) -> None:
    """On the active host after a failover: resynchronize the old master (only the
    differences), then switch over to it."""
    _handover(_home(ctx), name, "switchback", to, no_wait)


@app.command("cancel")
def cancel_command(ctx: typer.Context, name: ScenarioName) -> None:
    """Withdraw the scenario's pending switchover, failover or switchback."""
    _change(_home(ctx), "DELETE", path("scenarios", name, "request"),
            f"the pending request of {name} is withdrawn")


@app.command("status")
def status_command(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Argument(
        metavar="NAME", help="One scenario (default: all).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Show the scenarios' state, statistics per host and running synchronizations."""
    url = path("status") if name is None else path("status", name)
    scenarios = _query(_home(ctx), url, as_json)
    from . import render

    _print(render.status_view(scenarios))


@app.command("events")
def events_command(
    ctx: typer.Context,
    scenario: Annotated[str | None, typer.Option(help="Only this scenario's events.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="Show the latest N.")] = 50,
    follow: Annotated[bool, typer.Option(
        "--follow", "-f", help="Keep printing new events until Ctrl-C (with --json: one JSON "
                               "object per line).")] = False,
    as_json: JsonOption = False,
) -> None:
    """Show the engine's events, oldest first."""
    _show_events(_home(ctx), scenario, limit, follow, as_json)


@app.command("report")
def report_command(ctx: typer.Context, name: ScenarioName, as_json: JsonOption = False) -> None:
    """Show the report of a scenario's last synchronization."""
    report = _query(_home(ctx), path("scenarios", name, "report"), as_json)
    from . import render

    _print(render.report_view(name, report))


# --- helpers ------------------------------------------------------------------------------------


def _out() -> Console:
    from rich.console import Console

    return Console(highlight=False)


def _terminal() -> Console | None:
    """A console to draw a progress bar on when stdout is a terminal, as rich decides; None
    otherwise. Without a tty nor rich's variables that force one, rich is not even imported."""
    if not (sys.stdout.isatty() or "TTY_COMPATIBLE" in os.environ
            or "FORCE_COLOR" in os.environ):
        return None
    console = _out()
    return console if console.is_terminal else None


def _fail(message: str, status: int) -> NoReturn:
    for line in message.splitlines() or [""]:
        typer.echo(f"error: {line}", err=True)
    raise typer.Exit(status)


def _print_json(data: Any, *, indent: int | None = 2) -> None:
    typer.echo(json.dumps(data, indent=indent, ensure_ascii=False))


@contextmanager
def _engine(home: Path) -> Iterator[ApiClient]:
    """The API client of the engine of ``home``; the one place that turns failures into exit
    statuses."""
    try:
        with ApiClient(EngineLocation.find(home)) as client:
            yield client
    except EngineUnreachable as exc:
        _fail(str(exc), EXIT_NO_ENGINE)
    except ApiError as exc:
        _fail(exc.message, EXIT_BAD_INPUT if exc.status == 400 else EXIT_FAILED)


def _run_engine(home: Path, name: str | None, listen: str | None, api: str | None) -> int:
    from ..engine.daemon import run_engine  # the engine's code loads only for this command

    return run_engine(home, name, listen, api)


#: Where the engine keeps its certificate: HOME/identity/cert.pem (standby.engine.identity).
CERT_PATH = Path("identity", "cert.pem")

_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----([A-Za-z0-9+/=\s]*)-----END CERTIFICATE-----")


def _print_fingerprint(home: Path) -> None:
    """Read the certificate only: the engine creates the identity, never this command.

    The fingerprint is the SHA-256 of the certificate's DER bytes (``fingerprint_of`` in
    standby.engine.identity), read here with the standard library: loading cryptography and the
    engine's identity code would cost this command 150 ms for one base64 decode.
    """
    cert_path = home / CERT_PATH
    try:
        der = _certificate_der(cert_path.read_bytes())
    except FileNotFoundError:
        _fail(f"{home} has no engine identity yet; {start_hint(home)} once to create it",
              EXIT_FAILED)
    except (OSError, ValueError) as exc:
        _fail(f"cannot read the engine's certificate {cert_path}: {exc}", EXIT_FAILED)
    typer.echo(hashlib.sha256(der).hexdigest())


def _certificate_der(pem: bytes) -> bytes:
    """The DER bytes of the first certificate of a PEM file; ValueError if there is none."""
    match = _PEM_CERTIFICATE.search(pem)
    if match is None:
        raise ValueError("no PEM certificate in it")
    der = base64.b64decode(b"".join(match[1].split()), validate=True)  # binascii.Error: ValueError
    if not der.startswith(b"\x30"):  # an X.509 certificate is a DER SEQUENCE
        raise ValueError("its PEM certificate is not DER")
    return der


def _query(home: Path, url: str, as_json: bool) -> Any:
    """GET ``url`` and return the answer for the caller to show to people; with ``--json``,
    print it and end the command here, before the caller imports rich to draw it."""
    with _engine(home) as api:
        data = api.get(url)
    if as_json:
        _print_json(data)
        raise typer.Exit()
    return data


def _print(view: RenderableType) -> None:
    _out().print(view)


def _change(home: Path, method: str, url: str, done: str) -> None:
    with _engine(home) as api:
        if method == "DELETE":
            api.delete(url)
        else:
            api.post(url)
    typer.echo(done)


def _add_peer(home: Path, name: str, address: str, fingerprint: str) -> None:
    with _engine(home) as api:
        peer = api.post(path("peers"), {"name": name, "address": address,
                                        "fingerprint": fingerprint})
    typer.echo(f"paired with {peer['name']} at {peer['address']}; it must pair with this "
               "engine too (`standby peer add` there, with what `standby id` prints here)")


def _add_scenario(home: Path, file: Path) -> None:
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        _fail(f"{file}: cannot read it: {exc}", EXIT_BAD_INPUT)
    with _engine(home) as api:
        s = api.post(path("scenarios"), {"text": text, "source": str(file)})
    typer.echo(f"scenario {s['name']} added ({s['master']} -> {s['replica']}, "
               f"{len(s['roots'])} root(s), {s['state']}); start it with "
               f"`standby scenario start {s['name']}`")


def _run_job(home: Path, url: str, body: dict[str, Any] | None, no_wait: bool) -> None:
    """Start a job; unless ``no_wait``, follow its progress and exit with its outcome."""
    with _engine(home) as api:
        job = api.post(url, body)
    _follow_job(home, job, no_wait)


def _follow_job(home: Path, job: dict[str, Any], no_wait: bool) -> None:
    with _engine(home) as api:
        if no_wait:
            typer.echo(job["id"])
            return
        try:
            job = wait_for_job(lambda wait: api.get(path("jobs", job["id"]), {"wait": wait}),
                               job, _terminal)
        except KeyboardInterrupt:
            _fail(f"stopped waiting; job {job['id']} goes on in the engine (follow it with "
                  f"`standby status {job['scenario']}`, stop it with `standby scenario stop "
                  f"{job['scenario']}`)", EXIT_INTERRUPTED)
    if job["state"] != "succeeded":
        _fail(f"synchronization of {job['scenario']} {job['state']}: {job['error']}",
              EXIT_FAILED)
    typer.echo(f"synchronization of {job['scenario']} succeeded: {job_outcome(job)}")


#: Seconds between polls of a switchover's progress, and how long the new active host may
#: take to report its workload running once the epoch moved.
HANDOVER_POLL = 0.5
HANDOVER_SETTLE = 120.0


def _handover(home: Path, name: str, kind: str, target: str | None, no_wait: bool) -> None:
    """Request a switchover, failover or switchback; unless ``no_wait``, follow it to its end:
    the epoch moved and the new active host runs the workload (exit 0), or refused (1)."""
    with _engine(home) as api:
        body = {"target": target} if kind != "failover" else None
        ha = api.post(path("scenarios", name, kind), body)
        if no_wait:
            typer.echo(f"{kind} of {name} requested")
            return
        typer.echo(f"{kind} of {name} requested: {ha['reason']}")
        try:
            ha = _await_request(api, name, kind)
            settled = _await_settled(api, name, ha)
        except KeyboardInterrupt:
            _fail(f"stopped waiting; the {kind} goes on in the engine (see `standby status "
                  f"{name}`)", EXIT_INTERRUPTED)
    if not settled:
        _fail(f"{kind} of {name}: {ha['active']} is active at epoch {ha['epoch']} but does not "
              f"report its workload running yet (see `standby status {name}` and `standby "
              "events`)", EXIT_FAILED)
    typer.echo(f"{kind} of {name} done: {ha['active']} is active at epoch {ha['epoch']}")


def _ha_status(api: ApiClient, name: str) -> dict[str, Any]:
    (scenario,) = api.get(path("status", name))
    ha: dict[str, Any] = scenario.get("ha") or {}
    return ha


def _await_request(api: ApiClient, name: str, kind: str) -> dict[str, Any]:
    last = ""
    while True:
        ha = _ha_status(api, name)
        request = ha.get("request") or {}
        if request.get("state") == "refused":
            _fail(f"{kind} of {name} refused: {request['message']}", EXIT_FAILED)
        if request.get("state") == "done":
            return ha
        line = ha.get("action") or ha.get("reason") or ""
        if line and line != last:
            typer.echo(f"  {line}")
            last = line
        time.sleep(HANDOVER_POLL)


def _await_settled(api: ApiClient, name: str, ha: dict[str, Any]) -> bool:
    """Wait until the new active host reports its workload running (seen from here through
    its heartbeats, or here when this host took over)."""
    deadline = time.monotonic() + HANDOVER_SETTLE
    while time.monotonic() < deadline:
        if ha.get("role") == "active":
            if ha.get("workload") == "running" and not ha.get("action"):
                return True
        else:
            host = ha.get("hosts", {}).get(ha.get("active"), {})
            if host.get("role") == "active" and host.get("workload") == "running":
                return True
        time.sleep(HANDOVER_POLL)
        ha = _ha_status(api, name)
    return False


def _show_events(home: Path, scenario: str | None, limit: int, follow: bool,
                 as_json: bool) -> None:
    params: dict[str, str | int] = {"limit": limit}
    if scenario is not None:
        params["scenario"] = scenario
    with _engine(home) as api:
        events = api.get(path("events"), params)
        if not follow:
            if as_json:
                _print_json(events)
            else:
                _print_events(events)
            return
        with suppress(KeyboardInterrupt):  # Ctrl-C is how one stops following
            _follow_events(api, params, events, as_json)


def _print_events(events: list[dict[str, Any]], as_json_lines: bool = False) -> None:
    if as_json_lines:
        for event in events:
            _print_json(event, indent=None)
        return
    from .render import event_line

    console = _out()
    for event in events:
        console.print(event_line(event), soft_wrap=True)


def _follow_events(api: ApiClient, params: dict[str, str | int], events: list[dict[str, Any]],
                   as_json: bool) -> None:
    after = 0
    while True:
        _print_events(events, as_json)
        sys.stdout.flush()
        after = events[-1]["id"] if events else after
        time.sleep(FOLLOW_INTERVAL)
        events = api.get(path("events"), {**params, "after": after, "limit": 10_000})


def main() -> None:
    """The ``standby`` entry point."""
    app()


if __name__ == "__main__":
    main()
