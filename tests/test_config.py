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


FULL_HA = """
[ha]
interval = 0.5
timeout = 5
auto_failover = true
arbitration = "witness"
witness = "gamma"
lease_seconds = 3
max_lag = 2.5
reverse_replication = false
addresses = {alpha = "10.0.0.1", beta = "10.0.0.2"}
checks = [
  {kind = "tcp", host = "10.0.0.10", port = 5432},
  {kind = "icmp", host = "10.0.0.10", timeout = 1},
  {kind = "script", command = "/usr/local/bin/probe --quick", timeout = 4.5},
]
workload = {kind = "service", unit = "postgresql.service"}

[[ha.redirect]]
kind = "ip"
address = "10.0.0.10/24"
interface = "eth0"

[[ha.redirect]]
kind = "dns"
server = "10.0.0.53"
zone = "example.com."
name = "db"
key_name = "standby-key"
key_secret = "c2VjcmV0LWtleS1ieXRlcw=="

[[ha.redirect]]
kind = "script"
path = "/etc/standby/redirect.sh"
"""


def test_ha_defaults() -> None:
    """A file without [ha] gets heartbeats every second, a 10 s timeout, and no automatic
    failover: the operator decides."""
    ha = parse_scenario(GOOD, "s.toml").ha
    assert (ha.interval, ha.timeout, ha.auto_failover) == (1.0, 10.0, False)
    assert (ha.arbitration, ha.witness, ha.etcd_endpoints) == ("peer", "", ())
    assert (ha.lease_seconds, ha.max_lag, ha.reverse_replication) == (5, 5.0, True)
    assert (ha.addresses, ha.checks, ha.workload, ha.redirect) == ({}, (), None, ())


def test_full_ha_section() -> None:
    """Every field, with checks, a workload and three redirections, stored and read back."""
    from standby.config import (
        DnsRedirect,
        IcmpCheck,
        IpRedirect,
        ScriptCheck,
        ScriptRedirect,
        ServiceWorkload,
        TcpCheck,
        parse_document,
    )

    scenario = parse_scenario(GOOD + FULL_HA, "s.toml")
    ha = scenario.ha
    assert (ha.interval, ha.timeout, ha.auto_failover, ha.arbitration) == (0.5, 5.0, True,
                                                                           "witness")
    assert (ha.witness, ha.lease_seconds, ha.max_lag, ha.reverse_replication) == ("gamma", 3, 2.5,
                                                                                  False)
    assert ha.addresses == {"alpha": "10.0.0.1", "beta": "10.0.0.2"}
    assert ha.checks == (TcpCheck(kind="tcp", host="10.0.0.10", port=5432, timeout=2.0),
                         IcmpCheck(kind="icmp", host="10.0.0.10", timeout=1.0),
                         ScriptCheck(kind="script", command="/usr/local/bin/probe --quick",
                                     timeout=4.5))
    assert ha.workload == ServiceWorkload(kind="service", unit="postgresql.service")
    assert isinstance(ha.redirect[0], IpRedirect)
    assert ha.redirect[0].address == "10.0.0.10/24"
    assert isinstance(ha.redirect[1], DnsRedirect)
    assert (ha.redirect[1].port, ha.redirect[1].key_algorithm, ha.redirect[1].ttl) == (
        53, "hmac-sha256", 60)
    assert ha.redirect[2] == ScriptRedirect(kind="script", path="/etc/standby/redirect.sh")
    assert parse_document(scenario.document()) == scenario


def test_ha_one_redirect_table_and_commands() -> None:
    """[ha.redirect] alone is one redirection; a service may be given as three commands, and
    etcd needs its endpoints."""
    from standby.config import ScriptWorkload, ServiceWorkload

    scenario = parse_scenario(GOOD + """
[ha]
arbitration = "etcd"
etcd_endpoints = ["http://10.0.0.5:2379", "https://etcd.example:2379/"]
[ha.workload]
kind = "service"
start = "systemctl start web"
stop = "systemctl stop web"
check = "curl -fs http://127.0.0.1/health"
[ha.redirect]
kind = "script"
path = "/srv/redirect"
""", "s.toml")
    assert len(scenario.ha.redirect) == 1
    assert scenario.ha.etcd_endpoints == ("http://10.0.0.5:2379", "https://etcd.example:2379/")
    assert isinstance(scenario.ha.workload, ServiceWorkload)
    assert scenario.ha.workload.check == "curl -fs http://127.0.0.1/health"
    script = parse_scenario(GOOD + '[ha.workload]\nkind = "script"\npath = "/srv/wl//run"',
                            "s.toml")
    assert script.ha.workload == ScriptWorkload(kind="script", path="/srv/wl/run")


DNS = ('[[ha.redirect]]\nkind = "dns"\nserver = "10.0.0.53"\nzone = "example.com"\nname = "db"\n'
       'key_name = "k"\nkey_secret = "c2VjcmV0"\n')


