"""`standby engine`: wire the engine, its peer server and its API together and run them.

The main thread runs the asyncio loop serving the REST API (uvicorn); the peer server and the
jobs run in threads (see docs/design.md for why the data plane is threaded). SIGINT and
SIGTERM stop the API server; then jobs are cancelled and the peer server closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import uvicorn

from . import events as ev
from .engine import DEFAULT_API_PORT, DEFAULT_PEER_PORT, Engine, EngineError, parse_address
from .server import PeerServer

log = logging.getLogger("standby.daemon")


class _ApiServer(uvicorn.Server):
    """uvicorn, minus re-raising SIGINT/SIGTERM after its shutdown: the engine has its own
    clean-up to do (cancel jobs, close the peer server and the store, remove engine.json)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit)
                    for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _write_json_atomically(path: Path, data: dict[str, object]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def run_engine(home: Path, name: str | None, listen: str | None, api: str | None) -> int:
    """Run an engine in the foreground until SIGINT/SIGTERM. Returns the exit code."""
    logging.basicConfig(level=os.environ.get("STANDBY_LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        engine = Engine(home, name)
        peer_host, peer_port = parse_address(listen or f"0.0.0.0:{DEFAULT_PEER_PORT}",
                                             DEFAULT_PEER_PORT)
        api_host, api_port = parse_address(api or f"127.0.0.1:{DEFAULT_API_PORT}",
                                           DEFAULT_API_PORT)
    except EngineError as exc:
        log.error("%s", exc.message)
        return 2
    try:
        server = PeerServer(engine, peer_host, peer_port)
    except OSError as exc:
        log.error("cannot listen for peers on %s:%s: %s", peer_host, peer_port, exc.strerror)
        return 2
    advertised = "127.0.0.1" if peer_host in ("0.0.0.0", "::", "") else peer_host
    engine.peer_address = f"{advertised}:{server.port}"
    api_sock = socket.socket(socket.AF_INET6 if ":" in api_host else socket.AF_INET)
    api_sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        api_sock.bind((api_host, api_port))
    except OSError as exc:
        log.error("cannot serve the API on %s:%s: %s", api_host, api_port, exc.strerror)
        server.stop()
        return 2
    api_sock.listen(64)
    bound_port = api_sock.getsockname()[1]
    server.start()

    from ..api.app import create_app

    app = create_app(engine)
    config = uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False)
    uv = _ApiServer(config)
    _write_json_atomically(home / "engine.json", {
        "name": engine.name, "fingerprint": engine.identity.fingerprint,
        "peer_address": f"{peer_host}:{server.port}",
        "api_url": f"http://{_url_host(api_host)}:{bound_port}", "pid": os.getpid()})
    engine.emit(ev.ENGINE_STARTED, f"engine {engine.name} started: peers on "
                f"{peer_host}:{server.port}, API on {api_host}:{bound_port}")
    engine.resume_scenarios()
    try:
        asyncio.run(uv.serve(sockets=[api_sock]))
    finally:
        server.stop()
        engine.emit(ev.ENGINE_STOPPED, f"engine {engine.name} stopped")
        engine.close()
        with contextlib.suppress(FileNotFoundError):
            (home / "engine.json").unlink()
    return 0
