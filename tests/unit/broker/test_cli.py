"""The zstream CLI: help everywhere, user errors as one line without a traceback."""

from __future__ import annotations

import json

import pytest

from tests.support import free_port
from tests.unit.broker.fakes import LiveFrontend
from zstream import storage
from zstream.broker._controller import register_broker_command
from zstream.broker.cli import build_parser, default_dev_data_dir, main
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
    ["group", "reset-offsets"],
    ["group", "delete"],
    ["partition"],
    ["partition", "reassign"],
    ["cluster"],
    ["cluster", "rebalance"],
    ["partition", "reassignments"],
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


def test_reset_offsets_needs_exactly_one_target(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        ["group", "reset-offsets", "g", "--topic", "t"],
        ["group", "reset-offsets", "g", "--topic", "t", "--to-earliest", "--to-latest"],
        ["group", "reset-offsets", "g", "--to-earliest"],
        ["group", "reset-offsets", "g", "--topic", "t", "--to-offset", "-1"],
    ):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2, argv
    capsys.readouterr()


def test_produce_flags_that_do_not_mix_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["produce", "t", "--count", "3", "--header", "a=b"]) == 1
    assert "--count sends synthetic values" in capsys.readouterr().err
    assert main(["produce", "t", "--header", "nosep", "--bootstrap", "127.0.0.1:1"]) == 1
    assert "expected NAME=VALUE" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["consume", "t", "--format", "%s", "--output", "json"])
    capsys.readouterr()


