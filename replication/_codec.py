"""Codec skeleton (the full implementation follows)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ._types import ConfChange, ConfState, HardState, Message


def encode_message(msg: Message) -> bytes:
    raise NotImplementedError


def decode_message(buf: bytes | memoryview) -> Message:
    raise NotImplementedError


def message_to_wire(msg: Message) -> tuple[list[Any], list[bytes]]:
    raise NotImplementedError


def message_from_wire(header: list[Any], payloads: Sequence[bytes | memoryview]) -> Message:
    raise NotImplementedError


def encode_conf_change(cc: ConfChange) -> bytes:
    raise NotImplementedError


def decode_conf_change(buf: bytes | memoryview) -> ConfChange:
    raise NotImplementedError


def encode_conf_state(cs: ConfState) -> bytes:
    raise NotImplementedError


def decode_conf_state(buf: bytes | memoryview) -> ConfState:
    raise NotImplementedError


def encode_hard_state(hs: HardState) -> bytes:
    raise NotImplementedError


def decode_hard_state(buf: bytes | memoryview) -> HardState:
    raise NotImplementedError
