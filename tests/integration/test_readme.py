"""The README's quick start, tried as a new user would: `zstream dev` in one
terminal (as `make run` starts it, on free ports here), and every command of the
second-terminal block run exactly as the README writes it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ManagedProcess, wait_until
from tests.support.readme import readme_commands

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_readme_quick_start_works_as_written(tmp_path: Path) -> None:
    commands = readme_commands("quickstart-client")
    assert any("produce" in c for c in commands)
    assert any("consume" in c for c in commands)
    dev = ManagedProcess(
        "dev",
        [
            sys.executable,
            "-m",
            "zstream.broker.cli",
            "dev",
            "--port-base=0",
            f"--data-dir={tmp_path / 'dev'}",
        ],
        tmp_path,
        cwd=ROOT,
    )
    dev.start()
    try:
        wait_until(
            lambda: "ready" in dev.output() or not dev.running(), 60, "zstream dev to be ready"
        )
        assert dev.running(), dev.tail()
        found = re.search(r"export ZSTREAM_BOOTSTRAP=(\S+)", dev.output())
        assert found is not None, dev.output()
        env = {**os.environ, "ZSTREAM_BOOTSTRAP": found.group(1)}
        script = "set -euo pipefail\n" + "\n".join(f"echo '>>> {c}'\n{c}" for c in commands)
        result = subprocess.run(
            ["bash", "-c", script],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        consumed = result.stdout.split(">>> zstream consume", 1)[1].splitlines()[1:3]
        assert consumed == ["hello", "world"], result.stdout
        # Two `consume --group readers --max 5` runs: the second went on from the first's
        # commit, so the group's committed offsets add up to ten records.
        described = result.stdout.split(">>> zstream group describe readers", 1)[1]
        described = described.split(">>>", 1)[0]
        rows = [line.split() for line in described.splitlines() if line.startswith("  demo ")]
        assert len(rows) == 3, described
        assert sum(int(row[4]) for row in rows) == 10, described
        assert "traceback" not in (result.stdout + result.stderr).lower()
        dev.signal(signal.SIGINT)  # Ctrl-C
        wait_until(lambda: not dev.running(), 40, "zstream dev to stop")
        assert dev.returncode() == 0
        assert "stopped" in dev.output()
    finally:
        # zstream dev gives each child up to 30 s to stop; killing it sooner would
        # orphan its brokers and etcd.
        dev.stop(grace_s=90)
