"""The rules of `Store.commit_actions` that no database decides: how each action of a batch ends.

Both stores read the batch's users (their scores, locked) and the stored actions that share an
action id or a (user, nonce) with the batch, then let `plan_commit` walk the batch in input order:
each action is a redelivery of a stored (or earlier) one, a replayed nonce, or new; a new one
moves its user's running score. A new completed action whose unique key (the catalogue's
`unique` rule, `Decision.unique`) the user has used already, stored or earlier in the batch, is
refused instead (`invalid_action`, with the rule as its reason). The store then inserts the
plan's new and superseding actions into `action_logs` and the unique keys they take
(`action_unique_keys`, whose primary key holds the rule even against a writer that skipped the
plan), adds each user's `score_changes` and answers with the plan's `results`.

A failure (a row of `action_failures`, which the stores read as a stored action with status
`failed`) is not final: it records that the store refused the action (the reason is its
message), and the same action delivered again (the operator's `scoreboard failed replay` once
the cause is fixed, or a redelivery) is judged and settled afresh, once: its row in
`action_logs` is flagged `settled_after_failure`, and the failure stays beside it, since both
tables are append-only.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from scoreboard.records import CommitResult, Decision, Outcome
from scoreboard.wire import decode_outcome

DUPLICATE_NONCE_MESSAGE = "duplicate nonce"
SUSPENDED_MESSAGE = "the account is suspended"
# An anomaly flag: this action failed before (its failure is kept in `action_failures`).
SETTLED_AFTER_FAILURE = "settled_after_failure"

# What both stores select to build a `StoredAction`: the outcome's columns bear its fields' names.
STORED_ACTION_COLUMNS = (
    "action_id, user_id, nonce, status, score_delta, new_score, error, message, retry_after_s"
)


def outcome_columns(
    outcome: Outcome,
) -> tuple[str, int, int | None, str | None, str | None, int | None]:
    """The columns of `action_logs` that keep an outcome, in the order both stores write them
    (status, score_delta, new_score, error, message, retry_after_s)."""
    return (
        outcome.status,
        outcome.score_delta,
        outcome.new_score,
        outcome.error,
        outcome.message,
        outcome.retry_after_s,
    )


@dataclass(frozen=True, slots=True)
class Settled:
    """How one action of a batch ended, before its user's final `score_reached_at` is known."""

    outcome: Outcome
    old_score: int
    duplicate: bool


@dataclass(frozen=True, slots=True)
class StoredAction:
    """A row of `action_logs` that the batch redelivers (same action id) or replays the nonce of
    (same user and nonce)."""

    action_id: uuid.UUID
    user_id: int
    nonce: str
    outcome: Outcome  # its `new_score` is always set: the store wrote it with the row

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> StoredAction:
        """A row of `STORED_ACTION_COLUMNS`, as a mapping."""
        action_id = row["action_id"]
        return cls(
            action_id=action_id if isinstance(action_id, uuid.UUID) else uuid.UUID(action_id),
            user_id=row["user_id"],
            nonce=row["nonce"],
            outcome=decode_outcome(row),
        )

    def as_settled(self) -> Settled:
        assert self.outcome.new_score is not None
        old_score = self.outcome.new_score - self.outcome.score_delta
        return Settled(self.outcome, old_score, duplicate=True)


@dataclass(frozen=True, slots=True)
class ScoreChange:
    """What a batch's new actions do to one user: the sum of their deltas, and the latest
    acceptance among them (the user's `last_action_at`)."""

    delta: int
    last_received_at_ms: int


@dataclass(frozen=True, slots=True)
class TakenKey:
    """A unique key a completed action uses up (a row of `action_unique_keys`)."""

    user_id: int
    action_type: str
    key: str
    action_id: uuid.UUID


@dataclass(frozen=True, slots=True)
class CommitPlan:
    decisions: Sequence[Decision]
    settled: list[Settled]  # one per decision, in input order
    new: list[tuple[Decision, Settled]]  # the actions to insert
    superseding: list[tuple[Decision, Settled]]  # the actions that settle a stored failure
    taken_keys: list[TakenKey] = field(default_factory=list)  # the unique keys to insert

    def score_changes(self) -> dict[int, ScoreChange]:
        """Per user with new or superseding actions."""
        changes: dict[int, ScoreChange] = {}
        for decision, settled in [*self.new, *self.superseding]:
            envelope = decision.envelope
            change = changes.get(envelope.user_id, ScoreChange(0, envelope.received_at_ms))
            changes[envelope.user_id] = ScoreChange(
                change.delta + settled.outcome.score_delta,
                max(change.last_received_at_ms, envelope.received_at_ms),
            )
        return changes

    def results(
        self, usernames: Mapping[int, str], score_reached_at_ms: Mapping[int, int]
    ) -> list[CommitResult]:
        """The batch's answer, given each user's name and `score_reached_at` after the commit."""
        return [
            CommitResult(
                action_id=decision.envelope.action_id,
                user_id=decision.envelope.user_id,
                username=usernames[decision.envelope.user_id],
                nonce=decision.envelope.nonce,
                outcome=settled.outcome,
                old_score=settled.old_score,
                score_reached_at_ms=score_reached_at_ms[decision.envelope.user_id],
                duplicate=settled.duplicate,
            )
            for decision, settled in zip(self.decisions, self.settled, strict=True)
        ]