def test_reset_offsets_and_consume_after_retention_moved_the_start(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with LiveFrontend() as live:
        backend = live.backend
        live.run(backend.create_topic(CreateTopicRequest("t", 2, 1)))
        for p in range(2):
            part = backend.partition("t", p)
            batch = storage.encode_batch([(b"k", b"v%d" % i) for i in range(10)])
            live.run(part.produce(batch, Acks.ALL, 1))
            part.start = 4  # the fetch probe at offset 0 now gets OFFSET_OUT_OF_RANGE
        reset = ["group", "reset-offsets", "g", "--topic", "t", "--bootstrap", live.addr]
        assert main([*reset, "--to-earliest"]) == 0
        assert backend.controller.fetch_offsets("g", None) == {"offsets": {"t": [[0, 4], [1, 4]]}}
        assert main([*reset, "--to-offset", "1"]) == 0  # clamped up to the start
        assert backend.controller.fetch_offsets("g", None) == {"offsets": {"t": [[0, 4], [1, 4]]}}
        capsys.readouterr()
        consume = ["consume", "t", "--partition", "1", "--from-beginning", "--bootstrap", live.addr]
        assert main([*consume, "--format", r"%o:%k:%s\n"]) == 0
        assert capsys.readouterr().out.splitlines() == [f"{o}:k:v{o}" for o in range(4, 10)]


def test_dev_data_goes_to_a_documented_place(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ZSTREAM_DEV_DATA", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", "/somewhere/share")
    assert str(default_dev_data_dir()) == "/somewhere/share/zstream/dev"
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", "/home/u")
    assert str(default_dev_data_dir()) == "/home/u/.local/share/zstream/dev"
    monkeypatch.setenv("ZSTREAM_DEV_DATA", "/data/dev")
    assert str(default_dev_data_dir()) == "/data/dev"
    assert build_parser().parse_args(["dev"]).data_dir is None  # resolved at run time


def test_partition_reassign_list_and_broker_decommission(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with LiveFrontend() as live:
        backend = live.backend
        live.run(backend.create_topic(CreateTopicRequest("orders", 1, 1)))
        backend._propose(register_broker_command(2, "tcp://b:1", "tcp://b:2"))
        addr = ["--bootstrap", live.addr]
        assert main(["partition", "reassignments", *addr]) == 0
        assert capsys.readouterr().out == "no reassignments in progress\n"
        assert main(["partition", "reassign", "orders", "0", "--replicas", "2,1", *addr]) == 0
        assert capsys.readouterr().out == "orders/0: moving 1 -> 2,1\n"
        assert main(["partition", "reassignments", *addr]) == 0
        rows = capsys.readouterr().out.splitlines()
        assert rows[1].split() == ["orders", "0", "1", "2,1", "2", "-"]
        # Another target while one is in progress: one line, exit 1.
        assert main(["partition", "reassign", "orders", "0", "--replicas", "2", *addr]) == 1
        assert "already being reassigned" in capsys.readouterr().err
        assert main(["broker", "decommission", "2", *addr]) == 0
        assert "broker 2: decommissioning" in capsys.readouterr().out
        assert main(["broker", "decommission", *addr]) == 1
        assert "needs the broker ID" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["partition", "reassign", "orders", "0", "--replicas", "0"])


def test_cluster_rebalance_dry_run_text_and_json(capsys: pytest.CaptureFixture[str]) -> None:
    with LiveFrontend() as live:
        backend = live.backend
        live.run(backend.create_topic(CreateTopicRequest("orders", 2, 1)))
        addr = ["--bootstrap", live.addr]
        assert main(["cluster", "rebalance", "--dry-run", *addr]) == 0
        assert capsys.readouterr().out == "balanced: nothing to move\n"
        backend._propose(register_broker_command(2, "tcp://b:1", "tcp://b:2"))
        assert main(["cluster", "rebalance", "--dry-run", *addr]) == 0
        assert capsys.readouterr().out.splitlines() == [
            "orders/0: would move 1 -> 2",
            "orders/0: leader 1 -> 2",
        ]
        assert backend.controller.rebalance == ""  # a dry run changes nothing
        assert main(["cluster", "rebalance", *addr, "--output", "json"]) == 0
        doc = json.loads(capsys.readouterr().out)
        assert doc["dry_run"] is False
        assert doc["moves"] == [{"topic": "orders", "partition": 0, "replicas": [1], "target": [2]}]
        assert doc["leader_transfers"] == [{"topic": "orders", "partition": 0, "from": 1, "to": 2}]
        assert [p["preferred"] for p in doc["preferred_leaders"]] == [2, 1]
        assert backend.controller.rebalance == "moving"


def test_topic_alter(capsys: pytest.CaptureFixture[str]) -> None:
    with LiveFrontend() as live:
        live.run(live.backend.create_topic(CreateTopicRequest("orders", 1, 1)))
        addr = ["--bootstrap", live.addr]
        assert main(["topic", "alter", "orders", "--set", "retention_ms=5000", *addr]) == 0
        assert "configs=retention_ms=5000" in capsys.readouterr().out
        assert main(["topic", "alter", "orders", "--set", "nope=1", *addr]) == 1
        assert "unknown topic config" in capsys.readouterr().err
        assert main(["topic", "add-partitions", "orders", "--count", "3", *addr]) == 0
        assert "topic orders:" in capsys.readouterr().out
        assert len(live.backend.controller.topics["orders"].partitions) == 3
        assert main(["topic", "add-partitions", "orders", "--count", "2", *addr]) == 1
        assert "must be larger" in capsys.readouterr().err


def test_output_json_shapes(capsys: pytest.CaptureFixture[str]) -> None:
    with LiveFrontend() as live:
        live.run(live.backend.create_topic(CreateTopicRequest("orders", 2, 1)))
        addr = ["--bootstrap", live.addr, "--output", "json"]
        assert main(["topic", "list", *addr]) == 0
        assert json.loads(capsys.readouterr().out) == {"topics": ["orders"]}
        assert main(["partition", "reassignments", *addr]) == 0
        assert json.loads(capsys.readouterr().out) == {"reassignments": []}
        assert main(["status", *addr]) == 0
        status = json.loads(capsys.readouterr().out)
        assert set(status) == {"brokers", "controller", "topics", "reassignments"}
        assert status["reassignments"] == []
        assert [t["name"] for t in status["topics"]] == ["orders"]
        assert status["brokers"][0]["id"] == 1
        live.run(live.backend.group_heartbeat(GroupHeartbeatRequest("g", "m-1", ["orders"])))
        assert main(["group", "list", *addr]) == 0
        assert json.loads(capsys.readouterr().out) == {"groups": ["g"]}
        assert main(["group", "describe", "g", *addr]) == 0
        group = json.loads(capsys.readouterr().out)
        assert group["group"] == "g"
        assert [m["member_id"] for m in group["members"]] == ["m-1"]
        assert {row["partition"] for row in group["partitions"]} == {0, 1}
