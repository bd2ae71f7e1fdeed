"""The consumer's batch decoder: a batch's records as msgpack rows, checked whole.

`storage.decode_records` checks each record in a Python loop and builds one object
per record; the consumer only needs the rows msgpack already built (tuples of
``(timestamp_delta_ms, key, value, headers)``, see storage/_batch.py for the layout)
and builds objects only for what the application asks for (`Consumer.getmany_values`
none at all). So the checks here run column by column in C (``map``/``set``), and
only records that carry headers are looked at one by one. The CRC32C is always
verified. Whatever this refuses, `storage.decode_records` refuses too, and it is
asked for the error message, so both name the same fault.
"""

from __future__ import annotations

from operator import itemgetter
from typing import Any

import msgpack

from zstream import storage
from zstream.clients._protocol import Buffer

__all__ = ["Rows", "decode_rows"]

# One record as msgpack decodes it: (timestamp_delta_ms, key, value, headers).
Row = tuple[int, bytes | None, bytes, tuple[tuple[str, bytes], ...]]
Rows = tuple[Row, ...]

DELTA, KEY, VALUE, HEADERS = (itemgetter(i) for i in range(4))
_ROW_TYPES = {tuple}
_ROW_LENGTHS = {4}
_INT = {int}
_BYTES = {bytes}
_KEY_TYPES = {bytes, type(None)}
_UNPACK_ERRORS = (ValueError, TypeError, OverflowError, msgpack.UnpackException)


def decode_rows(buf: Buffer) -> tuple[storage.BatchHeader, Rows]:
    """The header and the rows of the single batch in ``buf``; CorruptBatchError
    (storage's) for anything `storage.decode_records` would refuse."""
    header = storage.verify_batch(buf)
    view = memoryview(buf)[storage.BATCH_HEADER_SIZE : header.size_bytes]
    try:
        rows = msgpack.unpackb(view, raw=False, use_list=False, strict_map_key=True)
    except _UNPACK_ERRORS as exc:
        raise storage.CorruptBatchError(f"records are not valid msgpack: {exc}") from exc
    if not _well_formed(rows, header.record_count):
        storage.decode_records(buf)  # raises, naming the record at fault
        raise storage.CorruptBatchError("records are malformed")  # pragma: no cover
    return header, rows


def _well_formed(rows: Any, count: int) -> bool:
    if type(rows) is not tuple or len(rows) != count:
        return False
    if set(map(type, rows)) != _ROW_TYPES or set(map(len, rows)) != _ROW_LENGTHS:
        return False
    if set(map(type, map(DELTA, rows))) != _INT or set(map(type, map(VALUE, rows))) != _BYTES:
        return False
    if not set(map(type, map(KEY, rows))) <= _KEY_TYPES:
        return False
    headers = tuple(map(HEADERS, rows))
    if set(map(type, headers)) != _ROW_TYPES:
        return False
    if any(headers):  # only records with headers cost a Python loop
        for pairs in filter(None, headers):
            for h in pairs:
                if type(h) is not tuple or len(h) != 2:
                    return False
                if type(h[0]) is not str or type(h[1]) is not bytes:
                    return False
    return True
