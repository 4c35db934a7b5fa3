"""Values that cross process boundaries, and their codecs.

`ActionEnvelope` is what the API publishes to RabbitMQ and the worker consumes. `Event`s travel
from the worker to every API process over the fanout exchange. Records are what the store
returns. Each codec is strict: a message that does not decode raises `MalformedMessage`.
"""

from __future__ import annotations

import unicodedata
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from scoreboard import json_codec

ActionStatus = Literal["accepted", "completed", "rejected", "failed"]
FinalStatus = Literal["completed", "rejected", "failed"]
ActionError = Literal["rate_limit_exceeded", "invalid_action", "account_suspended"]
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


@dataclass(frozen=True, slots=True)
class ActionEnvelope:
    """An accepted action on its way from the API to the scorer (the AMQP message body)."""

    action_id: uuid.UUID
    user_id: int
    action_type: str
    action_data: Mapping[str, Any]
    nonce: str
    received_at_ms: int
    ip: str = ""
    user_agent: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    attempts: int = 0

    def encode(self) -> bytes:
        return json_codec.dumps(
            {
                "v": SCHEMA_VERSION,
                "action_id": str(self.action_id),
                "user_id": self.user_id,
                "action_type": self.action_type,
                "action_data": dict(self.action_data),
                "nonce": self.nonce,
                "received_at_ms": self.received_at_ms,
                "ip": self.ip,
                "user_agent": self.user_agent,
                "headers": dict(self.headers),
                "attempts": self.attempts,
            }
        )

    @classmethod
    def decode(cls, body: bytes) -> ActionEnvelope:
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
        return cls(
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


@dataclass(frozen=True, slots=True)
class UniqueKey:
    """What makes a completed action count once per user (the catalogue's `unique` rule): the
    store refuses a second completed action of the type and user with the same key, with
    `reason`, in the transaction that would count it."""

    key: str
    reason: str


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one action ended: the value every record of a finished action carries, from the user
    actor's decision through the store and the events to the HTTP answer and the WebSocket
    frame. A field added here travels that whole way untouched; only `as_json`/`from_json` and
    the renderers (`http/actions.py:outcome_response`, `actors/frames.py:action_result_data`)
    name the fields."""

    status: FinalStatus
    score_delta: int
    new_score: int | None = None  # None until the store settled the action
    error: str | None = None
    message: str | None = None
    retry_after_s: int | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "score_delta": self.score_delta,
            "new_score": self.new_score,
            "error": self.error,
            "message": self.message,
            "retry_after_s": self.retry_after_s,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Outcome:
        """From `as_json`'s shape; also reads a stored row, whose columns bear the same names."""
        status = _require(data, "status", str)
        if status not in ("completed", "rejected", "failed"):
            raise MalformedMessage(f"unknown action status {status!r}")
        return cls(
            status=status,
            score_delta=_require(data, "score_delta", int),
            new_score=_optional(data, "new_score", int),
            error=_optional(data, "error", str),
            message=_optional(data, "message", str),
            retry_after_s=_optional(data, "retry_after_s", int),
        )


@dataclass(frozen=True, slots=True)
class Decision:
    """What the user actor decided about one action (its outcome before the store gives it a
    `new_score`); the scorer commits it."""

    envelope: ActionEnvelope
    outcome: Outcome
    flags: tuple[str, ...] = ()
    unique: UniqueKey | None = None


@dataclass(frozen=True, slots=True)
class ActionRecord:
    """One row of `action_logs`, as the API reports it."""

    action_id: uuid.UUID
    user_id: int
    action_type: str
    nonce: str
    outcome: Outcome
    # When the API accepted it (`received_at`), as while it was pending: not the row's insert.
    created_at_ms: int
    processed_at_ms: int | None


@dataclass(frozen=True, slots=True)
class CommitResult:
    """The outcome of one action after the scorer's transaction (or of a redelivered one)."""

    action_id: uuid.UUID
    user_id: int
    username: str
    nonce: str
    outcome: Outcome
    old_score: int
    score_reached_at_ms: int
    duplicate: bool

    @property
    def new_score(self) -> int:
        return self.old_score + self.outcome.score_delta


@dataclass(frozen=True, slots=True)
class RecentAction:
    """An action the user actor must remember to keep its limits exact across restarts."""

    action_id: uuid.UUID
    nonce: str
    action_type: str
    received_at_ms: int
    status: ActionStatus


@dataclass(frozen=True, slots=True)
class BoardEntry:
    """A user's absolute score, from Postgres; what the keeper writes to Redis."""

    user_id: int
    username: str
    score: int
    score_reached_at_ms: int


@dataclass(frozen=True, slots=True)
class RankedEntry:
    rank: int
    user_id: int
    username: str
    score: int

    def as_json(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "user_id": self.user_id,
            "username": self.username,
            "score": self.score,
        }


@dataclass(frozen=True, slots=True)
class RankChange:
    """A user's rank before and after the keeper applied their new score (1-based)."""

    user_id: int
    old_rank: int | None
    new_rank: int


def normalized_identity(text: str) -> str:
    """The form usernames and emails are unique on, and looked up by: NFKC, case-folded (and
    NFKC again, which case folding can undo): `Alice`, `ALICE` and a fullwidth `alice` are one."""
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", text).casefold())


@dataclass(frozen=True, slots=True)
class UserRecord:
    user_id: int
    username: str
    email: str
    password_hash: str
    score: int
    disabled: bool
    created_at_ms: int
    # May be granted the `admin` scope (`scoreboard users grant-admin`).
    admin: bool = False
    # Actions refused and off the board until unsuspended (`scoreboard users suspend`).
    suspended: bool = False


@dataclass(frozen=True, slots=True)
class SuspensionChange:
    """One entry of the suspension log: `user_id` was suspended (or unsuspended)."""

    change_id: int
    user_id: int
    suspended: bool


@dataclass(frozen=True, slots=True)
class SigningKeyRecord:
    kid: str
    private_pem: str
    public_jwk: Mapping[str, Any]
    created_at_ms: int
    retired_at_ms: int | None


ClientType = Literal["public", "confidential"]


@dataclass(frozen=True, slots=True)
class OAuthClientRecord:
    """A registered OAuth client. A confidential client's secret is kept as the SHA-256 of a
    high-entropy random secret (so a fast hash is enough, and it is compared in constant time);
    a public client has none and must use PKCE."""

    client_id: str
    client_type: ClientType
    secret_hash: str | None
    redirect_uris: tuple[str, ...]
    scopes: tuple[str, ...]
    name: str
    created_at_ms: int


@dataclass(frozen=True, slots=True)
class GrantRecord:
    """One authorization: what a user granted a client. Its id names the refresh-token family
    and is the `grant_id` claim of every access token issued under it."""

    grant_id: str
    client_id: str
    user_id: int
    scope: str


@dataclass(frozen=True, slots=True)
class AuthorizationCodeRecord:
    """An issued authorization code, stored by the SHA-256 of the code."""

    code_hash: str
    grant: GrantRecord
    redirect_uri: str
    code_challenge: str | None
    code_challenge_method: str | None
    expires_at_ms: int


@dataclass(frozen=True, slots=True)
class GrantRevoked:
    """A code or refresh token presented again after its one use: the store revoked the grant
    it belongs to (and so every token issued under it)."""

    grant_id: str


@dataclass(frozen=True, slots=True)
class Revocation:
    """One deny-list entry: a grant (every access token carrying its id) or one access token's
    `jti`, kept until the last token it could match has expired."""

    kind: Literal["grant", "jti"]
    value: str
    expires_at_ms: int


# Events: worker → every API process, over the fanout exchange `scoreboard.events`.


@dataclass(frozen=True, slots=True)
class LeaderboardChanged:
    entries: tuple[RankedEntry, ...]
    updated_at_ms: int


@dataclass(frozen=True, slots=True)
class ScoreChanged:
    user_id: int
    username: str
    old_score: int
    new_score: int
    rank: int
    rank_change: int


@dataclass(frozen=True, slots=True)
class ActionFinished:
    user_id: int
    action_id: uuid.UUID
    nonce: str
    outcome: Outcome


@dataclass(frozen=True, slots=True)
class TokensRevoked:
    """Grants and access tokens that were revoked (published by whichever process revoked them,
    so every API process denies them at once and closes their WebSockets)."""

    grant_ids: tuple[str, ...]
    jtis: tuple[str, ...]
    expires_at_ms: int


Event = LeaderboardChanged | ScoreChanged | ActionFinished | TokensRevoked


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
                **event.outcome.as_json(),
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
            outcome=Outcome.from_json(data),
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
