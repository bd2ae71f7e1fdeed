"""Which zstream a broker child process runs (zstream.broker._child)."""

from __future__ import annotations

import os
import site
import sys
from pathlib import Path

import pytest

import zstream
from zstream.broker._child import broker_argv, child_env

ROOT = str(Path(zstream.__file__).absolute().parent.parent)


def test_the_argv_keeps_the_current_directory_off_the_childs_path() -> None:
    assert broker_argv("broker", "--id=1") == [
        sys.executable,
        "-P",
        "-m",
        "zstream.broker.cli",
        "broker",
        "--id=1",
    ]


def test_a_source_tree_goes_first_on_pythonpath_once() -> None:
    env = child_env({"PYTHONPATH": os.pathsep.join(["/elsewhere", ROOT + "/"]), "A": "1"})
    assert env["PYTHONPATH"].split(os.pathsep) == [ROOT, "/elsewhere"]
    assert env["A"] == "1"
    assert child_env({})["PYTHONPATH"] == ROOT


def test_empty_entries_are_dropped_and_relative_ones_made_absolute(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # An empty entry means the child's current directory: the hole -P closes.
    monkeypatch.chdir(tmp_path)
    env = child_env({"PYTHONPATH": os.pathsep.join(["", "rel", "/x", ""])})
    assert env["PYTHONPATH"].split(os.pathsep) == [ROOT, str(tmp_path / "rel"), "/x"]


def test_an_installed_zstream_adds_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(site, "getsitepackages", lambda: [ROOT])
    assert "PYTHONPATH" not in child_env({"A": "1"})
    assert "PYTHONPATH" not in child_env({"PYTHONPATH": os.pathsep})
    assert child_env({"PYTHONPATH": os.pathsep.join(["", "/x"])})["PYTHONPATH"] == "/x"
