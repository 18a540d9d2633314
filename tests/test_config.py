"""The scenario model: what is accepted, and how refusals are worded."""

from __future__ import annotations

import pytest

from standby.config import ConfigError, PathFilter, parse_scenario

GOOD = """
name = "files"
master = "alpha"
replica = "beta"
[[roots]]
master = "/srv/data"
replica = "/srv/replica/data"
"""


def refusal(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        parse_scenario(text, "s.toml")
    return str(info.value)


def test_defaults() -> None:
    """A minimal file gets the documented defaults."""
    scenario = parse_scenario(GOOD, "s.toml")
    assert scenario.sync.method == "block"
    assert scenario.sync.block_size == 65536
    assert scenario.sync.range_blocks == 256
    assert scenario.sync.whole_file_threshold == 0.70
    assert scenario.roots[0].exclude == ()


def test_document_round_trips() -> None:
    """What is stored and sent over the wire reads back as the same scenario."""
    from standby.config import parse_document

    scenario = parse_scenario(GOOD + '[sync]\nblock_size = "1MiB"\n', "s.toml")
    assert parse_document(scenario.document()) == scenario
    assert scenario.sync.block_size == 1 << 20


@pytest.mark.parametrize(("extra", "expected"), [
    ('[sync]\nmethod = "blok"', "s.toml: sync.method: Input should be 'file' or 'block' (got 'blok')"),
    ('[sync]\nblock_size = "3KiB"', "s.toml: sync.block_size: must be a power of two from 4KiB to 4MiB, got 3072"),
    ('[sync]\nblock_size = "lots"', "s.toml: sync.block_size: must be a size such as 65536"),
    ('[sync]\nwhole_file_threshold = 2', "s.toml: sync.whole_file_threshold: Input should be less than or equal to 1"),
    ("colour = 1", "s.toml: roots.0.colour: unknown field"),  # TOML: it lands in the last table
])
def test_refusals_name_file_field_and_rule(extra: str, expected: str) -> None:
    """Each mistake is reported with the file, the field and what is allowed."""
    assert expected in refusal(GOOD + extra)


def test_roots_are_checked() -> None:
    """Relative, root and overlapping paths are refused; at least one root is required."""
    base = 'name = "f"\nmaster = "a"\nreplica = "b"\n'
    assert "roots: at least one is required" in refusal(base + "roots = []")
    assert "roots: required field is missing" in refusal(base)
    assert "roots.0.master: must be an absolute path, got 'srv'" in refusal(
        base + '[[roots]]\nmaster = "srv"\nreplica = "/r"')
    assert "must not be the file system root" in refusal(
        base + '[[roots]]\nmaster = "/"\nreplica = "/r"')
    assert "roots overlap" in refusal(
        base + '[[roots]]\nmaster = "/a"\nreplica = "/r1"\n[[roots]]\nmaster = "/a/b"\nreplica = "/r2"')
    same = 'name = "f"\nmaster = "a"\nreplica = "a"\n[[roots]]\nmaster = "/a"\nreplica = "/a/copy"'
    assert "may not overlap its master root" in refusal(same)


def test_not_toml() -> None:
    assert refusal("name = ").startswith("s.toml: not valid TOML:")


def test_bad_names() -> None:
    assert "name: use 1-63 letters" in refusal(GOOD.replace('"files"', '"bad name"'))


@pytest.mark.parametrize(("path", "is_dir", "excluded"), [
    (b"a.tmp", False, True),
    (b"deep/down/b.tmp", False, True),
    (b"cache", True, True),
    (b"cache", False, False),  # `cache/` matches directories only
    (b"logs/old.gz", False, True),
    (b"other/logs/old.gz", False, False),  # a pattern with / matches from the root
    (b"keep.txt", False, False),
])
def test_exclude_patterns(path: bytes, is_dir: bool, excluded: bool) -> None:
    flt = PathFilter((), ("*.tmp", "cache/", "logs/*.gz"))
    assert flt.excluded(path, is_dir) is excluded


def test_include_patterns_keep_directories_walkable() -> None:
    flt = PathFilter(("*.db",), ("scratch.db",))
    assert not flt.excluded(b"data/main.db", False)
    assert flt.excluded(b"data/notes.txt", False)
    assert not flt.excluded(b"data", True)
    assert flt.excluded(b"scratch.db", False)  # exclusion wins
