"""Scenario configuration: TOML in, a validated immutable model out.

A scenario names what to protect (root directory pairs with filters), the master engine, the
replica engine, how to synchronize and replicate, and its high availability (``[ha]``). Every error names the file, the field and what is
allowed, and nothing is applied until the whole file is valid.
"""

from __future__ import annotations

import base64
import binascii
import fnmatch
import ipaddress
import re
import tomllib
from collections.abc import Callable
from pathlib import PurePosixPath
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_serializer,
    model_validator,
)
from pydantic_core import InitErrorDetails

#: Engine and scenario names: what a shell, a URL and a file name all accept unquoted.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
_NAME_RE = re.compile(NAME_PATTERN)

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
TiB = 1 << 40

DEFAULT_BLOCK_SIZE = 64 * KiB
DEFAULT_RANGE_BLOCKS = 256
DEFAULT_WHOLE_FILE_THRESHOLD = 0.70

_SIZE_RE = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB|GiB|TiB)?\s*(/s)?\s*$")
_SIZE_UNITS: dict[str | None, int] = {None: 1, "B": 1, "KiB": KiB, "MiB": MiB, "GiB": GiB,
                                      "TiB": TiB}


class ConfigError(ValueError):
    """A scenario (or engine) configuration is invalid; the message says where and why."""


def parse_size(value: object, *, per_second: bool = False) -> int:
    """Read a size in bytes: an integer, or a string such as ``"65536"``, ``"64KiB"``, ``"4GiB"``.

    Units are binary (``B``, ``KiB``, ``MiB``, ``GiB``, ``TiB``); a rate (``per_second``) may
    also end in ``/s`` (``"2MiB/s"``).

    Raises:
        ValueError: saying what is allowed and what was given (the field's name is added by
            the caller's error formatting).
    """
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise ValueError(f"must not be negative, got {value}")
        return value
    match = _SIZE_RE.match(value) if isinstance(value, str) else None
    if match is None or (match.group(3) and not per_second):
        if per_second:
            raise ValueError(f"must be a rate in bytes per second such as 2097152 or \"2MiB\" "
                             f"(units B, KiB, MiB, GiB, TiB; \"/s\" optional), got {value!r}")
        raise ValueError(f"must be a size such as 65536 or \"64KiB\" "
                         f"(units B, KiB, MiB, GiB, TiB), got {value!r}")
    return int(match.group(1)) * _SIZE_UNITS[match.group(2)]


def format_size(value: int) -> str:
    """The shortest exact spelling of a size: ``65536`` -> ``"64KiB"``, ``1000`` -> ``"1000"``."""
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        if value and value % _SIZE_UNITS[unit] == 0:
            return f"{value // _SIZE_UNITS[unit]}{unit}"
    return str(value)


def _at_least(minimum: int, *, zero_unlimited: bool = False,
              per: str = "") -> Callable[[int], int]:
    """A check that a parsed size is ``minimum`` or more (or 0 meaning unlimited)."""
    def check(value: int) -> int:
        if value < minimum and not (zero_unlimited and value == 0):
            allowed = f"at least {format_size(minimum)}{per}"
            if zero_unlimited:
                allowed = f"0 (unlimited) or {allowed}"
            raise ValueError(f"must be {allowed}, got {format_size(value)}")
        return value
    return check


def _size(value: object) -> int:
    return parse_size(value)


def _rate(value: object) -> int:
    return parse_size(value, per_second=True)


#: A size in bytes, written as an integer or with a binary unit; parsed to an int.
Size = Annotated[int, BeforeValidator(_size)]
#: Bytes per second, written like a :data:`Size` with an optional ``/s``; parsed to an int.
Rate = Annotated[int, BeforeValidator(_rate)]

#: The slowest limit accepted: one 1 MiB data frame must cross the link well within the
#: 30 s link timeout (16 s at 64 KiB/s), or the replica would give up on a healthy peer.
MIN_BANDWIDTH = 64 * KiB
#: A bandwidth limit: 0 is unlimited, otherwise at least :data:`MIN_BANDWIDTH`.
BandwidthLimit = Annotated[Rate, AfterValidator(
    _at_least(MIN_BANDWIDTH, zero_unlimited=True, per=" per second"))]

