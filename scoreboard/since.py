"""`--since` and `?since=`: a moment given as an RFC 3339 time, epoch milliseconds, or a span
back from now (`90s`, `30m`, `2h`, `7d`)."""

from __future__ import annotations

import datetime as dt
import re

SPAN = re.compile(r"([0-9]{1,9})([smhd])")
SPAN_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
EPOCH_MS = re.compile(r"[0-9]{1,15}")


class InvalidSince(ValueError):
    """Not a moment this understands; the message says what is."""


def parse_since(text: str, now_ms: int) -> int:
    """The moment, in epoch milliseconds."""
    text = text.strip()
    if span := SPAN.fullmatch(text):
        return now_ms - int(span[1]) * SPAN_MS[span[2]]
    if EPOCH_MS.fullmatch(text):
        return int(text)
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise InvalidSince(
            f"{text[:40]!r}: give an RFC 3339 time (2026-12-06T07:00:00Z), epoch milliseconds, "
            "or a span back from now (90s, 30m, 2h, 7d)"
        ) from None
    if moment.tzinfo is None:
        raise InvalidSince(f"{text[:40]!r}: the time needs a zone (Z or +hh:mm)")
    return int(moment.timestamp() * 1000)
