"""What the actors and the HTTP layer need from the outside systems, as small protocols.

The store is one backend but several protocols, by consumer: `ActionLog` (the worker's actors,
action status, `verify`), `Accounts` (registration, sign-in), `SigningKeys` and `KeyRotation`
(the key ring), `Moderation` (flags, suspensions), `Authorizations` (OAuth); `Store` is all of
them, what a backend implements and the wiring passes around. A consumer names the narrowest
protocol it uses.

One module per backend implements them: `postgres.py` or `sqlite.py` (embedded) the store,
`redis.py` or `memory_board.py` the board and the edge guard, `rabbitmq.py` or
`embedded_broker.py` the broker. Every method is one unit of work: it crosses the asyncio
bridge once. All of them are trio-callable (`async def`, cancellable; a cancelled call leaves
the backend usable).
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import trio

from scoreboard.anticheat.records import Flag, FlagQuery, FlagRecord
from scoreboard.records import (
    ActionEnvelope,
    ActionRecord,
    AuditCursor,
    AuditEntry,
    AuthorizationCodeRecord,
    BoardEntry,
    CommitResult,
    Decision,
    EdgeRefusal,
    GrantRecord,
    GrantRevoked,
    OAuthClientRecord,
    RankChange,
    RankedEntry,
    RecentAction,
    Revocation,
    SigningKeyRecord,
    SuspensionChange,
    UserRecord,
)


class BackendUnavailable(RuntimeError):
    """The backend did not answer, or answered with a transport error; the caller may retry."""


class BoardMissing(BackendUnavailable):
    """The leaderboard cache is gone (Redis restarted empty, or was flushed): rebuild it from the
    store. Until then, reading it would show an empty board, which is not the truth."""


class UsernameTaken(ValueError):
    pass


class EmailTaken(ValueError):
    pass


class ClientExists(ValueError):
    pass


class UnknownUser(LookupError):
    """A batch to commit holds actions of users that do not exist; nothing of it was written."""

    def __init__(self, user_ids: Collection[int]):
        super().__init__(f"no such users: {sorted(user_ids)}")
        self.user_ids = frozenset(user_ids)


class PublishFailed(RuntimeError):
    """The broker did not confirm the publish. As such (a nack, or returned as unroutable) the
    broker did not queue the message; see `PublishOutcomeUnknown` for when it may have."""


class PublishOutcomeUnknown(PublishFailed):
    """No confirm came (in time, or before the link failed): the broker may have queued the
    message or not. Publishing it again under the same message id is the way to be sure."""


class ActionLog(Protocol):
    """The actions and the scores they add up to: what the worker's actors, `GET /actions/<id>`
    and `scoreboard verify` use."""

    async def commit_actions(self, decisions: Sequence[Decision]) -> list[CommitResult]:
        """One transaction for the whole batch. Inserts each action with ON CONFLICT DO NOTHING
        (on `action_id` and on `(user_id, nonce)`) and adds its delta to the user's score only if
        the row was new; `score_reached_at` moves when the score does. An action that was already
        stored comes back as it was stored, with `duplicate=True`, unless it was stored `failed`:
        then it is settled afresh and its row replaced. Results are in input order. Raises
        `UnknownUser` (and writes nothing) if any action's user does not exist. What an action
        holds that the store cannot keep is mended in its row (`scoreboard.storable`)."""
        ...

    async def recent_actions(self, user_id: int, since_ms: int) -> list[RecentAction]:
        """The user's stored actions received at or after `since_ms`, oldest first."""
        ...

    async def get_action(self, action_id: uuid.UUID) -> ActionRecord | None: ...

    async def find_action_by_nonce(self, user_id: int, nonce: str) -> ActionRecord | None: ...

    async def board_entries(self, user_ids: Sequence[int] | None = None) -> list[BoardEntry]:
        """Absolute scores of the given users (all users with score > 0 when None)."""
        ...

    async def score_discrepancies(self) -> list[tuple[int, int, int]]:
        """(user_id, score, sum of completed deltas) for every user where the two differ."""
        ...

    async def fail_action(self, envelope: ActionEnvelope, reason: str) -> None:
        """Record an action the store refused as `failed` (no score change), whatever its data
        holds. Nothing is recorded if the action is already stored or its user does not exist."""
        ...


