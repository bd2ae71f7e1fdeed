"""Each library package exports a deliberate, complete and importable surface."""

from __future__ import annotations

import importlib
import inspect
import types

import pytest

LIBRARY_PACKAGES = ("zstream", "zstream.clients", "zstream.storage", "zstream.testing")


@pytest.mark.parametrize("name", LIBRARY_PACKAGES)
def test_all_is_sorted_unique_and_resolves(name: str) -> None:
    package = importlib.import_module(name)
    exported = list(package.__all__)
    assert exported == sorted(exported), "keep __all__ sorted"
    assert len(set(exported)) == len(exported)
    for symbol in exported:
        assert hasattr(package, symbol), f"{name}.{symbol} is in __all__ but missing"


@pytest.mark.parametrize("name", LIBRARY_PACKAGES)
def test_every_public_name_is_exported(name: str) -> None:
    package = importlib.import_module(name)
    public = {
        symbol
        for symbol, value in vars(package).items()
        if not symbol.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert public <= set(package.__all__), f"unexported: {sorted(public - set(package.__all__))}"


@pytest.mark.parametrize("name", LIBRARY_PACKAGES)
def test_exported_objects_live_in_private_modules(name: str) -> None:
    package = importlib.import_module(name)
    for symbol in package.__all__:
        module = inspect.getmodule(getattr(package, symbol))
        if module is None:  # constants and aliases carry no module
            continue
        tail = module.__name__.rsplit(".", 1)[-1]
        assert module.__name__ == name or tail.startswith("_"), (
            f"{name}.{symbol} comes from public module {module.__name__}"
        )
