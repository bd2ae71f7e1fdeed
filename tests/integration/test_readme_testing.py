"""The README's "Testing your code with zstream" example, run as written: the block is
written to a file of its own outside this repository and run by pytest there, with
the configuration the README names (pytest-asyncio's auto mode) and warnings as
errors, the plugin coming from zstream's ``pytest11`` entry point."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.readme import readme_blocks

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def readme_example() -> str:
    (block,) = readme_blocks("testing-example", "python")
    return block


def test_example_is_ten_lines_or_so() -> None:
    assert len([line for line in readme_example().splitlines() if line.strip()]) <= 12


def test_readme_testing_example_runs_as_written(tmp_path: Path) -> None:
    assert not tmp_path.is_relative_to(ROOT)
    (tmp_path / "test_example.py").write_text(readme_example())
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
        "filterwarnings = error\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "test_example.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "test_example.py::test_an_order_goes_through PASSED" in result.stdout
