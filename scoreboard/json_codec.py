"""JSON in and out of the process, with orjson: request and response bodies, WebSocket frames,
broker messages.

Decoding is strict where the standard library is lenient: UTF-8 bytes only (no UTF-16 or UTF-32
guessed from the first bytes, no byte-order mark), no `NaN` or `Infinity` (not JSON, RFC 8259),
no lone surrogate escapes (they cannot be stored or sent on as UTF-8), at most 1,024 levels of
nesting. A repeated key keeps its last value, as in the standard library. An integer outside
the 64-bit range decodes as a float, which every integer field refuses.

Encoding is compact and writes UTF-8 (no `\\u` escapes for non-ASCII text).
"""

from __future__ import annotations

from typing import Any

import orjson

JSONDecodeError = orjson.JSONDecodeError
"""A subclass of `ValueError`."""


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """The value of one JSON text; `JSONDecodeError` when it is not strict JSON."""
    return orjson.loads(data)


def dumps(value: Any, *, sort_keys: bool = False) -> bytes:
    """Compact UTF-8 JSON of `value` (str keys, ints within 64 bits)."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS if sort_keys else None)


def dumps_text(value: Any) -> str:
    """`dumps` as a str, for WebSocket text frames."""
    return orjson.dumps(value).decode()