@pytest.mark.parametrize(("extra", "expected"), [
    ("[ha]\ninterval = 0", "ha.interval: must be 0.1 to 60 (seconds), got 0"),
    ('[ha]\ninterval = "1s"', "ha.interval: Input should be a valid number (got '1s')"),
    ("[ha]\ntimeout = 2", "ha.timeout: must be at least 3 x interval (3 s: three missed heartbeats), got 2"),
    ("[ha]\ntimeout = 4000", "ha.timeout: must be at most 3600 (seconds), got 4000"),
    ('[ha]\nauto_failover = "yes"', "ha.auto_failover: Input should be a valid boolean (got 'yes')"),
    ('[ha]\narbitration = "quorum"', "ha.arbitration: Input should be 'peer', 'witness' or 'etcd' (got 'quorum')"),
    ('[ha]\narbitration = "witness"', 'ha.witness: required when arbitration = "witness": the name of the third engine that arbitrates'),
    ('[ha]\nwitness = "bad name"', "ha.witness: must be an engine name: 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit, got 'bad name'"),
    ('[ha]\narbitration = "witness"\nwitness = "beta"', "ha.witness: must be a third engine, not 'beta', which is a host of this scenario"),
    ('[ha]\narbitration = "etcd"', 'ha.etcd_endpoints: at least one is required when arbitration = "etcd", such as ["http://10.0.0.5:2379"]'),
    ('[ha]\netcd_endpoints = ["10.0.0.5:2379"]', 'ha.etcd_endpoints: must be etcd client URLs such as "http://10.0.0.5:2379" (http or https, a host and a port), got \'10.0.0.5:2379\''),
    ('[ha]\netcd_endpoints = ["http://e:99999"]', "ha.etcd_endpoints: must be etcd client URLs"),
    ('[ha]\netcd_endpoints = ["http://e:2379/v3"]', "ha.etcd_endpoints: must be etcd client URLs"),
    ('[ha]\nlease_seconds = 0', "ha.lease_seconds: must be 1 to 3600 (seconds), got 0"),
    ('[ha]\nlease_seconds = 2.5', "ha.lease_seconds: Input should be a valid integer (got 2.5)"),
    ('[ha]\narbitration = "etcd"\netcd_endpoints = ["http://e:2379"]\nlease_seconds = 2', "ha.lease_seconds: must be at least 3 x interval (3 s: three renewals before it runs out), got 2"),
    ('[ha]\narbitration = "witness"\nwitness = "w"\nlease_seconds = 9', "ha.lease_seconds: with a witness, must be at most timeout - 2 x interval (8 s), so that an isolated active host has stopped its workload before a standby may take over, got 9"),
    ("[ha]\nmax_lag = -1", "ha.max_lag: Input should be greater than or equal to 0 (got -1)"),
    ('[ha]\nreverse_replication = 1', "ha.reverse_replication: Input should be a valid boolean (got 1)"),
    ('[ha]\naddresses = {alpha = "10.0.0.300"}', "ha.addresses.alpha: must be an IPv4 or IPv6 address, got '10.0.0.300'"),
    ('[ha]\nreplicas = ["gamma"]', "ha.replicas: unknown field"),  # belongs at the top level
    ('[[ha.checks]]\nkind = "udp"', "ha.checks.0: kind must be one of 'tcp', 'icmp', 'script' (got 'udp')"),
    ('[[ha.checks]]\nhost = "db"', "ha.checks.0: kind is required: it says which kind of entry this is"),
    ('[[ha.checks]]\nkind = "tcp"\nhost = "db"', "ha.checks.0.port: required field is missing"),
    ('[[ha.checks]]\nkind = "tcp"\nhost = "db"\nport = 70000', "ha.checks.0.port: Input should be less than or equal to 65535 (got 70000)"),
    ('[[ha.checks]]\nkind = "icmp"\nhost = ""', "ha.checks.0.host: String should have at least 1 character (got '')"),
    ('[[ha.checks]]\nkind = "script"\ncommand = " "', "ha.checks.0.command: must be a command, got an empty string"),
    ('[[ha.checks]]\nkind = "script"\ncommand = "probe"\ntimeout = 11', "ha.checks.0.timeout: must be at most ha.timeout (10 s): a check must answer before the host is declared dead, got 11"),
    ('[[ha.checks]]\nkind = "tcp"\nhost = "db"\nport = 1\nspeed = 1', "ha.checks.0.speed: unknown field"),
    ('[ha.workload]\nkind = "vm"', "ha.workload: kind must be one of 'service', 'script' (got 'vm')"),
    ('[ha.workload]\nkind = "service"\nunit = "web"', 'ha.workload.unit: must be a systemd unit name such as "web.service", got \'web\''),
    ('[ha.workload]\nkind = "service"\nunit = "web.service"\nstop = "x"', "ha.workload.stop: give either unit or the start, stop and check commands, not both"),
    ('[ha.workload]\nkind = "service"\nstart = "a"\nstop = "b"', "ha.workload.check: required (a command), unless unit names a systemd unit"),
    ('[ha.workload]\nkind = "script"\npath = "run.sh"', "ha.workload.path: must be an absolute path other than '/' without '..', got 'run.sh'"),
    ('[ha.workload]\nkind = "service"\nunit = "a.service"\ntimeout = 0', "ha.workload.timeout: Input should be greater than 0 (got 0)"),
    ('[ha.redirect]\nkind = "ip"\naddress = "10.0.0.10"\ninterface = "eth0"', 'ha.redirect.0.address: must be an address with its prefix length, such as "10.0.0.10/24", got \'10.0.0.10\''),
    ('[ha.redirect]\nkind = "ip"\naddress = "10.0.0.10/33"\ninterface = "eth0"', "ha.redirect.0.address: must be an address with its prefix length"),
    ('[ha.redirect]\nkind = "ip"\naddress = "fd00::10/64"\ninterface = "a/b"', 'ha.redirect.0.interface: must be a network interface name (1-15 characters, no \'/\' or spaces) such as "eth0", got \'a/b\''),
    ('[ha.redirect]\nkind = "ftp"', "ha.redirect.0: kind must be one of 'ip', 'dns', 'script' (got 'ftp')"),
    (DNS, "ha.addresses: no address for alpha, beta: DNS redirection needs the address of every host that may become active"),
    ('[ha]\naddresses = {alpha = "10.0.0.1"}\n' + DNS, "ha.addresses: no address for beta"),
    (DNS.replace("10.0.0.53", "ns1.example"), "ha.redirect.0.server: must be an IPv4 or IPv6 address, got 'ns1.example'"),
    (DNS.replace('"db"', '"db..x"'), 'ha.redirect.0.name: must be a DNS name such as "www.example.com", got \'db..x\''),
    (DNS.replace('"c2VjcmV0"', '"not base64!"'), "ha.redirect.0.key_secret: must be the key's secret in base64, as in the DNS server's key statement (tsig-keygen prints it)"),
    (DNS + 'key_algorithm = "hmac-sha3"', "ha.redirect.0.key_algorithm: Input should be"),
    ('[ha.redirect]\nkind = "script"\npath = "/"', "ha.redirect.0.path: must be an absolute path other than '/' without '..', got '/'"),
])
def test_ha_refusals(extra: str, expected: str) -> None:
    """Each bad [ha] field names `ha.<field>` and what is allowed."""
    assert f"s.toml: {expected}" in refusal(GOOD + extra)