class AuditTrail(Protocol):
    """Every attempt of a user's, for operators: the auditor actor appends the API's refusals,
    `scoreboard audit` and `GET /api/v1/admin/audit` page through the trail."""

    async def record_edge_refusals(self, refusals: Sequence[EdgeRefusal]) -> None:
        """Append the API's refusals to the audit trail, in one transaction, each as `storable`
        makes it (a refusal of a user that no longer exists is kept without its user)."""
        ...

    async def audit_trail(
        self, user_id: int, *, since_ms: int, before: AuditCursor | None, limit: int
    ) -> list[AuditEntry]:
        """The user's attempts received at or after `since_ms`, newest first, at most `limit`,
        starting below `before` (the last entry's cursor of the previous page): the actions the
        worker settled, the failures, and the refusals at the edge."""
        ...


class Accounts(Protocol):
    """Registration and sign-in."""

    async def create_user(self, username: str, email: str, password_hash: str) -> int:
        """Raises `UsernameTaken` or `EmailTaken` if either is in use."""
        ...

    async def get_user_by_username(self, username: str) -> UserRecord | None: ...

    async def replace_password_hash(self, user_id: int, old_hash: str, new_hash: str) -> bool:
        """Store `new_hash` as the user's password hash if it is still `old_hash` (compare and
        set: a password changed meanwhile is kept); True if it was replaced."""
        ...


class SigningKeys(Protocol):
    """The JWT signing keys, as the key ring loads and adds them."""

    async def signing_keys(self) -> list[SigningKeyRecord]:
        """Every key, decrypted. Raises `KeyEncryptionError` (a `ConfigError`) for a key no
        configured key-encryption key opens."""
        ...

    async def add_signing_key(self, key: SigningKeyRecord) -> None:
        """Insert, or do nothing if a key with this kid exists; stored sealed with the store's
        key-encryption key, if it has one."""
        ...


class KeyRotation(SigningKeys, Protocol):
    """The key ring's rotation: a new key, then the old one retired."""

    async def retire_signing_key(self, kid: str, retired_at_ms: int) -> None:
        """Stop publishing and verifying with this key (a retired key stays, so its kid is
        never reused)."""
        ...


class Moderation(Protocol):
    """Behaviour flags and suspensions: the flags actor stores flags, operators list and clear
    them and suspend users, the keeper follows the suspension log."""

    async def add_flags(self, flags: Sequence[Flag]) -> list[int]:
        """Store the flags; their ids, in order."""
        ...

    async def list_flags(self, query: FlagQuery) -> list[FlagRecord]:
        """Stored flags, newest first."""
        ...

    async def clear_flag(self, flag_id: int, cleared_by: str) -> FlagRecord | None:
        """Mark the flag cleared (once: clearing it again changes nothing); None if there is
        no such flag."""
        ...

    async def cleared_flags(self, since_ms: int) -> list[FlagRecord]:
        """Flags cleared at or after `since_ms`, the flags actor's way to hear of clears."""
        ...

    async def set_suspended(
        self, username: str, suspended: bool, changed_by: str
    ) -> tuple[int, bool] | None:
        """Suspend the user (their actions are refused `account_suspended` at commit, and they
        leave the board), or unsuspend them; each change is appended to the suspension log.
        The user id and whether anything changed; None if there is no such user."""
        ...

    async def suspension_changes(self, after_id: int, limit: int) -> list[SuspensionChange]:
        """The suspension log after `after_id`, oldest first."""
        ...

    async def suspension_state(self) -> tuple[int, list[int]]:
        """The newest suspension log id and, as of it, every suspended user."""
        ...

    # Behavioural flags (`scoreboard/anticheat/`), stored by the flags actor.