#: Weekday names as written in schedules; the index is :meth:`datetime.date.weekday`.
WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_DAY_INDEX = {name.lower(): index for index, name in enumerate(WEEKDAYS)}
_DAYS_HELP = "use Mon..Sun, a range such as Mon-Fri, a list such as Mon,Wed,Fri, or daily"


def parse_days(text: str) -> tuple[int, ...]:
    """Read a day set: ``"daily"``, ``"Sun"``, ``"Mon-Fri"``, ``"Mon,Wed,Fri"``, ``"Sat-Sun,Wed"``.

    Returns sorted weekday numbers (0 = Monday). A range may wrap past Sunday (``Fri-Mon`` is
    Friday to Monday). Names are case-insensitive.

    Raises:
        ValueError: naming the part that is not understood.
    """
    if text.strip().lower() == "daily":
        return tuple(range(7))
    days: set[int] = set()
    for part in text.split(","):
        ends = [end.strip() for end in part.split("-")]
        unknown = [end for end in ends if end.lower() not in _DAY_INDEX]
        if len(ends) > 2 or unknown:
            bad = unknown[0] if unknown and len(ends) <= 2 else part.strip()
            raise ValueError(f"{bad!r} is not a day or day range: {_DAYS_HELP}")
        first, last = _DAY_INDEX[ends[0].lower()], _DAY_INDEX[ends[-1].lower()]
        days.update((first + step) % 7 for step in range((last - first) % 7 + 1))
    return tuple(sorted(days))


def format_days(days: tuple[int, ...]) -> str:
    """The canonical spelling of a day set, which :func:`parse_days` reads back."""
    if len(days) == 7:
        return "daily"
    runs: list[list[int]] = []
    for day in sorted(days):
        if runs and runs[-1][-1] == day - 1:
            runs[-1].append(day)
        else:
            runs.append([day])
    return ",".join(WEEKDAYS[run[0]] if len(run) == 1 else f"{WEEKDAYS[run[0]]}-{WEEKDAYS[run[-1]]}"
                    for run in runs)


def _check_days(value: tuple[int, ...]) -> tuple[int, ...]:
    if not value:
        raise ValueError(f"at least one day is required: {_DAYS_HELP}")
    if any(not 0 <= day <= 6 for day in value):
        raise ValueError(f"weekday numbers are 0 (Monday) to 6 (Sunday), got {list(value)}")
    return tuple(sorted(set(value)))


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Root(_Model):
    """One replicated directory tree: where it lives on the master and on the replica."""

    master: str
    replica: str
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    @field_validator("master", "replica")
    @classmethod
    def _absolute(cls, value: str) -> str:
        path = PurePosixPath(value)
        if not path.is_absolute():
            raise ValueError(f"must be an absolute path, got {value!r}")
        if ".." in path.parts:
            raise ValueError(f"must not contain '..', got {value!r}")
        if str(path) == "/":
            raise ValueError("must not be the file system root '/'")
        return str(path)

    @field_validator("include", "exclude")
    @classmethod
    def _patterns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in value:
            if not pattern or (pattern.startswith("/") and len(pattern) == 1):
                raise ValueError(f"empty or bare '/' pattern in {list(value)!r}")
        return value


class SyncOptions(_Model):
    """How a synchronization compares the trees."""

    method: Literal["file", "block"] = "block"
    block_size: Size = DEFAULT_BLOCK_SIZE
    range_blocks: int = Field(DEFAULT_RANGE_BLOCKS, ge=1, le=1 << 20)
    whole_file_threshold: float = Field(DEFAULT_WHOLE_FILE_THRESHOLD, ge=0.0, le=1.0)
    ignore_same_size_time: bool = False

    @field_validator("block_size")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if not 4096 <= value <= 4 * 1024 * 1024 or value & (value - 1):
            raise ValueError(f"must be a power of two from 4KiB to 4MiB, got {value}")
        return value


_TIME_RE = re.compile(r"^(\d{1,2}):(\d{2})$")
_HOURS_RE = re.compile(r"^\s*(\d{1,2})\s*-\s*(\d{1,2})\s*$")


