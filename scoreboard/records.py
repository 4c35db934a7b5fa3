"""The values the API, the worker and the store pass each other: frozen dataclasses, no I/O.

An accepted action travels as an `ActionEnvelope`; the user actor judges it into a `Decision`;
the store settles it into a `CommitResult` and keeps it as an `ActionRecord`; every API process
hears of it as an `ActionFinished` event. Each of them carries the action's `Outcome`. The
values that cross a process boundary are turned into bytes and back by `scoreboard/wire.py`.
"""

from __future__ import annotations

import unicodedata
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

ActionStatus = Literal["accepted", "completed", "rejected", "failed"]
FinalStatus = Literal["completed", "rejected", "failed"]
ActionError = Literal["rate_limit_exceeded", "invalid_action"]


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
    frame. A field added here travels that whole way untouched; only its codec (`wire.py`) and
    the renderers (`http/actions.py:outcome_response`, `actors/frames.py:action_result_data`)
    name the fields."""

    status: FinalStatus
    score_delta: int
    new_score: int | None = None  # None until the store settled the action
    error: str | None = None
    message: str | None = None
    retry_after_s: int | None = None


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


# Events: worker → every API process, over the fanout exchange `scoreboard.events`
# (encoded by `wire.encode_events`).


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


@dataclass(frozen=True, slots=True)
class EdgeRefusal:
    """An action the API refused before queueing it (a 4xx on `POST /actions/perform`, or a
    refused `action` frame on the WebSocket), for the audit trail. `user_id` is None when the
    caller was not authenticated; the action's type and nonce when they were read."""

    user_id: int | None
    action_type: str | None
    nonce: str | None
    channel: Literal["http", "websocket"]
    status_code: int
    error: str
    message: str
    ip: str
    user_agent: str
    headers: Mapping[str, str]
    refused_at_ms: int


AuditOutcome = Literal["completed", "rejected", "failed", "refused"]


@dataclass(frozen=True, slots=True, order=True)
class AuditCursor:
    """Where a page of the audit trail ends: entries come newest first, ordered by
    (`at_us`, `source`, `row_id`), and the next page starts below this."""

    at_us: int
    source: int
    row_id: int


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One attempt in a user's audit trail: settled by the worker (`completed`, `rejected`),
    refused by the store (`failed`), or refused at the edge (`refused`, with its HTTP status)."""

    cursor: AuditCursor
    at_ms: int
    outcome: AuditOutcome
    action_id: uuid.UUID | None
    action_type: str | None
    nonce: str | None
    score_delta: int
    status_code: int | None
    error: str | None
    message: str | None
    channel: str | None
    ip: str | None
    user_agent: str | None
    headers: Mapping[str, str]
