"""The REST API over a real engine (its own home in tmp_path, its SQLite store, its identity).

Synchronizations run for real too: a peer server in this process lets a local -> local scenario
(master and replica both "alpha") open a session to its own engine.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from standby.api.app import UNEXPECTED, create_app
from standby.engine.engine import Engine
from standby.engine.server import PeerServer

with warnings.catch_warnings():  # starlette prefers httpx2 to httpx; both work
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = Engine(tmp_path / "home", name="alpha")
    yield engine
    engine.close()


@pytest.fixture
def client(engine: Engine) -> TestClient:
    return TestClient(create_app(engine), headers={"Authorization": f"Bearer {engine.api_token}"})


@pytest.fixture
def peer_server(engine: Engine) -> Iterator[PeerServer]:
    server = PeerServer(engine, "127.0.0.1", 0)
    engine.peer_address = f"127.0.0.1:{server.port}"
    server.start()
    yield server
    server.stop()


def scenario_text(tmp_path: Path, name: str = "web", extra: str = "") -> str:
    master = tmp_path / "master"
    master.mkdir(exist_ok=True)
    return (f'name = "{name}"\nmaster = "alpha"\nreplica = "alpha"\n{extra}\n'
            f'[[roots]]\nmaster = "{master}"\nreplica = "{tmp_path / "replica"}"\n')


def add_scenario(client: TestClient, tmp_path: Path, name: str = "web") -> dict[str, Any]:
    response = client.post("/v1/scenarios", json={"text": scenario_text(tmp_path, name),
                                                  "source": f"{name}.toml"})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def wait_job(client: TestClient, job_id: str, timeout: float = 30.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json()
        if job["state"] != "running":
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} still running after {timeout} s")


# --- authentication -----------------------------------------------------------------------------


@pytest.mark.parametrize("authorization", [
    None, "Bearer wrong", "Basic dXNlcjpwYXNz", "Bearer", "Bearer tök".encode("latin-1"),
])
def test_requests_without_the_token_are_refused(engine: Engine,
                                                authorization: str | bytes | None) -> None:
    """Missing, wrong, non-ASCII or non-Bearer credentials: 401 saying where the token is."""
    client = TestClient(create_app(engine))
    headers = {} if authorization is None else {"Authorization": authorization}
    for path in ("/v1/engine", "/v1/scenarios", "/openapi.json"):
        response = client.get(path, headers=headers)
        assert response.status_code == 401
        assert str(engine.home / "api-token") in response.json()["error"]
        assert response.headers["WWW-Authenticate"] == "Bearer"


def test_token_is_checked_before_the_body(engine: Engine, tmp_path: Path) -> None:
    """An unauthenticated write changes nothing, even with a valid body."""
    anonymous = TestClient(create_app(engine))
    response = anonymous.post("/v1/scenarios", json={"text": scenario_text(tmp_path)})
    assert response.status_code == 401
    assert engine.list_scenarios() == []


def test_openapi_schema_with_the_token(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert "/v1/scenarios/{name}/sync" in schema["paths"]
    assert client.get("/docs").status_code == 404


# --- engine and peers ---------------------------------------------------------------------------


def test_engine_info(client: TestClient, engine: Engine) -> None:
    info = client.get("/v1/engine").json()
    assert info["name"] == "alpha"
    assert info["fingerprint"] == engine.identity.fingerprint
    assert len(info["fingerprint"]) == 64


def test_peers_start_empty_and_bad_input_is_400(client: TestClient) -> None:
    assert client.get("/v1/peers").json() == []
    response = client.post("/v1/peers", json={"name": "beta", "address": "127.0.0.1:1",
                                              "fingerprint": "xyz"})
    assert response.status_code == 400
    assert "not a SHA-256 fingerprint" in response.json()["error"]


def test_unreachable_peer_is_502_and_recorded(client: TestClient) -> None:
    response = client.post("/v1/peers", json={"name": "beta", "address": "127.0.0.1:1",
                                              "fingerprint": "ab" * 32})
    assert response.status_code == 502
    assert "cannot reach 127.0.0.1:1" in response.json()["error"]
    assert client.get("/v1/peers").json() == []
    assert [e["code"] for e in client.get("/v1/events").json()] == ["SB1104"]


def test_remove_unknown_peer_is_404(client: TestClient) -> None:
    response = client.delete("/v1/peers/beta")
    assert response.status_code == 404
    assert response.json() == {"error": "no peer named 'beta'"}


# --- scenarios ----------------------------------------------------------------------------------


def test_bad_scenario_file_is_400_naming_file_and_field(client: TestClient,
                                                        tmp_path: Path) -> None:
    text = scenario_text(tmp_path).replace(f'master = "{tmp_path / "master"}"',
                                           'master = "relative/path"')
    response = client.post("/v1/scenarios", json={"text": text, "source": "web.toml"})
    assert response.status_code == 400
    assert "web.toml: roots.0.master: must be an absolute path" in response.json()["error"]
    assert client.get("/v1/scenarios").json() == []


def test_scenario_that_is_not_toml_is_400(client: TestClient) -> None:
    response = client.post("/v1/scenarios", json={"text": "name = ", "source": "x.toml"})
    assert response.status_code == 400
    assert response.json()["error"].startswith("x.toml: not valid TOML")


def test_scenario_add_show_list_remove(client: TestClient, tmp_path: Path) -> None:
    added = add_scenario(client, tmp_path)
    assert (added["name"], added["state"], added["consistent"]) == ("web", "stopped", False)
    assert (tmp_path / "replica").is_dir()  # the replica root is prepared on add

    shown = client.get("/v1/scenarios/web").json()
    assert shown["document"]["roots"][0]["master"] == str(tmp_path / "master")
    assert shown["document"]["sync"]["method"] == "block"
    listed = client.get("/v1/scenarios").json()
    assert [s["name"] for s in listed] == ["web"]
    assert "document" not in listed[0]
    status = client.get("/v1/status/web").json()
    assert [(s["name"], s["job"], s["syncs"]) for s in status] == [("web", None, 0)]

    response = client.delete("/v1/scenarios/web")
    assert response.status_code == 204
    assert response.content == b""
    assert client.get("/v1/scenarios").json() == []
    assert client.get("/v1/scenarios/web").status_code == 404


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/v1/scenarios/nope"),
    ("DELETE", "/v1/scenarios/nope"),
    ("POST", "/v1/scenarios/nope/start"),
    ("POST", "/v1/scenarios/nope/stop"),
    ("POST", "/v1/scenarios/nope/sync"),
    ("GET", "/v1/scenarios/nope/report"),
    ("GET", "/v1/status/nope"),
])
def test_unknown_scenario_is_404(client: TestClient, method: str, path: str) -> None:
    response = client.request(method, path)
    assert response.status_code == 404
    assert "no scenario named 'nope'" in response.json()["error"]


def test_unknown_job_is_404(client: TestClient) -> None:
    response = client.get("/v1/jobs/0-0")
    assert response.status_code == 404
    assert response.json() == {"error": "no job '0-0'"}


@pytest.mark.parametrize(("path", "body", "message"), [
    ("/v1/scenarios", {"source": "a.toml"}, "body.text: Field required"),
    ("/v1/scenarios", {"text": "", "sauce": "a.toml"}, "body.sauce: Extra inputs"),
    ("/v1/peers", {"name": "beta", "address": "h:1"}, "body.fingerprint: Field required"),
    ("/v1/scenarios/web/sync", {"method": "fast"}, "body.method: Input should be 'file' or"),
])
def test_invalid_request_body_is_400_naming_the_field(client: TestClient, path: str,
                                                      body: dict[str, Any], message: str) -> None:
    response = client.post(path, json=body)
    assert response.status_code == 400
    assert message in response.json()["error"]


# --- events -------------------------------------------------------------------------------------


def test_events_are_listed_and_filtered(client: TestClient, tmp_path: Path) -> None:
    add_scenario(client, tmp_path, "web")
    add_scenario(client, tmp_path, "db")
    client.delete("/v1/scenarios/web")
    events = client.get("/v1/events").json()
    assert [(e["code"], e["scenario"]) for e in events] == [
        ("SB2001", "web"), ("SB2001", "db"), ("SB2002", "web")]
    assert events[0]["message"].startswith("scenario web added")
    web = client.get("/v1/events", params={"scenario": "web"}).json()
    assert [e["code"] for e in web] == ["SB2001", "SB2002"]
    after = client.get("/v1/events", params={"after": events[0]["id"]}).json()
    assert after == events[1:]
    assert client.get("/v1/events", params={"limit": 1}).json() == events[-1:]
    response = client.get("/v1/events", params={"limit": 0})
    assert response.status_code == 400
    assert "query.limit" in response.json()["error"]


# --- jobs ---------------------------------------------------------------------------------------


@pytest.mark.usefixtures("peer_server")
def test_start_runs_a_job_and_its_report_is_served(client: TestClient, tmp_path: Path) -> None:
    """start returns a running job at once (202); once it succeeds the files are on the
    replica, the scenario is consistent and the report is served."""
    add_scenario(client, tmp_path)
    (tmp_path / "master" / "a.txt").write_bytes(b"hello\n" * 1000)
    response = client.post("/v1/scenarios/web/start")
    assert response.status_code == 202
    started = response.json()
    assert (started["name"], started["state"]) == ("web", "syncing")
    job = started["job"]
    assert (job["scenario"], job["kind"]) == ("web", "sync")
    assert set(job["progress"]) >= {"phase", "files_done", "files_total", "bytes_done",
                                    "bytes_total", "bytes_sent", "rate_bytes_s", "eta_s"}

    done = wait_job(client, job["id"])
    assert done["state"] == "succeeded", done
    assert (tmp_path / "replica" / "a.txt").read_bytes() == b"hello\n" * 1000
    report = client.get("/v1/scenarios/web/report").json()
    assert report["files_compared"] >= 1
    assert report["bytes_sent"] >= 6000
    status = client.get("/v1/status/web").json()[0]
    assert (status["state"], status["consistent"], status["syncs"]) == ("running", True, 1)


@pytest.mark.usefixtures("peer_server")
def test_sync_options_override_the_scenario_for_one_run(client: TestClient,
                                                        tmp_path: Path) -> None:
    add_scenario(client, tmp_path)
    (tmp_path / "master" / "a.txt").write_bytes(b"x" * 100_000)
    job = client.post("/v1/scenarios/web/sync",
                      json={"method": "file", "ignore_same_size_time": True}).json()
    assert wait_job(client, job["id"])["state"] == "succeeded"
    report = client.get("/v1/scenarios/web/report").json()
    assert (report["method"], report["ignore_same_size_time"]) == ("file", True)

    job = client.post("/v1/scenarios/web/sync").json()  # no body: the scenario's options
    assert wait_job(client, job["id"])["state"] == "succeeded"
    report = client.get("/v1/scenarios/web/report").json()
    assert (report["method"], report["ignore_same_size_time"]) == ("block", False)


@pytest.mark.usefixtures("peer_server")
def test_a_long_poll_answers_when_the_job_ends(client: TestClient, tmp_path: Path) -> None:
    """GET /v1/jobs/{id}?wait=30 right after the start answers with the ended job, as soon as
    it ends; asked again once it ended, it answers at once."""
    add_scenario(client, tmp_path)
    (tmp_path / "master" / "a.txt").write_bytes(b"x" * 2_000_000)
    job = client.post("/v1/scenarios/web/sync").json()
    started = time.monotonic()
    done = client.get(f"/v1/jobs/{job['id']}", params={"wait": 30}).json()
    assert done["state"] == "succeeded", done
    assert done["report"]["files_compared"] == 1
    assert time.monotonic() - started < 20

    started = time.monotonic()
    again = client.get(f"/v1/jobs/{job['id']}", params={"wait": 30})
    assert time.monotonic() - started < 2
    assert {k: v for k, v in again.json().items() if k != "progress"} == \
        {k: v for k, v in done.items() if k != "progress"}


def test_a_long_poll_of_an_unknown_job_is_404_at_once(client: TestClient) -> None:
    started = time.monotonic()
    response = client.get("/v1/jobs/0-0", params={"wait": 30})
    assert (response.status_code, response.json()) == (404, {"error": "no job '0-0'"})
    assert time.monotonic() - started < 2


@pytest.mark.parametrize("wait", ["-1", "30.5", "soon", "nan", "inf", ""])
def test_a_bad_wait_is_400(client: TestClient, wait: str) -> None:
    """Checked before the job is looked up: the same answer for any job."""
    response = client.get("/v1/jobs/0-0", params={"wait": wait})
    assert response.status_code == 400
    assert response.json()["error"].startswith("query.wait: ")


def test_report_before_any_sync_is_404(client: TestClient, tmp_path: Path) -> None:
    add_scenario(client, tmp_path)
    response = client.get("/v1/scenarios/web/report")
    assert response.status_code == 404
    assert "no synchronization report yet" in response.json()["error"]


# --- unexpected errors --------------------------------------------------------------------------


def test_unexpected_error_is_500_and_logged(client: TestClient, engine: Engine,
                                            caplog: pytest.LogCaptureFixture) -> None:
    """A failure the engine does not foresee (here: its database is closed) is a bug: the
    client gets a plain 500, the log gets the traceback."""
    engine.store.close()
    with caplog.at_level(logging.ERROR, logger="standby.api"):
        response = client.get("/v1/peers")
    assert response.status_code == 500
    assert response.json() == {"error": UNEXPECTED}
    [record] = [r for r in caplog.records if r.name == "standby.api"]
    assert "GET /v1/peers" in record.getMessage()
    assert record.exc_info is not None
