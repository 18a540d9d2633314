"""The guided demo behind `scripts/demo`: two engines on loopback, paired, protecting a sample
folder. Every step prints the command an administrator would type, then runs it for real.

Run it through `scripts/demo` (which installs what is needed first). Options:
    --keep       keep the temporary directory (engine homes, logs, trees) at the end
    --size MIB   size of the sample disk image (default 256)
"""

from __future__ import annotations

import argparse
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


def run(home: Path, *args: str, capture: bool = False) -> str:
    shown = " ".join(["standby", "--home", str(home), *map(shlex.quote, args)])
    print(f"{DIM}$ {shown}{RESET}", flush=True)
    result = subprocess.run([*STANDBY, "--home", str(home), *args], text=True,
                            stdout=subprocess.PIPE if capture else None)
    if result.returncode != 0:
        raise SystemExit(f"demo: `{shown}` failed with exit code {result.returncode}")
    return result.stdout if capture else ""


def start_engine(home: Path, name: str, logs: Path) -> subprocess.Popen[bytes]:
    print(f"{DIM}$ standby --home {home} engine --name {name} --listen 127.0.0.1:0 "
          f"--api 127.0.0.1:0 &{RESET}", flush=True)
    log = open(logs / f"{name}.log", "wb")  # noqa: SIM115 - kept open for the process
    proc = subprocess.Popen([*STANDBY, "--home", str(home), "engine", "--name", name,
                             "--listen", "127.0.0.1:0", "--api", "127.0.0.1:0"],
                            stdout=log, stderr=subprocess.STDOUT)
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
        (status,) = json.loads(run(home, "status", "demo", "--json", capture=True))
        r = status.get("replication") or {}
        if r.get("dirty_paths") == 0 and r.get("spool_records") == 0 \
                and r.get("durable_seq") == r.get("last_seq"):
            return
        time.sleep(0.1)
    raise SystemExit("the replica did not catch up within 30 s; see the engine logs")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--size", type=int, default=256, help="sample image size in MiB")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="standby-demo-"))
    homes = {"alpha": work / "alpha-home", "beta": work / "beta-home"}
    master_root, replica_root = work / "alpha-data", work / "beta-replica"
    procs: list[subprocess.Popen[bytes]] = []
    try:
        say(f"A sample folder to protect: {master_root}")
        make_sample(master_root, args.size)
        print(f"200 documents, a symlink and a {args.size} MiB sparse disk image")

        say("Start two engines on loopback: alpha (master) and beta (replica)")
        for name, home in homes.items():
            procs.append(start_engine(home, name, work))

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
                            f'exclude = ["*.tmp"]\n\n[sync]\nmethod = "block"\n')
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

        say("Status and events")
        run(homes["alpha"], "status")
        run(homes["alpha"], "events", "--scenario", "demo")
        print(f"\nThe replica is at {replica_root}; engine logs are in {work}.")
        return 0
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
