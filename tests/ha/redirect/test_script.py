"""Script redirection: the administrator's script, its environment, its failures."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from standby.ha.redirect import Redirect, RedirectError, ScriptRedirect, StaleEpochError


def _script(tmp_path: Path, body: str, name: str = "redirect.sh") -> Path:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def test_the_script_gets_the_scenario_host_epoch_and_address(tmp_path: Path) -> None:
    """The four STANDBY_* variables reach the script, with the engine's own environment."""
    out = tmp_path / "env.txt"
    script = _script(tmp_path, f'env | grep -E "^(STANDBY_|PATH=)" | sort > {out}\n')
    redirect: Redirect = ScriptRedirect(script, scenario="web", timeout=5)

    redirect.apply("node-b", "10.1.0.12", 7)

    lines = out.read_text().splitlines()
    assert [line for line in lines if line.startswith("STANDBY_")] == [
        "STANDBY_ACTIVE_HOST=node-b",
        "STANDBY_ADDRESS=10.1.0.12",
        "STANDBY_EPOCH=7",
        "STANDBY_SCENARIO=web",
    ]
    assert f"PATH={os.environ['PATH']}" in lines


def test_without_an_address_the_variable_is_absent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                   ) -> None:
    """An unknown address is not passed, not even one inherited from the engine's environment."""
    monkeypatch.setenv("STANDBY_ADDRESS", "leaked")
    out = tmp_path / "env.txt"
    script = _script(tmp_path, f'echo "${{STANDBY_ADDRESS-unset}}" > {out}\n')

    ScriptRedirect(script, scenario="web", env={"STANDBY_ADDRESS": "also"}).apply("b", None, 1)

    assert out.read_text() == "unset\n"


def test_a_failing_script_raises_with_its_status_and_output(tmp_path: Path) -> None:
    """Exit status 3: RedirectError naming the status and ending with what the script printed."""
    script = _script(tmp_path, "echo starting\necho 'load balancer said no' >&2\nexit 3\n")

    with pytest.raises(RedirectError) as failed:
        ScriptRedirect(script, scenario="web").apply("node-b", None, 2)

    message = str(failed.value)
    assert "exited with status 3" in message
    assert message.endswith("starting\nload balancer said no")


def test_only_the_tail_of_a_long_output_is_kept(tmp_path: Path) -> None:
    """A chatty script: the message carries the last 2000 bytes, marked as cut."""
    script = _script(tmp_path, "seq 1 100000\nexit 1\n")

    with pytest.raises(RedirectError) as failed:
        ScriptRedirect(script, scenario="web").apply("node-b", None, 2)

    message = str(failed.value)
    assert message.endswith("99999\n100000")
    assert "...\n" in message
    assert len(message) < 2400


def test_a_hanging_script_is_killed_with_its_children(tmp_path: Path) -> None:
    """Past the timeout the script and what it started are killed, and the error says so."""
    pid_file = tmp_path / "child.pid"
    script = _script(tmp_path, f"echo waiting\nsleep 30 &\necho $! > {pid_file}\nwait\n")
    started = time.monotonic()

    with pytest.raises(RedirectError, match=r"ran longer than 0.5 s and was killed") as failed:
        ScriptRedirect(script, scenario="web", timeout=0.5).apply("node-b", None, 2)

    assert time.monotonic() - started < 3
    assert str(failed.value).endswith("waiting")
    child = int(pid_file.read_text())
    deadline = time.monotonic() + 2
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not _alive(child)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie not yet reaped by init counts as dead
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_a_script_that_cannot_start(tmp_path: Path) -> None:
    """Missing or not executable: the error says to check exactly that."""
    not_executable = tmp_path / "plain.sh"
    not_executable.write_text("#!/bin/sh\n")

    for path in (tmp_path / "missing.sh", not_executable):
        with pytest.raises(RedirectError, match=r"could not start.*exists and is executable"):
            ScriptRedirect(path, scenario="web").apply("node-b", None, 1)


def test_a_script_killed_by_a_signal(tmp_path: Path) -> None:
    """Death by a signal is reported as such, not as a negative status."""
    script = _script(tmp_path, "kill -TERM $$\n")

    with pytest.raises(RedirectError, match="killed by signal 15"):
        ScriptRedirect(script, scenario="web").apply("node-b", None, 1)


def test_an_older_epoch_does_not_run_the_script(tmp_path: Path) -> None:
    """After epoch 5, a late request for epoch 4 is refused before the script runs."""
    out = tmp_path / "runs.txt"
    script = _script(tmp_path, f'echo "$STANDBY_EPOCH" >> {out}\n')
    redirect = ScriptRedirect(script, scenario="web")
    redirect.apply("node-b", None, 5)

    with pytest.raises(StaleEpochError):
        redirect.apply("node-a", None, 4)
    redirect.apply("node-b", None, 5)  # a retry of the same epoch runs again
    redirect.release()

    assert out.read_text() == "5\n5\n"
