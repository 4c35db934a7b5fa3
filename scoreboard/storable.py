"""What the server can keep of an action: the values PostgreSQL refuses in our schema.

An action may reach the worker without this API's checks (an older API version, a tool that
publishes to the queue). Some of what it may hold cannot be stored: a NUL character (no
PostgreSQL text holds it), a lone UTF-16 surrogate (UTF-8 cannot encode it), an action type
longer than its column, a time out of range, a number JSON cannot write (NaN, Infinity).

The user actor rejects such an action (`invalid_action`, with `unstorable_reason`), and both
stores write every row through `storable`, so the audit row exists, with the offending
characters replaced, and embedded mode (SQLite keeps anything) decides exactly as production.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from scoreboard.records import ActionEnvelope, Decision, EdgeRefusal

ACTION_TYPE_MAX_CHARS = 50  # action_logs.action_type is varchar(50)
RECEIVED_AT_MAX_MS = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
# NUL, which no PostgreSQL text holds, and the UTF-16 surrogates, which UTF-8 cannot encode.
_UNSTORABLE_CHARACTERS = re.compile("[\x00\ud800-\udfff]")
REPLACEMENT_CHARACTER = "\ufffd"


def unstorable_reason(envelope: ActionEnvelope) -> str | None:
    """Why the store cannot keep this action as it is, or None."""
    for where, text in _texts(envelope):
        found = _UNSTORABLE_CHARACTERS.search(text)
        if found is not None:
            return f"{where} holds the character U+{ord(found.group()):04X}"
    for value in _values(envelope.action_data):
        if isinstance(value, float) and not math.isfinite(value):
            return f"action_data holds the number {value}, which JSON cannot"
    if len(envelope.action_type) > ACTION_TYPE_MAX_CHARS:
        return f"action_type is longer than {ACTION_TYPE_MAX_CHARS} characters"
    if not 0 <= envelope.received_at_ms <= RECEIVED_AT_MAX_MS:
        return f"received_at_ms {envelope.received_at_ms} is out of range"
    return None


def storable(envelope: ActionEnvelope) -> ActionEnvelope:
    """The envelope as the store can keep it: itself when it can be kept as it is; otherwise
    with the characters no column holds replaced by U+FFFD, what is too long cut, the time
    clamped, a number JSON cannot hold written as text."""
    if unstorable_reason(envelope) is None:
        return envelope
    return dataclasses.replace(
        envelope,
        action_type=_mended(envelope.action_type)[:ACTION_TYPE_MAX_CHARS],
        action_data=_mended_json(dict(envelope.action_data)),
        nonce=_mended(envelope.nonce),
        received_at_ms=min(max(envelope.received_at_ms, 0), RECEIVED_AT_MAX_MS),
        ip=_mended(envelope.ip),
        user_agent=_mended(envelope.user_agent),
        headers={_mended(k): _mended(v) for k, v in envelope.headers.items()},
    )


def storable_all(decisions: Sequence[Decision]) -> list[Decision]:
    """The decisions with their envelopes `storable`: what both stores commit."""
    # Most envelopes are kept as they are: no new Decision for those.
    return [
        d if (kept := storable(d.envelope)) is d.envelope else dataclasses.replace(d, envelope=kept)
        for d in decisions
    ]


def _texts(envelope: ActionEnvelope) -> Iterator[tuple[str, str]]:
    yield "action_type", envelope.action_type
    yield "nonce", envelope.nonce
    yield "ip", envelope.ip
    yield "user_agent", envelope.user_agent
    for key, value in envelope.headers.items():
        yield "headers", key
        yield "headers", value
    for value in _values(envelope.action_data, keys=True):
        if isinstance(value, str):
            yield "action_data", value


def _values(data: Any, *, keys: bool = False) -> Iterator[Any]:
    """Every value nested in JSON-like `data` (and every key, with `keys`)."""
    if isinstance(data, Mapping):
        for key, value in data.items():
            if keys:
                yield key
            yield from _values(value, keys=keys)
    elif isinstance(data, list | tuple):
        for value in data:
            yield from _values(value, keys=keys)
    else:
        yield data


def _mended(text: str) -> str:
    return _UNSTORABLE_CHARACTERS.sub(REPLACEMENT_CHARACTER, text)


def _mended_json(data: Any) -> Any:
    if isinstance(data, Mapping):
        return {_mended(str(key)): _mended_json(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [_mended_json(value) for value in data]
    if isinstance(data, str):
        return _mended(data)
    if isinstance(data, float) and not math.isfinite(data):
        return str(data)
    return data


# A refusal's texts come from a client that may be hostile: each is kept, cut to a bound.
REFUSAL_TEXT_MAX_CHARS = 512


def storable_refusal(refusal: EdgeRefusal) -> EdgeRefusal:
    """The refusal as the store can keep it: no NUL or lone surrogate, every text bounded."""

    def kept(text: str | None) -> str | None:
        return None if text is None else _mended(text[:REFUSAL_TEXT_MAX_CHARS])

    return dataclasses.replace(
        refusal,
        action_type=kept(refusal.action_type),
        nonce=kept(refusal.nonce),
        error=_mended(refusal.error[:REFUSAL_TEXT_MAX_CHARS]),
        message=_mended(refusal.message[:REFUSAL_TEXT_MAX_CHARS]),
        ip=_mended(refusal.ip[:REFUSAL_TEXT_MAX_CHARS]),
        user_agent=_mended(refusal.user_agent[:REFUSAL_TEXT_MAX_CHARS]),
        headers={
            _mended(k[:REFUSAL_TEXT_MAX_CHARS]): _mended(v[:REFUSAL_TEXT_MAX_CHARS])
            for k, v in refusal.headers.items()
        },
        refused_at_ms=min(max(refusal.refused_at_ms, 0), RECEIVED_AT_MAX_MS),
    )