class Authorizations(Protocol):
    """OAuth: clients, codes, grants and their refresh-token families, and the deny-list. Times
    are passed in (ms), so every backend expires things by the same clock."""

    async def add_client(self, client: OAuthClientRecord) -> None:
        """Raises `ClientExists` if the client id is taken."""
        ...

    async def get_client(self, client_id: str) -> OAuthClientRecord | None: ...

    async def list_clients(self) -> list[OAuthClientRecord]: ...

    async def remove_client(
        self, client_id: str, revocation_expires_at_ms: int
    ) -> list[str] | None:
        """Remove the client and revoke its grants; the revoked grant ids, or None if there is
        no such client."""
        ...

    async def save_authorization_code(self, code: AuthorizationCodeRecord) -> None:
        """Store the code and create its grant (not yet holding any token)."""
        ...

    async def redeem_authorization_code(
        self, code_hash: str, client_id: str, now_ms: int, revocation_expires_at_ms: int
    ) -> AuthorizationCodeRecord | GrantRevoked | None:
        """Consume the code atomically: of concurrent redemptions exactly one gets the record.
        A code of this client consumed before is reuse: its grant is revoked (deny-listed until
        `revocation_expires_at_ms`) and `GrantRevoked` answered. None when there is no such
        code for this client, or it has expired."""
        ...

    async def add_refresh_token(
        self, grant_id: str, token_hash: str, now_ms: int, expires_at_ms: int
    ) -> bool:
        """Add the newest refresh token of the grant's family; False (nothing stored) if the
        grant was revoked, or deleted by the janitor, meanwhile."""
        ...

    async def rotate_refresh_token(
        self, token_hash: str, client_id: str, now_ms: int, revocation_expires_at_ms: int
    ) -> GrantRecord | GrantRevoked | None:
        """Mark the refresh token used, atomically (one of concurrent rotations wins), and give
        its grant. A token of this client that was rotated before is reuse: the whole family is
        revoked and `GrantRevoked` answered. None if unknown, expired or revoked."""
        ...

    async def find_refresh_token(self, token_hash: str) -> GrantRecord | None:
        """The grant of a refresh token, whatever its state (for RFC 7009 revocation)."""
        ...

    async def revoke(
        self, *, grant_ids: Sequence[str], jtis: Sequence[str], expires_at_ms: int
    ) -> None:
        """Revoke these grants (their refresh tokens stop working) and deny-list them and these
        access tokens' jtis until `expires_at_ms`."""
        ...

    async def revocations(self, now_ms: int) -> list[Revocation]:
        """Every deny-list entry that has not expired (the janitor deletes the others)."""
        ...

    async def purge_expired(self, what: Purgeable, before_ms: int, limit: int) -> Purged:
        """Delete at most `limit` authorization codes, refresh tokens or deny-list entries that
        expired before `before_ms`, and the grants that deleting codes or refresh tokens left
        with neither, in one short transaction (the janitor's batch)."""
        ...


class Store(ActionLog, AuditTrail, Accounts, KeyRotation, Moderation, Authorizations, Protocol):
    """PostgreSQL (or SQLite, embedded): the source of truth, as each backend implements it
    whole. A consumer asks for the narrowest of the protocols above that it needs; what only the
    wiring, the CLI and the HTTP handlers use is declared here."""

    async def ping(self) -> None: ...

    async def get_user(self, user_id: int) -> UserRecord | None: ...

    async def disable_user(self, username: str, revocation_expires_at_ms: int) -> list[str] | None:
        """Disable the account and revoke every grant of it; the revoked grant ids, or None
        if there is no such user."""
        ...

    async def set_admin(
        self, username: str, admin: bool, revocation_expires_at_ms: int
    ) -> list[str] | None:
        """Mark the user as one who may be granted the `admin` scope, or no longer. Taking it
        away revokes every grant of the user that holds `admin` (their ids are returned, to be
        announced); None if there is no such user."""
        ...

    async def reseal_signing_keys(self, *, plain_only: bool) -> list[str]:
        """Seal every key stored in plain text with the first key-encryption key and, unless
        `plain_only`, every key sealed with another one (a KEK rotation); the kids changed.
        Nothing changes without a KEK. Raises `KeyEncryptionError` as `signing_keys` does."""
        ...


Purgeable = Literal["codes", "refresh_tokens", "revocations"]


@dataclass(frozen=True, slots=True)
class Purged:
    rows: int
    grants: int = 0


@dataclass(frozen=True, slots=True)
class Accepted:
    """The nonce was claimed and the limits admit the action."""


# A claimed nonce's state before its first request was answered 202 (or later 200/422/429):
PUBLISHING = 0  # the publish is not confirmed yet (or its process died before it knew)
OUTCOME_UNKNOWN = 503  # no confirm came: the action may be queued or not


@dataclass(frozen=True, slots=True)
class Replayed:
    action_id: uuid.UUID
    first_status_code: int  # how the first request was answered; or PUBLISHING, OUTCOME_UNKNOWN


@dataclass(frozen=True, slots=True)
class Limited:
    retry_after_s: int


Claim = Accepted | Replayed | Limited


@dataclass(frozen=True, slots=True)
class RequestCount:
    """One request counted against a sliding one-minute window (`EdgeGuard.count_request`)."""

    admitted: bool
    remaining: int  # requests the window admits now, after this one
    reset_s: int  # admitted: seconds until the oldest counted request leaves the window;
    # refused: seconds until the window has room (Retry-After), at least 1


FAILURE_DELAY_BASE_MS = 1000
# 2**20 s is past any sensible maximum: the cap always wins before the exponent grows further.
FAILURE_DELAY_MAX_DOUBLINGS = 20


