"""Encoding of Raft values with msgpack. Pure functions; bad input raises CodecError.

Byte formats (msgpack; "uint" is a msgpack non-negative integer < 2**64, "bin" a
msgpack bin, "bool" a msgpack true/false; no checksum here: the transport frames and
the storage records carry their own CRC32C)::

    message header (message_to_wire / message_from_wire), an array of 13:
      [0]  version      uint   always 1
      [1]  type         uint   MessageType
      [2]  to           uint   NodeId
      [3]  frm          uint   NodeId
      [4]  term         uint
      [5]  log_term     uint
      [6]  index        uint
      [7]  commit       uint
      [8]  reject       bool
      [9]  reject_hint  uint
      [10] context      bin
      [11] entries      array of 3*n uint: term, index, type (EntryType) of each entry,
                        in order; entry i's data is payload frame i
      [12] snapshot     nil | array of 4: [index uint, term uint, conf_state, data bin]

    payload frames: one bin (or separate transport frame) per entry, in order.

    encode_message: array of 2: [header, array of n bin payloads]

    conf_state: array of 5: [voters, learners, voters_outgoing, learners_next: each an
      array of uint NodeId, auto_leave bool]
    conf_change: array of 2*n uint: change type (ConfChangeType), node id, ...,
      followed by one bin, the context, only when the context is not empty (an odd
      length means a context is present)
    hard_state: array of 3 uint: [term, vote, commit]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import msgpack

from ._errors import CodecError
from ._types import (
    ConfChange,
    ConfChangeType,
    ConfState,
    Entry,
    EntryType,
    HardState,
    Message,
    MessageType,
    Snapshot,
    SnapshotMetadata,
)

VERSION = 1
_U64 = 1 << 64
_ENTRY_TYPES = tuple(EntryType)
_MESSAGE_TYPES = tuple(MessageType)
_CC_TYPES = tuple(ConfChangeType)
_MAX_IDS = 1 << 16  # members of one group: far more than any real configuration


def _unpack(buf: bytes | memoryview) -> Any:
    try:
        return msgpack.unpackb(buf, raw=True, use_list=True, strict_map_key=True)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise CodecError(f"not valid msgpack: {exc}") from exc


def _uint(v: Any, what: str) -> int:
    if type(v) is not int or not 0 <= v < _U64:
        raise CodecError(f"{what}: expected uint, got {type(v).__name__}")
    return v


def _bin(v: Any, what: str) -> bytes:
    if type(v) is not bytes:
        raise CodecError(f"{what}: expected bin, got {type(v).__name__}")
    return v


def _bool(v: Any, what: str) -> bool:
    if type(v) is not bool:
        raise CodecError(f"{what}: expected bool, got {type(v).__name__}")
    return v


def _array(v: Any, what: str, n: int | None = None) -> list[Any]:
    if type(v) is not list:
        raise CodecError(f"{what}: expected array, got {type(v).__name__}")
    if n is not None and len(v) != n:
        raise CodecError(f"{what}: expected {n} items, got {len(v)}")
    return v


def _enum(table: tuple[Any, ...], v: Any, what: str) -> Any:
    i = _uint(v, what)
    if i >= len(table):
        raise CodecError(f"{what}: unknown value {i}")
    return table[i]


# -- configuration values -------------------------------------------------------------------


def _ids_to_wire(ids: frozenset[int]) -> list[int]:
    return sorted(ids)


def _ids_from_wire(v: Any, what: str) -> frozenset[int]:
    arr = _array(v, what)
    if len(arr) > _MAX_IDS:
        raise CodecError(f"{what}: too many ids")
    return frozenset(_uint(x, what) for x in arr)


def _conf_state_to_wire(cs: ConfState) -> list[Any]:
    return [
        _ids_to_wire(cs.voters),
        _ids_to_wire(cs.learners),
        _ids_to_wire(cs.voters_outgoing),
        _ids_to_wire(cs.learners_next),
        cs.auto_leave,
    ]


def _conf_state_from_wire(v: Any) -> ConfState:
    a = _array(v, "conf_state", 5)
    return ConfState(
        voters=_ids_from_wire(a[0], "voters"),
        learners=_ids_from_wire(a[1], "learners"),
        voters_outgoing=_ids_from_wire(a[2], "voters_outgoing"),
        learners_next=_ids_from_wire(a[3], "learners_next"),
        auto_leave=_bool(a[4], "auto_leave"),
    )


def encode_conf_state(cs: ConfState) -> bytes:
    return msgpack.packb(_conf_state_to_wire(cs))  # type: ignore[no-any-return]


def decode_conf_state(buf: bytes | memoryview) -> ConfState:
    return _conf_state_from_wire(_unpack(buf))


def encode_conf_change(cc: ConfChange) -> bytes:
    flat: list[int] = []
    for typ, nid in cc.changes:
        flat.append(int(typ))
        flat.append(nid)
    if cc.context:
        return msgpack.packb([*flat, cc.context], use_bin_type=True)  # type: ignore[no-any-return]
    return msgpack.packb(flat)  # type: ignore[no-any-return]


def decode_conf_change(buf: bytes | memoryview) -> ConfChange:
    a = _array(_unpack(buf), "conf_change")
    context = b""
    if len(a) % 2:
        context = _bin(a.pop(), "conf_change context")
        if not context:
            raise CodecError("conf_change: an empty context is never encoded")
    changes = tuple(
        (_enum(_CC_TYPES, a[i], "change type"), _uint(a[i + 1], "node id"))
        for i in range(0, len(a), 2)
    )
    return ConfChange(changes, context)


def encode_hard_state(hs: HardState) -> bytes:
    return msgpack.packb([hs.term, hs.vote, hs.commit])  # type: ignore[no-any-return]


def decode_hard_state(buf: bytes | memoryview) -> HardState:
    a = _array(_unpack(buf), "hard_state", 3)
    return HardState(_uint(a[0], "term"), _uint(a[1], "vote"), _uint(a[2], "commit"))


# -- messages -------------------------------------------------------------------------------


def message_to_wire(msg: Message) -> tuple[list[Any], list[bytes]]:
    """The header (a msgpack-able list) and the entries' payloads, so a transport can
    send the payloads as separate frames without copying them."""
    ents = msg.entries
    meta: list[int] = []
    for e in ents:
        meta += (e.term, e.index, int(e.type))
    snap = msg.snapshot
    snap_w: list[Any] | None = None
    if snap is not None:
        m = snap.metadata
        snap_w = [m.index, m.term, _conf_state_to_wire(m.conf_state), snap.data]
    header = [
        VERSION,
        int(msg.type),
        msg.to,
        msg.frm,
        msg.term,
        msg.log_term,
        msg.index,
        msg.commit,
        msg.reject,
        msg.reject_hint,
        msg.context,
        meta,
        snap_w,
    ]
    return header, [e.data for e in ents]


def message_from_wire(header: list[Any], payloads: Sequence[bytes | memoryview]) -> Message:
    h = _array(header, "message header", 13)
    if _uint(h[0], "version") != VERSION:
        raise CodecError(f"unsupported message version {h[0]}")
    meta = _array(h[11], "entries")
    n = len(meta) // 3
    if len(meta) != 3 * n or n != len(payloads):
        raise CodecError(f"entries: {len(meta)} metadata items for {len(payloads)} payloads")
    entries: tuple[Entry, ...] = ()
    if n:
        # Validated and built with C-level loops (map/min/max): no Python frame per
        # entry besides the Entry constructor itself.
        if not set(map(type, meta)) <= {int} or min(meta) < 0 or max(meta) >= _U64:
            raise CodecError("entries: metadata must be uints")
        if max(meta[2::3]) >= len(_ENTRY_TYPES):
            raise CodecError("entries: unknown entry type")
        datas: Sequence[bytes] = (
            cast("Sequence[bytes]", payloads)
            if set(map(type, payloads)) <= {bytes}
            else list(map(bytes, payloads))
        )
        entries = tuple(
            map(Entry, meta[0::3], meta[1::3], map(_ENTRY_TYPES.__getitem__, meta[2::3]), datas)
        )
    snap: Snapshot | None = None
    if h[12] is not None:
        s = _array(h[12], "snapshot", 4)
        snap = Snapshot(
            SnapshotMetadata(
                _uint(s[0], "snapshot index"),
                _uint(s[1], "snapshot term"),
                _conf_state_from_wire(s[2]),
            ),
            _bin(s[3], "snapshot data"),
        )
    return Message(
        type=_enum(_MESSAGE_TYPES, h[1], "message type"),
        to=_uint(h[2], "to"),
        frm=_uint(h[3], "frm"),
        term=_uint(h[4], "term"),
        log_term=_uint(h[5], "log_term"),
        index=_uint(h[6], "index"),
        entries=entries,
        commit=_uint(h[7], "commit"),
        reject=_bool(h[8], "reject"),
        reject_hint=_uint(h[9], "reject_hint"),
        snapshot=snap,
        context=_bin(h[10], "context"),
    )


def encode_message(msg: Message) -> bytes:
    header, payloads = message_to_wire(msg)
    return msgpack.packb([header, payloads], use_bin_type=True)  # type: ignore[no-any-return]


def decode_message(buf: bytes | memoryview) -> Message:
    a = _array(_unpack(buf), "message", 2)
    payloads = _array(a[1], "payloads")
    for p in payloads:
        _bin(p, "payload")
    return message_from_wire(a[0], payloads)
