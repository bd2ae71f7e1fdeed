"""``zstream acl`` and ``zstream quota`` against a live front end (fake backend)."""

from __future__ import annotations

import pytest

from tests.unit.broker.fakes import LiveFrontend
from zstream.broker.cli import main


@pytest.mark.parametrize(
    "words",
    [["acl"], ["acl", "list"], ["acl", "add"], ["acl", "remove"], ["quota"], ["quota", "set"]],
    ids=" ".join,
)
def test_help(words: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main([*words, "--help"])
    assert info.value.code == 0
    assert "usage: zstream" in capsys.readouterr().out


def test_acl_add_list_remove(capsys: pytest.CaptureFixture[str]) -> None:
    with LiveFrontend() as live:
        boot = ["--bootstrap", live.addr]
        add = ["--principal", "alice", "--operation", "produce", "--operation", "describe"]
        assert main(["acl", "add", *add, "--topic-prefix", "orders.", *boot]) == 0
        assert "added 2 of 2" in capsys.readouterr().out
        assert main(["acl", "add", *add, "--topic-prefix", "orders.", *boot]) == 0
        assert "added 0 of 2 entries (2 were there)" in capsys.readouterr().out
        deny = ["--principal", "*", "--operation", "admin", "--deny"]
        assert main(["acl", "add", *deny, "--group", "*", *boot]) == 0
        assert (
            main(["acl", "add", "--principal", "ops", "--operation", "alter", "--cluster", *boot])
            == 0
        )
        capsys.readouterr()
        assert main(["acl", "list", *boot]) == 0
        assert capsys.readouterr().out.splitlines() == [
            "deny * admin group *",
            "allow alice describe topic orders.*",
            "allow alice produce topic orders.*",
            "allow ops alter cluster cluster",
        ]
        assert main(["acl", "list", "--resource-type", "cluster", *boot]) == 0
        assert capsys.readouterr().out == "allow ops alter cluster cluster\n"
        assert main(["acl", "list", "--principal", "alice", *boot]) == 0
        assert len(capsys.readouterr().out.splitlines()) == 2
        assert main(["acl", "remove", *add, "--topic-prefix", "orders.", *boot]) == 0
        assert "removed 2 of 2" in capsys.readouterr().out
        assert len(live.backend.controller.acls) == 2


def test_quota_set_and_list(capsys: pytest.CaptureFixture[str]) -> None:
    with LiveFrontend() as live:
        boot = ["--bootstrap", live.addr]
        assert main(["quota", "set", "alice", "--produce-bytes-per-s", "1000", *boot]) == 0
        assert main(["quota", "set", "*", "--fetch-bytes-per-s", "50", *boot]) == 0
        capsys.readouterr()
        assert main(["quota", "list", *boot]) == 0
        assert capsys.readouterr().out.splitlines() == [
            "* produce=unlimited fetch=50 B/s",
            "alice produce=1000 B/s fetch=unlimited",
        ]
        assert main(["quota", "set", "alice", *boot]) == 0  # no rates: removed
        assert list(live.backend.controller.quotas) == ["*"]


def test_a_bad_entry_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with LiveFrontend() as live:
        bad = ["--principal", "a/b", "--operation", "produce", "--topic", "t"]
        code = main(["acl", "add", *bad, "--bootstrap", live.addr])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("zstream acl: error: invalid principal")
    assert err.count("\n") == 1