def check_deltas(decisions: Sequence[Decision]) -> None:
    """A score only grows: a negative delta is a bug upstream, refused before any I/O."""
    if negative := [d.envelope.action_id for d in decisions if d.outcome.score_delta < 0]:
        raise ValueError(f"negative score deltas for actions {negative}")


def unique_keys_of(decisions: Sequence[Decision]) -> list[tuple[int, str, str]]:
    """The (user_id, action_type, key) of the batch whose stored use `plan_commit` must know."""
    return [
        (d.envelope.user_id, d.envelope.action_type, d.unique.key)
        for d in decisions
        if d.unique is not None and d.outcome.status == "completed"
    ]


def plan_commit(
    decisions: Sequence[Decision],
    scores: Mapping[int, int],
    stored: Sequence[StoredAction],
    used_keys: Iterable[tuple[int, str, str]] = (),
    suspended: Collection[int] = (),
) -> CommitPlan:
    """Walk the batch in input order, from each user's stored score (`scores`), the stored
    actions it may repeat and the stored unique keys of `unique_keys_of(decisions)`. A new
    action of a `suspended` user (read under the users' locks, so a suspension is exact) is
    refused `account_suspended`, whatever its user actor decided, and takes no unique key."""
    used = set(used_keys)
    taken: list[TakenKey] = []
    running = dict(scores)
    by_action_id = {a.action_id: a.as_settled() for a in stored if a.outcome.status != "failed"}
    failed = {a.action_id for a in stored if a.outcome.status == "failed"}
    nonce_holders = {(a.user_id, a.nonce): a.action_id for a in stored}
    settled: list[Settled] = []
    new: list[tuple[Decision, Settled]] = []
    superseding: list[tuple[Decision, Settled]] = []
    for decision in decisions:
        envelope = decision.envelope
        score = running[envelope.user_id]
        if (earlier := by_action_id.get(envelope.action_id)) is not None:
            settled.append(earlier)
            continue
        holder = nonce_holders.get((envelope.user_id, envelope.nonce))
        if holder is not None and holder != envelope.action_id:
            refused = Outcome(
                "rejected",
                0,
                new_score=score,
                error="invalid_action",
                message=DUPLICATE_NONCE_MESSAGE,
            )
            replayed_nonce = Settled(refused, old_score=score, duplicate=True)
            settled.append(replayed_nonce)
            continue
        decided = decision.outcome
        if envelope.user_id in suspended:
            decided = replace(
                decided,
                status="rejected",
                score_delta=0,
                error="account_suspended",
                message=SUSPENDED_MESSAGE,
                retry_after_s=None,
            )
            decision = replace(decision, outcome=decided)
        elif decided.status == "completed" and decision.unique is not None:
            key = (envelope.user_id, envelope.action_type, decision.unique.key)
            if key in used:
                decided = replace(
                    decided,
                    status="rejected",
                    score_delta=0,
                    error="invalid_action",
                    message=decision.unique.reason,
                    retry_after_s=None,
                )
                decision = replace(decision, outcome=decided)
            else:
                used.add(key)
                taken.append(TakenKey(*key, envelope.action_id))
        delta = decided.score_delta if decided.status == "completed" else 0
        running[envelope.user_id] = score + delta
        ending = Settled(
            replace(decided, score_delta=delta, new_score=score + delta),
            old_score=score,
            duplicate=False,
        )
        settled.append(ending)
        if envelope.action_id in failed:
            failed.discard(envelope.action_id)
            flagged = replace(decision, flags=(*decision.flags, SETTLED_AFTER_FAILURE))
            superseding.append((flagged, ending))
        else:
            new.append((decision, ending))
        by_action_id[envelope.action_id] = replace(ending, duplicate=True)
        nonce_holders[(envelope.user_id, envelope.nonce)] = envelope.action_id
    return CommitPlan(decisions, settled, new, superseding, taken)
