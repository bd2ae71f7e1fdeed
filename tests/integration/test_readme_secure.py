"""The README's secure quick start, as a new user would run it: `zstream dev
--secure` in one terminal (on free ports here), and the second-terminal block run
exactly as written, from the same directory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ManagedProcess, wait_until
from tests.support.readme import readme_commands

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def test_readme_secure_quick_start_works_as_written(tmp_path: Path) -> None:
    commands = readme_commands("quickstart-secure")
    assert any("client.env" in c for c in commands)
    text = (ROOT / "README.md").read_text()
    assert "zstream dev --secure --data-dir zstream-dev-data" in text
    # The block runs where the user started `zstream dev --secure`: the repository,
    # whose .venv the block activates. Here: a scratch directory with that .venv.
    (tmp_path / ".venv").symlink_to(Path(sys.prefix))
    dev = ManagedProcess(
        "dev",
        # As the README starts it, on free ports.
        [
            sys.executable,
            "-m",
            "zstream.broker.cli",
            "dev",
            "--secure",
            "--data-dir",
            "zstream-dev-data",
            "--port-base=0",
        ],
        tmp_path,
        cwd=tmp_path,
    )
    dev.start()
    try:
        wait_until(
            lambda: "ready" in dev.output() or not dev.running(), 90, "zstream dev to be ready"
        )
        assert dev.running(), dev.tail()
        out = dev.output()
        assert "export ZSTREAM_CREDENTIALS=" in out, out
        assert "export ZSTREAM_SERVER_KEY=" in out, out
        # Nothing from the test's own environment may stand in for the block's exports.
        env = {k: v for k, v in os.environ.items() if not k.startswith("ZSTREAM_")}
        script = "set -euo pipefail\n" + "\n".join(f"echo '>>> {c}'\n{c}" for c in commands)
        result = subprocess.run(
            ["bash", "-c", script],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        consumed = result.stdout.split(">>> zstream consume", 1)[1].splitlines()[1:3]
        assert consumed == ["signed", "sealed"], result.stdout
        assert "traceback" not in (result.stdout + result.stderr).lower()
        secret = tmp_path / "zstream-dev-data" / "keys" / "admin.key_secret"
        assert secret.stat().st_mode & 0o077 == 0
        dev.signal(signal.SIGINT)  # Ctrl-C
        wait_until(lambda: not dev.running(), 40, "zstream dev to stop")
        assert dev.returncode() == 0
    finally:
        dev.stop(grace_s=90)
