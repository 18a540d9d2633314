"""How the CLI reaches the engine: find it through HOME/engine.json and HOME/api-token, then call
its REST API. Nothing here imports the engine.

The client is the standard library's :mod:`http.client`, not httpx: the API is plain HTTP/1.1
with JSON on a local address, and every ``standby`` command pays for its client's import before
it can say anything. ``import httpx`` costs 110 to 280 ms (it loads its own command line, with
click, rich and pygments, and every compression library installed), :mod:`http.client` 40 ms,
and only commands that call the engine import it.

Failures come in two kinds, which the CLI maps to exit statuses:

* :class:`EngineUnreachable`: no engine runs for this home, or it cannot be reached, does not
  answer in time, or refuses our token. The fix is on the operator's side (start the engine,
  use the right ``--home``).
* :class:`ApiError`: the engine answered and refused the request; its message says why.
"""

from __future__ import annotations

import json
import os
import select
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode, urlsplit

if TYPE_CHECKING:
    from http.client import HTTPConnection, HTTPResponse

ENGINE_FILE = "engine.json"
TOKEN_FILE = "api-token"

#: Seconds to open a connection to the engine's API (it listens on a local address).
CONNECT_TIMEOUT = 5.0
#: Seconds to wait for an answer to a read (status, lists, job progress): local SQLite reads.
READ_TIMEOUT = 15.0
#: Seconds to wait for an answer to a change: adding a peer or a scenario contacts the other
#: engine, which may take the engine's link timeout (30 s) for each of connect, handshake, reply.
WRITE_TIMEOUT = 120.0


class EngineUnreachable(Exception):
    """The engine is not running for this home, or cannot be reached or authenticated."""


class ApiError(Exception):
    """The engine refused a request: ``status`` follows HTTP, ``message`` is the engine's."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def start_hint(home: Path) -> str:
    return f"start it with `standby --home {shlex.quote(str(home))} engine`"


@dataclass(frozen=True, slots=True)
class EngineLocation:
    """Where the engine of a home listens, from the files the running engine writes."""

    api_url: str
    token: str

    @classmethod
    def find(cls, home: Path) -> EngineLocation:
        """Read HOME/engine.json and HOME/api-token; raise :class:`EngineUnreachable` when no
        engine runs for ``home``."""
        try:
            info = json.loads((home / ENGINE_FILE).read_text())
            api_url, pid = info["api_url"], info.get("pid")
        except FileNotFoundError:
            raise EngineUnreachable(f"no engine is running with home {home}; "
                                    f"{start_hint(home)}") from None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise EngineUnreachable(f"cannot read {home / ENGINE_FILE} ({exc}); "
                                    f"{start_hint(home)}") from None
        if isinstance(pid, int) and not _process_exists(pid):
            raise EngineUnreachable(f"the engine of {home} has stopped (process {pid} is gone); "
                                    f"{start_hint(home)}")
        try:
            token = (home / TOKEN_FILE).read_text().strip()
        except OSError as exc:
            raise EngineUnreachable(f"cannot read the API token {home / TOKEN_FILE}: "
                                    f"{exc.strerror}; run as the engine's user") from None
        return cls(str(api_url), token)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def path(*parts: str) -> str:
    """``/v1/<parts>``, each part quoted: names come from the command line."""
    return "/v1/" + "/".join(quote(part, safe="") for part in parts)


class ApiClient:
    """A client of the engine's REST API: JSON in and out, and a timeout on every call.

    It keeps one connection open for its calls (a job's long polls follow each other), and
    opens a new one when the engine has closed it in between.
    """

    def __init__(self, location: EngineLocation) -> None:
        self.url = location.api_url
        try:
            parts = urlsplit(location.api_url)
            scheme, host, port = parts.scheme, parts.hostname, parts.port  # host without [ ]
        except ValueError:  # a port that is not a number, a [ without ]
            scheme, host, port = "", None, None
        if scheme != "http" or not host:
            raise EngineUnreachable(f"the engine's API address {self.url!r} is not an "
                                    "http://HOST:PORT URL")
        self._host, self._port = host, port
        self._headers = {"Authorization": f"Bearer {location.token}",
                         "Accept": "application/json"}
        self._connection: HTTPConnection | None = None

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def get(self, url: str, params: Mapping[str, str | int | float] | None = None, *,
            timeout: float = READ_TIMEOUT) -> Any:
        if params:
            url = f"{url}?{urlencode(params)}"
        return self._request("GET", url, timeout)

    def post(self, url: str, body: Mapping[str, Any] | None = None) -> Any:
        return self._request("POST", url, WRITE_TIMEOUT, body)

    def delete(self, url: str) -> Any:
        return self._request("DELETE", url, WRITE_TIMEOUT)

    def _request(self, method: str, url: str, timeout: float,
                 body: Mapping[str, Any] | None = None) -> Any:
        from http.client import HTTPException

        headers = dict(self._headers)
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            connection = self._connect()
        except TimeoutError:
            raise EngineUnreachable(f"the engine at {self.url} did not accept a connection "
                                    f"within {CONNECT_TIMEOUT:g} s; it may be overloaded or "
                                    "stuck") from None
        except OSError as exc:
            raise EngineUnreachable(f"cannot reach the engine at {self.url} "
                                    f"({_describe(exc)}); is it running?") from None
        try:
            connection.sock.settimeout(timeout)
            connection.request(method, url, body=data, headers=headers)
            response = connection.getresponse()
            content = response.read()
        except TimeoutError:
            self.close()
            raise EngineUnreachable(f"the engine at {self.url} did not answer within "
                                    f"{timeout:g} s; it may be overloaded or stuck") from None
        except (OSError, HTTPException) as exc:
            self.close()
            raise EngineUnreachable(f"cannot reach the engine at {self.url} "
                                    f"({_describe(exc)}); is it running?") from None
        if response.will_close:
            self.close()
        if response.status == 401:
            raise EngineUnreachable(f"the server at {self.url} refused the API token; is another "
                                    "engine (or program) using that address?")
        if response.status >= 400:
            raise ApiError(response.status, _error_message(response, content))
        return json.loads(content) if content else None

    def _connect(self) -> HTTPConnection:
        """The open connection, unless the engine closed it while idle (it then reads as ready:
        end of file), else a new one."""
        connection = self._connection
        if connection is not None and connection.sock is not None:
            readable, _, _ = select.select([connection.sock], [], [], 0)
            if not readable:
                return connection
            self.close()
        from http.client import HTTPConnection

        connection = HTTPConnection(self._host, self._port, timeout=CONNECT_TIMEOUT)
        connection.connect()
        self._connection = connection
        return connection


def _describe(exc: BaseException) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or repr(exc)


def _error_message(response: HTTPResponse, content: bytes) -> str:
    try:
        message = json.loads(content)["error"]
    except (ValueError, KeyError, TypeError):
        message = None
    if isinstance(message, str):
        return message
    text = content.decode(errors="replace")[:200]
    return f"the engine answered HTTP {response.status}: {text}"
