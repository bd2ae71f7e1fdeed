"""The CLI's record input and output formats (broker/_cli_format.py), without a broker."""

from __future__ import annotations

import base64
import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zstream.broker._cli_format import (
    FormatError,
    InputRecord,
    Template,
    parse_header_flags,
    parse_json_line,
    parse_text_line,
    record_json,
)

HEADERS = (("a", b"1"), ("b", b"\xff"))


def _render(template: str, key: bytes | None = b"k", value: bytes = b"value") -> bytes:
    return Template(template).render("t", 2, 41, 1700, key, value, HEADERS)


def test_template_fields_and_escapes() -> None:
    assert _render(r"%t/%p@%o %T %k=%s (%K,%S) [%h] %%\n") == (
        b"t/2@41 1700 k=value (1,5) [a=1,b=\xff] %\n"
    )
    assert _render(r"\t%k\\\r") == b"\tk\\\r"
    assert _render("%k|%K", key=None) == b"|-1"
    assert _render("no fields") == b"no fields"
    assert _render("") == b""
    assert _render("é%s") == "é".encode() + b"value"


@pytest.mark.parametrize(("template", "fragment"), [
    ("%x", "unknown field %x at position 0"),
    ("ab%", "unknown field % at position 2"),
    (r"\q", "unknown escape"),
    ("x\\", "unknown escape"),
])  # fmt: skip
def test_bad_templates_say_where(template: str, fragment: str) -> None:
    with pytest.raises(FormatError, match=fragment.replace("\\", "\\\\")):
        Template(template)


def test_text_lines_with_and_without_a_key() -> None:
    h = (("src", b"cli"),)
    assert parse_text_line(b"k:v:w", b":", h) == InputRecord(b"v:w", b"k", h)
    assert parse_text_line(b"novalue", b":", h) == InputRecord(b"novalue", None, h)
    assert parse_text_line(b":v", b":") == InputRecord(b"v", b"")
    assert parse_text_line(b"k:v", None) == InputRecord(b"k:v")
    assert parse_text_line(b"k\tv", b"\t") == InputRecord(b"v", b"k")


def test_header_flags() -> None:
    assert parse_header_flags(["a=1", "b=x=y", "c="]) == (("a", b"1"), ("b", b"x=y"), ("c", b""))
    for bad in ("nosep", "=v"):
        with pytest.raises(FormatError, match="NAME=VALUE"):
            parse_header_flags([bad])


def test_json_lines() -> None:
    line = b'{"key": "k", "value": "v\\u00e9", "headers": {"h": "1"}, "partition": 3}'
    assert parse_json_line(line, (("x", b"y"),)) == InputRecord(
        "vé".encode(), b"k", (("h", b"1"), ("x", b"y")), 3
    )
    assert parse_json_line(b'{"value": {"a": [1, 2]}}') == InputRecord(b'{"a":[1,2]}')
    assert parse_json_line(b'{"value": 5, "key": null}') == InputRecord(b"5")
    raw = base64.b64encode(b"\x00\xff").decode()
    doc = {"key_b64": raw, "value_b64": raw, "headers_b64": {"r": raw}}
    assert parse_json_line(json.dumps(doc).encode()) == InputRecord(
        b"\x00\xff", b"\x00\xff", (("r", b"\x00\xff"),)
    )
    assert parse_json_line(b"   ") is None


@pytest.mark.parametrize(("line", "fragment"), [
    (b"{", "not a JSON object"),
    (b"[1]", "expected a JSON object"),
    (b'{"key": "k"}', "needs a \"value\""),
    (b'{"value": null}', "needs a \"value\""),
    (b'{"value": "v", "key": 1}', "\"key\" must be a string"),
    (b'{"value": "v", "headers": {"h": 1}}', "string names to string values"),
    (b'{"value": "v", "headers": []}', "string names to string values"),
    (b'{"value": "v", "partition": -1}', "partition"),
    (b'{"value": "v", "partition": true}', "partition"),
    (b'{"value_b64": "!!"}', "not valid base64"),
    (b'{"value_b64": 3}', "base64 string"),
    (b"\xff", "not a JSON object"),
])  # fmt: skip
def test_bad_json_lines_say_why(line: bytes, fragment: str) -> None:
    with pytest.raises(FormatError, match=fragment):
        parse_json_line(line)


def test_record_json_shape() -> None:
    doc = json.loads(record_json("t", 1, 9, 1700, b"k", b"v", (("a", b"1"), ("a", b"2"))))
    assert doc == {
        "topic": "t", "partition": 1, "offset": 9, "timestamp_ms": 1700,
        "key": "k", "value": "v", "headers": {"a": "2"},
    }  # fmt: skip
    doc = json.loads(record_json("t", 0, 0, 0, None, b"\xff", HEADERS))
    assert doc["key"] is None
    assert "value" not in doc
    assert base64.b64decode(doc["value_b64"]) == b"\xff"
    assert doc["headers"] == {"a": "1"}
    assert base64.b64decode(doc["headers_b64"]["b"]) == b"\xff"
    assert "headers" not in json.loads(record_json("t", 0, 0, 0, None, b"v", ()))


_bytes = st.binary(max_size=20)
_headers = st.lists(
    st.tuples(st.text(min_size=1, max_size=5), _bytes), max_size=4, unique_by=lambda h: h[0]
)


@given(st.one_of(st.none(), _bytes), _bytes, _headers)
def test_json_output_reads_back_as_the_same_record(
    key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]
) -> None:
    line = record_json("t", 0, 5, 17, key, value, headers)
    back = parse_json_line(line)
    assert back is not None
    assert (back.key, back.value, dict(back.headers)) == (key, value, dict(headers))


@given(st.binary(max_size=60))
def test_fuzz_json_lines_raise_only_format_error(line: bytes) -> None:
    with contextlib.suppress(FormatError):
        parse_json_line(line)


@given(st.text(max_size=20))
def test_fuzz_templates_raise_only_format_error(text: str) -> None:
    with contextlib.suppress(FormatError):
        Template(text).render("t", 0, 0, 0, None, b"", HEADERS)
