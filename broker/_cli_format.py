"""How ``zstream produce`` reads records and ``zstream consume`` prints them. Pure:
bytes and strings in, bytes and records out; no sockets, no clients.

Input (``zstream produce``)
---------------------------
``lines`` (the default): one record per line, the line ending (``\\n`` or ``\\r\\n``)
stripped; the line's bytes are the value as they are. With ``--key-separator SEP`` the
line is split at the first SEP: the bytes before are the key, the bytes after the
value; a line without SEP is a record with no key. ``--header K=V`` (repeatable) adds
header K with value V (UTF-8) to every record.

``jsonl``: one JSON object per line (blank lines are skipped)::

    {"key": "user-1", "value": "hello", "headers": {"source": "cli"}, "partition": 0}

- ``value`` (required): a JSON string is taken as text and encoded as UTF-8; any other
  JSON value (object, array, number, true/false) is stored as its compact JSON text, so
  JSON payloads need no quoting. ``null`` is refused (a record always has a value).
- ``key``: a string (UTF-8) or null/absent for no key.
- ``headers``: an object of string names to string values (UTF-8).
- ``partition``: an integer; it wins over ``--partition`` for that record.
- Bytes that are not text travel base64-encoded, in ``key_b64``, ``value_b64`` and
  ``headers_b64`` (name -> base64 value) instead of ``key``, ``value`` and
  ``headers``: the shape ``--output json`` prints, so the output of ``zstream consume
  --output json`` can be fed back to ``zstream produce --input jsonl``.
- ``--header`` flags add to each record's own headers.

Output (``zstream consume``)
----------------------------
The default: each value followed by a newline (the bytes as stored).

``--format TEMPLATE`` (as kcat's ``-f``; nothing is added at the end, so finish with
``\\n``)::

    %s  value              %S  value length in bytes
    %k  key (empty if none) %K  key length in bytes, -1 if there is no key
    %t  topic              %p  partition            %o  offset
    %T  timestamp (ms since the epoch)
    %h  headers as name=value pairs joined by "," (empty if none)
    %%  a literal %        \\n newline  \\t tab  \\r carriage return  \\\\ backslash

Keys, values and header values are written as the raw bytes. Any other ``%`` or
backslash sequence is an error, reported before anything is read.

``--output json``: one JSON object per record per line::

    {"topic": "t", "partition": 0, "offset": 7, "timestamp_ms": 1733500000000,
     "key": "user-1" | null, "value": "hello", "headers": {"source": "cli"}}

A key, value or header value that is not valid UTF-8 is given base64-encoded under
``key_b64`` / ``value_b64`` / ``headers_b64`` instead (``headers`` then holds only the
text ones; either map is left out when it would be empty). A header name that appears
twice keeps its last value.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
from collections.abc import Sequence
from typing import Any

__all__ = [
    "FormatError",
    "InputRecord",
    "Template",
    "parse_header_flags",
    "parse_json_line",
    "parse_text_line",
    "record_json",
]


class FormatError(ValueError):
    """A bad template, header flag or input line; the message says what and where."""


@dataclasses.dataclass(frozen=True, slots=True)
class InputRecord:
    """One record read from ``zstream produce``'s input."""

    value: bytes
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()
    partition: int | None = None


# -- input ------------------------------------------------------------------------------


def parse_header_flags(flags: Sequence[str]) -> tuple[tuple[str, bytes], ...]:
    """``--header K=V`` flags as (name, UTF-8 value) pairs, in order."""
    out = []
    for flag in flags:
        name, sep, value = flag.partition("=")
        if not sep or not name:
            raise FormatError(f"--header {flag!r}: expected NAME=VALUE")
        out.append((name, value.encode()))
    return tuple(out)


def parse_text_line(
    line: bytes, separator: bytes | None, headers: tuple[tuple[str, bytes], ...] = ()
) -> InputRecord:
    """One ``lines`` input line (its line ending already stripped)."""
    if separator:
        key, sep, value = line.partition(separator)
        if sep:
            return InputRecord(value, key, headers)
    return InputRecord(line, None, headers)


