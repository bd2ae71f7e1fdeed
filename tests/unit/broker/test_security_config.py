"""Security settings: the loopback-only default, key settings all-or-nothing and
loaded at validation, `zstream keys generate`, client credentials."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from tests.support.security import ClusterKeys
from zstream.broker import ConfigError, load_config
from zstream.broker._config import is_loopback
from zstream.broker.cli import main
from zstream.clients import Credentials, CredentialsError


def _load(**flags: object) -> object:
    return load_config(environ={}, flags={"broker_id": 1, "data_dir": "d", **flags})


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> ClusterKeys:
    return ClusterKeys.make(tmp_path_factory.mktemp("keys"), (1, 2))


def _key_flags(keys: ClusterKeys, own: str = "1") -> dict[str, object]:
    return {
        "curve_secret_key_file": str(keys.secret_file(own)),
        "peer_keys_dir": str(keys.peer_keys_dir),
        "client_secret_key_file": str(keys.secret_file("server")),
        "client_credentials_dir": str(keys.client_credentials_dir),
    }


@pytest.mark.parametrize(
    ("addr", "loopback"),
    [
        ("tcp://127.0.0.1:1", True),
        ("tcp://127.9.8.7:1", True),
        ("tcp://localhost:1", True),
        ("tcp://0.0.0.0:1", False),
        ("tcp://*:1", False),
        ("tcp://10.1.2.3:1", False),
        ("tcp://broker-1.example:1", False),
    ],
)
def test_is_loopback(addr: str, loopback: bool) -> None:
    assert is_loopback(addr) is loopback


@pytest.mark.parametrize("setting", ["client_addr", "peer_addr"])
def test_binding_outside_loopback_without_security_is_refused(setting: str) -> None:
    with pytest.raises(ConfigError, match=f"{setting} tcp://0.0.0.0:7000 is outside 127") as info:
        _load(**{setting: "0.0.0.0:7000"})
    assert "\n" not in str(info.value)
    assert "--insecure" in str(info.value)


def test_insecure_allows_it_and_reads_from_the_environment() -> None:
    config = load_config(
        environ={"ZSTREAM_INSECURE": "true"},
        flags={"broker_id": 1, "data_dir": "d", "client_addr": "0.0.0.0:7000"},
    )
    assert config.insecure
    assert not config.secure
    assert config.peer_security() is None


def test_key_settings_are_all_or_nothing(keys: ClusterKeys) -> None:
    partial = _key_flags(keys)
    del partial["client_credentials_dir"]
    with pytest.raises(ConfigError, match="missing \\['client_credentials_dir'\\]"):
        _load(**partial)


def test_full_key_settings_turn_security_on_and_allow_any_address(keys: ClusterKeys) -> None:
    config = load_config(
        environ={},
        flags={
            "broker_id": 1,
            "data_dir": "d",
            "client_addr": "0.0.0.0:7000",
            "super_users": "admin,ops",
            **_key_flags(keys),
        },
    )
    assert config.secure
    assert config.super_users == ("admin", "ops")
    peer = config.peer_security()
    assert peer is not None
    assert peer.public_key == keys.pair("1")[0]
    client = config.client_security()
    assert client is not None
    assert client.public_key == keys.pair("server")[0]


def test_a_secret_key_the_peer_key_set_does_not_name_for_this_broker(keys: ClusterKeys) -> None:
    with pytest.raises(ConfigError, match=r"not .*/1\.key"):
        _load(**_key_flags(keys, own="2"))


def test_a_missing_key_file_is_one_line(keys: ClusterKeys, tmp_path: Path) -> None:
    flags = {**_key_flags(keys), "client_secret_key_file": str(tmp_path / "nope.key_secret")}
    with pytest.raises(ConfigError, match="cannot read key file") as info:
        _load(**flags)
    assert "\n" not in str(info.value)


def test_super_users_must_be_principal_names() -> None:
    with pytest.raises(ConfigError, match="super_users"):
        _load(super_users="ok,not ok")


def test_keys_generate_writes_a_pair_with_a_private_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["keys", "generate", "alice", "--out", str(tmp_path / "k")]) == 0
    public, secret = tmp_path / "k" / "alice.key", tmp_path / "k" / "alice.key_secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    assert "secret-key" not in public.read_text()
    assert "secret-key" in secret.read_text()
    assert str(secret) in capsys.readouterr().out
    # Never overwritten by accident; a bad name is a one-line error.
    assert main(["keys", "generate", "alice", "--out", str(tmp_path / "k")]) == 1
    assert "exists" in capsys.readouterr().err
    assert main(["keys", "generate", "../evil", "--out", str(tmp_path)]) == 1
    assert capsys.readouterr().err.count("\n") == 1
    before = secret.read_text()
    assert main(["keys", "generate", "alice", "--out", str(tmp_path / "k"), "--force"]) == 0
    assert secret.read_text() != before


def test_client_credentials_need_both_files(keys: ClusterKeys) -> None:
    assert Credentials.resolve(None, None) is None
    with pytest.raises(CredentialsError, match="both"):
        Credentials.resolve(keys.secret_file("alice"), None)
    with pytest.raises(CredentialsError, match="no secret key"):
        Credentials.load(keys.secret_dir / "alice.key", keys.server_key)
    creds = Credentials.resolve(keys.secret_file("alice"), keys.server_key)
    assert creds is not None
    assert creds.server_key == keys.pair("server")[0]


def test_a_server_key_directory_holds_server_key(keys: ClusterKeys, tmp_path: Path) -> None:
    (tmp_path / "server.key").write_bytes(keys.server_key.read_bytes())
    creds = Credentials.load(keys.secret_file("alice"), tmp_path)
    assert creds.server_key == keys.pair("server")[0]
    (tmp_path / "server.key").rename(tmp_path / "only.key")
    assert Credentials.load(keys.secret_file("alice"), tmp_path).server_key == creds.server_key
    (tmp_path / "other.key").write_bytes(keys.server_key.read_bytes())
    with pytest.raises(CredentialsError, match="exactly one"):
        Credentials.load(keys.secret_file("alice"), tmp_path)


def test_cli_reports_bad_credentials_in_one_line(
    keys: ClusterKeys, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        [
            "topic",
            "list",
            "--credentials",
            str(tmp_path / "missing.key_secret"),
            "--server-key",
            str(keys.server_key),
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1
    assert "cannot read key file" in err
