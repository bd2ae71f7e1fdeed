"""The dependency arrows of DESIGN.md: storage <- replication <- broker and
storage <- clients <- broker. Nothing imports broker.

The packages are imported as ``zstream.<package>``; a bare ``import storage``
would only work inside this repository and is refused too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("storage", "replication", "clients", "broker")
ALLOWED: dict[str, set[str]] = {
    "storage": set(),
    "replication": {"storage"},
    "clients": {"storage"},
    "broker": {"storage", "replication", "clients"},
}


def _imported_packages(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(_package_of(alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(_package_of(node.module))
            if node.module == "zstream":  # zstream itself re-exports clients
                found.update(a.name if a.name in PACKAGES else "clients" for a in node.names)
    return found & (set(PACKAGES) | {f"bare {p}" for p in PACKAGES})


def _package_of(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "zstream":
        return parts[1] if len(parts) > 1 else ""
    return f"bare {parts[0]}"


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_only_what_it_may(package: str) -> None:
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"package {package} has no modules"
    for path in files:
        bad = _imported_packages(path) - ALLOWED[package] - {package}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_checker_sees_imports(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import zstream.broker.cli\nfrom zstream.replication import x\n"
        "from zstream import storage, Producer\nimport os\nimport clients\n"
    )
    assert _imported_packages(probe) == {
        "broker",
        "replication",
        "storage",
        "clients",
        "bare clients",
    }


def test_zstream_package_links_each_layer() -> None:
    for package in PACKAGES:
        link = ROOT / "zstream" / package
        assert link.is_symlink(), f"zstream/{package} should link to ../{package}"
        assert link.resolve() == (ROOT / package).resolve()
