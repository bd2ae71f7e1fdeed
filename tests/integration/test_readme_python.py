"""The README's Python producer and consumer examples, run exactly as written
against three real brokers from zstream.testing, as `zstream dev` runs them
(ZSTREAM_BOOTSTRAP set as the README tells the user)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.readme import readme_blocks
from zstream.testing import ClusterFactory

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def readme_examples() -> list[str]:
    """The producer and the consumer example."""
    return readme_blocks("quickstart-python", "python", 2)


def test_examples_are_ten_lines_or_so() -> None:
    for block in readme_examples():
        assert len([line for line in block.splitlines() if line.strip()]) <= 12


def test_readme_producer_and_consumer_run_as_written(
    zstream_cluster_factory: ClusterFactory,
) -> None:
    producer, consumer = readme_examples()
    # Three brokers, as `zstream dev` runs them: the example's replication_factor=3 fits.
    three = zstream_cluster_factory(3)
    env = {**os.environ, "ZSTREAM_BOOTSTRAP": three.bootstrap}

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

    sent = run(producer).strip()
    assert re.fullmatch(r"\[\((\d), 0\), \(\1, 1\), \(\1, 2\)\]", sent), sent
    lines = run(consumer).splitlines()
    partition = sent[2]
    assert lines == [f"{partition} {i} hello {i}" for i in range(3)]
