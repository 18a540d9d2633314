"""How the CLI reaches the engine: find it through HOME/engine.json and HOME/api-token, then call
its REST API with httpx. Nothing here imports the engine.

Failures come in two kinds, which the CLI maps to exit statuses:

* :class:`EngineUnreachable`: no engine runs for this home, or it cannot be reached, does not
  answer in time, or refuses our token. The fix is on the operator's side (start the engine,
  use the right ``--home``).
* :class:`ApiError`: the engine answered and refused the request; its message says why.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import httpx

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
    """A client of the engine's REST API: JSON in and out, and a timeout on every call."""

    def __init__(self, location: EngineLocation) -> None:
        self.url = location.api_url
        self._http = httpx.Client(
            base_url=location.api_url,
            headers={"Authorization": f"Bearer {location.token}"},
            timeout=httpx.Timeout(READ_TIMEOUT, connect=CONNECT_TIMEOUT),
        )

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._http.close()

    def get(self, url: str, params: Mapping[str, str | int] | None = None) -> Any:
        return self._request("GET", url, READ_TIMEOUT, params=params)

    def post(self, url: str, body: Mapping[str, Any] | None = None) -> Any:
        return self._request("POST", url, WRITE_TIMEOUT, json=body)

    def delete(self, url: str) -> Any:
        return self._request("DELETE", url, WRITE_TIMEOUT)

    def _request(self, method: str, url: str, timeout: float, **kwargs: Any) -> Any:
        try:
            response = self._http.request(
                method, url, timeout=httpx.Timeout(timeout, connect=CONNECT_TIMEOUT), **kwargs)
        except httpx.TimeoutException:
            raise EngineUnreachable(f"the engine at {self.url} did not answer within "
                                    f"{timeout:g} s; it may be overloaded or stuck") from None
        except httpx.TransportError as exc:
            raise EngineUnreachable(f"cannot reach the engine at {self.url} ({exc}); is it "
                                    "running?") from None
        if response.status_code == 401:
            raise EngineUnreachable(f"the server at {self.url} refused the API token; is another "
                                    "engine (or program) using that address?")
        if response.is_error:
            raise ApiError(response.status_code, _error_message(response))
        return response.json() if response.content else None


def _error_message(response: httpx.Response) -> str:
    try:
        message = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        message = None
    if isinstance(message, str):
        return message
    return f"the engine answered HTTP {response.status_code}: {response.text[:200]}"
