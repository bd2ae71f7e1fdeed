"""The README's code blocks, for the tests that run them as written."""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["readme_blocks", "readme_commands"]

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_blocks(marker: str, lang: str, count: int = 1) -> list[str]:
    """The first ``count`` fenced ``lang`` blocks after the HTML comment that starts
    with ``<!-- marker:`` (the comment names the test that runs them)."""
    text = README.read_text()
    start = text.find(f"<!-- {marker}:")
    assert start >= 0, f"README.md has no <!-- {marker}: --> marker"
    blocks = re.findall(rf"```{lang}\n(.*?)```", text[start:], re.S)[:count]
    assert len(blocks) == count, f"{count} {lang} block(s) after the {marker} marker"
    return blocks


def readme_commands(marker: str) -> list[str]:
    """The shell commands of the sh block after ``marker``, comments and blank lines out."""
    (block,) = readme_blocks(marker, "sh")
    return [line for line in block.splitlines() if line and not line.startswith("#")]