class ScheduledRun(_Model):
    """One entry of ``replication.schedule``: a synchronization on these weekdays at this time.

    Written in TOML as one string, ``"DAYS HH:MM"`` (``"Mon-Fri 02:00"``, ``"daily 03:15"``),
    and stored and sent in that canonical spelling; the time is the engine's local time.
    """

    days: tuple[int, ...]  # 0 = Monday .. 6 = Sunday, sorted
    hour: int = Field(ge=0, le=23)
    minute: int = Field(ge=0, le=59)

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, value: Any) -> Any:
        if isinstance(value, ScheduledRun | dict):
            return value
        if not isinstance(value, str):
            raise ValueError(f"must be a string such as \"Mon-Fri 02:00\", got {value!r}")
        days, _, time = value.strip().rpartition(" ")
        match = _TIME_RE.match(time)
        if not days.strip() or match is None:
            raise ValueError(f"must be days and a time, such as \"Mon-Fri 02:00\", "
                             f"\"Sun 23:30\" or \"daily 03:15\", got {value!r}")
        hour, minute = int(match.group(1)), int(match.group(2))
        if hour > 23 or minute > 59:
            raise ValueError(f"{value!r}: the time must be 00:00 to 23:59")
        try:
            return {"days": parse_days(days), "hour": hour, "minute": minute}
        except ValueError as exc:
            raise ValueError(f"{value!r}: {exc}") from None

    _days = field_validator("days")(_check_days)

    @model_serializer
    def _text(self) -> str:
        return f"{format_days(self.days)} {self.hour:02d}:{self.minute:02d}"


