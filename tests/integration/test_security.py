"""Security at the edges: confinement against crafted frames, pairing, and the API token."""

from __future__ import annotations

import os
from pathlib import Path

import httpx
import pytest

from standby.engine.channel import connect
from standby.engine.identity import Identity
from standby.engine.session import PeerFailure, Session
from standby.protocol import (
    Entries,
    EntriesEnd,
    Entry,
    FileBegin,
    MakeDir,
    Message,
    Remove,
    Role,
    SyncBegin,
    SyncMethod,
)

from .harness import EngineProcess, write_scenario

pytestmark = pytest.mark.integration


def _rogue_session(alpha: EngineProcess, beta: EngineProcess) -> tuple[Session, list[Entry]]:
    """A sync session to beta that holds alpha's real key, as a compromised master would,
    opened up to the end of beta's listing."""
    identity = Identity.load_or_create(alpha.home, "alpha")
    host, port = beta.peer_address.rsplit(":", 1)
    channel = connect((host, int(port)), identity, expected_fingerprint=beta.fingerprint,
                      timeout=10)
    session = Session(channel, Role.INITIATOR, "alpha")
    session.open("sync")
    session.send(SyncBegin(scenario="files", epoch=1, root=0, method=SyncMethod.BLOCK,
                           block_size=65536, range_blocks=256))
    entries: list[Entry] = []
    while True:
        message = session.recv()
        if isinstance(message, Entries):
            entries.extend(message.entries)
        elif isinstance(message, EntriesEnd):
            return session, entries


def _drain(session: Session) -> None:
    """Read until the peer ends the session."""
    while True:
        session.recv()


HOSTILE: list[tuple[str, Message]] = [
    ("dot-dot", FileBegin(file_id=1, path=b"../escape.txt", size=5, whole=True)),
    ("nested dot-dot", FileBegin(file_id=1, path=b"a/../../escape.txt", size=5, whole=True)),
    ("absolute", FileBegin(file_id=1, path=b"/tmp/escape.txt", size=5, whole=True)),
    ("through planted symlink", FileBegin(file_id=1, path=b"planted/escape.txt", size=5,
                                          whole=True)),
    ("mkdir through symlink", MakeDir(path=b"planted/newdir", mode=0o755)),
    ("remove through symlink", Remove(path=b"planted/victim.txt")),
]


@pytest.mark.parametrize(("case", "message"), HOSTILE, ids=[c for c, _ in HOSTILE])
def test_crafted_paths_are_refused(engines: tuple[EngineProcess, EngineProcess],
                                   tmp_path: Path, case: str, message: Message) -> None:
    """A frame naming a path outside the replica root ends the session with SB3002, writes
    nothing outside, and the engine keeps serving."""
    alpha, beta = engines
    master_root, replica_root = tmp_path / "master", tmp_path / "replica"
    master_root.mkdir()
    (master_root / "file.txt").write_text("data\n")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.txt").write_text("must survive\n")
    replica_root.mkdir()
    (replica_root / "planted").symlink_to(outside)
    alpha.cli("scenario", "add", str(write_scenario(tmp_path / "s.toml", "files", "alpha", "beta",
                                                    [(master_root, replica_root)])))
    before = sorted(os.listdir(tmp_path))

    session, _ = _rogue_session(alpha, beta)
    session.send(message)
    with pytest.raises(PeerFailure) as failure:
        _drain(session)
    session.close()

    assert failure.value.code == "SB3002"
    assert sorted(os.listdir(tmp_path)) == before
    assert sorted(os.listdir(outside)) == ["victim.txt"]
    assert [e for e in beta.events() if e["code"] == "SB3002"]
    alpha.cli("scenario", "start", "files")  # the replica engine still serves
    assert (replica_root / "file.txt").read_text() == "data\n"


def test_listing_never_follows_symlinks_out(engines: tuple[EngineProcess, EngineProcess],
                                            tmp_path: Path) -> None:
    """The replica's listing reports a planted symlink as a link, not the tree it points at."""
    alpha, beta = engines
    master_root, replica_root = tmp_path / "master", tmp_path / "replica"
    master_root.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not yours\n")
    replica_root.mkdir()
    (replica_root / "planted").symlink_to(outside)
    alpha.cli("scenario", "add", str(write_scenario(tmp_path / "s.toml", "files", "alpha", "beta",
                                                    [(master_root, replica_root)])))
    session, entries = _rogue_session(alpha, beta)
    session.close()
    assert [e.path for e in entries] == [b"planted"]


def test_unpaired_engine_is_refused(engines: tuple[EngineProcess, EngineProcess],
                                    tmp_path: Path) -> None:
    """An engine beta never paired can learn beta's certificate but not talk to it."""
    _, beta = engines
    gamma = EngineProcess(tmp_path / "gamma-home", "gamma", tmp_path)
    gamma.start()
    try:
        gamma.cli("peer", "add", "beta", beta.peer_address, beta.fingerprint)
        refused = [e for e in beta.events() if e["code"] == "SB1102"]
        assert refused, beta.events()
        root = tmp_path / "g-master"
        root.mkdir()
        path = write_scenario(tmp_path / "g.toml", "stolen", "gamma", "beta",
                              [(root, tmp_path / "g-replica")])
        result = gamma.cli("scenario", "add", str(path), check=False)
        assert result.returncode != 0
        assert "refused" in result.stderr
        assert not (tmp_path / "g-replica").exists()
        assert gamma.api("GET", "/v1/scenarios") == []
    finally:
        gamma.stop()


def test_wrong_fingerprint_is_refused(engines: tuple[EngineProcess, EngineProcess]) -> None:
    """Pairing with a fingerprint the peer does not hold fails and says so."""
    alpha, beta = engines
    wrong = "ab" * 32
    result = alpha.cli("peer", "add", "beta2", beta.peer_address, wrong, check=False)
    assert result.returncode != 0
    assert "SB1103" in [e["code"] for e in alpha.events()]


def test_api_requires_token(engines: tuple[EngineProcess, EngineProcess]) -> None:
    """The API answers nothing without the token kept in the engine's home."""
    alpha, _ = engines
    url = alpha.info["api_url"] + "/v1/scenarios"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(url, headers={"Authorization": f"Bearer {alpha.token}"}).status_code == 200
    assert os.stat(alpha.home / "api-token").st_mode & 0o777 == 0o600


def test_bad_scenario_file_names_the_field(engines: tuple[EngineProcess, EngineProcess],
                                           tmp_path: Path) -> None:
    """A scenario with a wrong value is refused with the file, the field and what is allowed,
    and nothing is stored."""
    alpha, _ = engines
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "files"\nmaster = "alpha"\nreplica = "beta"\n'
                   '[[roots]]\nmaster = "/srv/a"\nreplica = "/srv/b"\n'
                   '[sync]\nmethod = "blok"\n')
    result = alpha.cli("scenario", "add", str(bad), check=False)
    assert result.returncode == 2
    assert "bad.toml: sync.method:" in result.stderr
    assert "'file' or 'block'" in result.stderr
    typo = tmp_path / "typo.toml"
    typo.write_text('name = "files"\nmaster = "alpha"\nreplica = "beta"\n'
                    '[[roots]]\nmastr = "/srv/a"\nreplica = "/srv/b"\n')
    result = alpha.cli("scenario", "add", str(typo), check=False)
    assert result.returncode == 2
    assert "typo.toml: roots.0.mastr: unknown field" in result.stderr
    assert alpha.api("GET", "/v1/scenarios") == []
