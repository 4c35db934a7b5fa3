"""The user actor: one per active user, the exact and authoritative judge of that user's actions.

Every action of one user passes through one user actor, in queue order, so its limits need no
locks. Its clock is each envelope's `received_at_ms` (stamped by the API at acceptance): the
decisions are deterministic, and a backlog processed late is judged as of acceptance.

It remembers the user's recent actions, loaded from the store when it meets an action whose
windows it has not seen, so the limits survive restarts. Before its first load it waits until the
scorer has committed everything sent to it so far (`scorer.barrier`), so the decisions of a
reaped or restarted predecessor are in the store when it reads. For each action, in order:

1. an action it already knows (same action id, or the same nonce as one it decided or loaded) is
   a redelivery: forwarded as first decided, never counted again (the store returns its outcome);
2. the action must match the catalogue (its fields, their types and ranges), hold nothing the
   store cannot keep (a NUL character, a lone surrogate: `scoreboard.storable`), its times must
   be believable and no older than the type's `max_age_s`, and its unique key (the catalogue's
   `unique` rule: a task id, a match and opponent, a UTC day) must not be one this actor saw
   completed (`invalid_action`). The decision carries the key: the store refuses it in the
   commit, exactly, if the key was used before (longer ago than this actor remembers, or by
   another worker's actor);
3. with limits on: the action type's cooldown since a completed action of that type, and at most
   `user_actions_per_minute` completed actions in any 60 s window (`rate_limit_exceeded`);
4. otherwise it completes for the catalogue's points.

Anomalies (actions under a second apart, impossible timing) are flagged on the decision whatever
it is, for the audit trail.

The router runs each user actor under a dynamic supervisor: a crash restarts that actor alone.
What it held when it crashed is not lost: the action it was judging (`InHand`, kept by the router
across incarnations) goes to the scorer as unjudged, to be retried and, if it keeps failing,
dead-lettered; the ones still in its inbox wait there for the next incarnation.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import math
import uuid
from dataclasses import dataclass
from typing import assert_never

import trio

from scoreboard.actors.messages import Route, UserMsg
from scoreboard.actors.retry import call_with_retries
from scoreboard.actors.scorer import ScorerHandle, barrier, give_up, score
from scoreboard.adapters.interfaces import ActionLog
from scoreboard.catalogue import ActionType, Catalogue, InvalidActionData
from scoreboard.config import Config
from scoreboard.records import ActionEnvelope, Decision, Outcome, RecentAction, UniqueKey
from scoreboard.storable import unstorable_reason

RATE_WINDOW_MS = 60_000
FUTURE_SKEW_MS = 30_000  # a time this far past acceptance is the client's clock lying
RAPID_FIRE_MS = 1_000  # two actions of one user closer than this are flagged for operators
PRUNE_ABOVE = 256  # remembered actions before the ones outside every window are dropped
HISTORY_TIMEOUT_S = 10.0

CRASHED = "its user actor crashed while judging it"

RAPID_FIRE = "rapid_fire"
IMPOSSIBLE_TIMING = "impossible_timing"
# An old completion is plausible (offline play, a slow client) but worth an operator's look.
STALE_TIMING = "stale_timing"


@dataclass(slots=True)
class InHand:
    """The action a user actor took from its inbox and has not yet handed to the scorer. It
    outlives the actor's incarnations, as the inbox does: an incarnation that finds one at its
    start knows its predecessor crashed holding it."""

    route: Route | None = None


@dataclass(frozen=True, slots=True)
class _Known:
    """An action the ledger remembers: decided here (with its decision) or loaded from the store."""

    received_at_ms: int
    action_type: str
    completed: bool
    decision: Decision | None
    unique_key: str | None = None


def _ceil_seconds(ms: int) -> int:
    return max(1, -(-ms // 1000))


def _strictly_between(times: list[int], after: int, before: int) -> list[int]:
    """The sorted `times` in the open interval (after, before)."""
    return times[bisect.bisect_right(times, after) : bisect.bisect_left(times, before)]


class Ledger:
    """One user's recent actions and the rules judged against them; no I/O."""

    def __init__(self, catalogue: Catalogue, config: Config) -> None:
        self._catalogue = catalogue
        self._limits = config.limits
        self._message_ttl_ms = config.amqp.message_ttl_ms
        cooldowns_ms = [int(entry.cooldown_s * 1000) for entry in catalogue.types.values()]
        # Every rule looks at most this far from an action, either way.
        self.window_ms = max(RATE_WINDOW_MS, *cooldowns_ms)
        self._known: dict[uuid.UUID, _Known] = {}
        # The remembered action that used each nonce first: a new action id with that nonce is
        # a replay of it.
        self._by_nonce: dict[str, uuid.UUID] = {}
        self._times: list[int] = []
        self._completed_times: list[int] = []
        self._completed_by_type: dict[str, list[int]] = {}
        # The (action type, unique key) of the completed actions this actor decided.
        self._used_keys: set[tuple[str, str]] = set()
        self._loaded_since_ms: int | None = None
        self._prune_above = PRUNE_ABOVE

    def history_needed_since(self, received_at_ms: int) -> int | None:
        """From when the store's history must be loaded before judging an action received then;
        None when the ledger already covers it."""
        since = received_at_ms - self.window_ms
        if self._loaded_since_ms is None or since < self._loaded_since_ms:
            return since
        return None

    def add_history(self, since_ms: int, recent: list[RecentAction]) -> None:
        """The store's actions received at or after `since_ms` (ones known already are skipped,
        and `failed` ones: the store refused those, and one that comes again is judged afresh)."""
        for action in recent:
            if action.status == "failed":
                continue
            if action.action_id not in self._known:
                completed = action.status == "completed"
                known = _Known(action.received_at_ms, action.action_type, completed, None)
                self._remember(action.action_id, action.nonce, known)
        if self._loaded_since_ms is None or since_ms < self._loaded_since_ms:
            self._loaded_since_ms = since_ms

    def decide(self, envelope: ActionEnvelope) -> Decision:
        """Judge one action (its history must be loaded) and remember it."""
        earlier = self._earlier_decision(envelope)
        if earlier is not None:
            return earlier
        decision = self._judge(envelope)
        completed = decision.outcome.status == "completed"
        unique_key = decision.unique.key if decision.unique is not None and completed else None
        known = _Known(
            envelope.received_at_ms, envelope.action_type, completed, decision, unique_key
        )
        self._remember(envelope.action_id, envelope.nonce, known)
        if len(self._known) > self._prune_above:
            self._prune(envelope.received_at_ms)
        return decision

    def _earlier_decision(self, envelope: ActionEnvelope) -> Decision | None:
        action_id = envelope.action_id
        if action_id not in self._known:
            action_id = self._by_nonce.get(envelope.nonce, action_id)
        known = self._known.get(action_id)
        if known is None:
            return None
        if known.decision is not None:
            return dataclasses.replace(known.decision, envelope=envelope)
        # Stored already: the store answers with the stored outcome, whatever this says.
        entry = self._catalogue.get(known.action_type)
        delta = entry.points if known.completed and entry is not None else 0
        return Decision(envelope, Outcome("completed" if known.completed else "rejected", delta))

    def _judge(self, envelope: ActionEnvelope) -> Decision:
        now = envelope.received_at_ms
        flags = [RAPID_FIRE] if self._rapid_fire(now) else []
        try:
            entry = self._catalogue.validate(envelope.action_type, envelope.action_data)
        except InvalidActionData as exc:
            return _invalid(envelope, str(exc), flags)
        if (unstorable := unstorable_reason(envelope)) is not None:
            return _invalid(envelope, f"the action cannot be stored: {unstorable}", flags)
        problem = self._future_timing(entry, envelope)
        if problem is not None:
            return _invalid(envelope, problem, [*flags, IMPOSSIBLE_TIMING])
        if (too_old := self._too_old(entry, envelope)) is not None:
            return _invalid(envelope, too_old, [*flags, STALE_TIMING])
        if self._stale_timing(entry, envelope):
            flags.append(STALE_TIMING)
        unique_key = entry.unique_key(envelope.action_data, now)
        unique = None if unique_key is None else UniqueKey(unique_key, entry.uniqueness_reason())
        if unique is not None and (entry.name, unique.key) in self._used_keys:
            return _invalid(envelope, unique.reason, flags)
        if self._limits.enabled:
            # The longest wait that applies, as the API's guards answer (tests/rate_rules.py).
            waits = [self._cooldown_left_ms(entry, now), self._rate_limit_left_ms(now)]
            retry_after_ms = max((wait for wait in waits if wait is not None), default=None)
            if retry_after_ms is not None:
                limited = Outcome(
                    "rejected",
                    0,
                    error="rate_limit_exceeded",
                    message="rate limit exceeded",
                    retry_after_s=_ceil_seconds(retry_after_ms),
                )
                return Decision(envelope, limited, flags=tuple(flags))
        scored = Outcome("completed", entry.points)
        return Decision(envelope, scored, flags=tuple(flags), unique=unique)

    def _rapid_fire(self, now: int) -> bool:
        index = bisect.bisect_left(self._times, now)
        neighbours = self._times[max(0, index - 1) : index + 1]
        return any(abs(now - then) < RAPID_FIRE_MS for then in neighbours)

    def _future_timing(self, entry: ActionType, envelope: ActionEnvelope) -> str | None:
        for name in _times_of(entry):
            if envelope.action_data[name] * 1000 > envelope.received_at_ms + FUTURE_SKEW_MS:
                return f"{name} is in the future"
        return None

    def _too_old(self, entry: ActionType, envelope: ActionEnvelope) -> str | None:
        if entry.max_age_s is None:
            return None
        oldest_ms = envelope.received_at_ms - entry.max_age_s * 1000
        for name in _times_of(entry):
            if envelope.action_data[name] * 1000 < oldest_ms:
                return f"{name} is more than {entry.max_age_s} s before the action was received"
        return None

    def _stale_timing(self, entry: ActionType, envelope: ActionEnvelope) -> bool:
        oldest_plausible_ms = envelope.received_at_ms - self._message_ttl_ms
        return any(
            envelope.action_data[name] * 1000 < oldest_plausible_ms for name in _times_of(entry)
        )

    def _cooldown_left_ms(self, entry: ActionType, now: int) -> int | None:
        """How long until this type's cooldown allows the action, None if it does now. A completed
        action of the type less than the cooldown away, before or after, blocks it."""
        cooldown_ms = int(entry.cooldown_s * 1000)
        times = self._completed_by_type.get(entry.name, [])
        blocking = _strictly_between(times, now - cooldown_ms, now + cooldown_ms)
        if not blocking:
            return None
        return blocking[-1] + cooldown_ms - now

    def _rate_limit_left_ms(self, now: int) -> int | None:
        """How long until the per-user limit allows the action, None if it does now. It must not
        make any window of 60 s hold more than the limit of completed actions, counting the ones
        received after it (a retried action comes back late)."""
        limit = self._limits.user_actions_per_minute
        times = self._completed_times
        near = _strictly_between(times, now - RATE_WINDOW_MS, now + RATE_WINDOW_MS)
        position = bisect.bisect_right(near, now)
        merged = [*near[:position], now, *near[position:]]
        # Any limit + 1 consecutive actions including this one must span a full window.
        for first in range(max(0, position - limit), min(position, len(merged) - 1 - limit) + 1):
            if merged[first + limit] - merged[first] < RATE_WINDOW_MS:
                # A retry arrives after every known action; it passes once the limit-th newest
                # completed one is a window old.
                anchor = near[-limit] if limit > 0 else now
                return anchor + RATE_WINDOW_MS - now
        return None

    def _remember(self, action_id: uuid.UUID, nonce: str, known: _Known) -> None:
        self._known[action_id] = known
        self._by_nonce.setdefault(nonce, action_id)
        bisect.insort(self._times, known.received_at_ms)
        if known.unique_key is not None:
            self._used_keys.add((known.action_type, known.unique_key))
        if known.completed:
            bisect.insort(self._completed_times, known.received_at_ms)
            of_type = self._completed_by_type.setdefault(known.action_type, [])
            bisect.insort(of_type, known.received_at_ms)

    def _prune(self, now: int) -> None:
        """Forget actions no rule can reach from now on; an older action arriving later (a retry)
        makes the actor load that history from the store again."""
        cutoff = now - 2 * self.window_ms
        self._known = {
            key: known for key, known in self._known.items() if known.received_at_ms >= cutoff
        }
        self._by_nonce = {
            nonce: action_id
            for nonce, action_id in self._by_nonce.items()
            if action_id in self._known
        }
        self._used_keys = {
            (known.action_type, known.unique_key)
            for known in self._known.values()
            if known.unique_key is not None
        }
        del self._times[: bisect.bisect_left(self._times, cutoff)]
        del self._completed_times[: bisect.bisect_left(self._completed_times, cutoff)]
        for times in self._completed_by_type.values():
            del times[: bisect.bisect_left(times, cutoff)]
        if self._loaded_since_ms is not None:
            self._loaded_since_ms = max(self._loaded_since_ms, cutoff)
        self._prune_above = max(PRUNE_ABOVE, 2 * len(self._known))


