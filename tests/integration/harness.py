"""Real engine processes for integration tests: start, pair, drive through the API and the CLI.

Each engine is a separate `standby engine` process with its own home, listening on loopback
ports chosen by the kernel (port 0) and published in HOME/engine.json.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

STANDBY = [sys.executable, "-m", "standby.cli.main"]


class EngineProcess:
    """One `standby engine` process."""

    def __init__(self, home: Path, name: str, log_dir: Path,
                 bind: tuple[Path, Path] | None = None,
                 env: dict[str, str] | None = None) -> None:
        """``bind=(source, target)``: run the engine in its own mount namespace where
        ``source`` is mounted on ``target``, so that several engines on this one machine can
        each have their own directory at one configured path (as separate hosts would).
        ``env``: extra environment for the engine (and so for the workload commands it runs)."""
        self.bind = bind
        self.env = dict(env or {})
        self.home = home
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.info: dict[str, Any] = {}
        self.listen_port = 0  # chosen by the kernel at first start, kept for restarts

    def __repr__(self) -> str:
        return f"<EngineProcess {self.name} pid={self.proc.pid if self.proc else None}>"

    def command(self, listen: str | None = None) -> list[str]:
        """The command line that starts this engine (in its own mount namespace with
        ``bind``), listening for peers on ``listen`` (default: loopback, its port)."""
        command = [*STANDBY, "--home", str(self.home), "engine", "--name", self.name,
                   "--listen", listen or f"127.0.0.1:{self.listen_port}",
                   "--api", "127.0.0.1:0"]
        if self.bind is not None:
            source, target = self.bind
            source.mkdir(parents=True, exist_ok=True)
            target.mkdir(parents=True, exist_ok=True)
            command = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                       'mount --bind "$0" "$1" && shift && exec "$@"', str(source),
                       str(target), *command]
        return command

    def start(self, timeout: float = 30.0) -> None:
        (self.home / "engine.json").unlink(missing_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        self.proc = subprocess.Popen(
            self.command(),
            stdout=log, stderr=subprocess.STDOUT,
            env={"STANDBY_LOG_LEVEL": "INFO", **os.environ, **self.env})
        deadline = time.monotonic() + timeout
        path = self.home / "engine.json"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"engine {self.name} exited with {self.proc.returncode}:\n"
                                   + self.log_path.read_text(errors="replace")[-3000:])
            if path.exists():
                self.info = json.loads(path.read_text())
                if self.info.get("pid") == self.proc.pid:
                    self.listen_port = int(self.peer_address.rsplit(":", 1)[1])
                    return
            time.sleep(0.05)
        raise TimeoutError(f"engine {self.name} did not start within {timeout} s")

    @property
    def token(self) -> str:
        return (self.home / "api-token").read_text().strip()

    @property
    def peer_address(self) -> str:
        return str(self.info["peer_address"])

    @property
    def fingerprint(self) -> str:
        return str(self.info["fingerprint"])

    def api(self, method: str, path: str, body: Any = None, *, expect: int | None = 200,
            token: str | None = None) -> Any:
        headers = {"Authorization": f"Bearer {self.token if token is None else token}"}
        response = httpx.request(method, self.info["api_url"] + path, json=body,
                                 headers=headers, timeout=60)
        if expect is not None:
            assert response.status_code == expect, (response.status_code, response.text)
        return response.json() if response.content else None

    def cli(self, *args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([*STANDBY, "--home", str(self.home), *args], capture_output=True,
                                text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"standby {' '.join(args)} exited {result.returncode}:\n"
                                 f"{result.stdout}\n{result.stderr}")
        return result

    def events(self, scenario: str | None = None) -> list[dict[str, Any]]:
        query = f"?scenario={scenario}" if scenario else ""
        return list(self.api("GET", f"/v1/events{query}"))

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def pair(a: EngineProcess, b: EngineProcess) -> None:
    """Pair two engines both ways, as an administrator would with `standby peer add`."""
    a.cli("peer", "add", b.name, b.peer_address, b.fingerprint)
    b.cli("peer", "add", a.name, a.peer_address, a.fingerprint)


def write_scenario(path: Path, name: str, master: str, replica: str,
                   roots: list[tuple[Path, Path]], method: str = "block",
                   extra: str = "") -> Path:
    lines = [f'name = "{name}"', f'master = "{master}"', f'replica = "{replica}"', extra]
    for m, r in roots:
        lines += ["[[roots]]", f'master = "{m}"', f'replica = "{r}"']
    lines += ["[sync]", f'method = "{method}"']
    path.write_text("\n".join(lines) + "\n")
    return path
