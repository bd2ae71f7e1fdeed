"""The zstream CLI: help everywhere, user errors as one line without a traceback."""

from __future__ import annotations

import pytest

from broker.cli import build_parser, main
from tests.support import free_port

SUBCOMMANDS = [
    ["broker"],
    ["dev"],
    ["topic"],
    ["topic", "create"],
    ["topic", "list"],
    ["topic", "describe"],
    ["topic", "delete"],
    ["produce"],
    ["consume"],
    ["status"],
]


@pytest.mark.parametrize("words", SUBCOMMANDS, ids=" ".join)
def test_every_subcommand_has_help(words: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([*words, "--help"])
    assert info.value.code == 0
    assert "usage: zstream" in capsys.readouterr().out


def test_unreachable_broker_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["topic", "list", "--bootstrap", f"127.0.0.1:{free_port()}"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1
    assert "cannot reach a broker" in err
    assert "Traceback" not in err


def test_bad_broker_config_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["broker", "--id", "1", "--data-dir", "d", "--client-addr", "nowhere"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("zstream broker: error: client_addr")


def test_parser_defaults_to_the_dev_cluster() -> None:
    args = build_parser().parse_args(["status"])
    assert args.bootstrap.startswith("127.0.0.1:7101")
