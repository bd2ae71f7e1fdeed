"""BrokerConfig: precedence of file < environment < flags, and rejection of nonsense."""

from __future__ import annotations

from pathlib import Path

import pytest

from zstream.broker import BrokerConfig, ConfigError, load_config


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "broker.toml"
    path.write_text(text)
    return path


def test_defaults_need_only_id_and_data_dir(tmp_path: Path) -> None:
    cfg = load_config(environ={}, flags={"broker_id": 1, "data_dir": str(tmp_path)})
    assert cfg.broker_id == 1
    assert cfg.data_dir == tmp_path
    assert cfg.discovery == "embedded"
    assert cfg.fsync is True
    assert cfg.auto_rebalance is False  # moves cost bandwidth: the operator decides


def test_auto_rebalance_from_file_environment_and_flag(tmp_path: Path) -> None:
    base = {"broker_id": 1, "data_dir": str(tmp_path)}
    path = _toml(tmp_path, "auto_rebalance = true\n")
    assert load_config(config_file=path, environ={}, flags=base).auto_rebalance is True
    env = {"ZSTREAM_AUTO_REBALANCE": "true"}
    assert load_config(environ=env, flags=base).auto_rebalance is True
    flags = {**base, "auto_rebalance": True}
    assert load_config(environ={}, flags=flags).auto_rebalance is True
    with pytest.raises(ConfigError, match="auto_rebalance"):
        load_config(environ={"ZSTREAM_AUTO_REBALANCE": "maybe"}, flags=base)


def test_flags_beat_environment_beats_file(tmp_path: Path) -> None:
    path = _toml(
        tmp_path,
        'broker_id = 1\ndata_dir = "/from/file"\nclient_addr = "127.0.0.1:1111"\n'
        "max_in_flight_per_client = 5\nbootstrap_expect = 3\n",
    )
    env = {"ZSTREAM_CLIENT_ADDR": "127.0.0.1:2222", "ZSTREAM_MAX_IN_FLIGHT_PER_CLIENT": "7"}
    cfg = load_config(config_file=path, environ=env, flags={"client_addr": "127.0.0.1:3333"})
    assert cfg.client_addr == "tcp://127.0.0.1:3333"  # flag
    assert cfg.max_in_flight_per_client == 7  # environment
    assert cfg.bootstrap_expect == 3  # file
    assert cfg.data_dir == Path("/from/file")


def test_unset_flags_do_not_override(tmp_path: Path) -> None:
    env = {"ZSTREAM_BROKER_ID": "4", "ZSTREAM_DATA_DIR": str(tmp_path)}
    cfg = load_config(environ=env, flags={"broker_id": None, "metrics_addr": None})
    assert cfg.broker_id == 4


def test_lists_parse_from_strings(tmp_path: Path) -> None:
    env = {"ZSTREAM_ETCD_ENDPOINTS": "127.0.0.1:2379, 127.0.0.1:2479"}
    cfg = load_config(environ=env, flags={"broker_id": 1, "data_dir": str(tmp_path)})
    assert cfg.etcd_endpoints == ("127.0.0.1:2379", "127.0.0.1:2479")
    assert cfg.discovery == "etcd"
    peers = "1@127.0.0.1:7101@127.0.0.1:7201,2@127.0.0.1:7102@127.0.0.1:7202"
    cfg = load_config(environ={}, flags={"broker_id": 2, "data_dir": "d", "peers": peers})
    assert [p.broker_id for p in cfg.peers] == [1, 2]
    assert cfg.peers[1].peer_addr == "tcp://127.0.0.1:7202"


@pytest.mark.parametrize(
    ("flags", "complaint"),
    [
        ({"broker_id": 0}, "broker_id"),
        ({"broker_id": "x"}, "broker_id"),
        ({"client_addr": "nowhere"}, "client_addr"),
        ({"client_addr": "127.0.0.1:70000"}, "client_addr"),
        ({"bootstrap_expect": 0}, "bootstrap_expect"),
        ({"max_message_bytes": 10}, "max_message_bytes"),
        ({"fsync": "maybe"}, "fsync"),
        ({"log_level": "LOUD"}, "log_level"),
        ({"peers": "2@127.0.0.1:1@127.0.0.1:2"}, "include this broker"),
        ({"peers": "1@a:1"}, "peers"),
        ({"etcd_endpoints": "h:1", "peers": "1@a:1@a:2"}, "not both"),
        ({"no_such_setting": 1}, "unknown setting"),
    ],
)
def test_nonsense_is_rejected(flags: dict[str, object], complaint: str) -> None:
    with pytest.raises(ConfigError, match=complaint):
        load_config(environ={}, flags={"broker_id": 1, "data_dir": "d", **flags})


def test_missing_required_and_bad_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="broker_id is required"):
        load_config(environ={}, flags={"data_dir": "d"})
    with pytest.raises(ConfigError, match="unknown setting 'brokerid'"):
        load_config(config_file=_toml(tmp_path, "brokerid = 1\n"), environ={})
    with pytest.raises(ConfigError, match="config file"):
        load_config(config_file=_toml(tmp_path, "broker_id = \n"), environ={})
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(config_file=tmp_path / "missing.toml", environ={})


def test_config_is_frozen(tmp_path: Path) -> None:
    cfg = BrokerConfig(broker_id=1, data_dir=tmp_path)
    with pytest.raises(AttributeError):
        cfg.broker_id = 2  # type: ignore[misc]