def _b64(text: object, what: str) -> bytes:
    if not isinstance(text, str):
        raise FormatError(f"{what} must be a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise FormatError(f"{what} is not valid base64: {exc}") from None


def _text_map(value: object, what: str) -> dict[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise FormatError(f"{what} must be an object of string names to string values")
    return value


def parse_json_line(line: bytes, headers: tuple[tuple[str, bytes], ...] = ()) -> InputRecord | None:
    """One ``jsonl`` input line; None for a blank line. See the module docstring."""
    if not line.strip():
        return None
    try:
        doc = json.loads(line)
    except (ValueError, UnicodeDecodeError) as exc:
        raise FormatError(f"not a JSON object: {exc}") from None
    if not isinstance(doc, dict):
        raise FormatError(f"expected a JSON object, got {type(doc).__name__}")
    if "value_b64" in doc:
        value = _b64(doc["value_b64"], "value_b64")
    elif "value" not in doc or doc["value"] is None:
        raise FormatError('a record needs a "value" (or "value_b64")')
    elif isinstance(doc["value"], str):
        value = doc["value"].encode()
    else:
        value = json.dumps(doc["value"], separators=(",", ":")).encode()
    key: bytes | None = None
    if "key_b64" in doc:
        key = _b64(doc["key_b64"], "key_b64")
    elif doc.get("key") is not None:
        if not isinstance(doc["key"], str):
            raise FormatError('"key" must be a string or null')
        key = doc["key"].encode()
    own: list[tuple[str, bytes]] = []
    if "headers" in doc:
        own.extend((k, v.encode()) for k, v in _text_map(doc["headers"], '"headers"').items())
    if "headers_b64" in doc:
        raw = _text_map(doc["headers_b64"], '"headers_b64"')
        own.extend((k, _b64(v, f"headers_b64[{k!r}]")) for k, v in raw.items())
    partition = doc.get("partition")
    if partition is not None and (type(partition) is not int or partition < 0):
        raise FormatError('"partition" must be an integer >= 0')
    return InputRecord(value, key, (*own, *headers), partition)


# -- output -----------------------------------------------------------------------------

_FIELDS = frozenset("sSkKtpoTh")
_ESCAPES = {"n": b"\n", "t": b"\t", "r": b"\r", "\\": b"\\"}


class Template:
    """A ``--format`` template, parsed once (see the module docstring)."""

    def __init__(self, text: str) -> None:
        self.text = text
        pieces: list[bytes | str] = []  # bytes: literal; str: a field letter
        literal = bytearray()
        i = 0
        while i < len(text):
            ch = text[i]
            nxt = text[i + 1] if i + 1 < len(text) else ""
            if ch == "%":
                if nxt == "%":
                    literal += b"%"
                elif nxt in _FIELDS and nxt:
                    if literal:
                        pieces.append(bytes(literal))
                        literal.clear()
                    pieces.append(nxt)
                else:
                    raise FormatError(f"--format: unknown field %{nxt} at position {i}")
                i += 2
            elif ch == "\\":
                if nxt not in _ESCAPES or not nxt:
                    raise FormatError(f"--format: unknown escape \\{nxt} at position {i}")
                literal += _ESCAPES[nxt]
                i += 2
            else:
                literal += ch.encode()
                i += 1
        if literal:
            pieces.append(bytes(literal))
        self._pieces = tuple(pieces)

    def render(
        self,
        topic: str,
        partition: int,
        offset: int,
        timestamp_ms: int,
        key: bytes | None,
        value: bytes,
        headers: Sequence[tuple[str, bytes]],
    ) -> bytes:
        out = bytearray()
        for piece in self._pieces:
            if isinstance(piece, bytes):
                out += piece
            elif piece == "s":
                out += value
            elif piece == "S":
                out += str(len(value)).encode()
            elif piece == "k":
                out += key or b""
            elif piece == "K":
                out += str(-1 if key is None else len(key)).encode()
            elif piece == "t":
                out += topic.encode()
            elif piece == "p":
                out += str(partition).encode()
            elif piece == "o":
                out += str(offset).encode()
            elif piece == "T":
                out += str(timestamp_ms).encode()
            else:  # "h"
                out += b",".join(name.encode() + b"=" + v for name, v in headers)
        return bytes(out)


def _text_or_b64(
    doc: dict[str, Any], name: str, data: bytes | None, *, null_ok: bool = False
) -> None:
    if data is None:
        if null_ok:
            doc[name] = None
        return
    try:
        doc[name] = data.decode()
    except UnicodeDecodeError:
        doc[f"{name}_b64"] = base64.b64encode(data).decode()


def record_json(
    topic: str,
    partition: int,
    offset: int,
    timestamp_ms: int,
    key: bytes | None,
    value: bytes,
    headers: Sequence[tuple[str, bytes]],
) -> bytes:
    """One ``--output json`` line (newline included)."""
    doc: dict[str, Any] = {
        "topic": topic,
        "partition": partition,
        "offset": offset,
        "timestamp_ms": timestamp_ms,
    }
    _text_or_b64(doc, "key", key, null_ok=True)
    _text_or_b64(doc, "value", value)
    text: dict[str, str] = {}
    raw: dict[str, str] = {}
    for name, v in headers:
        try:
            text[name] = v.decode()
            raw.pop(name, None)
        except UnicodeDecodeError:
            raw[name] = base64.b64encode(v).decode()
            text.pop(name, None)
    if text:
        doc["headers"] = text
    if raw:
        doc["headers_b64"] = raw
    return json.dumps(doc, ensure_ascii=False).encode() + b"\n"
