"""A real etcd on loopback for the arbiter tests (Debian's etcd-server; scripts/install)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EtcdServer:
    """One etcd member: started on free loopback ports, ready when /health says so."""

    def __init__(self, data_dir: Path) -> None:
        binary = shutil.which("etcd")
        if binary is None:
            pytest.fail("etcd not found: run scripts/install (Debian package etcd-server)")
        client, peer = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
        self.url = client
        self.log = data_dir.with_suffix(".log")
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [binary, "--data-dir", str(data_dir),
                 "--listen-client-urls", client, "--advertise-client-urls", client,
                 "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
                 "--initial-cluster", f"default={peer}"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        try:
            self._wait_healthy(deadline=time.monotonic() + 15)
        except BaseException:
            self.stop()
            raise

    def _wait_healthy(self, deadline: float) -> None:
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"etcd exited with {self.process.returncode}:\n{self.log_tail()}")
            with (contextlib.suppress(OSError, ValueError),
                  urllib.request.urlopen(self.url + "/health", timeout=0.5) as answer):
                if json.load(answer).get("health") == "true":
                    return
            time.sleep(0.05)
        pytest.fail(f"etcd not healthy within 15 s:\n{self.log_tail()}")

    def log_tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-20:])

    def pause(self) -> None:
        """SIGSTOP: connections are still accepted by the kernel, nothing answers (a hang)."""
        os.kill(self.process.pid, signal.SIGSTOP)

    def stop(self) -> None:
        """SIGKILL and reap (works on a paused process too)."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)
