"""Small helpers shared by the core and the storage: byte accounting of entry lists."""

from __future__ import annotations

from collections.abc import Sequence
from operator import attrgetter
from typing import TypeVar

from ._types import Entry

_data = attrgetter("data")

S = TypeVar("S", bound=Sequence[Entry])


def entries_size(ents: Sequence[Entry]) -> int:
    """Total payload bytes of ``ents`` (runs in C: no per-entry Python frame)."""
    return sum(map(len, map(_data, ents)))


def limit_size(ents: list[Entry], max_bytes: int) -> list[Entry]:
    """The longest prefix of ``ents`` whose payloads fit in ``max_bytes``, but at least
    one entry when ``ents`` is not empty."""
    if len(ents) <= 1 or entries_size(ents) <= max_bytes:
        return ents
    size = len(ents[0].data)
    for i in range(1, len(ents)):
        size += len(ents[i].data)
        if size > max_bytes:
            return ents[:i]
    return ents  # pragma: no cover - the total fits, handled above