class BandwidthWindow(_Model):
    """One entry of ``replication.bandwidth_schedule``: a limit for some hours of some days.

    ``hours`` is half-open, whole hours, ``(start, end)`` with ``0 <= start <= 23`` and
    ``1 <= end <= 24``; ``start > end`` wraps past midnight, and the hours after midnight
    belong to the day the window started on (``Fri`` with ``22-06`` covers Friday 22:00 to
    Saturday 06:00).
    """

    days: tuple[int, ...] = tuple(range(7))
    hours: tuple[int, int] = (0, 24)
    limit: BandwidthLimit

    @field_validator("days", mode="before")
    @classmethod
    def _parse_days(cls, value: Any) -> Any:
        return parse_days(value) if isinstance(value, str) else value

    _days = field_validator("days")(_check_days)

    @field_validator("hours", mode="before")
    @classmethod
    def _parse_hours(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        match = _HOURS_RE.match(value)
        if match is None:
            raise ValueError(f"must be whole hours \"HH-HH\" such as \"08-18\" or \"22-06\", "
                             f"got {value!r}")
        return int(match.group(1)), int(match.group(2))

    @field_validator("hours")
    @classmethod
    def _check_hours(cls, value: tuple[int, int]) -> tuple[int, int]:
        start, end = value
        if not (0 <= start <= 23 and 1 <= end <= 24) or start == end:
            raise ValueError(f"must be \"HH-HH\" with a start of 00-23 and a different end of "
                             f"01-24 (\"00-24\" is the whole day), got {start:02d}-{end:02d}")
        return value

    @field_serializer("days")
    def _days_text(self, days: tuple[int, ...]) -> str:
        return format_days(days)

    @field_serializer("hours")
    def _hours_text(self, hours: tuple[int, int]) -> str:
        return f"{hours[0]:02d}-{hours[1]:02d}"


class ReplicationOptions(_Model):
    """How captured changes travel from the master to the replica (after synchronization)."""

    mode: Literal["online", "scheduled", "assessment"] = "online"
    ack: Literal["durable", "received", "async"] = "durable"
    schedule: tuple[ScheduledRun, ...] = Field((), validate_default=True)
    aggregate_ms: int = Field(20, strict=True)
    rehash_rate: Annotated[Rate, AfterValidator(_at_least(MiB, per=" per second"))] = 256 * MiB
    spool_dir: str = ""
    spool_max: Annotated[Size, AfterValidator(_at_least(64 * MiB))] = 4 * GiB
    spool_min_free: Size = 1 * GiB
    compression: bool = Field(True, strict=True)
    compression_level: int = Field(1, strict=True)
    bandwidth_limit: BandwidthLimit = 0
    bandwidth_schedule: tuple[BandwidthWindow, ...] = ()
    sample_seconds: int = Field(600, strict=True)  # assessment: one report row per sample

    @field_validator("sample_seconds")
    @classmethod
    def _sample_range(cls, value: int) -> int:
        if not 1 <= value <= 86_400:
            raise ValueError(f"must be 1 to 86400 (seconds), got {value}")
        return value

    @field_validator("schedule")
    @classmethod
    def _schedule_when_scheduled(cls, value: tuple[ScheduledRun, ...],
                                 info: ValidationInfo) -> tuple[ScheduledRun, ...]:
        if not value and info.data.get("mode") == "scheduled":
            raise ValueError("at least one time is required when mode = \"scheduled\", "
                             "such as [\"Mon-Fri 02:00\"]")
        return value

    @field_validator("aggregate_ms")
    @classmethod
    def _aggregate_range(cls, value: int) -> int:
        if not 0 <= value <= 10_000:
            raise ValueError(f"must be 0 to 10000 (milliseconds), got {value}")
        return value

    @field_validator("compression_level")
    @classmethod
    def _level_range(cls, value: int) -> int:
        if not 1 <= value <= 19:
            raise ValueError(f"must be a zstd level from 1 (fastest) to 19 (smallest), "
                             f"got {value}")
        return value

    @field_validator("spool_dir")
    @classmethod
    def _spool_dir(cls, value: str) -> str:
        if value == "":
            return value
        path = PurePosixPath(value)
        if not path.is_absolute() or ".." in path.parts or str(path) == "/":
            raise ValueError(f"must be \"\" (inside the engine's home) or an absolute path "
                             f"other than '/' without '..', got {value!r}")
        return str(path)


#: Seconds, written as an integer or a decimal number (``10``, ``1.5``); not a string.
Seconds = Annotated[float, Field(strict=True)]


def _field_error(loc: tuple[str | int, ...], value: object, message: str) -> ValidationError:
    """A validation error at ``loc`` below the model being validated, for checks that span
    fields (pydantic prefixes the model's own location)."""
    return ValidationError.from_exception_data("Scenario", [InitErrorDetails(
        type="value_error", loc=loc, input=value, ctx={"error": ValueError(message)})])


def _absolute_path(value: str) -> str:
    path = PurePosixPath(value)
    if not path.is_absolute() or ".." in path.parts or str(path) == "/":
        raise ValueError(f"must be an absolute path other than '/' without '..', got {value!r}")
    return str(path)


def _command(value: str) -> str:
    if not value.strip():
        raise ValueError("must be a command, got an empty string")
    return value


_DNS_NAME_RE = re.compile(r"^(?!-)[A-Za-z0-9_-]{1,63}(?<!-)$")


def _dns_name(value: str) -> str:
    labels = value.removesuffix(".").split(".")
    if len(value) > 253 or not all(_DNS_NAME_RE.match(label) for label in labels):
        raise ValueError(f"must be a DNS name such as \"www.example.com\", got {value!r}")
    return value


def _ip_address(value: str) -> str:
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(f"must be an IPv4 or IPv6 address, got {value!r}") from None


AbsolutePath = Annotated[str, AfterValidator(_absolute_path)]
CommandLine = Annotated[str, AfterValidator(_command)]
DnsName = Annotated[str, AfterValidator(_dns_name)]
IpAddress = Annotated[str, AfterValidator(_ip_address)]
EngineName = Annotated[str, Field(pattern=NAME_PATTERN)]


class TcpCheck(_Model):
    """Is Alive check: a TCP connection to ``host:port`` is accepted."""

    kind: Literal["tcp"]
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535, strict=True)
    timeout: Seconds = Field(2.0, gt=0, le=60)


class IcmpCheck(_Model):
    """Is Alive check: ``host`` answers an ICMP echo."""

    kind: Literal["icmp"]
    host: str = Field(min_length=1)
    timeout: Seconds = Field(2.0, gt=0, le=60)


class ScriptCheck(_Model):
    """Is Alive check: ``command`` (run by ``/bin/sh -c``) exits with status 0."""

    kind: Literal["script"]
    command: CommandLine
    timeout: Seconds = Field(5.0, gt=0, le=60)


Check = Annotated[TcpCheck | IcmpCheck | ScriptCheck, Field(discriminator="kind")]