def test_automatic_failover_needs_a_single_replica() -> None:
    """A fan-out or cascade scenario cannot fail over on its own (the other replicas would
    follow no master), with any arbitration; by hand it is fine."""
    fan_out = GOOD.replace('replica = "beta"\n', 'replica = "beta"\nreplicas = ["gamma"]\n', 1)
    assert parse_scenario(fan_out + "[ha]\nauto_failover = false\n", "s.toml").ha.witness == ""
    expected = ("s.toml: ha.auto_failover: automatic failover is not supported yet for a "
                "scenario with several replicas (replicas, cascade): after it, the other "
                "replicas would follow no master")
    assert expected in refusal(fan_out + "[ha]\nauto_failover = true\n")
    witnessed = fan_out + '[ha]\nauto_failover = true\narbitration = "witness"\nwitness = "w"\n'
    assert expected in refusal(witnessed)


def test_a_scenario_turns_around_for_its_other_host() -> None:
    """reoriented(): the replica becomes the master and each root's paths swap with it."""
    scenario = parse_scenario(GOOD, "s.toml")
    turned = scenario.reoriented("beta")
    assert (turned.master, turned.replica) == ("beta", "alpha")
    assert [(r.master, r.replica) for r in turned.roots] == [("/srv/replica/data", "/srv/data")]
    assert turned.reoriented("alpha") == scenario
    assert scenario.reoriented("alpha") is scenario
    with pytest.raises(ValueError, match="'gamma' is not a host"):
        scenario.reoriented("gamma")
    fan_out = GOOD.replace('replica = "beta"\n', 'replica = "beta"\nreplicas = ["gamma"]\n', 1)
    with pytest.raises(ValueError, match="several replicas"):
        parse_scenario(fan_out, "s.toml").reoriented("beta")


def test_lease_rules_apply_only_with_a_lease() -> None:
    """Peer arbitration keeps no lease, so a slow interval does not trip the lease rules."""
    ha = parse_scenario(GOOD + "[ha]\ninterval = 3\ntimeout = 30\n", "s.toml").ha
    assert (ha.interval, ha.timeout, ha.lease_seconds) == (3.0, 30.0, 5)
