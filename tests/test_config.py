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


FULL_REPLICATION = """
[replication]
mode = "scheduled"
ack = "received"
schedule = ["Mon-Fri 02:00", "Sun 23:30", "daily 03:15", "Mon,Wed,Fri 12:00"]
aggregate_ms = 50
rehash_rate = "64MiB/s"
spool_dir = "/var/spool/standby/"
spool_max = "1TiB"
spool_min_free = "2GiB"
compression = false
compression_level = 19
bandwidth_limit = "10MiB"
bandwidth_schedule = [
  {days = "Mon-Fri", hours = "08-18", limit = "2MiB"},
  {days = "Sat,Sun", hours = "22-06", limit = 0},
  {limit = 65536},
]
"""


def test_replication_defaults() -> None:
    """A file without [replication] replicates online, durably, with the documented limits."""
    replication = parse_scenario(GOOD, "s.toml").replication
    assert replication.mode == "online"
    assert replication.ack == "durable"
    assert replication.schedule == ()
    assert replication.aggregate_ms == 20
    assert replication.rehash_rate == 256 << 20
    assert replication.spool_dir == ""
    assert replication.spool_max == 4 << 30
    assert replication.spool_min_free == 1 << 30
    assert replication.compression is True
    assert replication.compression_level == 1
    assert replication.bandwidth_limit == 0
    assert replication.bandwidth_schedule == ()


def test_full_replication_section() -> None:
    """Every field, parsed into numbers and weekday sets, and stored in canonical spelling."""
    from standby.config import parse_document

    scenario = parse_scenario(GOOD + FULL_REPLICATION, "s.toml")
    replication = scenario.replication
    assert (replication.mode, replication.ack) == ("scheduled", "received")
    assert [(run.days, run.hour, run.minute) for run in replication.schedule] == [
        ((0, 1, 2, 3, 4), 2, 0), ((6,), 23, 30), (tuple(range(7)), 3, 15), ((0, 2, 4), 12, 0)]
    assert replication.aggregate_ms == 50
    assert replication.rehash_rate == 64 << 20
    assert replication.spool_dir == "/var/spool/standby"
    assert (replication.spool_max, replication.spool_min_free) == (1 << 40, 2 << 30)
    assert (replication.compression, replication.compression_level) == (False, 19)
    assert replication.bandwidth_limit == 10 << 20
    assert [(w.days, w.hours, w.limit) for w in replication.bandwidth_schedule] == [
        ((0, 1, 2, 3, 4), (8, 18), 2 << 20), ((5, 6), (22, 6), 0), (tuple(range(7)), (0, 24), 65536)]
    document = scenario.document()["replication"]
    assert document["schedule"] == ["Mon-Fri 02:00", "Sun 23:30", "daily 03:15", "Mon,Wed,Fri 12:00"]
    assert document["bandwidth_schedule"][1] == {"days": "Sat-Sun", "hours": "22-06", "limit": 0}
    assert parse_document(scenario.document()) == scenario


def test_schedule_may_be_kept_while_online() -> None:
    """Times given in another mode are kept (unused), so switching modes loses nothing."""
    scenario = parse_scenario(GOOD + '[replication]\nschedule = ["Sat 01:00"]', "s.toml")
    assert scenario.replication.mode == "online"
    assert len(scenario.replication.schedule) == 1


@pytest.mark.parametrize(("days", "expected"), [
    ("daily", (0, 1, 2, 3, 4, 5, 6)),
    ("mon", (0,)),
    ("Mon-Fri", (0, 1, 2, 3, 4)),
    ("Fri-Mon", (0, 4, 5, 6)),          # a range may wrap past Sunday
    ("Mon, Wed ,Fri", (0, 2, 4)),
    ("Sat-Sun,Wed", (2, 5, 6)),
    ("Mon-Sun", (0, 1, 2, 3, 4, 5, 6)),
])
def test_day_sets(days: str, expected: tuple[int, ...]) -> None:
    from standby.config import format_days, parse_days

    assert parse_days(days) == expected
    assert parse_days(format_days(expected)) == expected


@pytest.mark.parametrize(("text", "size"), [
    (65536, 65536), ("65536", 65536), ("512B", 512), ("64KiB", 64 << 10), (" 3 MiB ", 3 << 20),
    ("4GiB", 4 << 30), ("2TiB", 2 << 40),
])
def test_sizes(text: object, size: int) -> None:
    from standby.config import format_size, parse_size

    assert parse_size(text) == size
    assert parse_size(format_size(size)) == size


def test_rates_may_say_per_second_and_sizes_may_not() -> None:
    from standby.config import parse_size

    assert parse_size("2MiB/s", per_second=True) == 2 << 20
    for bad in ("2MiB/s", "4GB", "1.5MiB", "-1", True, 1.0, -1):
        with pytest.raises(ValueError, match="must"):
            parse_size(bad)


ALLOWED_DAYS = "use Mon..Sun, a range such as Mon-Fri, a list such as Mon,Wed,Fri, or daily"


