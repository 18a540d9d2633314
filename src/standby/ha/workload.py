"""Workloads: what a switchover stops on the old active host and starts on the new one.

Every workload offers four blocking calls, the :class:`Workload` protocol:

- ``start(context)`` returns once the workload runs *and passes its check*, or raises
  :class:`WorkloadError`; the whole of it (command plus waiting for the check) is bounded by the
  workload's timeout, plus one last check at the deadline (at most ``MIN_CHECK_TIME`` more
  when the check command is slow).
- ``stop(context)`` returns once the workload no longer passes its check, or raises. It is
  idempotent: stopping a stopped workload is fine, even when the stop command itself complains
  ("no such process"), because a failed stop command is followed by a check, and only a workload
  that still runs (or a check that cannot run, which proves nothing) is an error.
- ``check(context) -> bool``: does it run now? Never raises; a check that fails, cannot start
  or hangs past its own timeout is False.
- ``describe() -> str``: a short phrase for events ("systemd unit web.service").

The :class:`WorkloadContext` says which switchover is running: the scenario, the role this host
takes, the new epoch and the active host. Command workloads export it as STANDBY_SCENARIO,
STANDBY_ROLE, STANDBY_EPOCH and STANDBY_ACTIVE_HOST; the controller should always pass it (it is
optional only so that a bare ``check()`` from an operator's tool works).

Two kinds are delivered here, both driving commands through :func:`checks.run_command` (own
session, the whole process group killed at the timeout, the output's tail kept):

- :class:`ServiceWorkload`: start, stop and check commands (argv lists, or shell strings run by
  ``/bin/sh -c``), or a systemd unit (``ServiceWorkload.systemd("web.service")``).
- :class:`ScriptWorkload`: one script called with ``start``, ``stop`` or ``status``.

How a VM adapter fits (a later issue): a ``VmWorkload(domain, uri="qemu:///system")`` in
``standby.vm`` implements the same four calls with libvirt instead of commands: ``start`` is
``virDomainCreate`` then waiting (within the timeout) for the domain to run and, when
configured, its guest agent to answer a ping; ``stop`` is ``virDomainShutdown``, waiting for
SHUTOFF, then ``virDomainDestroy`` at the timeout (a domain already shut off is fine);
``check`` is ``state() == VIR_DOMAIN_RUNNING``; ``describe`` is "vm web01 on qemu:///system".
The calls are synchronous on purpose: libvirt's Python binding blocks, and the controller runs
long actions in a worker thread anyway. Nothing in the controller needs to know which kind it
holds.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from .checks import Command, CommandResult, command_argv, command_text, run_command

log = logging.getLogger("standby.ha.workload")

# Seconds between checks while waiting for a started workload to answer (or a stopped one to go
# quiet): each poll runs a process, and a switchover measured in seconds loses at most this.
POLL_INTERVAL = 0.2

# A check still gets this long when a start or stop has used up nearly all its time: cutting a
# check to a few milliseconds would report a healthy service as down.
MIN_CHECK_TIME = 1.0

# Defaults: systemd's DefaultTimeoutStartSec is 90 s, which services are written to meet; a
# check is a quick probe and must not hold up a switchover decision for long.
DEFAULT_TIMEOUT = 90.0
DEFAULT_CHECK_TIMEOUT = 10.0

Action = Literal["start", "stop", "check"]


@dataclass(frozen=True, slots=True)
class WorkloadContext:
    """The switchover a workload call belongs to, exported to the commands it runs.

    ``role`` is the role this host takes by this call: ``"master"`` when starting the workload,
    ``"replica"`` when stopping it.
    """

    scenario: str
    role: str
    epoch: int
    active_host: str

    def env(self) -> dict[str, str]:
        return {
            "STANDBY_SCENARIO": self.scenario,
            "STANDBY_ROLE": self.role,
            "STANDBY_EPOCH": str(self.epoch),
            "STANDBY_ACTIVE_HOST": self.active_host,
        }


class WorkloadError(Exception):
    """A workload did not start or stop.

    Attributes:
        action: "start" or "stop".
        command: the command whose result decided it (the start or stop command, or the check
            that kept failing / kept passing).
        returncode: its exit status; None when it timed out or could not start.
        output: the tail of its output.
        timed_out: whether it was killed at its timeout.
    """

    def __init__(self, action: str, result: CommandResult, problem: str) -> None:
        self.action = action
        self.command = result.command
        self.returncode = result.returncode
        self.output = result.output
        self.timed_out = result.timed_out
        message = f"{action} failed: {problem} (`{result.command}` {result.outcome()})"
        if result.output:
            message += f"; output: {result.output}"
        super().__init__(message)


class Workload(Protocol):
    """What a switchover starts and stops; see the module docstring for the contract."""

    def start(self, context: WorkloadContext | None = None) -> None: ...

    def stop(self, context: WorkloadContext | None = None) -> None: ...

    def check(self, context: WorkloadContext | None = None) -> bool: ...

    def describe(self) -> str: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class _CommandWorkload:
    """Start/stop/check semantics shared by the command-driven workloads."""

    timeout: float = DEFAULT_TIMEOUT
    check_timeout: float = DEFAULT_CHECK_TIMEOUT
    env: Mapping[str, str] = field(default_factory=dict)  # added to the engine's environment
    cwd: str | None = None

    def __post_init__(self) -> None:
        if not (self.timeout > 0 and self.check_timeout > 0):
            raise ValueError("timeouts must be positive")

    def _command(self, action: Action) -> Command:
        raise NotImplementedError

    def _run(self, action: Action, context: WorkloadContext | None, timeout: float
             ) -> CommandResult:
        env = {**self.env, **(context.env() if context else {})}
        return run_command(self._command(action), timeout=timeout, env=env, cwd=self.cwd)

    def _probe(self, context: WorkloadContext | None, deadline: float | None = None
               ) -> CommandResult:
        timeout = self.check_timeout
        if deadline is not None:
            timeout = min(timeout, max(deadline - time.monotonic(), MIN_CHECK_TIME))
        return self._run("check", context, timeout)

    def _await_check(self, running: bool, context: WorkloadContext | None, deadline: float
                     ) -> CommandResult | None:
        """Poll the check until it says ``running``; None when it did, else the last result,
        from a check made at the deadline."""
        while True:
            result = self._probe(context, deadline)
            if result.ok == running:
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return result
            time.sleep(min(POLL_INTERVAL, remaining))

    def start(self, context: WorkloadContext | None = None) -> None:
        deadline = time.monotonic() + self.timeout
        result = self._run("start", context, self.timeout)
        if not result.ok:
            raise WorkloadError("start", result, f"could not start {self.describe()}")
        failing = self._await_check(True, context, deadline)
        if failing is not None:
            raise WorkloadError("start", failing,
                                f"{self.describe()} started but its check did not pass within "
                                f"{self.timeout:g} s")
        log.info("started %s", self.describe())

    def stop(self, context: WorkloadContext | None = None) -> None:
        deadline = time.monotonic() + self.timeout
        result = self._run("stop", context, self.timeout)
        if not result.ok:
            probe = self._probe(context)
            if probe.returncode is None:  # the check could not say: nothing proves it stopped
                raise WorkloadError("stop", probe, f"{self.describe()} may still run: its stop "
                                    f"command {result.outcome()} and its check could not run")
            if probe.ok:
                raise WorkloadError("stop", result, f"{self.describe()} still runs")
            log.info("%s is not running (its stop command %s)", self.describe(), result.outcome())
            return
        still = self._await_check(False, context, deadline)
        if still is not None:
            raise WorkloadError("stop", still,
                                f"{self.describe()} still passes its check {self.timeout:g} s "
                                "after its stop command")

    def check(self, context: WorkloadContext | None = None) -> bool:
        result = self._probe(context)
        if not result.ok:
            log.debug("check of %s: %s", self.describe(), result.describe())
        return result.ok

    def describe(self) -> str:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class ServiceWorkload(_CommandWorkload):
    """A service driven by start, stop and check commands (check: exit 0 = running).

    Commands are argv lists (run directly) or shell strings (run by ``/bin/sh -c``). A start
    command may leave a daemon running in the background; its output does not hold us up. A
    start command killed at its timeout takes its process group with it, including any daemon
    it had already launched (so nothing half-started lingers).
    ``ServiceWorkload.systemd(unit)`` builds the systemctl form.
    """

    start_command: Command
    stop_command: Command
    check_command: Command
    unit: str | None = None  # set by systemd(): named in messages

    def __post_init__(self) -> None:
        _CommandWorkload.__post_init__(self)
        for name in ("start_command", "stop_command", "check_command"):
            command = getattr(self, name)
            command_argv(command)  # refuse an empty argv list now
            if not isinstance(command, str):
                object.__setattr__(self, name, tuple(command))

    @classmethod
    def systemd(cls, unit: str, *, timeout: float = DEFAULT_TIMEOUT,
                check_timeout: float = DEFAULT_CHECK_TIMEOUT) -> ServiceWorkload:
        """``systemctl start|stop UNIT`` and ``systemctl is-active --quiet UNIT``.

        ``systemctl start`` waits for the start job, so the check passes right after; stopping
        an inactive unit succeeds. ``--no-ask-password``: an engine has nobody to ask.
        """
        if not unit or unit.startswith("-") or any(c.isspace() for c in unit):
            raise ValueError(f"not a systemd unit name: {unit!r}")

        def systemctl(*args: str) -> tuple[str, ...]:
            return ("systemctl", "--no-ask-password", *args, unit)

        return cls(systemctl("start"), systemctl("stop"), systemctl("is-active", "--quiet"),
                   unit=unit, timeout=timeout, check_timeout=check_timeout)

    def _command(self, action: Action) -> Command:
        return {"start": self.start_command, "stop": self.stop_command,
                "check": self.check_command}[action]

    def describe(self) -> str:
        if self.unit:
            return f"systemd unit {self.unit}"
        return f"service `{command_text(self.start_command)}`"


@dataclass(frozen=True, slots=True)
class ScriptWorkload(_CommandWorkload):
    """One executable called as ``PATH start``, ``PATH stop`` or ``PATH status`` (exit 0 =
    running), like an init script; the context arrives in its environment."""

    path: str

    def __post_init__(self) -> None:
        _CommandWorkload.__post_init__(self)
        object.__setattr__(self, "path", os.fspath(self.path))
        if not self.path:
            raise ValueError("empty script path")

    def _command(self, action: Action) -> Command:
        return (self.path, "status" if action == "check" else action)

    def describe(self) -> str:
        return f"script {self.path}"
