"""The generic clients' typing, checked by mypy itself (``mypy.api``): the examples in
tests/support/typing_examples.py pass --strict as written, and with their ``type:
ignore`` comments removed exactly the lines marked ``MUST FAIL`` fail, each with the
error code its comment names."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from mypy import api

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "tests" / "support" / "typing_examples.py"
_IGNORE = re.compile(r"\s*# type: ignore\[([a-z-]+)\]\s*# MUST FAIL$")
_ERROR = re.compile(r":(\d+): error: .*\[([a-z-]+)\]$")


def _mypy(path: Path) -> tuple[str, int]:
    stdout, stderr, status = api.run(
        ["--config-file", str(ROOT / "pyproject.toml"), "--no-incremental", str(path)]
    )
    return stdout + stderr, status


@pytest.mark.slow
def test_examples_pass_and_the_marked_lines_fail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)  # mypy finds zstream/ from the repository root
    output, status = _mypy(EXAMPLES)
    assert status == 0, output

    expected: dict[int, str] = {}
    stripped: list[str] = []
    for number, line in enumerate(EXAMPLES.read_text().splitlines(), start=1):
        match = _IGNORE.search(line)
        if match:
            expected[number] = match.group(1)
            line = line[: match.start()]
        stripped.append(line)
    assert len(expected) >= 5, "the examples lost their MUST FAIL lines"
    unchecked = tmp_path / "typing_examples_unchecked.py"
    unchecked.write_text("\n".join(stripped) + "\n")

    output, status = _mypy(unchecked)
    assert status == 1, output
    found = {
        int(m.group(1)): m.group(2)
        for line in output.splitlines()
        if (m := _ERROR.search(line)) is not None
    }
    assert found == expected, output
