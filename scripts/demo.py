"""The guided demo behind `scripts/demo`: two engines on loopback, paired, protecting a sample
folder and the web service that serves it. Every step prints the command an administrator
would type, then runs it for real: the initial synchronization, real-time replication, a
planned switchover and a switchback, then an unplanned failover after the master's engine is
killed, and the old master coming back as a standby.

Run it through `scripts/demo` (which installs what is needed first). Options:
    --keep       keep the temporary directory (engine homes, logs, trees) at the end
    --size MIB   size of the sample disk image (default 256)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STANDBY = [sys.executable, "-m", "standby.cli.main"]
BOLD, DIM, RESET = ("\033[1m", "\033[2m", "\033[0m") if sys.stdout.isatty() else ("", "", "")


def say(text: str) -> None:
    print(f"\n{BOLD}== {text}{RESET}", flush=True)


def run(home: Path, *args: str, capture: bool = False, quiet: bool = False) -> str:
    shown = " ".join(["standby", "--home", str(home), *map(shlex.quote, args)])
    if not quiet:
        print(f"{DIM}$ {shown}{RESET}", flush=True)
    result = subprocess.run([*STANDBY, "--home", str(home), *args], text=True,
                            stdout=subprocess.PIPE if capture else None)
    if result.returncode != 0:
        raise SystemExit(f"demo: `{shown}` failed with exit code {result.returncode}")
    return result.stdout if capture else ""


def start_engine(home: Path, name: str, logs: Path, env: dict[str, str],
                 listen: str = "127.0.0.1:0") -> subprocess.Popen[bytes]:
    print(f"{DIM}$ standby --home {home} engine --name {name} --listen {listen} "
          f"--api 127.0.0.1:0 &{RESET}", flush=True)
    log = open(logs / f"{name}.log", "ab")  # noqa: SIM115 - kept open for the process
    proc = subprocess.Popen([*STANDBY, "--home", str(home), "engine", "--name", name,
                             "--listen", listen, "--api", "127.0.0.1:0"],
                            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        info = home / "engine.json"
        if info.exists() and json.loads(info.read_text()).get("pid") == proc.pid:
            return proc
        if proc.poll() is not None:
            raise SystemExit(f"demo: engine {name} exited; see {logs / (name + '.log')}")
        time.sleep(0.05)
    raise SystemExit(f"demo: engine {name} did not start; see {logs / (name + '.log')}")


def make_sample(root: Path, image_mib: int) -> None:
    rng = random.Random(2026)
    for d in range(8):
        folder = root / "documents" / f"project-{d}"
        folder.mkdir(parents=True)
        for f in range(25):
            words = " ".join(rng.choice(["invoice", "ledger", "customer", "order", "stock",
                                         "payroll", "report"]) for _ in range(rng.randint(20, 400)))
            (folder / f"file-{f:02d}.txt").write_text(words + "\n")
    (root / "documents" / "latest").symlink_to("project-7")
    with open(root / "vm-disk.img", "wb") as f:  # a sparse image, a quarter of it written
        f.truncate(image_mib << 20)
        for i in range(0, image_mib, 4):
            f.seek(i << 20)
            f.write(rng.randbytes(1 << 20))


def wait_caught_up(home: Path, timeout: float = 30.0) -> None:
    """Until the master's spool is acknowledged and no change waits to be looked at."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        (status,) = json.loads(run(home, "status", "demo", "--json", capture=True, quiet=True))
        r = status.get("replication") or {}
        if r.get("dirty_paths") == 0 and r.get("spool_records") == 0 \
                and r.get("durable_seq") == r.get("last_seq"):
            return
        time.sleep(0.1)
    raise SystemExit("the replica did not catch up within 30 s; see the engine logs")


