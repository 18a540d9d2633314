"""Failover time: the master engine and its workload are killed; how long until the workload
answers on the service address, as a client sees it. Target: at most the Is Alive timeout
plus 3 s.

Usage:
    .venv/bin/python bench/failover.py [--quick] [--runs N] [--settings test,default]
                                       [--out DIR] [--scratch DIR] [--seed N]

Needs root and iproute2's ``ip`` (network namespaces) and BIND9's ``named``.

The site is the one of tests/integration/test_ha_netns.py, built afresh for every run: hosts
alpha (master) and beta (replica) in network namespaces on one bridge, each with the test
application (tests/integration/ha_app.py, an HTTP server that writes without pause) as the
scenario's workload; wit, a third engine, the witness (``arbitration = "witness"``,
``auto_failover = true``); a client; a BIND9 server on the bridge. The scenario moves a
service address (10.N.0.100/24 on eth0, gratuitous ARP) and a DNS name (RFC 2136 update).

One run: once alpha serves (the client gets "alpha N" at the service address) and beta is a
consistent standby, a poller in the client's namespace (a separate process) asks
http://SERVICE_IP:8080/ every 20 ms (each request a new TCP connection, 0.25 s connect
timeout). After a random pause of up to one interval (so that the kill falls anywhere between
two heartbeats), alpha's engine is SIGKILLed, then its application. The failover time is from
just before the kill to the first answer "beta M" the poller receives. It is split with the
event timestamps of beta's engine (same clock, wall time):

- detection: kill -> SB4002 (alpha declared dead: no heartbeat for ``timeout``);
- promotion: SB4002 -> SB4202 (the epoch claim granted by the witness, SB4201, then the
  roles turned around); a claim the witness refuses is retried at the next cycle (counted);
- workload start: SB4202 -> SB4204 (``ha_app.py start`` returns once the server answers);
- redirection: SB4204 -> SB4206 (service address with 3 rounds of gratuitous ARP 100 ms
  apart, then the DNS update);
- client: SB4206 -> the first answer. Negative when the client was served before the DNS
  update finished (the service address moves first, and the poller does not use DNS).

Two settings: "test" (interval 0.5 s, timeout 3 s, lease 2 s, as in the integration tests) and
"default" (interval 1 s, timeout 10 s, lease 5 s: the documented defaults, which meet the rules
lease >= 3 x interval and lease + 2 x interval <= timeout). Reported per setting: median and
max failover time, minus the timeout, and the ratio failover / (timeout + 3 s), which must be
<= 1 for the target to be met. Progress goes to stderr, the report (Markdown) to stdout and,
with the raw numbers, to --out (failover.md and .json; failover-quick.* with --quick).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, redirect_stdout
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # tests.integration: the site the integration tests use

TARGET_MARGIN_S = 3.0  # the target: failover <= timeout + 3 s
POLL_S = 0.02
CONNECT_TIMEOUT_S = 0.25
SEED = 20261207
NAMED = "/usr/sbin/named"

#: The client's poller, run by the Python of this venv inside the client's namespace: one line
#: per change of what it gets ("<wall time> <first word of the answer, or error:KIND>").
POLLER = r"""
import http.client, sys, time
host, port, period, connect = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
last = None
while True:
    started = time.time()
    conn = http.client.HTTPConnection(host, port, timeout=connect)
    try:
        conn.request("GET", "/")
        answer = conn.getresponse()
        body = answer.read().decode(errors="replace")
        state = body.split(" ")[0] if answer.status == 200 else f"http:{answer.status}"
    except (OSError, http.client.HTTPException) as exc:
        state = f"error:{type(exc).__name__}"
    finally:
        conn.close()
    if state != last:
        print(f"{time.time():.6f} {state}", flush=True)
        last = state
    time.sleep(max(0.0, started + period - time.time()))
