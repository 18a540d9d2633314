"""Scenario configuration: TOML in, a validated immutable model out.

A scenario names what to protect (root directory pairs with filters), the master engine, the
replica engine, and how to synchronize. Every error names the file, the field and what is
allowed, and nothing is applied until the whole file is valid.
"""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

#: Engine and scenario names: what a shell, a URL and a file name all accept unquoted.
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
_NAME_RE = re.compile(NAME_PATTERN)

DEFAULT_BLOCK_SIZE = 64 * 1024
DEFAULT_RANGE_BLOCKS = 256
DEFAULT_WHOLE_FILE_THRESHOLD = 0.70
_SIZE_RE = re.compile(r"^\s*(\d+)\s*(B|KiB|MiB)?\s*$")
_SIZE_UNITS = {None: 1, "B": 1, "KiB": 1024, "MiB": 1024 * 1024}


class ConfigError(ValueError):
    """A scenario (or engine) configuration is invalid; the message says where and why."""


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
    block_size: int = DEFAULT_BLOCK_SIZE
    range_blocks: int = Field(DEFAULT_RANGE_BLOCKS, ge=1, le=1 << 20)
    whole_file_threshold: float = Field(DEFAULT_WHOLE_FILE_THRESHOLD, ge=0.0, le=1.0)
    ignore_same_size_time: bool = False

    @field_validator("block_size", mode="before")
    @classmethod
    def _size(cls, value: Any) -> Any:
        if isinstance(value, str):
            match = _SIZE_RE.match(value)
            if not match:
                raise ValueError(f"must be a size such as 65536 or \"64KiB\", got {value!r}")
            value = int(match.group(1)) * _SIZE_UNITS[match.group(2)]
        return value

    @field_validator("block_size")
    @classmethod
    def _power_of_two(cls, value: int) -> int:
        if not 4096 <= value <= 4 * 1024 * 1024 or value & (value - 1):
            raise ValueError(f"must be a power of two from 4KiB to 4MiB, got {value}")
        return value


class Scenario(_Model):
    """One named protection."""

    name: str = Field(pattern=NAME_PATTERN)
    master: str = Field(pattern=NAME_PATTERN)
    replica: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    roots: tuple[Root, ...] = Field(min_length=1)
    sync: SyncOptions = SyncOptions()

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


def _format_errors(source: str, error: ValidationError) -> str:
    items = error.errors()
    locs = [tuple(item["loc"]) for item in items]
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