#: The web service the scenario moves between the hosts: Python's http.server over the host's
#: copy of the folder, on a port of its own per host (both hosts share this one machine).
SERVICE = """
[ha]
interval = 0.5
timeout = 3

[ha.workload]
kind = "service"
start = 'nohup {python} -m http.server "$DEMO_PORT" --bind 127.0.0.1 --directory "$DEMO_DIR" >/dev/null 2>&1 & echo $! > "$DEMO_PID"'
stop = 'kill $(cat "$DEMO_PID" 2>/dev/null) 2>/dev/null; rm -f "$DEMO_PID"'
check = '{python} -c "import os, urllib.request; urllib.request.urlopen(\\"http://127.0.0.1:%s/\\" % os.environ[\\"DEMO_PORT\\"], timeout=1)"'
timeout = 20
check_timeout = 3
"""


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fetch(port: int, path: str) -> str | None:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/{path}", timeout=2) as answer:
            return str(answer.read().decode())
    except OSError:
        return None


def ha_state(home: Path) -> dict[str, object]:
    (status,) = json.loads(run(home, "status", "demo", "--json", capture=True, quiet=True))
    ha: dict[str, object] = status.get("ha") or {}
    return ha


def wait_for(what: str, check: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(check) and check():
            return
        time.sleep(0.2)
    raise SystemExit(f"demo: {what} did not happen within {timeout:g} s; see the engine logs")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--size", type=int, default=256, help="sample image size in MiB")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="standby-demo-"))
    homes = {"alpha": work / "alpha-home", "beta": work / "beta-home"}
    master_root, replica_root = work / "alpha-data", work / "beta-replica"
    ports = {"alpha": free_port(), "beta": free_port()}
    envs = {"alpha": {"DEMO_DIR": str(master_root), "DEMO_PORT": str(ports["alpha"]),
                      "DEMO_PID": str(work / "alpha-web.pid")},
            "beta": {"DEMO_DIR": str(replica_root), "DEMO_PORT": str(ports["beta"]),
                     "DEMO_PID": str(work / "beta-web.pid")}}
    procs: dict[str, subprocess.Popen[bytes]] = {}
    try:
        say(f"A sample folder to protect: {master_root}")
        make_sample(master_root, args.size)
        print(f"200 documents, a symlink and a {args.size} MiB sparse disk image")

        say("Start two engines on loopback: alpha (master) and beta (replica)")
        for name, home in homes.items():
            procs[name] = start_engine(home, name, work, envs[name])

        say("Pair them: each names the other by address and certificate fingerprint")
        info = {n: json.loads((h / "engine.json").read_text()) for n, h in homes.items()}
        fingerprints = {n: run(h, "id", capture=True).strip() for n, h in homes.items()}
        run(homes["alpha"], "peer", "add", "beta", info["beta"]["peer_address"],
            fingerprints["beta"])
        run(homes["beta"], "peer", "add", "alpha", info["alpha"]["peer_address"],
            fingerprints["alpha"])

        say("Describe the protection in a scenario file")
        scenario = work / "demo.toml"
        scenario.write_text(f'name = "demo"\nmaster = "alpha"\nreplica = "beta"\n\n'
                            f'[[roots]]\nmaster = "{master_root}"\nreplica = "{replica_root}"\n'
                            f'exclude = ["*.tmp"]\n\n[sync]\nmethod = "block"\n'
                            + SERVICE.format(python=sys.executable))
        print(scenario.read_text())
        run(homes["alpha"], "scenario", "add", str(scenario))

        say("Start it: the initial synchronization (holes and zeros never travel)")
        run(homes["alpha"], "scenario", "start", "demo")
        run(homes["alpha"], "report", "demo")

        say("Real-time replication: change things on the master and watch them arrive")
        new_doc = master_root / "documents" / "project-0" / "written-now.txt"
        started = time.monotonic()
        new_doc.write_text("written after the synchronization\n")
        replica_doc = replica_root / new_doc.relative_to(master_root)
        while not (replica_doc.exists() and replica_doc.read_text() == new_doc.read_text()):
            time.sleep(0.01)
        print(f"{new_doc.name} was on the replica {1000 * (time.monotonic() - started):.0f} ms "
              "after it was written")
        with open(master_root / "vm-disk.img", "r+b") as f:  # two blocks of a disk image
            for offset in (5 << 20, 77 << 20):
                f.seek(offset)
                f.write(os.urandom(4096))
        (master_root / "documents" / "project-1").rename(master_root / "documents" / "renamed")
        shutil.rmtree(master_root / "documents" / "project-3")
        wait_caught_up(homes["alpha"])
        print("two 4 KiB writes in the image, a renamed folder, a deleted folder: replicated")
        run(homes["alpha"], "status", "demo")

        say("A synchronization compares everything again: nothing differs")
        run(homes["alpha"], "sync", "demo")

        high_availability(homes, procs, ports, envs, work, master_root, replica_root)

        say("Status and events")
        run(homes["beta"], "status")
        run(homes["beta"], "events", "--scenario", "demo", "--limit", "25")
        print(f"\nThe two copies are {master_root} and {replica_root}; engine logs are in "
              f"{work}.")
        return 0
    finally:
        for proc in procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in procs.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        for env in envs.values():  # the web service, wherever it was left running
            with contextlib.suppress(OSError, ValueError):
                os.kill(int(Path(env["DEMO_PID"]).read_text()), signal.SIGTERM)
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def high_availability(homes: dict[str, Path], procs: dict[str, subprocess.Popen[bytes]],
                      ports: dict[str, int], envs: dict[str, dict[str, str]], work: Path,
                      master_root: Path, replica_root: Path) -> None:
    """Switchover, switchback, and a failover after the master's engine dies."""
    page = "documents/project-0/written-now.txt"
    say("High availability: the web service runs on the active host only")
    wait_for("alpha serving", lambda: ha_state(homes["alpha"]).get("workload") == "running")
    print(f"alpha serves {page}: {fetch(ports['alpha'], page)!r}; beta's port answers: "
          f"{fetch(ports['beta'], page)!r}")

    say("Planned switchover: alpha stops the service, drains replication, hands over to beta")
    run(homes["alpha"], "switchover", "demo")
    print(f"beta now serves {page}: {fetch(ports['beta'], page)!r}; alpha's port: "
          f"{fetch(ports['alpha'], page)!r}")
    note = replica_root / "documents" / "written-on-beta.txt"
    note.write_text("written on beta while it is the active host\n")
    back = master_root / "documents" / "written-on-beta.txt"
    wait_for("reverse replication", lambda: back.exists() and back.read_text() == note.read_text())
    print("a file written on beta reached alpha: replication runs the other way now")
    run(homes["beta"], "status", "demo")

    say("Switchback: the same, back to alpha")
    run(homes["beta"], "switchback", "demo")

    say("Unplanned failover: alpha's engine and its service die (kill -9)")
    procs["alpha"].kill()
    procs["alpha"].wait()
    with contextlib.suppress(OSError, ValueError):
        os.kill(int(Path(envs["alpha"]["DEMO_PID"]).read_text()), signal.SIGKILL)
    wait_for("beta noticing", lambda: ha_state(homes["beta"]).get("state") == "active host dead")
    print("beta declared alpha dead; with peer arbitration the operator decides:")
    run(homes["beta"], "failover", "demo")
    print(f"beta serves {page}: {fetch(ports['beta'], page)!r}")

    say("alpha comes back: it learns the epoch first, never starts the service, and follows")
    listen = "127.0.0.1:" + str(_alpha_port(homes["beta"]))
    procs["alpha"] = start_engine(homes["alpha"], "alpha", work, envs["alpha"], listen)
    wait_for("alpha following beta", lambda: ha_state(homes["alpha"]).get("role") == "standby")
    wait_for("alpha resynchronized", lambda: _consistent(homes["alpha"]), 60)
    run(homes["alpha"], "status", "demo")


def _alpha_port(beta_home: Path) -> int:
    """The port beta knows alpha at (alpha must come back on it)."""
    peers = json.loads(run(beta_home, "peer", "list", "--json", capture=True, quiet=True))
    address = next(p["address"] for p in peers if p["name"] == "alpha")
    return int(address.rsplit(":", 1)[1])


def _consistent(home: Path) -> bool:
    (status,) = json.loads(run(home, "status", "demo", "--json", capture=True, quiet=True))
    return bool(status["consistent"])


if __name__ == "__main__":
    sys.exit(main())