"""


@dataclass(frozen=True)
class Setting:
    key: str
    interval: float
    timeout: float
    lease: int

    @property
    def target(self) -> float:
        return self.timeout + TARGET_MARGIN_S


SETTINGS = {
    "test": Setting("test", 0.5, 3.0, 2),
    "default": Setting("default", 1.0, 10.0, 5),
}


class BenchError(Exception):
    """A run failed; the message says why."""


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def missing_requirements() -> list[str]:
    missing = []
    if os.geteuid() != 0:
        missing.append("root (network namespaces, a service address)")
    if shutil.which("ip") is None:
        missing.append("iproute2's `ip`")
    if not os.access(NAMED, os.X_OK):
        missing.append(f"BIND9's named ({NAMED}; apt-get install bind9)")
    return missing


@dataclass
class Run:
    setting: str
    index: int
    failover_s: float | None = None
    detection_s: float | None = None
    promotion_s: float | None = None
    workload_s: float | None = None
    redirection_s: float | None = None
    client_s: float | None = None
    claims_refused: int = 0
    silence_at_kill_s: float | None = None  # how long beta had not heard alpha at the kill
    timeline: list[tuple[float, str]] = field(default_factory=list)  # poller, from the kill
    events: list[tuple[float, str, str]] = field(default_factory=list)  # beta's, from the kill
    error: str | None = None


class Poller:
    """The client's poller process and a thread collecting what it prints."""

    def __init__(self, client: Any, address: str, port: int) -> None:
        self.proc = client.popen(sys.executable, "-c", POLLER, address, str(port), str(POLL_S),
                                 str(CONNECT_TIMEOUT_S), stdout=subprocess.PIPE)
        self.changes: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            stamp, state = line.decode().split(" ", 1)
            with self._lock:
                self.changes.append((float(stamp), state.strip()))

    def first(self, state: str, after: float, timeout: float) -> float:
        """The wall time of the first answer ``state`` at or after ``after``; waits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                found = [stamp for stamp, seen in self.changes if seen == state and
                         stamp >= after]
            if found:
                return found[0]
            if self.proc.poll() is not None:
                raise BenchError(f"the poller exited with {self.proc.returncode}")
            time.sleep(0.01)
        raise BenchError(f"the client got no {state!r} answer within {timeout:g} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(5)
        self._thread.join(2)


def one_run(setting: Setting, index: int, scratch: Path, rng: random.Random) -> Run:
    from tests.integration.test_ha_netns import APP_PORT, Timing, ha_site

    run = Run(setting.key, index)
    directory = scratch / f"{setting.key}-{index}"
    directory.mkdir(parents=True)
    timing = Timing(setting.interval, setting.timeout, setting.lease)
    with ha_site(directory, timing) as site:
        alpha, beta = site.alpha, site.beta
        poller = Poller(site.client, site.service_ip, APP_PORT)
        try:
            poller.first("alpha", 0.0, 10)
            time.sleep(1.0 + rng.uniform(0, setting.interval))
            heard = beta.ha()["hosts"]["alpha"]["last_heard_s"]
            killed = time.time()
            alpha.engine.kill()
            alpha.kill_app()
            answered = poller.first("beta", killed, setting.timeout + 30)
        except BenchError as error:
            run.error = str(error)
            log(site.logs())
            return run
        finally:
            poller.stop()
        run.timeline = [(round(stamp - killed, 3), state) for stamp, state in poller.changes
                        if stamp >= killed - 0.1]
        run.silence_at_kill_s = heard
        run.failover_s = answered - killed
        try:  # the client may be served before the DNS update (and SB4206) is done
            site.serving(beta, 2, within=30)
        except TimeoutError as error:
            run.error = str(error)
            log(site.logs())
            return run
        events = [event for event in beta.events() if event["ts"] >= killed]
        run.events = [(round(event["ts"] - killed, 3), event["code"], event["message"][:160])
                      for event in events]

        def first(code: str) -> float | None:
            return next((event["ts"] for event in events if event["code"] == code), None)

        dead, promoted, started, redirected = (first(code) for code in
                                               ("SB4002", "SB4202", "SB4204", "SB4206"))
        run.claims_refused = sum(1 for event in events if event["code"] == "SB4210"
                                 and "RaiseEpoch" in event["message"])
        if None in (dead, promoted, started, redirected):
            run.error = "beta's events lack one of SB4002, SB4202, SB4204, SB4206"
            return run
        assert dead is not None
        assert promoted is not None
        assert started is not None
        assert redirected is not None
        run.detection_s = dead - killed
        run.promotion_s = promoted - dead
        run.workload_s = started - promoted
        run.redirection_s = redirected - started
        run.client_s = answered - redirected
    return run


def summarize(setting: Setting, runs: list[Run]) -> dict[str, Any]:
    good = [run for run in runs if run.error is None and run.failover_s is not None]
    summary: dict[str, Any] = {"setting": asdict(setting) | {"target": setting.target},
                               "runs": len(runs), "ok": len(good)}
    if not good:
        return summary
    times = [run.failover_s for run in good if run.failover_s is not None]
    median, worst = statistics.median(times), max(times)
    summary.update(
        median_s=median, max_s=worst, min_s=min(times),
        median_minus_timeout_s=median - setting.timeout,
        max_minus_timeout_s=worst - setting.timeout,
        median_ratio=median / setting.target, max_ratio=worst / setting.target,
        met=worst <= setting.target and len(good) == len(runs),
        claims_refused=sum(run.claims_refused for run in good))
    for part in ("detection_s", "promotion_s", "workload_s", "redirection_s", "client_s"):
        summary[f"median_{part}"] = statistics.median(getattr(run, part) for run in good)
    return summary


def report(results: dict[str, Any]) -> str:
    meta = results["meta"]
    lines = [
        f"# Failover time ({'quick, ' if meta['quick'] else ''}{meta['date']}, "
        f"commit {meta['commit']}, {meta['cores']} cores, kernel {meta['kernel']})",
        "",
        "Kill -9 of the master's engine and workload -> first answer of the new active host "
        "at the service address, seen by a client polling every 20 ms. Target: <= timeout + "
        "3 s (ratio <= 1).",
        "",
        "| setting | runs | median | max | median - timeout | max - timeout "
        "| median / (timeout + 3 s) | max / (timeout + 3 s) | target met |",
        "|---|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for summary in results["summaries"]:
        s = summary["setting"]
        name = f"{s['key']} (interval {s['interval']:g} s, timeout {s['timeout']:g} s, " \
               f"lease {s['lease']} s)"
        if "median_s" not in summary:
            lines.append(f"| {name} | 0/{summary['runs']} | - | - | - | - | - | - | no |")
            continue
        lines.append(
            f"| {name} | {summary['ok']}/{summary['runs']} | {summary['median_s']:.2f} s "
            f"| {summary['max_s']:.2f} s | {summary['median_minus_timeout_s']:+.2f} s "
            f"| {summary['max_minus_timeout_s']:+.2f} s | {summary['median_ratio']:.2f} "
            f"| {summary['max_ratio']:.2f} | {'yes' if summary['met'] else 'NO'} |")
    lines += [
        "",
        "Where the time goes (medians; detection from the kill to beta's SB4002, promotion to "
        "SB4202, workload start to SB4204, redirection to SB4206, client from SB4206 to the "
        "first answer, negative when the service address answered before the DNS update was "
        "done):",
        "",
        "| setting | detection | promotion | workload start | redirection | client "
        "| claims refused by the witness (all runs) |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    for summary in results["summaries"]:
        if "median_s" not in summary:
            continue
        lines.append(
            f"| {summary['setting']['key']} | {summary['median_detection_s']:.2f} s "
            f"| {summary['median_promotion_s']:.3f} s | {summary['median_workload_s']:.2f} s "
            f"| {summary['median_redirection_s']:.2f} s | {summary['median_client_s']:+.3f} s "
            f"| {summary['claims_refused']} |")
    lines += [
        "",
        "Every run (seconds; silence = how long beta had not heard alpha when it was killed):",
        "",
        "| setting | run | failover | detection | promotion | workload | redirection "
        "| client | silence at kill | error |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    for run in results["runs"]:
        cells = [fmt(run[key], 3) for key in ("failover_s", "detection_s", "promotion_s",
                                                "workload_s", "redirection_s", "client_s",
                                                "silence_at_kill_s")]
        lines.append(f"| {run['setting']} | {run['index'] + 1} | " + " | ".join(cells)
                     + f" | {run['error'] or ''} |")
    return "\n".join(lines) + "\n"


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


@contextmanager
def scratch_dir(path: Path) -> Iterator[Path]:
    path = path.resolve()
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True,
                              check=False).stdout.strip()

    found = git("rev-parse", "--short", "HEAD") or "?"
    return found + (" (modified)" if git("status", "--porcelain", "--", "src") else "")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 runs per setting (default 5)")
    parser.add_argument("--runs", type=int, help="runs per setting (overrides --quick)")
    parser.add_argument("--settings", default=",".join(SETTINGS),
                        help=f"comma-separated settings (default: {','.join(SETTINGS)})")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out",
                        help="directory for the report (.md) and raw numbers (.json)")
    parser.add_argument("--scratch", type=Path, default=Path("/var/tmp/standby-bench/failover"),
                        help="where the engine homes and data live (removed at the end)")
    parser.add_argument("--seed", type=int, default=SEED, help="seed of the kill delays")
    args = parser.parse_args(argv)
    args.settings = [key.strip() for key in args.settings.split(",") if key.strip()]
    unknown = set(args.settings) - set(SETTINGS)
    if unknown:
        parser.error(f"unknown setting(s) {sorted(unknown)}; known: {', '.join(SETTINGS)}")
    if args.runs is None:
        args.runs = 2 if args.quick else 5
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


_MAIN_PID = os.getpid()


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM: unwind, so that the namespaces are removed, as on Ctrl-C. Only in this
    process: pyroute2 opens a socket in a namespace from a forked child that it ends with
    SIGTERM, and that child must just exit, not run the site's clean-up (it would kill the
    engines and named of the run in progress)."""
    if os.getpid() != _MAIN_PID:
        os._exit(128 + signum)
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    missing = missing_requirements()
    if missing:
        log("bench/failover.py needs " + ", ".join(missing) + ": it runs engines in network "
            "namespaces with a service address and a DNS server.")
        return 2
    signal.signal(signal.SIGTERM, _interrupt)
    rng = random.Random(args.seed)
    results: dict[str, Any] = {
        "meta": {"quick": args.quick, "date": time.strftime("%Y-%m-%d %H:%M"),
                 "commit": commit(), "kernel": platform.release(), "cores": os.cpu_count(),
                 "runs_per_setting": args.runs, "poll_s": POLL_S,
                 "load_before": os.getloadavg()[0]},
        "runs": [], "summaries": []}
    started = time.monotonic()
    try:
        with scratch_dir(args.scratch) as scratch:
            for key in args.settings:
                setting = SETTINGS[key]
                runs = []
                for index in range(args.runs):
                    try:
                        with redirect_stdout(sys.stderr):  # the site prints logs on failure
                            run = one_run(setting, index, scratch, rng)
                    except Exception as error:  # a site that did not come up: note it, go on
                        log(traceback.format_exc())
                        run = Run(setting.key, index, error=f"{type(error).__name__}: "
                                  f"{str(error).splitlines()[0] if str(error) else ''}")
                    runs.append(run)
                    log(f"{key} run {index + 1}/{args.runs}: "
                        + (f"{run.failover_s:.2f} s" if run.error is None and run.failover_s
                           is not None else f"FAILED: {run.error}"))
                results["runs"] += [asdict(run) for run in runs]
                results["summaries"].append(summarize(setting, runs))
    except KeyboardInterrupt:
        log("interrupted: the namespaces and the scratch directory were removed")
        return 130
    results["meta"]["seconds"] = round(time.monotonic() - started, 1)
    results["meta"]["load_after"] = os.getloadavg()[0]
    text = report(results)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / ("failover-quick" if args.quick else "failover")
    stem.with_suffix(".md").write_text(text)
    stem.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    log(f"wrote {stem}.md and .json ({results['meta']['seconds']:.0f} s)")
    print(text, end="")
    failed = any(run["error"] for run in results["runs"])
    missed = any(not summary.get("met") for summary in results["summaries"])
    return 1 if failed or missed else 0


if __name__ == "__main__":
    sys.exit(main())
