"""Script redirection: run the administrator's own program to make clients follow the new host.

For what DNS and a service IP cannot do: a load balancer's API, a firewall rule, a message to a
service registry. The script runs with the engine's environment plus:

========================  ==============================================================
``STANDBY_SCENARIO``      the scenario's name
``STANDBY_ACTIVE_HOST``   the engine that is now active
``STANDBY_EPOCH``         the promotion's epoch (a script that keeps state can refuse older)
``STANDBY_ADDRESS``       the active host's address, when the scenario knows it
========================  ==============================================================

Exit status 0 means done. Any other status, death by a signal, or running past ``timeout``
(the script and everything it started, its process group, is then killed) raise
:class:`~standby.ha.redirect.base.RedirectError` with the end of the script's output.
The output goes to a temporary file, so a chatty script costs disk, not memory, and a
background child that keeps the output open cannot hang the engine.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import IO

from standby.ha.redirect.base import EpochFence, RedirectError

OUTPUT_TAIL_BYTES = 2000  # what an event can show of the output without drowning the reason
_KILL_GRACE = 2.0  # seconds to reap the killed process group


class ScriptRedirect:
    """Runs a user script for each redirection.

    Args:
        path: the executable (any language with a ``#!`` line).
        scenario: the scenario's name, passed as ``STANDBY_SCENARIO``.
        timeout: seconds the script may run.
        env: extra variables for the script (under the ``STANDBY_*`` ones, which win).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        scenario: str,
        timeout: float = 30.0,
        env: dict[str, str] | None = None,
    ) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout}")
        self._path = Path(path)
        self._scenario = scenario
        self._timeout = timeout
        self._env = dict(env or {})
        self._fence = EpochFence(f"redirect script {self._path}")

    def __repr__(self) -> str:
        return f"<ScriptRedirect {self._path}, timeout {self._timeout:g} s>"

    def apply(self, active_host: str, address: str | None, epoch: int) -> None:
        """Run the script for ``active_host`` and ``epoch``.

        Raises:
            StaleEpochError: this object already ran the script for a newer epoch.
            RedirectError: the script could not start, failed, or timed out.
        """
        self._fence.admit(epoch)
        env = os.environ | self._env | {
            "STANDBY_SCENARIO": self._scenario,
            "STANDBY_ACTIVE_HOST": active_host,
            "STANDBY_EPOCH": str(epoch),
        }
        if address is not None:
            env["STANDBY_ADDRESS"] = address
        else:
            env.pop("STANDBY_ADDRESS", None)
        self._run(env)

    def release(self) -> None:
        """Nothing held on this host: the script of the next active host does the work."""

    def _run(self, env: dict[str, str]) -> None:
        with tempfile.TemporaryFile() as out:
            try:
                proc = subprocess.Popen(
                    [str(self._path)], env=env, stdin=subprocess.DEVNULL, stdout=out,
                    stderr=subprocess.STDOUT, start_new_session=True,
                )
            except OSError as e:
                raise RedirectError(
                    f"redirect script {self._path} could not start: {e.strerror or e}; check "
                    "that it exists and is executable"
                ) from None
            try:
                status = proc.wait(self._timeout)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
                raise RedirectError(
                    f"redirect script {self._path} ran longer than {self._timeout:g} s and was "
                    f"killed; make it finish sooner or raise its timeout.{_tail(out)}"
                ) from None
            except BaseException:
                _kill_group(proc)  # interrupted: never leave the script behind
                raise
            if status != 0:
                how = (f"was killed by signal {-status}" if status < 0
                       else f"exited with status {status}")
                raise RedirectError(
                    f"redirect script {self._path} {how}; run it by hand with the same "
                    f"STANDBY_* variables to see why.{_tail(out)}"
                )


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(_KILL_GRACE)


def _tail(out: IO[bytes]) -> str:
    """The last bytes of the script's output, as a sentence to append to a message."""
    size = out.seek(0, os.SEEK_END)
    out.seek(max(0, size - OUTPUT_TAIL_BYTES))
    text = out.read().decode(errors="replace")
    if size > OUTPUT_TAIL_BYTES:
        text = "...\n" + text.partition("\n")[2]  # from the first whole line
    text = text.strip()
    return f" Its output ends:\n{text}" if text else " It printed nothing."
