"""Workloads started, checked and stopped for real: a small TCP server launched by a start
command (or a script), checked by connecting to it, stopped by its stop command. The systemd form
is only tested for the commands it builds: no systemd runs on this machine."""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import pytest

from standby.ha.workload import (
    ScriptWorkload,
    ServiceWorkload,
    Workload,
    WorkloadContext,
    WorkloadError,
)

CONTEXT = WorkloadContext(scenario="web", role="master", epoch=7, active_host="host-b")

# Listens, writes its pid once listening, greets each client with what its environment says.
SERVER = """
import os, socket, sys
port, pidfile = int(sys.argv[1]), sys.argv[2]
server = socket.create_server(("127.0.0.1", port))
with open(pidfile + ".tmp", "w") as f:
    f.write(str(os.getpid()))
os.replace(pidfile + ".tmp", pidfile)
while True:
    conn, _ = server.accept()
    with conn:
        env = os.environ
        conn.sendall(" ".join(env.get(k, "-") for k in (
            "STANDBY_SCENARIO", "STANDBY_ROLE", "STANDBY_EPOCH", "STANDBY_ACTIVE_HOST")).encode())
"""

CONNECT = "import socket, sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])), 1).close()"


def _free_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as probe:
        port: int = probe.getsockname()[1]
        return port


