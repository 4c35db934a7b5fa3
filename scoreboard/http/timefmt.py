"""Times on the wire are RFC 3339 UTC strings (contract preamble)."""

from __future__ import annotations

from datetime import UTC, datetime


def rfc3339_ms(epoch_ms: int) -> str:
    moment = datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