@dataclass(frozen=True, slots=True)
class FailureDelay:
    """The first `free_failures` failures cost nothing; each one after them doubles the wait
    before the next attempt, from 1 s up to `max_delay_ms`. Failures are forgotten
    `forget_after_ms` after the last one."""

    free_failures: int
    max_delay_ms: int
    forget_after_ms: int

    def wait_ms(self, failures: int, last_failure_ms: int, now_ms: int) -> int:
        """How long until the next attempt may run (0: now)."""
        if failures < self.free_failures:
            return 0
        doublings = min(failures - self.free_failures, FAILURE_DELAY_MAX_DOUBLINGS)
        delay = min(FAILURE_DELAY_BASE_MS << doublings, self.max_delay_ms)
        return max(0, last_failure_ms + delay - now_ms)


@dataclass(frozen=True, slots=True)
class PendingAction:
    user_id: int
    action_type: str
    nonce: str
    created_at_ms: int


@dataclass(frozen=True, slots=True)
class MeView:
    me: RankedEntry
    above: tuple[RankedEntry, ...]
    below: tuple[RankedEntry, ...]


class Board(Protocol):
    """Redis: the leaderboard cache (rebuildable from the store at any time)."""

    async def ping(self) -> None: ...

    async def apply(
        self, entries: Sequence[BoardEntry], top_n: int
    ) -> tuple[list[RankChange], list[RankedEntry]] | None:
        """Set each user's absolute score (never an increment; an older score never overwrites a
        newer one), then read the top `top_n`. None if the board key is missing: rebuild first."""
        ...

    async def remove(self, user_ids: Sequence[int]) -> bool:
        """Take the users off the board (a suspension); False if the board is missing (its
        rebuild, from the store, leaves them out anyway)."""
        ...

    async def rebuild(self, entries: Sequence[BoardEntry]) -> None:
        """Replace the whole board atomically."""
        ...

    async def rebuild_if_missing(self, entries: Sequence[BoardEntry]) -> bool:
        """`rebuild`, unless the board exists by the time it would be swapped in (someone else
        rebuilt it meanwhile, maybe from newer scores): then nothing changes. True if built."""
        ...

    async def top(self, limit: int) -> tuple[list[RankedEntry], int]:
        """The top `limit` entries and the last update time (ms). `BoardMissing` if the board is
        missing."""
        ...

    async def around(self, user_id: int, radius: int) -> MeView | None:
        """The user's entry and up to `radius` neighbours each side; None if the user is not on
        the board. `BoardMissing` if the board is missing."""
        ...

    async def scores(self) -> dict[int, int]:
        """Every user's score on the board (for `scoreboard verify`)."""
        ...