def _times_of(entry: ActionType) -> list[str]:
    return [name for name, kind in entry.fields if kind == "unix_seconds"]


def _invalid(envelope: ActionEnvelope, message: str, flags: list[str]) -> Decision:
    invalid = Outcome("rejected", 0, error="invalid_action", message=message)
    return Decision(envelope, invalid, flags=tuple(flags))


async def run(
    inbox: trio.MemoryReceiveChannel[UserMsg],
    scorer: ScorerHandle,
    *,
    user_id: int,
    store: ActionLog,
    catalogue: Catalogue,
    config: Config,
    in_hand: InHand | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Judge `user_id`'s actions until the router closes the inbox. History is loaded on demand:
    which window an action needs is known only once it arrives."""
    in_hand = in_hand or InHand()
    with inbox, scorer:
        ledger = Ledger(catalogue, config)
        task_status.started()
        if in_hand.route is not None:
            await give_up(scorer, in_hand.route.envelope, in_hand.route.delivery, CRASHED)
            in_hand.route = None
        committed_before_me = False
        async for msg in inbox:
            match msg:
                case Route(envelope, delivery):
                    in_hand.route = msg
                    since = ledger.history_needed_since(envelope.received_at_ms)
                    if since is not None:
                        if not committed_before_me:
                            # A predecessor's last decisions may still be on their way.
                            await barrier(scorer)
                            committed_before_me = True
                        recent = await call_with_retries(
                            functools.partial(store.recent_actions, user_id, since),
                            what=f"loading recent actions of user {user_id}",
                            timeout_s=HISTORY_TIMEOUT_S,
                            # An outage holds this user's actions; it is no reason to crash.
                            attempts=math.inf,
                        )
                        ledger.add_history(since, recent)
                    await score(scorer, ledger.decide(envelope), delivery)
                    in_hand.route = None
                case _:
                    assert_never(msg)