class ServiceWorkload(_Model):
    """A service: a systemd ``unit``, or ``start``, ``stop`` and ``check`` commands."""

    kind: Literal["service"]
    unit: str = ""
    start: str = ""
    stop: str = ""
    check: str = ""
    timeout: Seconds = Field(90.0, gt=0, le=3600)  # systemd's DefaultTimeoutStartSec
    check_timeout: Seconds = Field(10.0, gt=0, le=600)

    @field_validator("unit")
    @classmethod
    def _unit_name(cls, value: str) -> str:
        if value and not re.match(r"^[A-Za-z0-9:_.@-]+\.(service|target)$", value):
            raise ValueError(f"must be a systemd unit name such as \"web.service\", "
                             f"got {value!r}")
        return value

    @model_validator(mode="after")
    def _unit_or_commands(self) -> ServiceWorkload:
        commands = {"start": self.start, "stop": self.stop, "check": self.check}
        if self.unit:
            given = [name for name, command in commands.items() if command]
            if given:
                raise _field_error((given[0],), commands[given[0]], "give either unit or the "
                                   "start, stop and check commands, not both")
            return self
        for name, command in commands.items():
            if not command.strip():
                raise _field_error((name,), command, "required (a command), unless unit names "
                                   "a systemd unit")
        return self


class ScriptWorkload(_Model):
    """A script called with ``start``, ``stop`` or ``status``."""

    kind: Literal["script"]
    path: AbsolutePath
    timeout: Seconds = Field(90.0, gt=0, le=3600)
    check_timeout: Seconds = Field(10.0, gt=0, le=600)


Workload = Annotated[ServiceWorkload | ScriptWorkload, Field(discriminator="kind")]


class IpRedirect(_Model):
    """Redirection: move a service address (with its prefix) to the active host's interface."""

    kind: Literal["ip"]
    address: str
    interface: str

    @field_validator("address")
    @classmethod
    def _interface_address(cls, value: str) -> str:
        try:
            address = ipaddress.ip_interface(value)
        except ValueError:
            address = None
        if address is None or "/" not in value:
            raise ValueError(f"must be an address with its prefix length, such as "
                             f"\"10.0.0.10/24\", got {value!r}")
        return str(address)

    @field_validator("interface")
    @classmethod
    def _interface_name(cls, value: str) -> str:
        if not re.match(r"^[A-Za-z0-9_.:@-]{1,15}$", value):
            raise ValueError(f"must be a network interface name (1-15 characters, no '/' or "
                             f"spaces) such as \"eth0\", got {value!r}")
        return value


class DnsRedirect(_Model):
    """Redirection: an RFC 2136 update of ``name`` in ``zone``, signed with a TSIG key."""

    kind: Literal["dns"]
    server: IpAddress
    port: int = Field(53, ge=1, le=65535, strict=True)
    zone: DnsName
    name: DnsName
    key_name: DnsName
    key_secret: str
    key_algorithm: Literal["hmac-sha256", "hmac-sha384", "hmac-sha512", "hmac-sha224",
                           "hmac-sha1", "hmac-md5"] = "hmac-sha256"
    ttl: int = Field(60, ge=0, le=86400, strict=True)
    timeout: Seconds = Field(5.0, gt=0, le=60)

    @field_validator("key_secret")
    @classmethod
    def _base64(cls, value: str) -> str:
        try:
            secret = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            secret = b""
        if not secret:
            raise ValueError("must be the key's secret in base64, as in the DNS server's key "
                             "statement (tsig-keygen prints it)")
        return value


class ScriptRedirect(_Model):
    """Redirection: a script run with the scenario, the active host and the epoch."""

    kind: Literal["script"]
    path: AbsolutePath
    timeout: Seconds = Field(30.0, gt=0, le=3600)


Redirection = Annotated[IpRedirect | DnsRedirect | ScriptRedirect, Field(discriminator="kind")]


def _one_or_many(value: Any) -> Any:
    """``[ha.redirect]`` (one table) means the same as ``[[ha.redirect]]`` with one entry."""
    return (value,) if isinstance(value, dict) else value


