"""Serializers: how an application's keys and values become the bytes a record holds
(``Producer(key_serializer=..., value_serializer=...)``) and back
(``Consumer(key_deserializer=..., value_deserializer=...)``).

A serializer is any callable taking one key or value and returning ``bytes``; a
deserializer takes the stored ``bytes`` and returns the application's object, as in
aiokafka. One difference from aiokafka: a record without a key has no key on either
side, so a key serializer is never called with ``None`` and a key deserializer never
sees a missing key (``Record.key`` stays ``None``). That keeps the callables'
types exact: ``Callable[[str], bytes]``, not ``Callable[[str | None], bytes | None]``.

Typing. ``Producer``, ``BlockingProducer``, ``Consumer`` and ``Record`` are generic in
the key type ``K`` and the value type ``V``. Both type variables default to
``bytes`` (PEP 696), so an un-parameterized ``Producer`` / ``Consumer`` / ``Record`` in
an annotation means the ``bytes`` one and ``Producer(bootstrap)`` infers
``Producer[bytes, bytes]``; with serializers the types are inferred from them
(``Consumer(b, value_deserializer=json_deserializer)`` is a ``Consumer[bytes, Any]``)
or given (``Producer[str, dict[str, Any]](b, key_serializer=str.encode, ...)``). The
defaults come from ``typing_extensions.TypeVar``, imported only while type checking
(type checkers ship it); at run time these are plain ``typing.TypeVar`` and nothing is
imported beyond the standard library.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing_extensions import TypeVar

    K = TypeVar("K", default=bytes)
    V = TypeVar("V", default=bytes)
else:
    from typing import TypeVar

    K = TypeVar("K")
    V = TypeVar("V")

__all__ = ["K", "V", "json_deserializer", "json_serializer"]

# What the clients accept: T -> bytes on the way in, bytes -> T on the way out.
Serializer = Callable[[Any], bytes]


def json_serializer(value: Any) -> bytes:
    """``value`` as compact UTF-8 JSON (raises TypeError / ValueError for what JSON
    cannot hold; ``Producer.send`` turns that into a SerializationError)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def json_deserializer(data: bytes) -> Any:
    """The JSON document in ``data`` (UTF-8, as `json_serializer` writes it)."""
    return json.loads(data)
