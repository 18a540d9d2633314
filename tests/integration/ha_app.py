"""A small application for the high-availability tests: the workload a switchover moves.

It keeps its data in the replicated root (``APP_DIR``) and writes there without pause, so a
switchover happens under a steady write load, and it answers HTTP so that a client can tell
which host serves it. Driven as a service workload by its three commands::

    ha_app.py start    # spawn the server in the background; returns once it answers
    ha_app.py stop     # SIGTERM it and wait until it has exited (fine when not running)
    ha_app.py check    # exit 0 while it answers on APP_PORT

Environment (set per engine by the tests):

- ``APP_DIR``: the data directory, inside the scenario's root on this host.
- ``APP_STATE``: a directory outside the root for the pid file and the counters it leaves.
- ``APP_PORT``: the HTTP port; ``APP_BIND``: the address to listen on (default 127.0.0.1).
- ``APP_HOST``: a name for the host, written into every record.

The data: ``journal.log`` gets one line per record, ``"<n> <host>\\n"``, numbered on from the
last complete line found at start (as a real application resumes from its own data), and
every 50 records one of ten ``blob-K.bin`` files (64 KiB) is rewritten. So after a switchover
the new host's journal must hold every number the old host wrote, without a gap: that is the
"nothing lost" check. A ``pause`` file in ``APP_STATE`` holds the writes (the server keeps
answering), so that trees can be compared at rest. On SIGTERM it finishes the record it is
writing, leaves the last number written in ``APP_STATE/last``, and exits.

HTTP: ``GET /`` answers ``"<host> <last n>"``; ``GET /file/NAME`` the content of a file of the
data directory.
"""

from __future__ import annotations

import http.server
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

WRITE_INTERVAL = 0.005
BLOB_SIZE = 64 * 1024


def _env(name: str, default: str | None = None) -> str:
    value = os.environ.get(name, default)
    if value is None:
        sys.exit(f"ha_app: {name} is not set")
    return value


def _last_number(journal: Path) -> int:
    try:
        data = journal.read_bytes()
    except FileNotFoundError:
        return 0
    lines = data.split(b"\n")[:-1]  # the last piece is incomplete (or empty)
    for line in reversed(lines):
        try:
            return int(line.split(b" ")[0])
        except ValueError:
            continue
    return 0


def serve() -> None:
    data = Path(_env("APP_DIR"))
    state = Path(_env("APP_STATE"))
    host = _env("APP_HOST", "?")
    data.mkdir(parents=True, exist_ok=True)
    journal = data / "journal.log"
    number = _last_number(journal)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.startswith("/file/"):
                try:
                    body = (data / self.path[len("/file/"):]).read_bytes()
                except OSError:
                    self.send_error(404)
                    return
            else:
                body = f"{host} {number}".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer((_env("APP_BIND", "127.0.0.1"),
                                              int(_env("APP_PORT"))), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    while not stopping.is_set():
        if (state / "pause").exists():
            time.sleep(0.05)
            continue
        with open(journal, "ab") as out:
            out.write(f"{number + 1} {host}\n".encode())
        number += 1
        if number % 50 == 0:
            (data / f"blob-{number // 50 % 10}.bin").write_bytes(os.urandom(BLOB_SIZE))
        time.sleep(WRITE_INTERVAL)
    server.shutdown()
    (state / "last").write_text(f"{number}\n")


def _pidfile() -> Path:
    return Path(_env("APP_STATE")) / "app.pid"


def _answers() -> bool:
    url = f"http://{_env('APP_BIND', '127.0.0.1').replace('0.0.0.0', '127.0.0.1')}:" \
          f"{_env('APP_PORT')}/"
    try:
        with urllib.request.urlopen(url, timeout=1.0) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def start() -> None:
    state = Path(_env("APP_STATE"))
    state.mkdir(parents=True, exist_ok=True)
    (state / "last").unlink(missing_ok=True)
    with open(state / "app.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, __file__, "serve"], stdout=log, stderr=log,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    _pidfile().write_text(f"{proc.pid}\n")
    with open(state / "starts", "a") as starts:
        starts.write(f"{time.time()}\n")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and proc.poll() is None:
        if _answers():
            return
        time.sleep(0.05)
    sys.exit("ha_app: the server did not answer within 10 s")


def stop() -> None:
    try:
        pid = int(_pidfile().read_text())
    except (FileNotFoundError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        _pidfile().unlink(missing_ok=True)
        return
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.02)
    _pidfile().unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs; a zombie (exited, not yet reaped by init) does not."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def check() -> None:
    sys.exit(0 if _answers() else 1)


if __name__ == "__main__":
    {"serve": serve, "start": start, "stop": stop, "check": check}[sys.argv[1]]()