@pytest.mark.parametrize(("field", "expected"), [
    ('mode = "live"', "replication.mode: Input should be 'online', 'scheduled' or 'assessment' (got 'live')"),
    ('ack = "sync"', "replication.ack: Input should be 'durable', 'received' or 'async' (got 'sync')"),
    ('mode = "scheduled"', 'replication.schedule: at least one time is required when mode = "scheduled", such as ["Mon-Fri 02:00"]'),
    ('schedule = ["Mon-Fry 02:00"]', f"replication.schedule.0: 'Mon-Fry 02:00': 'Fry' is not a day or day range: {ALLOWED_DAYS}"),
    ('schedule = ["Mon 02:00", "02:00"]', 'replication.schedule.1: must be days and a time, such as "Mon-Fri 02:00", "Sun 23:30" or "daily 03:15", got \'02:00\''),
    ('schedule = ["Sun 24:00"]', "replication.schedule.0: 'Sun 24:00': the time must be 00:00 to 23:59"),
    ("schedule = [2]", 'replication.schedule.0: must be a string such as "Mon-Fri 02:00", got 2'),
    ("aggregate_ms = 10001", "replication.aggregate_ms: must be 0 to 10000 (milliseconds), got 10001"),
    ("aggregate_ms = -1", "replication.aggregate_ms: must be 0 to 10000 (milliseconds), got -1"),
    ('aggregate_ms = "20"', "replication.aggregate_ms: Input should be a valid integer (got '20')"),
    ("rehash_rate = 0", "replication.rehash_rate: must be at least 1MiB per second, got 0"),
    ('rehash_rate = "fast"', 'replication.rehash_rate: must be a rate in bytes per second such as 2097152 or "2MiB" (units B, KiB, MiB, GiB, TiB; "/s" optional), got \'fast\''),
    ('spool_dir = "spool"', "replication.spool_dir: must be \"\" (inside the engine's home) or an absolute path other than '/' without '..', got 'spool'"),
    ('spool_dir = "/a/../b"', "replication.spool_dir: must be \"\" (inside the engine's home) or an absolute path"),
    ('spool_max = "1MiB"', "replication.spool_max: must be at least 64MiB, got 1MiB"),
    ('spool_max = "4GB"', 'replication.spool_max: must be a size such as 65536 or "64KiB" (units B, KiB, MiB, GiB, TiB), got \'4GB\''),
    ("spool_min_free = -1", "replication.spool_min_free: must not be negative, got -1"),
    ('compression = "yes"', "replication.compression: Input should be a valid boolean (got 'yes')"),
    ("compression_level = 20", "replication.compression_level: must be a zstd level from 1 (fastest) to 19 (smallest), got 20"),
    ("compression_level = 0", "replication.compression_level: must be a zstd level from 1 (fastest) to 19 (smallest), got 0"),
    ('bandwidth_limit = "1KiB"', "replication.bandwidth_limit: must be 0 (unlimited) or at least 64KiB per second, got 1KiB"),
    ('bandwidth_limit = "2MB"', "replication.bandwidth_limit: must be a rate in bytes per second"),
    ('bandwidth_schedule = [{days = "Mon-Fry", limit = "2MiB"}]', f"replication.bandwidth_schedule.0.days: 'Fry' is not a day or day range: {ALLOWED_DAYS}"),
    ('bandwidth_schedule = [{days = "Mon-Wed-Fri", limit = "2MiB"}]', "replication.bandwidth_schedule.0.days: 'Mon-Wed-Fri' is not a day or day range"),
    ('bandwidth_schedule = [{hours = "8", limit = "2MiB"}]', 'replication.bandwidth_schedule.0.hours: must be whole hours "HH-HH" such as "08-18" or "22-06", got \'8\''),
    ('bandwidth_schedule = [{hours = "06-06", limit = "2MiB"}]', 'replication.bandwidth_schedule.0.hours: must be "HH-HH" with a start of 00-23 and a different end of 01-24 ("00-24" is the whole day), got 06-06'),
    ('bandwidth_schedule = [{hours = "18-25", limit = "2MiB"}]', "replication.bandwidth_schedule.0.hours: must be \"HH-HH\" with a start of 00-23"),
    ('bandwidth_schedule = [{hours = "08-18"}]', "replication.bandwidth_schedule.0.limit: required field is missing"),
    ('bandwidth_schedule = [{limit = "1KiB"}]', "replication.bandwidth_schedule.0.limit: must be 0 (unlimited) or at least 64KiB per second, got 1KiB"),
    ('bandwidth_schedule = [{limit = 0, speed = 1}]', "replication.bandwidth_schedule.0.speed: unknown field"),
    ("spool = 1", "replication.spool: unknown field"),
])
def test_replication_refusals(field: str, expected: str) -> None:
    """Each bad replication field names `replication.<field>` and what is allowed."""
    assert f"s.toml: {expected}" in refusal(GOOD + "[replication]\n" + field)
