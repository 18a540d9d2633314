"""Numbers, durations and one-line job summaries for people: plain strings, no rich.

Waiting for a job and its outcome line need only these, so ``standby sync`` writing to a pipe
or a log never imports rich; :mod:`.render` builds the tables from them.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

_UNITS = ("KiB", "MiB", "GiB", "TiB", "PiB")


def human_bytes(count: float) -> str:
    """``1536`` -> ``1.5 KiB``: binary units, one decimal."""
    if abs(count) < 1024:
        return f"{int(count)} B"
    value = float(count)
    for unit in _UNITS:
        value /= 1024
        if abs(value) < 1024 or unit == _UNITS[-1]:
            break
    return f"{value:.1f} {unit}"


def duration(seconds: float | None) -> str:
    """``200`` -> ``3 min 20 s``; None (unknown) -> ``?``."""
    if seconds is None:
        return "?"
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    minutes, secs = divmod(whole, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def timestamp(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def counter(key: str, value: Any) -> str:
    """A statistic for people, by its name: ``*_at`` a time, ``*bytes*`` a size, ``*_s`` a
    duration, other numbers grouped by thousands."""
    if value is None:
        return "-"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if key.endswith("_at"):
        return timestamp(value)
    if key.startswith("rate_bytes"):
        return f"{human_bytes(value)}/s"
    if "bytes" in key or key == "block_size":
        return human_bytes(value)
    if key.endswith("_s"):
        return duration(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:,.2f}"


# --- jobs ---------------------------------------------------------------------------------------


def progress_fields(progress: Mapping[str, Any]) -> dict[str, str]:
    """The pieces of a job's progress, formatted: files, bytes, rate, eta."""
    return {
        "files": f"{progress['files_done']:,}/{progress['files_total']:,} files",
        "bytes": f"{human_bytes(progress['bytes_done'])}/{human_bytes(progress['bytes_total'])}",
        "rate": f"{human_bytes(progress['rate_bytes_s'])}/s",
        "eta": duration(progress["eta_s"]),
    }


def progress_line(job: Mapping[str, Any]) -> str:
    """``web: copying, 12/100 files, 1.2 GiB/4.0 GiB, 120.0 MiB/s, ETA 25 s``."""
    progress = job["progress"]
    fields = progress_fields(progress)
    return (f"{job['scenario']}: {progress['phase']}, {fields['files']}, {fields['bytes']}, "
            f"{fields['rate']}, ETA {fields['eta']}")


def job_outcome(job: Mapping[str, Any]) -> str:
    """One line on a finished job from its report (or, without one, its last progress)."""
    report = job.get("report") or {}
    if "files_compared" in report:
        return (f"{report['files_compared']:,} files compared, "
                f"{report.get('files_differing', 0):,} differed, "
                f"{human_bytes(report.get('bytes_sent', 0))} sent in "
                f"{duration(report.get('duration_s'))}")
    progress = job["progress"]
    return (f"{progress['files_done']:,} files, {human_bytes(progress['bytes_done'])} "
            f"compared, {human_bytes(progress['bytes_sent'])} sent in "
            f"{duration(progress['elapsed_s'])}")
