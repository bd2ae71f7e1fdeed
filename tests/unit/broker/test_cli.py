"""The zstream CLI: help everywhere, user errors as one line without a traceback."""

from __future__ import annotations

import pytest

from tests.support import free_port
from tests.unit.broker.fakes import LiveFrontend
from zstream import storage
from zstream.broker.cli import build_parser, main
from zstream.clients import (
    Acks,
    CommitOffsetsRequest,
    CreateTopicRequest,
    GroupHeartbeatRequest,
)

SUBCOMMANDS = [
    ["broker"],
    ["dev"],
    ["keys"],
    ["keys", "generate"],
    ["topic"],
    ["topic", "create"],
    ["topic", "list"],
    ["topic", "describe"],
    ["topic", "delete"],
    ["produce"],
    ["consume"],
    ["status"],
    ["group"],
    ["group", "list"],
    ["group", "describe"],
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


def test_group_list_and_describe(capsys: pytest.CaptureFixture[str]) -> None:
    with LiveFrontend() as live:
        backend = live.backend
        live.run(backend.create_topic(CreateTopicRequest("orders", 3, 1)))
        batch = storage.encode_batch([(None, b"x")] * 10)
        for p in range(3):
            live.run(backend.partition("orders", p).produce(batch, Acks.ALL, 1))
        live.run(backend.group_heartbeat(GroupHeartbeatRequest("billing", "m-1", ["orders"])))
        owned = {"orders": [0, 1, 2]}
        live.run(backend.group_heartbeat(GroupHeartbeatRequest("billing", "m-1", owned=owned)))
        live.run(backend.group_heartbeat(GroupHeartbeatRequest("billing", "m-2", ["orders"])))
        commit = CommitOffsetsRequest("billing", {"orders": [[0, 4]]}, member_id="m-1")
        live.run(backend.commit_offsets(commit))

        assert main(["group", "list", "--bootstrap", live.addr]) == 0
        assert capsys.readouterr().out == "billing\n"

        assert main(["group", "describe", "billing", "--bootstrap", live.addr]) == 0
        out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("group billing: epoch=")
    assert out[0].endswith("members=2")
    (m1,) = [line for line in out if line.strip().startswith("m-1 ")]
    (m2,) = [line for line in out if line.strip().startswith("m-2 ")]
    assert "orders/0" in m1  # m-1 still owns everything it has not released
    assert "waiting for release: orders/" in m2
    rows = {int(line.split()[1]): line.split() for line in out if line.startswith("  orders ")}
    assert sorted(rows) == [0, 1, 2]
    assert rows[0][4:] == ["4", "10", "6"]  # committed 4 of 10: lag 6
    assert rows[1][5:] == ["10", "10"]  # no commit: lag from the log start
    assert {rows[p][2] for p in rows} == {"m-1", "m-2"}  # the targets
    assert {rows[p][3] for p in rows} == {"m-1"}  # who reads: m-1 has released nothing


def test_describe_unknown_group_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with LiveFrontend() as live:
        assert main(["group", "describe", "nope", "--bootstrap", live.addr]) == 1
    err = capsys.readouterr().err
    assert err == "zstream group: error: unknown group 'nope'\n"
