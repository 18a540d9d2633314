"""The engine's REST API: a thin HTTP face over :class:`~standby.engine.engine.Engine`.

Each route is one call of an engine method, run in a worker thread (the engine blocks: SQLite,
peer connections). The engine's lifetime belongs to the daemon that builds this app, so the app
only keeps a reference to it in ``app.state.engine``; no lifespan hook is needed.

Authentication: every route, the OpenAPI schema included, needs
``Authorization: Bearer <token>`` with the token from ``HOME/api-token`` (mode 0600, created by
the engine on first start). The file's permissions decide who may drive the engine. The schema
is behind the token too: one rule without exceptions is easier to check than a list of public
paths, and whoever may call the API may read its schema. The browser pages /docs and /redoc are
off, as a browser cannot send the token to them.

Errors: an :class:`EngineError` becomes ``{"error": message}`` with its status; an invalid
request becomes 400 naming the fields; anything else is a bug: 500 with a plain sentence, and
the traceback goes to the log.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from typing import Annotated, Any, Literal, ParamSpec, TypeVar

from anyio import CapacityLimiter, to_thread
from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import __version__
from ..engine.engine import Engine, EngineError

log = logging.getLogger("standby.api")

UNEXPECTED = "unexpected error, please report it as a bug (the engine's log has the details)"

#: The longest long poll of GET /v1/jobs/{id}?wait=SECONDS (the engine's own cap).
MAX_JOB_WAIT = 30.0
#: How many long polls may wait at once. Each holds a worker thread while it waits, so they
#: get their own threads rather than the shared pool's: a crowd of waiting clients must not
#: leave the other routes without a thread. More waiters queue for a thread.
JOB_WAITERS = 64

P = ParamSpec("P")
T = TypeVar("T")


# --- request bodies -----------------------------------------------------------------------------


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")  # a misspelt field is an error, not ignored


class PeerIn(_Body):
    name: str = Field(description="the peer engine's name")
    address: str = Field(description="HOST:PORT of the peer engine's peer port")
    fingerprint: str = Field(description="the peer's fingerprint, as `standby id` prints it there")


class ScenarioIn(_Body):
    text: str = Field(description="the scenario file's TOML text")
    source: str = Field("<request>", description="the file's name, used in error messages")


class HandoverIn(_Body):
    target: str | None = Field(None, description="the host to hand over to (default: the "
                                                  "scenario's other host)")


class SyncIn(_Body):
    method: Literal["file", "block"] | None = Field(None, description="default: the scenario's")
    ignore_same_size_time: bool | None = Field(None, description="default: the scenario's")


# --- dependencies -------------------------------------------------------------------------------

_bearer = HTTPBearer(auto_error=False, description="the token in HOME/api-token")


def _engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


EngineDep = Annotated[Engine, Depends(_engine)]


def _require_token(
    engine: EngineDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    # Compare bytes: compare_digest refuses str with non-ASCII characters (TypeError, a 500).
    given = credentials.credentials.encode() if credentials is not None else b""
    if not secrets.compare_digest(given, engine.api_token.encode()):
        raise HTTPException(
            401,
            f"missing or wrong API token: send 'Authorization: Bearer TOKEN' with the token "
            f"from {engine.home / 'api-token'}",
            headers={"WWW-Authenticate": "Bearer"},
        )


async def _call(function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run a blocking engine method in a worker thread."""
    return await run_in_threadpool(function, *args, **kwargs)


# --- routes -------------------------------------------------------------------------------------

router = APIRouter(prefix="/v1", dependencies=[Depends(_require_token)])
Item = dict[str, Any]


@router.get("/engine")
async def engine_info(engine: EngineDep) -> Item:
    """This engine's name, fingerprint, version and peer address."""
    return await _call(engine.info)


@router.get("/peers")
async def list_peers(engine: EngineDep) -> list[Item]:
    """The paired engines."""
    return await _call(engine.list_peers)


@router.post("/peers")
async def add_peer(engine: EngineDep, peer: PeerIn) -> Item:
    """Pair with an engine: fetch its certificate and check it against the fingerprint."""
    return await _call(engine.add_peer, peer.name, peer.address, peer.fingerprint)


@router.delete("/peers/{name}", status_code=204)
async def remove_peer(engine: EngineDep, name: str) -> None:
    """Forget a peer that no scenario uses."""
    await _call(engine.remove_peer, name)


@router.get("/scenarios")
async def list_scenarios(engine: EngineDep) -> list[Item]:
    """Summaries of the scenarios this engine is master or replica of."""
    return await _call(engine.list_scenarios)


@router.post("/scenarios")
async def add_scenario(engine: EngineDep, scenario: ScenarioIn) -> Item:
    """Validate a scenario file, give it to the replica's engine, store it (create or replace)."""
    return await _call(engine.add_scenario, scenario.text, scenario.source)


@router.get("/scenarios/{name}")
async def show_scenario(engine: EngineDep, name: str) -> Item:
    """A scenario's summary and its whole document."""
    return await _call(engine.show_scenario, name)


@router.delete("/scenarios/{name}", status_code=204)
async def remove_scenario(engine: EngineDep, name: str) -> None:
    """Remove a scenario here and on its replica engine (replica files are kept)."""
    await _call(engine.remove_scenario, name)


@router.post("/scenarios/{name}/start", status_code=202)
async def start_scenario(engine: EngineDep, name: str) -> Item:
    """Start protecting: returns the scenario with ``job``, the initial synchronization job
    when one starts (poll /v1/jobs/{id}), else null."""
    return await _call(engine.start_scenario, name)


@router.post("/scenarios/{name}/suspend")
async def suspend_scenario(engine: EngineDep, name: str) -> Item:
    """On the replica: stop applying changes; they are spooled until resume."""
    return await _call(engine.suspend, name)


