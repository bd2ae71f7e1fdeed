"""The README's serializer / getmany_values example, run exactly as written against a
real broker (ZSTREAM_BOOTSTRAP set as the README tells the user)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.readme import readme_blocks
from zstream.testing import Cluster

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _example() -> str:
    (block,) = readme_blocks("serde-python", "python")
    return block


def test_readme_serializer_example_runs_as_written(zstream_cluster: Cluster) -> None:
    env = {**os.environ, "ZSTREAM_BOOTSTRAP": zstream_cluster.bootstrap}

    def run(code: str) -> str:
        result = subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    # replication_factor=3 does not fit one broker: create the topic first (the
    # example then finds it there, as on a dev cluster the second time).
    run(
        "import asyncio, os\nfrom zstream import Admin\n"
        "async def m():\n"
        "    async with Admin(os.environ['ZSTREAM_BOOTSTRAP']) as a:\n"
        "        await a.create_topic('orders', partitions=1, replication_factor=1)\n"
        "asyncio.run(m())\n"
    )
    example = _example()
    assert run(example).splitlines() == ["orders {'item': 'tea', 'n': 2}"]
    assert run(example).splitlines() == ["orders {'item': 'tea', 'n': 2}"]  # and again
