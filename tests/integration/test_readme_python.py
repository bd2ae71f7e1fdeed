"""The README's Python producer and consumer examples, run exactly as written
against a real broker (ZSTREAM_BOOTSTRAP set as the README tells the user)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from zstream.testing import Broker

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MARKER = "<!-- quickstart-python:"


def readme_examples() -> list[str]:
    text = (ROOT / "README.md").read_text()
    after = text[text.index(MARKER) :]
    blocks = re.findall(r"```python\n(.*?)```", after, re.S)[:2]
    assert len(blocks) == 2, "a producer and a consumer block after the marker"
    return blocks


def test_examples_are_ten_lines_or_so() -> None:
    for block in readme_examples():
        assert len([line for line in block.splitlines() if line.strip()]) <= 12


def test_readme_producer_and_consumer_run_as_written(tmp_path: Path) -> None:
    producer, consumer = readme_examples()
    broker = Broker(tmp_path, 1, log_level="WARNING")
    broker.start()
    try:
        env = {**os.environ, "ZSTREAM_BOOTSTRAP": broker.bootstrap}

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

        # replication_factor=3 does not fit one broker: create the topic first
        # as the dev cluster would have it, with what one broker can hold.
        run(
            "import asyncio, os\nfrom zstream import Admin\n"
            "async def m():\n"
            "    async with Admin(os.environ['ZSTREAM_BOOTSTRAP']) as a:\n"
            "        await a.create_topic('greetings', partitions=3, replication_factor=1)\n"
            "asyncio.run(m())\n"
        )
        sent = run(producer).strip()
        assert re.fullmatch(r"\[\((\d), 0\), \(\1, 1\), \(\1, 2\)\]", sent), sent
        lines = run(consumer).splitlines()
        partition = sent[2]
        assert lines == [f"{partition} {i} hello {i}" for i in range(3)]
    finally:
        broker.stop()