class EdgeGuard(Protocol):
    """Redis: the API's atomic first check (nonce idempotency, then rate limits)."""

    async def claim(
        self,
        *,
        user_id: int,
        nonce: str,
        action_id: uuid.UUID,
        action_type: str,
        ip: str,
        now_ms: int,
        cooldown_ms: int,
        user_limit_per_minute: int,
        ip_limit_per_minute: int,
        limits_enabled: bool,
    ) -> Claim:
        """Atomically: a known nonce answers `Replayed` (before any limit); otherwise, if every
        limit admits the action, record it in the limits, claim the nonce (`PUBLISHING`) and
        answer `Accepted`; otherwise `Limited` and nothing is recorded."""
        ...

    async def release(
        self, *, user_id: int, nonce: str, action_id: uuid.UUID, action_type: str
    ) -> None:
        """Undo a claim whose publish the broker refused (nothing queued): the client may retry
        with the same nonce. A nonce no longer `PUBLISHING` (a replay got the action queued
        meanwhile) is left bound, with its limits."""
        ...

    async def mark_queued(self, actions: Sequence[tuple[int, str, uuid.UUID]]) -> None:
        """These (user_id, nonce, action_id) were confirmed queued: a nonce `PUBLISHING` or
        `OUTCOME_UNKNOWN` with that action now answers 202, and one released meanwhile is bound
        to it again. A nonce bound to another action, or answered already, is left alone."""
        ...

    async def mark_outcome_unknown(self, *, user_id: int, nonce: str, action_id: uuid.UUID) -> None:
        """The publish of this claim got no confirm: its nonce, if still `PUBLISHING` with this
        action, becomes `OUTCOME_UNKNOWN` (the next request with it publishes it again)."""
        ...

    async def set_first_status(self, *, user_id: int, nonce: str, status_code: int) -> None: ...

    async def pending_action(self, action_id: uuid.UUID) -> PendingAction | None:
        """An action claimed by `claim` (kept as long as its nonce), for `GET /actions/<id>`
        before the scorer has stored it."""
        ...

    async def count_attempts(self, limits: Sequence[tuple[str, int]], *, now_ms: int) -> int:
        """Count one attempt against the sliding one-minute window of each (key, per-minute
        limit) (sign-ins per IP, token requests per IP or per client, registrations per IP and
        in all), as one atomic step: if every window has room, it is counted in all of them and
        the answer is 0; otherwise nothing is counted anywhere and the answer is the seconds
        until every window has room. A request one key refuses never uses up another's room."""
        ...

    async def count_request(self, key: str, limit: int, *, now_ms: int) -> RequestCount:
        """Count one request against `key`'s sliding one-minute window of `limit`, as one
        atomic step across every process sharing the guard: admitted (and counted) if the
        window has room, else refused (and not counted, so that `reset_s` is when a retry
        passes)."""
        ...

    async def admit_after_failures(self, key: str, *, now_ms: int, delay: FailureDelay) -> int:
        """A progressive delay on `key`'s recent failures (sign-ins per username and IP): 0 if
        an attempt may run now, and then it is recorded, atomically, as one more failure (call
        `forget_failures` when it succeeds); else the seconds to wait, nothing recorded."""
        ...

    async def forget_failures(self, key: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Delivery:
    """A message from the actions queue, handed from the asyncio side to trio."""

    delivery_tag: int
    channel_id: int
    body: bytes
    message_id: str | None
    redelivered: bool


EVENTS_GAP = b""
"""What `Broker.consume_events` hands over where events may be missing before it: each time its
subscription starts (the first time, or again after the broker was gone), ahead of any event it
receives from then on, and ahead of the first event that fits after some were dropped for lack
of room. Its reader reads the board again. No event is an empty message."""


class Broker(Protocol):
    """RabbitMQ: durable action queue, dead letters, and the events fanout."""

    async def ping(self) -> None: ...

    async def unconsumed_queues(self) -> list[str]:
        """The action queues that no worker consumes right now (`/readyz` of an API process)."""
        ...

    async def declare_topology(self) -> None: ...

    async def publish_action(self, envelope: ActionEnvelope) -> None:
        """Persistent, mandatory, message id = action id; returns once the broker confirmed.
        Raises `PublishFailed` on nack or return (not queued), `PublishOutcomeUnknown` when no
        confirm came (queued or not: publishing the same envelope again is safe)."""
        ...

    async def publish_actions(self, envelopes: Sequence[ActionEnvelope]) -> list[Exception | None]:
        """`publish_action` for each envelope, in one crossing, all confirmed together: the
        outcome of each, in input order (None once confirmed, else what `publish_action` would
        have raised). One envelope's failure does not fail the others."""
        ...

    async def consume_actions(
        self, deliveries: trio.MemorySendChannel[Delivery], prefetch: int
    ) -> None:
        """Run until cancelled: subscribe to the actions queue(s) with manual acks and `prefetch`,
        and hand each delivery to `deliveries` without blocking (the channel holds >= prefetch)."""
        ...

    async def settle(
        self,
        *,
        ack: Sequence[Delivery] = (),
        retry: Sequence[tuple[Delivery, ActionEnvelope]] = (),
        dead: Sequence[tuple[Delivery, str]] = (),
    ) -> None:
        """In one crossing: ack these; republish these with attempts+1 then ack the originals;
        publish these to the dead-letter exchange with the reason, then ack the originals."""
        ...

    async def publish_events(self, bodies: Sequence[bytes]) -> None: ...

    async def consume_events(self, events: trio.MemorySendChannel[bytes]) -> None:
        """Run until cancelled: an exclusive auto-delete queue bound to the events exchange;
        each event handed to `events` without blocking (dropped, and counted, when full), and
        `EVENTS_GAP` where events may be missing before it."""
        ...

    async def queue_depths(self) -> dict[str, int]:
        """Messages ready in the queues: `actions` (not yet delivered), `failed` (dead letters)."""
        ...

    async def list_failed(self, limit: int) -> list[tuple[bytes, str]]:
        """Up to `limit` dead letters, oldest first, with their reasons (left in place)."""
        ...

    async def replay_failed(self, limit: int, action_id: str | None = None) -> int:
        """Move up to `limit` dead letters (of `action_id` only, if given) back to the actions
        queue with their attempts reset; how many moved. Replaying an action twice is safe:
        the store counts an action id once."""
        ...

    async def purge_failed(self, action_id: str | None = None) -> int:
        """Delete every dead letter (of `action_id` only, if given); how many were deleted."""
        ...