class HaOptions(_Model):
    """High availability: Is Alive, failover, arbitration, workload and redirection.

    Every field has a default, so a scenario without ``[ha]`` is valid: heartbeats are kept,
    and a failover waits for the operator. docs/configuration.md says why each default.
    """

    interval: Seconds = 1.0
    timeout: Seconds = 10.0
    auto_failover: bool = Field(False, strict=True)
    arbitration: Literal["peer", "witness", "etcd"] = "peer"
    witness: str = Field("", validate_default=True)
    etcd_endpoints: tuple[str, ...] = Field((), validate_default=True)
    lease_seconds: int = Field(5, strict=True, validate_default=True)
    max_lag: Seconds = Field(5.0, ge=0, le=86400)
    reverse_replication: bool = Field(True, strict=True)
    switchover_timeout: Seconds = Field(300.0, gt=0, le=86400)
    addresses: dict[EngineName, IpAddress] = Field(default_factory=dict)
    checks: tuple[Check, ...] = ()
    workload: Workload | None = None
    redirect: Annotated[tuple[Redirection, ...], BeforeValidator(_one_or_many)] = ()

    @field_validator("interval")
    @classmethod
    def _interval_range(cls, value: float) -> float:
        if not 0.1 <= value <= 60:
            raise ValueError(f"must be 0.1 to 60 (seconds), got {value:g}")
        return value

    @field_validator("timeout")
    @classmethod
    def _timeout_range(cls, value: float, info: ValidationInfo) -> float:
        interval = info.data.get("interval")
        if interval is not None and value < 3 * interval:
            raise ValueError(f"must be at least 3 x interval ({3 * interval:g} s: three missed "
                             f"heartbeats), got {value:g}")
        if value > 3600:
            raise ValueError(f"must be at most 3600 (seconds), got {value:g}")
        return value

    @field_validator("witness")
    @classmethod
    def _witness_name(cls, value: str, info: ValidationInfo) -> str:
        if not value and info.data.get("arbitration") == "witness":
            raise ValueError("required when arbitration = \"witness\": the name of the third "
                             "engine that arbitrates")
        if value and not _NAME_RE.match(value):
            raise ValueError(f"must be an engine name: 1-63 letters, digits, '.', '_' or '-', "
                             f"starting with a letter or digit, got {value!r}")
        return value

    @field_validator("etcd_endpoints")
    @classmethod
    def _endpoints(cls, value: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        if not value and info.data.get("arbitration") == "etcd":
            raise ValueError("at least one is required when arbitration = \"etcd\", such as "
                             "[\"http://10.0.0.5:2379\"]")
        for url in value:
            try:
                parts = urlsplit(url)
                port = parts.port
            except ValueError:
                parts, port = None, None
            if (parts is None or parts.scheme not in ("http", "https") or not parts.hostname
                    or port is None or parts.path not in ("", "/")):
                raise ValueError(f"must be etcd client URLs such as \"http://10.0.0.5:2379\" "
                                 f"(http or https, a host and a port), got {url!r}")
        return value

    @field_validator("lease_seconds")
    @classmethod
    def _lease_range(cls, value: int, info: ValidationInfo) -> int:
        if not 1 <= value <= 3600:
            raise ValueError(f"must be 1 to 3600 (seconds), got {value}")
        interval, timeout = info.data.get("interval"), info.data.get("timeout")
        arbitration = info.data.get("arbitration")
        if interval is None or timeout is None or arbitration not in ("witness", "etcd"):
            return value  # an earlier field is already reported, or two hosts keep no lease
        if value < 3 * interval:
            raise ValueError(f"must be at least 3 x interval ({3 * interval:g} s: three renewals "
                             f"before it runs out), got {value}")
        if arbitration == "witness" and value + 2 * interval > timeout:
            raise ValueError(f"with a witness, must be at most timeout - 2 x interval "
                             f"({timeout - 2 * interval:g} s), so that an isolated active host "
                             f"has stopped its workload before a standby may take over, "
                             f"got {value}")
        return value

    @field_validator("checks")
    @classmethod
    def _checks_answer_in_time(cls, value: tuple[TcpCheck | IcmpCheck | ScriptCheck, ...],
                               info: ValidationInfo) -> tuple[TcpCheck | IcmpCheck | ScriptCheck,
                                                              ...]:
        timeout = info.data.get("timeout")
        for index, check in enumerate(value):
            if timeout is not None and check.timeout > timeout:
                raise _field_error((index, "timeout"), check.timeout, f"must be at most "
                                   f"ha.timeout ({timeout:g} s): a check must answer before "
                                   f"the host is declared dead, got {check.timeout:g}")
        return value



class Scenario(_Model):
    """One named protection."""

    name: str = Field(pattern=NAME_PATTERN)
    master: str = Field(pattern=NAME_PATTERN)
    replica: str = Field(pattern=NAME_PATTERN)
    #: Further replica engines (fan-out): each receives the same roots at the same replica
    #: paths, from the same stream.
    replicas: tuple[Annotated[str, Field(pattern=NAME_PATTERN)], ...] = ()
    #: Engines the first replica forwards to (cascade): it replicates what it receives to
    #: them, as the master of a derived scenario named "<name>.cascade".
    cascade: tuple[Annotated[str, Field(pattern=NAME_PATTERN)], ...] = ()
    description: str = ""
    roots: tuple[Root, ...] = Field(min_length=1)
    sync: SyncOptions = SyncOptions()
    replication: ReplicationOptions = ReplicationOptions()
    ha: HaOptions = HaOptions()

    @model_validator(mode="after")
    def _distinct(self) -> Scenario:
        seen_master: set[str] = set()
        seen_replica: set[str] = set()
        for root in self.roots:
            for seen, path in ((seen_master, root.master), (seen_replica, root.replica)):
                for other in seen:
                    if _nested(path, other):
                        raise ValueError(f"roots overlap: {other!r} and {path!r}")
                seen.add(path)
            if self.master == self.replica and (
                _nested(root.master, root.replica) or _nested(root.replica, root.master)
            ):
                raise ValueError(
                    f"on one engine, a replica root may not overlap its master root "
                    f"({root.master!r}, {root.replica!r})"
                )
        return self

    @model_validator(mode="after")
    def _distinct_replicas(self) -> Scenario:
        seen = {self.master, self.replica}
        for name in (*self.replicas, *self.cascade):
            if name in seen:
                raise ValueError(f"{name!r} appears twice among the master, the replicas and "
                                 "the cascade")
            seen.add(name)
        return self

    @model_validator(mode="after")
    def _ha_hosts(self) -> Scenario:
        ha = self.ha
        hosts = (self.master, *self.targets, *self.cascade)
        if ha.witness in hosts:
            raise _field_error(("ha", "witness"), ha.witness, f"must be a third engine, not "
                               f"{ha.witness!r}, which is a host of this scenario")
        if ha.auto_failover and (self.replicas or self.cascade):
            raise _field_error(("ha", "auto_failover"), True, "automatic failover is not "
                               "supported yet for a scenario with several replicas (replicas, "
                               "cascade): after it, the other replicas would follow no master")
        if any(isinstance(redirect, DnsRedirect) for redirect in ha.redirect):
            missing = [host for host in (self.master, *self.targets) if host not in ha.addresses]
            if missing:
                raise _field_error(("ha", "addresses"), ha.addresses, f"no address for "
                                   f"{', '.join(missing)}: DNS redirection needs the address of "
                                   "every host that may become active")
        return self

    def cascaded(self) -> Scenario:
        """The scenario the first replica runs as master to forward to the cascade."""
        return self.model_copy(update={
            "name": f"{self.name}.cascade"[:63], "master": self.replica,
            "replica": self.cascade[0], "replicas": self.cascade[1:], "cascade": (),
            "roots": tuple(root.model_copy(update={"master": root.replica})
                           for root in self.roots),
            "description": f"forwarding of {self.name} from {self.replica}"})

    def reoriented(self, active: str) -> Scenario:
        """The scenario as it runs while ``active`` is the active host: ``active`` is the
        master, the other host the replica, and each root's two paths follow their hosts.

        Raises:
            ValueError: ``active`` is neither host, or the scenario has several replicas (a
                switchover moves one master and one replica).
        """
        if active == self.master:
            return self
        if active != self.replica:
            raise ValueError(f"{active!r} is not a host of scenario {self.name!r}")
        if self.replicas or self.cascade:
            raise ValueError(f"scenario {self.name!r} has several replicas: switching it over "
                             "is not supported yet")
        return self.model_copy(update={
            "master": self.replica, "replica": self.master,
            "roots": tuple(root.model_copy(update={"master": root.replica,
                                                   "replica": root.master})
                           for root in self.roots)})

    @property
    def hosts(self) -> tuple[str, ...]:
        """Every engine that may hold the scenario's data: the master, then the replicas."""
        return (self.master, *self.targets)

    @property
    def targets(self) -> tuple[str, ...]:
        """Every replica engine: ``replica`` first, then the fan-out ones."""
        return (self.replica, *self.replicas)

    def document(self) -> dict[str, Any]:
        """Plain data for storage and for the wire; :func:`parse_document` reads it back."""
        return self.model_dump(mode="json")


def _nested(a: str, b: str) -> bool:
    """True when one of two absolute paths lies inside the other (or they are equal)."""
    pa, pb = PurePosixPath(a), PurePosixPath(b)
    return pa == pb or pa.is_relative_to(pb) or pb.is_relative_to(pa)


_FRIENDLY = {
    "string_pattern_mismatch": "use 1-63 letters, digits, '.', '_' or '-', starting with a "
                               "letter or digit",
    "too_short": "at least one is required",
}


#: The ``kind`` values of tagged tables (checks, workload, redirect): pydantic puts the tag in
#: an error's location (``ha.checks.0.tcp.port``); the messages leave it out.
_UNION_TAGS = frozenset({"tcp", "icmp", "script", "service", "ip", "dns"})


def _untagged(loc: tuple[int | str, ...]) -> tuple[int | str, ...]:
    return tuple(part for index, part in enumerate(loc)
                 if not (part in _UNION_TAGS and 0 < index < len(loc) - 1))


def _format_errors(source: str, error: ValidationError) -> str:
    items = error.errors()
    locs = [_untagged(tuple(item["loc"])) for item in items]
    lines = []
    for item, loc in zip(items, locs, strict=True):
        if any(other != loc and other[:len(loc)] == loc for other in locs):
            continue  # a container's error caused by an item already reported below it
        where = ".".join(str(part) for part in loc) or "(top level)"
        if item["type"] == "extra_forbidden":
            message = "unknown field (check the spelling; see docs/configuration.md)"
        elif item["type"] == "missing":
            message = "required field is missing"
        elif item["type"] in _FRIENDLY:
            message = f"{_FRIENDLY[item['type']]} (got {item['input']!r})"
        elif item["type"] == "union_tag_invalid":
            message = (f"kind must be one of {item['ctx']['expected_tags']} "
                       f"(got {item['ctx']['tag']!r})")
        elif item["type"] == "union_tag_not_found":
            message = "kind is required: it says which kind of entry this is"
        elif item["type"] == "value_error":
            message = item["msg"].removeprefix("Value error, ")  # our messages say what we got
        else:
            message = f"{item['msg']} (got {item['input']!r})"
        lines.append(f"{source}: {where}: {message}")
    return "\n".join(lines)


def parse_scenario(text: str, source: str = "<scenario>") -> Scenario:
    """Parse and validate a scenario TOML document.

    Raises:
        ConfigError: naming ``source``, the field and what is allowed.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    return parse_document(data, source)


def parse_document(data: dict[str, Any], source: str = "<scenario>") -> Scenario:
    """Validate plain data (from TOML, the database or the wire) into a :class:`Scenario`."""
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(source, exc)) from None


def check_name(kind: str, name: str) -> str:
    """Validate an engine or peer name given on the command line."""
    if not _NAME_RE.match(name):
        raise ConfigError(
            f"{kind} name {name!r} is not allowed: use 1-63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


class PathFilter:
    """Include/exclude patterns of a root, matched against relative paths (bytes).

    A pattern without ``/`` matches a name at any depth (``*.tmp``); a pattern with ``/``
    matches the whole relative path (``cache/*``); a trailing ``/`` matches directories only.
    Exclusion wins. When include patterns exist, only files matching one of them are
    replicated (directories are always walked). Excluded entries on the replica are neither
    compared nor deleted.
    """

    def __init__(self, include: tuple[str, ...], exclude: tuple[str, ...]) -> None:
        self._include = [_Pattern(p) for p in include]
        self._exclude = [_Pattern(p) for p in exclude]

    @property
    def active(self) -> bool:
        return bool(self._include or self._exclude)

    def excluded(self, path: bytes, is_dir: bool) -> bool:
        text = path.decode("utf-8", "surrogateescape")
        if any(p.matches(text, is_dir) for p in self._exclude):
            return True
        return bool(self._include) and not is_dir and not any(
            p.matches(text, is_dir) for p in self._include
        )


class _Pattern:
    __slots__ = ("dir_only", "pattern", "whole_path")

    def __init__(self, pattern: str) -> None:
        self.dir_only = pattern.endswith("/")
        pattern = pattern.rstrip("/").lstrip("/")
        self.whole_path = "/" in pattern
        self.pattern = pattern

    def matches(self, path: str, is_dir: bool) -> bool:
        if self.dir_only and not is_dir:
            return False
        subject = path if self.whole_path else path.rsplit("/", 1)[-1]
        return fnmatch.fnmatchcase(subject, self.pattern)