def _greeting(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
        return conn.recv(200).decode()


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest.fixture
def server(tmp_path: Path) -> tuple[Path, Path, int]:
    """The server program, where its pid goes, and a free port for it."""
    program = tmp_path / "server.py"
    program.write_text(SERVER)
    return program, tmp_path / "server.pid", _free_port()


def test_service_commands_start_check_stop_for_real(server: tuple[Path, Path, int]) -> None:
    """The start command leaves a daemon in the background (holding the inherited stdout) and
    returns; start() returns once the check connects; the daemon sees the context; stop() returns
    once the check fails; a second stop, whose kill finds nothing, is fine."""
    program, pidfile, port = server
    workload: Workload = ServiceWorkload(
        start_command=f"'{sys.executable}' '{program}' {port} '{pidfile}' &",
        stop_command=f"kill $(cat '{pidfile}')",
        check_command=[sys.executable, "-c", CONNECT, str(port)],
        timeout=10, check_timeout=3,
    )
    try:
        started = time.monotonic()
        workload.start(CONTEXT)
        assert time.monotonic() - started < 5
        assert workload.check()
        assert _greeting(port) == "web master 7 host-b"
    finally:
        workload.stop(CONTEXT)
    assert not workload.check()
    assert _refused(port)
    workload.stop(CONTEXT)  # already stopped: the kill fails, the check says stopped
    assert workload.describe() == f"service `'{sys.executable}' '{program}' {port} '{pidfile}' &`"


def test_start_failure_raises_with_command_status_and_output() -> None:
    """A start command that fails: its command, status and output's tail are in the error."""
    workload = ServiceWorkload("echo preparing; echo 'port 80 in use' >&2; exit 3", "true",
                               "false", timeout=5)
    with pytest.raises(WorkloadError) as caught:
        workload.start(CONTEXT)
    error = caught.value
    assert (error.action, error.command, error.returncode, error.output, error.timed_out) == (
        "start", "echo preparing; echo 'port 80 in use' >&2; exit 3", 3,
        "preparing\nport 80 in use", False)
    assert str(error) == (
        "start failed: could not start service `echo preparing; echo 'port 80 in use' >&2; "
        "exit 3` (`echo preparing; echo 'port 80 in use' >&2; exit 3` exited with status 3); "
        "output: preparing\nport 80 in use")


def test_start_that_hangs_is_killed_at_the_timeout() -> None:
    """A start command past the timeout is killed and the start fails as timed out."""
    workload = ServiceWorkload(["sh", "-c", "echo waiting for the database; sleep 30"],
                               "true", "false", timeout=0.5)
    started = time.monotonic()
    with pytest.raises(WorkloadError) as caught:
        workload.start()
    assert time.monotonic() - started < 1.5
    assert (caught.value.timed_out, caught.value.returncode, caught.value.output) == (
        True, None, "waiting for the database")
    assert "killed at its 0.5 s timeout" in str(caught.value)


def test_start_whose_check_never_passes_fails_at_the_timeout() -> None:
    """A start command that succeeds is not enough: the check must pass within the timeout."""
    workload = ServiceWorkload("true", "true", "echo not listening; exit 1", timeout=0.6)
    started = time.monotonic()
    with pytest.raises(WorkloadError) as caught:
        workload.start()
    assert 0.4 < time.monotonic() - started < 1.5
    assert str(caught.value) == (
        "start failed: service `true` started but its check did not pass within 0.6 s "
        "(`echo not listening; exit 1` exited with status 1); output: not listening")


def test_missing_program_fails_start_and_check() -> None:
    """A command that cannot run fails the start with the reason; the check is just False."""
    workload = ServiceWorkload(["/nonexistent/start-db"], "true", ["/nonexistent/check-db"])
    with pytest.raises(WorkloadError, match="could not start: no such file or directory"):
        workload.start()
    assert workload.check() is False


def test_stop_that_fails_while_the_service_still_runs_raises() -> None:
    """Only a stop that leaves the workload running (per its check) is an error."""
    workload = ServiceWorkload("true", "echo permission denied; exit 4", "true", timeout=5)
    with pytest.raises(WorkloadError) as caught:
        workload.stop()
    assert (caught.value.action, caught.value.returncode, caught.value.output) == (
        "stop", 4, "permission denied")


def test_stop_whose_check_cannot_run_raises() -> None:
    """A failed stop and a check that cannot run prove nothing: not reported as stopped."""
    workload = ServiceWorkload("true", "false", ["/nonexistent/check-db"], timeout=5)
    with pytest.raises(WorkloadError, match="may still run"):
        workload.stop()


def test_stop_waits_for_the_check_to_fail_then_gives_up() -> None:
    """A stop command that succeeds while the check keeps passing fails at the timeout."""
    workload = ServiceWorkload("true", "true", "true", timeout=0.5)
    with pytest.raises(WorkloadError, match=r"still passes its check 0\.5 s after its stop"):
        workload.stop()


def test_systemd_form_builds_systemctl_argv_only() -> None:
    """The unit form's commands (argv only: systemd does not run here)."""
    workload = ServiceWorkload.systemd("postgresql.service", timeout=120)
    assert workload.start_command == ("systemctl", "--no-ask-password", "start",
                                      "postgresql.service")
    assert workload.stop_command == ("systemctl", "--no-ask-password", "stop",
                                     "postgresql.service")
    assert workload.check_command == ("systemctl", "--no-ask-password", "is-active", "--quiet",
                                      "postgresql.service")
    assert (workload.timeout, workload.describe()) == (120, "systemd unit postgresql.service")
    for bad in ("", "--force", "a b.service"):
        with pytest.raises(ValueError, match="not a systemd unit name"):
            ServiceWorkload.systemd(bad)


def test_invalid_workloads_are_refused() -> None:
    """Empty argv lists and non-positive timeouts fail at construction, not at failover."""
    with pytest.raises(ValueError, match="empty command"):
        ServiceWorkload([], "true", "true")
    with pytest.raises(ValueError, match="timeouts"):
        ServiceWorkload("true", "true", "true", check_timeout=0)
    with pytest.raises(ValueError, match="empty script path"):
        ScriptWorkload("")


def test_script_workload_gets_its_action_and_context(server: tuple[Path, Path, int],
                                                     tmp_path: Path) -> None:
    """The script is called with start, status and stop, the context in its environment; it
    runs a real server; stopping twice is fine."""
    program, pidfile, port = server
    calls = tmp_path / "calls"
    script = tmp_path / "workload.sh"
    script.write_text(f"""#!/bin/sh
echo "$1 ${{STANDBY_SCENARIO:--}} ${{STANDBY_ROLE:--}} ${{STANDBY_EPOCH:--}} \
${{STANDBY_ACTIVE_HOST:--}}" >> '{calls}'
case "$1" in
  start) '{sys.executable}' '{program}' {port} '{pidfile}' >/dev/null 2>&1 & ;;
  stop) kill "$(cat '{pidfile}')" 2>/dev/null || {{ echo "not running"; exit 1; }} ;;
  status) exec '{sys.executable}' -c "{CONNECT}" {port} ;;
  *) echo "usage: $0 start|stop|status"; exit 2 ;;
esac
""")
    script.chmod(0o755)
    workload = ScriptWorkload(str(script), timeout=10, check_timeout=3)
    stopping = WorkloadContext(scenario="web", role="replica", epoch=8, active_host="host-c")
    try:
        workload.start(CONTEXT)
        assert workload.check(CONTEXT)
        assert _greeting(port) == "web master 7 host-b"
    finally:
        workload.stop(stopping)
    assert not workload.check()
    workload.stop(stopping)

    lines = calls.read_text().splitlines()
    runs = [line for i, line in enumerate(lines) if i == 0 or lines[i - 1] != line]  # polls: once
    assert runs == [
        "start web master 7 host-b",
        "status web master 7 host-b",  # until the server answered, then check(CONTEXT)
        "stop web replica 8 host-c",
        "status web replica 8 host-c",  # until the server was gone
        "status - - - -",  # check() without a context
        "stop web replica 8 host-c",  # fails: nothing to kill ...
        "status web replica 8 host-c",  # ... and the check confirms it is stopped
    ]
    assert workload.describe() == f"script {script}"
