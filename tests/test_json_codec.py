"""The JSON codec: strict where the standard library is lenient, compact and UTF-8 out."""

from __future__ import annotations

import json

import pytest

from scoreboard import json_codec

NOT_JSON = [
    b"",
    b"{",
    b'{"a": 1,}',
    b"{'a': 1}",
    b"NaN",
    b'{"a": NaN}',
    b'{"a": Infinity}',
    b'{"a": -Infinity}',
    b'{"a": 1e400}',
    b'{"a": 1} x',
    b"\xef\xbb\xbf{}",  # a UTF-8 byte-order mark
    b"\xff\xfe{\x00}\x00",  # UTF-16
    '{"a": 1}'.encode("utf-32"),
    b'{"a": "\xff"}',  # not UTF-8
    b'{"a": "\\ud800"}',  # a lone surrogate
    b"[" * 1025 + b"]" * 1025,
]


@pytest.mark.parametrize("raw", NOT_JSON)
def test_what_is_not_strict_json_is_refused(raw: bytes) -> None:
    with pytest.raises(json_codec.JSONDecodeError):
        json_codec.loads(raw)
    assert issubclass(json_codec.JSONDecodeError, ValueError)


def test_what_the_standard_library_reads_the_same() -> None:
    raw = b' {"b": [1, -2, 3.5, true, false, null], "a": "\\u00e9t\\u00e9 \xe2\x82\xac"}\n'
    assert json_codec.loads(raw) == json.loads(raw)
    assert json_codec.loads(raw.decode()) == json.loads(raw)
    # A repeated key keeps its last value, as in the standard library.
    assert json_codec.loads(b'{"a": 1, "a": 2}') == {"a": 2}
    deep = json_codec.loads(b"[" * 1024 + b"]" * 1024)
    for _ in range(1023):
        (deep,) = deep
    assert deep == []


def test_integers_past_64_bits_are_floats_that_no_integer_field_takes() -> None:
    assert json_codec.loads(b"18446744073709551615") == 2**64 - 1
    assert json_codec.loads(b"-9223372036854775808") == -(2**63)
    assert isinstance(json_codec.loads(b"18446744073709551616"), float)
    assert isinstance(json_codec.loads(b"-9223372036854775809"), float)


def test_output_is_compact_utf8() -> None:
    value = {"b": 1, "a": ["é", None, True]}
    assert json_codec.dumps(value) == '{"b":1,"a":["é",null,true]}'.encode()
    assert json_codec.dumps(value, sort_keys=True) == '{"a":["é",null,true],"b":1}'.encode()
    assert json_codec.dumps_text(value) == '{"b":1,"a":["é",null,true]}'