@router.post("/scenarios/{name}/resume")
async def resume_scenario(engine: EngineDep, name: str) -> Item:
    """On the replica: apply the spooled changes and go on applying."""
    return await _call(engine.resume, name)


@router.post("/scenarios/{name}/stop")
async def stop_scenario(engine: EngineDep, name: str) -> Item:
    """Stop protecting, cancelling a running synchronization."""
    return await _call(engine.stop_scenario, name)


@router.post("/scenarios/{name}/switchover", status_code=202)
async def switchover_scenario(engine: EngineDep, name: str,
                              body: HandoverIn | None = None) -> Item:
    """On the active host: a planned switchover (stop the workload, drain, hand over). The
    controller acts on it at its next cycle; poll /v1/status/{name} (``ha.request``)."""
    return await _call(engine.ha_request, name, "switchover", body.target if body else None)


@router.post("/scenarios/{name}/failover", status_code=202)
async def failover_scenario(engine: EngineDep, name: str) -> Item:
    """On a standby: promote this host, the active host being gone (the arbiter must agree)."""
    return await _call(engine.ha_request, name, "failover", None)


@router.post("/scenarios/{name}/switchback", status_code=202)
async def switchback_scenario(engine: EngineDep, name: str,
                              body: HandoverIn | None = None) -> Item:
    """On the active host after a failover: resynchronize the old master (differences only),
    then switch over to it."""
    return await _call(engine.ha_request, name, "switchback", body.target if body else None)


@router.delete("/scenarios/{name}/request")
async def cancel_request(engine: EngineDep, name: str) -> Item:
    """Withdraw the pending switchover, failover or switchback (409 when none is pending)."""
    return await _call(engine.ha_cancel, name)


@router.post("/scenarios/{name}/sync", status_code=202)
async def sync_scenario(engine: EngineDep, name: str, options: SyncIn | None = None) -> Item:
    """Start a synchronization job (poll /v1/jobs/{id}); the body is optional."""
    return await _call(engine.start_sync, name, *_sync_args(options))


def _sync_args(options: SyncIn | None) -> tuple[str | None, bool | None]:
    return (options.method, options.ignore_same_size_time) if options else (None, None)


@router.get("/scenarios/{name}/report")
async def scenario_report(engine: EngineDep, name: str) -> Item:
    """The report of the scenario's last finished synchronization."""
    return await _call(engine.report, name)


@router.get("/jobs/{job_id}")
async def job(
    request: Request,
    engine: EngineDep,
    job_id: str,
    wait: Annotated[float, Query(
        ge=0, le=MAX_JOB_WAIT, allow_inf_nan=False,
        description="first wait up to this many seconds for the job to end (a long poll): "
                    "the answer comes as soon as it ends")] = 0.0,
) -> Item:
    """A job's state, progress and, once finished, its report."""
    if wait == 0:
        return await _call(engine.job, job_id)
    return await to_thread.run_sync(engine.job, job_id, wait, limiter=_waiters(request))


def _waiters(request: Request) -> CapacityLimiter:
    """The threads of long polls, made on first use (in the event loop, as anyio prefers)."""
    limiter: CapacityLimiter | None = getattr(request.app.state, "job_waiters", None)
    if limiter is None:
        limiter = request.app.state.job_waiters = CapacityLimiter(JOB_WAITERS)
    return limiter


@router.get("/status")
async def status(engine: EngineDep) -> list[Item]:
    """Every scenario's summary with its statistics and running job."""
    return await _call(engine.status)


@router.get("/status/{name}")
async def scenario_status(engine: EngineDep, name: str) -> list[Item]:
    """One scenario's status, as a list of one like ``/v1/status``."""
    return await _call(engine.status, name)


@router.get("/events")
async def events(
    engine: EngineDep,
    scenario: str | None = None,
    after: Annotated[int, Query(ge=0, description="only events with a larger id")] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000, description="the latest N")] = 1000,
) -> list[Item]:
    """Events in id order: the latest ``limit`` after ``after``, optionally of one scenario."""
    return await _call(engine.events, scenario, after, limit)


schema_router = APIRouter(dependencies=[Depends(_require_token)])


@schema_router.get("/openapi.json", include_in_schema=False)
async def openapi(request: Request) -> Item:
    """The OpenAPI schema of this API."""
    return request.app.openapi()  # type: ignore[no-any-return]


# --- errors -------------------------------------------------------------------------------------


async def _engine_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, EngineError)
    return JSONResponse({"error": exc.message}, status_code=exc.status)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def _invalid_request(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return JSONResponse({"error": describe_validation_errors(exc)}, status_code=400)


def describe_validation_errors(exc: RequestValidationError) -> str:
    """One line per problem: ``body.name: Field required``."""
    return "; ".join(
        f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}" for item in exc.errors()
    )


class CatchUnexpected:
    """Turn an exception nothing else handled into a 500 with a plain message, and log it.

    Starlette's own 500 handler re-raises after answering, so the server logs the traceback a
    second time; this middleware answers and logs once.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            log.exception("unexpected error in %s %s", scope["method"], scope["path"])
            if started:  # too late to answer: the server closes the connection
                raise
            await JSONResponse({"error": UNEXPECTED}, status_code=500)(scope, receive, send)


# --- the app ------------------------------------------------------------------------------------


def create_app(engine: Engine) -> FastAPI:
    """The API of ``engine``; serve it with uvicorn on a local address."""
    app = FastAPI(title="standby engine API", version=__version__,
                  openapi_url=None, docs_url=None, redoc_url=None)
    app.state.engine = engine
    app.include_router(router)
    app.include_router(schema_router)
    app.add_exception_handler(EngineError, _engine_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_middleware(CatchUnexpected)
    return app
