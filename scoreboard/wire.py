"""The codecs of what crosses a process boundary: the action envelope the API publishes to the
actions queue (and the worker consumes), and the events the worker publishes on the fanout
exchange to every API process. Each decoder is strict: bytes that are not a message of ours
raise `MalformedMessage`. The values themselves are in `scoreboard/records.py`.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from scoreboard import json_codec
from scoreboard.records import (
    ActionEnvelope,
    ActionFinished,
    Event,
    LeaderboardChanged,
    Outcome,
    RankedEntry,
    ScoreChanged,
    TokensRevoked,
)

SCHEMA_VERSION = 1


class MalformedMessage(ValueError):
    """Bytes from the broker that are not a message of ours."""


def _require(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = data.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise MalformedMessage(f"field {key!r} missing or not {kind}")
    return value


def _optional(data: Mapping[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = data.get(key)
    if value is not None and not isinstance(value, kind):
        raise MalformedMessage(f"field {key!r} not {kind}")
    return value


def encode_envelope(envelope: ActionEnvelope) -> bytes:
    """The AMQP message body of an accepted action."""
    return json_codec.dumps(
        {
            "v": SCHEMA_VERSION,
            "action_id": str(envelope.action_id),
            "user_id": envelope.user_id,
            "action_type": envelope.action_type,
            "action_data": dict(envelope.action_data),
            "nonce": envelope.nonce,
            "received_at_ms": envelope.received_at_ms,
            "ip": envelope.ip,
            "user_agent": envelope.user_agent,
            "headers": dict(envelope.headers),
            "attempts": envelope.attempts,
        }
    )


def decode_envelope(body: bytes) -> ActionEnvelope:
    try:
        data = json_codec.loads(body)
    except ValueError as exc:
        raise MalformedMessage(f"not JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("v") != SCHEMA_VERSION:
        raise MalformedMessage("not an action envelope of this schema version")
    try:
        action_id = uuid.UUID(_require(data, "action_id", str))
    except ValueError:
        raise MalformedMessage("action_id is not a UUID") from None
    headers = _require(data, "headers", dict)
    return ActionEnvelope(
        action_id=action_id,
        user_id=_require(data, "user_id", int),
        action_type=_require(data, "action_type", str),
        action_data=_require(data, "action_data", dict),
        nonce=_require(data, "nonce", str),
        received_at_ms=_require(data, "received_at_ms", int),
        ip=_require(data, "ip", str),
        user_agent=_require(data, "user_agent", str),
        headers={str(k): str(v) for k, v in headers.items()},
        attempts=_require(data, "attempts", int),
    )


def outcome_json(outcome: Outcome) -> dict[str, Any]:
    return {
        "status": outcome.status,
        "score_delta": outcome.score_delta,
        "new_score": outcome.new_score,
        "error": outcome.error,
        "message": outcome.message,
        "retry_after_s": outcome.retry_after_s,
    }


def decode_outcome(data: Mapping[str, Any]) -> Outcome:
    """From `outcome_json`'s shape; also reads a stored row, whose columns bear the same names."""
    status = _require(data, "status", str)
    if status not in ("completed", "rejected", "failed"):
        raise MalformedMessage(f"unknown action status {status!r}")
    return Outcome(
        status=status,
        score_delta=_require(data, "score_delta", int),
        new_score=_optional(data, "new_score", int),
        error=_optional(data, "error", str),
        message=_optional(data, "message", str),
        retry_after_s=_optional(data, "retry_after_s", int),
    )


def encode_event(event: Event) -> bytes:
    """One event as a broker message."""
    body = _event_body(event)
    body["v"] = SCHEMA_VERSION
    return json_codec.dumps(body)


def encode_events(events: Sequence[Event]) -> bytes:
    """Several events as one broker message: the keeper publishes each committed batch's events
    together, so that a batch costs every API process one delivery, not one per event."""
    return json_codec.dumps(
        {"v": SCHEMA_VERSION, "kind": "batch", "events": [_event_body(e) for e in events]}
    )


def _event_body(event: Event) -> dict[str, Any]:
    match event:
        case LeaderboardChanged(entries, updated_at_ms):
            body: dict[str, Any] = {
                "kind": "leaderboard",
                "entries": [e.as_json() for e in entries],
                "updated_at_ms": updated_at_ms,
            }
        case ScoreChanged():
            body = {
                "kind": "score",
                "user_id": event.user_id,
                "username": event.username,
                "old_score": event.old_score,
                "new_score": event.new_score,
                "rank": event.rank,
                "rank_change": event.rank_change,
            }
        case ActionFinished():
            body = {
                "kind": "action",
                "user_id": event.user_id,
                "action_id": str(event.action_id),
                "nonce": event.nonce,
                **outcome_json(event.outcome),
            }
        case TokensRevoked(grant_ids, jtis, expires_at_ms):
            body = {
                "kind": "revoked",
                "grant_ids": list(grant_ids),
                "jtis": list(jtis),
                "expires_at_ms": expires_at_ms,
            }
    return body


def decode_events(raw: bytes) -> list[Event]:
    """The events of one broker message: a batch (`encode_events`) or a single event."""
    try:
        data = json_codec.loads(raw)
    except ValueError as exc:
        raise MalformedMessage(f"not JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("v") != SCHEMA_VERSION:
        raise MalformedMessage("not an event of this schema version")
    if data.get("kind") != "batch":
        return [_decode_event(data)]
    events = []
    for item in _require(data, "events", list):
        if not isinstance(item, dict):
            raise MalformedMessage("an event of the batch is not an object")
        events.append(_decode_event(item))
    return events


def decode_event(raw: bytes) -> Event:
    """A message that holds one event."""
    events = decode_events(raw)
    if len(events) != 1:
        raise MalformedMessage(f"{len(events)} events where one was expected")
    return events[0]


def _decode_event(data: Mapping[str, Any]) -> Event:
    kind = data.get("kind")
    if kind == "leaderboard":
        entries = []
        for item in _require(data, "entries", list):
            if not isinstance(item, dict):
                raise MalformedMessage("leaderboard entry is not an object")
            entries.append(
                RankedEntry(
                    rank=_require(item, "rank", int),
                    user_id=_require(item, "user_id", int),
                    username=_require(item, "username", str),
                    score=_require(item, "score", int),
                )
            )
        return LeaderboardChanged(tuple(entries), _require(data, "updated_at_ms", int))
    if kind == "score":
        return ScoreChanged(
            user_id=_require(data, "user_id", int),
            username=_require(data, "username", str),
            old_score=_require(data, "old_score", int),
            new_score=_require(data, "new_score", int),
            rank=_require(data, "rank", int),
            rank_change=_require(data, "rank_change", int),
        )
    if kind == "action":
        try:
            action_id = uuid.UUID(_require(data, "action_id", str))
        except ValueError:
            raise MalformedMessage("action_id is not a UUID") from None
        return ActionFinished(
            user_id=_require(data, "user_id", int),
            action_id=action_id,
            nonce=_require(data, "nonce", str),
            outcome=decode_outcome(data),
        )
    if kind == "revoked":
        return TokensRevoked(
            grant_ids=_strings(data, "grant_ids"),
            jtis=_strings(data, "jtis"),
            expires_at_ms=_require(data, "expires_at_ms", int),
        )
    raise MalformedMessage(f"unknown event kind {kind!r}")


def _strings(data: Mapping[str, Any], key: str) -> tuple[str, ...]:
    values = _require(data, key, list)
    if not all(isinstance(value, str) for value in values):
        raise MalformedMessage(f"field {key!r} is not a list of strings")
    return tuple(values)
