"""The `standby` command, run in this process with typer's CliRunner.

Commands that need an engine talk over real HTTP to a real engine served in this process (the
API by uvicorn in a thread, peers by a PeerServer), found the way the CLI always finds it:
through HOME/engine.json and HOME/api-token. The multi-process tests are in tests/integration.
"""

from __future__ import annotations

import json
import os
import re
import select
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from typer.testing import CliRunner, Result

from standby.api.app import create_app
from standby.cli.client import ApiClient, ApiError, EngineLocation
from standby.cli.client import path as api_path
from standby.cli.main import CERT_PATH, app
from standby.engine.engine import Engine
from standby.engine.identity import CERT_FILE, IDENTITY_DIR, Identity
from standby.engine.server import PeerServer


def run(home: Path, *args: str) -> Result:
    """`standby --home HOME ARGS...`, output wide enough that tables do not wrap."""
    return CliRunner().invoke(app, ["--home", str(home), *args], env={"COLUMNS": "200"})


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def engine(home: Path) -> Iterator[Engine]:
    """A running engine for ``home``: API on a loopback port, published in engine.json."""
    engine = Engine(home, name="alpha")
    peers = PeerServer(engine, "127.0.0.1", 0)
    engine.peer_address = f"127.0.0.1:{peers.port}"
    peers.start()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)  # connections wait in the backlog until uvicorn serves
    server = uvicorn.Server(uvicorn.Config(create_app(engine), log_level="warning",
                                           lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    (home / "engine.json").write_text(json.dumps({
        "name": engine.name, "fingerprint": engine.identity.fingerprint,
        "peer_address": engine.peer_address,
        "api_url": f"http://127.0.0.1:{sock.getsockname()[1]}", "pid": os.getpid()}))
    yield engine
    server.should_exit = True
    thread.join(10)
    sock.close()
    peers.stop()
    engine.close()


def write_scenario(tmp_path: Path, name: str = "web", master: Path | None = None,
                   extra: str = "") -> Path:
    master = master or tmp_path / "master"
    master.mkdir(parents=True, exist_ok=True)
    path = tmp_path / f"{name}.toml"
    path.write_text(f'name = "{name}"\nmaster = "alpha"\nreplica = "alpha"\n{extra}\n'
                    f'[[roots]]\nmaster = "{master}"\nreplica = "{tmp_path / "replica"}"\n')
    return path


# --- without an engine --------------------------------------------------------------------------


def test_no_command_shows_usage(home: Path) -> None:
    result = run(home)
    assert result.exit_code == 2
    assert "Usage" in result.output


@pytest.mark.parametrize("args", [
    ["frobnicate"],
    ["sync", "web", "--method", "fast"],
    ["peer", "add", "beta"],
    ["scenario", "add", "/nonexistent/web.toml"],
    ["scenario", "start"],
    ["events", "--limit", "0"],
    ["status", "--jsn"],
])
def test_argument_errors_exit_2(home: Path, args: list[str]) -> None:
    result = run(home, *args)
    assert result.exit_code == 2, result.output
    assert "Usage" in result.output


def test_id_before_the_engine_ever_ran(home: Path) -> None:
    """No identity yet: say how to create one, and do not create it."""
    result = run(home, "id")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert f"start it with `standby --home {home} engine` once" in result.stderr
    assert not (home / "identity").exists()


def test_id_prints_the_fingerprint_without_a_running_engine(home: Path) -> None:
    identity = Identity.load_or_create(home, "alpha")
    result = run(home, "id")
    assert result.exit_code == 0
    assert result.stdout == identity.fingerprint + "\n"


def test_id_reads_the_certificate_where_the_engine_writes_it() -> None:
    assert Path(IDENTITY_DIR, CERT_FILE) == CERT_PATH


@pytest.mark.parametrize("pem", [b"", b"not a certificate\n",
                                 b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
                                 b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"])
def test_id_with_a_damaged_certificate_exits_1(home: Path, pem: bytes) -> None:
    Identity.load_or_create(home, "alpha")
    (home / CERT_PATH).write_bytes(pem)
    result = run(home, "id")
    assert (result.exit_code, result.stdout) == (1, "")
    assert f"error: cannot read the engine's certificate {home / CERT_PATH}: " in result.stderr


def test_home_comes_from_standby_home(home: Path) -> None:
    identity = Identity.load_or_create(home, "alpha")
    result = CliRunner().invoke(app, ["id"], env={"STANDBY_HOME": str(home)})
    assert (result.exit_code, result.stdout) == (0, identity.fingerprint + "\n")


@pytest.mark.parametrize("args", [
    ["status"], ["status", "web", "--json"], ["peer", "list"], ["scenario", "list", "--json"],
    ["scenario", "stop", "web"], ["events"], ["report", "web"], ["sync", "web"],
])
def test_no_engine_running_exits_3_saying_how_to_start_it(home: Path, args: list[str]) -> None:
    result = run(home, *args)
    assert result.exit_code == 3
    assert result.stdout == ""
    assert f"no engine is running with home {home}; start it with `standby --home {home} " \
           "engine`" in result.stderr


def test_engine_json_of_a_stopped_engine_exits_3(home: Path) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    home.mkdir()
    (home / "engine.json").write_text(json.dumps({"api_url": "http://127.0.0.1:1",
                                                  "pid": int(gone.stdout)}))
    result = run(home, "status")
    assert result.exit_code == 3
    assert f"(process {int(gone.stdout)} is gone); start it with" in result.stderr


def test_unreachable_api_exits_3(home: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on once closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    home.mkdir()
    (home / "engine.json").write_text(json.dumps({"api_url": f"http://127.0.0.1:{port}",
                                                  "pid": os.getpid()}))
    (home / "api-token").write_text("token\n")
    result = run(home, "scenario", "list")
    assert result.exit_code == 3
    assert f"cannot reach the engine at http://127.0.0.1:{port}" in result.stderr


@pytest.mark.parametrize("url", ["https://127.0.0.1:7711", "http://127.0.0.1:port", "7711"])
def test_an_api_url_that_is_not_http_exits_3(home: Path, url: str) -> None:
    home.mkdir()
    (home / "engine.json").write_text(json.dumps({"api_url": url, "pid": os.getpid()}))
    (home / "api-token").write_text("token\n")
    result = run(home, "status")
    assert result.exit_code == 3
    assert f"the engine's API address {url!r} is not an http://HOST:PORT URL" in result.stderr


def test_the_client_takes_ipv6_addresses_without_brackets() -> None:
    client = ApiClient(EngineLocation("http://[::1]:7711", "token"))
    assert (client._host, client._port) == ("::1", 7711)


# --- against an engine --------------------------------------------------------------------------


def test_wrong_token_exits_3(home: Path, engine: Engine) -> None:
    (home / "api-token").write_text("not-the-token\n")
    result = run(home, "status")
    assert result.exit_code == 3
    assert "refused the API token" in result.stderr


def test_peer_commands(home: Path, engine: Engine) -> None:
    assert run(home, "peer", "list").stdout == "no peers paired yet\n"
    assert json.loads(run(home, "peer", "list", "--json").stdout) == []

    bad = run(home, "peer", "add", "beta", "127.0.0.1:1", "not-hex")
    assert bad.exit_code == 2  # the engine said 400
    assert bad.stderr.startswith("error: not a SHA-256 fingerprint: 'not-hex'")

    unreachable = run(home, "peer", "add", "beta", "127.0.0.1:1", "ab" * 32)
    assert unreachable.exit_code == 1  # 502
    assert "error: cannot reach 127.0.0.1:1" in unreachable.stderr

    missing = run(home, "peer", "remove", "beta")
    assert (missing.exit_code, missing.stderr) == (1, "error: no peer named 'beta'\n")


def test_bad_scenario_file_exits_2_naming_file_and_field(home: Path, engine: Engine,
                                                         tmp_path: Path) -> None:
    path = write_scenario(tmp_path, extra='description = "x"\n[sync]\nmethod = "blok"')
    result = run(home, "scenario", "add", str(path))
    assert result.exit_code == 2
    assert f"error: {path}: sync.method: Input should be 'file' or 'block'" in result.stderr
    assert engine.list_scenarios() == []


def test_scenario_commands(home: Path, engine: Engine, tmp_path: Path) -> None:
    added = run(home, "scenario", "add", str(write_scenario(tmp_path)))
    assert added.exit_code == 0, added.output
    assert added.stdout.startswith("scenario web added (alpha -> alpha, 1 root(s), stopped)")

    listed = run(home, "scenario", "list")
    assert re.search(r"web\s+master\s+stopped\s+inconsistent\s+alpha -> alpha\s+block\s+1",
                     listed.stdout), listed.stdout
    assert [s["name"] for s in json.loads(run(home, "scenario", "list", "--json").stdout)] \
        == ["web"]
    shown = json.loads(run(home, "scenario", "show", "web", "--json").stdout)
    assert shown == engine.show_scenario("web")
    human = run(home, "scenario", "show", "web").stdout
    assert str(tmp_path / "master") in human
    assert "64.0 KiB" in human  # the block size, for people
    status = json.loads(run(home, "status", "web", "--json").stdout)
    assert [s["name"] for s in status] == ["web"]
    assert "no synchronization has finished yet" in run(home, "status").stdout

    assert run(home, "scenario", "stop", "web").stdout == "scenario web stopped\n"
    removed = run(home, "scenario", "remove", "web")
    assert removed.stdout == "scenario web removed (replica files are kept)\n"
    assert run(home, "scenario", "list").stdout.startswith("no scenarios;")
    unknown = run(home, "scenario", "show", "web")
    assert unknown.exit_code == 1
    assert unknown.stderr == "error: no scenario named 'web' (see `standby scenario list`)\n"


def test_engine_text_is_not_read_as_markup(home: Path, engine: Engine, tmp_path: Path) -> None:
    master = tmp_path / "[bold]srv[/bold]"
    run(home, "scenario", "add", str(write_scenario(tmp_path, master=master)))
    assert str(master) in run(home, "scenario", "show", "web").stdout
    assert str(master) in run(home, "status").stdout


def test_start_waits_for_the_sync_then_report_and_status(home: Path, engine: Engine,
                                                         tmp_path: Path) -> None:
    path = write_scenario(tmp_path)
    (tmp_path / "master" / "a.txt").write_bytes(b"a" * 300_000)
    run(home, "scenario", "add", str(path))

    started = run(home, "scenario", "start", "web")
    assert started.exit_code == 0, started.output
    lines = started.stdout.splitlines()
    assert lines[-2].startswith(
        "synchronization of web succeeded: 1 files compared, 1 differed, 293.0 KiB sent in ")
    assert lines[-1] == "scenario web: real-time replication goes on (see `standby status web`)"
    assert (tmp_path / "replica" / "a.txt").read_bytes() == b"a" * 300_000

    report = json.loads(run(home, "report", "web", "--json").stdout)
    assert report["bytes_sent"] >= 300_000
    human = run(home, "report", "web").stdout
    assert "last synchronization of web" in human
    status = run(home, "status", "web").stdout
    assert "running  consistent" in status
    assert re.search(r"bytes (sent|received)\s+293\.0 KiB", status), status
    events = run(home, "events", "--scenario", "web").stdout
    assert "SB2102" in events
    codes = [e["code"] for e in json.loads(run(home, "events", "--json").stdout)]
    assert codes[0] == "SB2001"  # then started (SB2003) and the sync's own, in either order
    assert {"SB2003", "SB2101", "SB2102"} <= set(codes[1:])
    assert set(codes[1:]) <= {"SB2003", "SB2101", "SB2102", "SB2201", "SB2202", "SB2204"}


def test_sync_no_wait_prints_the_job_id(home: Path, engine: Engine, tmp_path: Path) -> None:
    run(home, "scenario", "add", str(write_scenario(tmp_path)))
    result = run(home, "sync", "web", "--no-wait", "--method", "file")
    assert result.exit_code == 0
    job_id = result.stdout.strip()
    assert engine.job(job_id)["scenario"] == "web"


def test_failed_sync_exits_1_with_the_job_error(home: Path, engine: Engine,
                                                tmp_path: Path) -> None:
    run(home, "scenario", "add", str(write_scenario(tmp_path)))
    (tmp_path / "master").rmdir()  # the master root is gone
    result = run(home, "sync", "web")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: synchronization of web failed: ")


def test_unknown_scenario_exits_1(home: Path, engine: Engine) -> None:
    for args in (["sync", "nope"], ["scenario", "start", "nope"], ["report", "nope"],
                 ["status", "nope"]):
        result = run(home, *args)
        assert result.exit_code == 1, args
        assert result.stderr.startswith("error: no scenario named 'nope'"), args


def test_a_job_is_long_polled(home: Path, engine: Engine, tmp_path: Path) -> None:
    """The client's wait reaches the engine: a finished job answers at once, a bad wait is
    the engine's 400."""
    run(home, "scenario", "add", str(write_scenario(tmp_path)))
    job_id = run(home, "sync", "web", "--no-wait").stdout.strip()
    with ApiClient(EngineLocation.find(home)) as api:
        job = api.get(api_path("jobs", job_id), {"wait": 30})
        assert job["state"] == "succeeded"
        started = time.monotonic()
        assert api.get(api_path("jobs", job_id), {"wait": 30})["state"] == "succeeded"
        assert time.monotonic() - started < 2
        with pytest.raises(ApiError) as refused:
            api.get(api_path("jobs", job_id), {"wait": 31})
    assert refused.value.status == 400
    assert refused.value.message.startswith("query.wait: ")


def test_the_client_reconnects_when_the_engine_closed_the_connection(
        home: Path, engine: Engine) -> None:
    with ApiClient(EngineLocation.find(home)) as api:
        assert api.get(api_path("engine"))["name"] == "alpha"
        connection = api._connection
        assert connection is not None
        assert connection.sock is not None
        connection.sock.shutdown(socket.SHUT_WR)  # the server sees the end and closes its side
        readable, _, _ = select.select([connection.sock], [], [], 10)
        assert readable
        assert api.get(api_path("engine"))["name"] == "alpha"
        assert api._connection is not connection


# --- start-up cost ------------------------------------------------------------------------------

#: Modules the common commands must not load: each costs 40 to 200 ms of start-up (the
#: benchmarks time `standby sync` end to end). pydantic is typer's, for parameter values.
HEAVY = ("httpx", "rich", "pydantic", "cryptography", "click")


def imported(*args: str, env: dict[str, str] | None = None) -> set[str]:
    """The modules ``python -X importtime ARGS`` loads (it must succeed)."""
    result = subprocess.run([sys.executable, "-X", "importtime", *args], capture_output=True,
                            text=True, env={**os.environ, **(env or {})}, timeout=60)
    assert result.returncode == 0, result.stderr[-3000:]
    return {line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines()
            if line.startswith("import time:") and "|" in line}


def heavy(modules: set[str]) -> set[str]:
    """The heavy packages among ``modules``, and standby.engine if it loaded."""
    return ({m.split(".")[0] for m in modules if m.split(".")[0] in HEAVY}
            | {"standby.engine" for m in modules if m.startswith("standby.engine")})


def test_importing_the_cli_loads_no_heavy_module() -> None:
    modules = imported("-c", "import standby.cli.main")
    assert "typer" in modules
    assert heavy(modules) == set()
    assert "http.client" not in modules  # with the first request only


def test_sync_status_and_id_load_no_heavy_module(home: Path, engine: Engine,
                                                 tmp_path: Path) -> None:
    """In a subprocess with stdout a pipe, as a benchmark runs them."""
    Identity.load_or_create(home, "alpha")
    run(home, "scenario", "add", str(write_scenario(tmp_path)))
    (tmp_path / "master" / "a.txt").write_bytes(b"a" * 1000)
    cli = ["-m", "standby.cli.main", "--home", str(home)]
    assert heavy(imported(*cli, "sync", "web")) == set()
    assert heavy(imported(*cli, "status", "--json")) == set()
    assert heavy(imported(*cli, "id")) == set()
    assert heavy(imported(*cli, "status")) == {"rich"}  # its tables
