"""The audit trail as operators read it: `scoreboard audit U` and `GET /api/v1/admin/audit`.

A user's trail is every attempt of theirs, newest first: the actions the worker settled
(`completed`, `rejected`), the ones the store refused (`failed`), and the ones the API refused
before queueing them (`refused`, with the HTTP status). Each entry carries the time, the action's
type, nonce and delta, the client's address, user agent and the selected headers. A page ends
with a cursor (`next_cursor`) that the next request passes back.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from scoreboard.actors.frames import rfc3339_ms
from scoreboard.records import AuditCursor, AuditEntry

DEFAULT_LIMIT = 100
MAX_LIMIT = 500
_CURSOR = re.compile(r"([0-9]{1,19})\.([0-2])\.([0-9]{1,19})")
_UNIX_SECONDS = re.compile(r"[0-9]{1,12}")
MAX_TIME_TEXT_CHARS = 40
MAX_BIGINT = 2**63 - 1


class AuditQueryError(ValueError):
    """A parameter of an audit query is not what it may be (the message says why)."""


def encode_cursor(cursor: AuditCursor) -> str:
    return f"{cursor.at_us}.{cursor.source}.{cursor.row_id}"


def decode_cursor(text: str) -> AuditCursor:
    match = _CURSOR.fullmatch(text)
    if match is None or max(int(match[1]), int(match[3])) > MAX_BIGINT:
        raise AuditQueryError("cursor is not one this server gave out")
    return AuditCursor(int(match[1]), int(match[2]), int(match[3]))


def parse_time_ms(text: str) -> int:
    """Unix seconds, or an RFC 3339 time with its offset (`2026-12-06T07:00:00Z`): epoch ms."""
    if len(text) > MAX_TIME_TEXT_CHARS:
        raise AuditQueryError("since is too long to be a time")
    if _UNIX_SECONDS.fullmatch(text):
        return int(text) * 1000
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise AuditQueryError(
            "since is unix seconds or an RFC 3339 time such as 2026-12-06T07:00:00Z"
        ) from None
    if moment.tzinfo is None:
        raise AuditQueryError("since needs its offset (Z or +hh:mm)")
    return int(moment.timestamp() * 1000)


def parse_limit(text: str) -> int:
    if not re.fullmatch(r"[0-9]{1,4}", text) or not 1 <= int(text) <= MAX_LIMIT:
        raise AuditQueryError(f"limit is a whole number from 1 to {MAX_LIMIT}")
    return int(text)


def entry_json(entry: AuditEntry) -> dict[str, Any]:
    return {
        "at": rfc3339_ms(entry.at_ms),
        "outcome": entry.outcome,
        "action_id": None if entry.action_id is None else str(entry.action_id),
        "action_type": entry.action_type,
        "nonce": entry.nonce,
        "score_delta": entry.score_delta,
        "status_code": entry.status_code,
        "error": entry.error,
        "message": entry.message,
        "channel": entry.channel,
        "ip": entry.ip,
        "user_agent": entry.user_agent,
        "headers": dict(entry.headers),
    }
