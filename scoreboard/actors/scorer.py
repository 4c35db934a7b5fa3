"""The scorer: group commit of the user actors' decisions, then the acknowledgements.

Batching: it waits for one decision, then gathers what else arrives within `scorer.linger_ms`
(a few milliseconds), up to `scorer.max_batch`, and commits them in one transaction. Only after
the commit does it settle the deliveries with the broker (ack after commit, never before; a
crash in between means a redelivery, which the store answers with the stored outcome).

The results go to the keeper after the commit and before the acknowledgement: a scorer that
dies in between leaves the deliveries unacknowledged, and their redelivery (as duplicates) makes
the keeper read those users back from Postgres. Acknowledged first, the keeper might never hear
of them, and Redis would stay behind Postgres. A `barrier` returns once its batch is committed
and settled, so everything sent before it is in the store.

Failures:
- transient (`BackendUnavailable`, or no answer in time; for the settlement also
  `PublishFailed`): retried in place with backoff until the backend answers. A database or
  broker outage holds the batch (and, through the bounded inboxes and the prefetch, the queue
  behind it); it neither crashes the scorer into a restart loop nor counts against any action;
- `UnknownUser`: the store wrote nothing; those users' actions are dead-lettered, the rest commit;
- anything else is the store's verdict on some action it cannot take (a poison message): the
  batch is split in halves until the action is found, and it is retried (republished, attempts
  + 1) until `amqp.max_attempts`, then recorded as failed and dead-lettered. Only this counts an
  attempt, and so does an action whose user actor crashed while judging it (`Unjudged`).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from dataclasses import dataclass, field
from typing import assert_never

import trio

from scoreboard import metrics
from scoreboard.actors import flags as flagging
from scoreboard.actors import inbox as inboxes
from scoreboard.actors.flags import FlagsHandle, FlagStats
from scoreboard.actors.keeper import KeeperHandle, update_board
from scoreboard.actors.messages import Barrier, Score, ScorerMsg, Unjudged
from scoreboard.actors.retry import call_with_retries
from scoreboard.adapters.interfaces import (
    ActionLog,
    Broker,
    Delivery,
    PublishFailed,
    UnknownUser,
)
from scoreboard.anticheat.records import DecidedAction
from scoreboard.bridge import BridgeClosed
from scoreboard.catalogue import Catalogue
from scoreboard.config import Config
from scoreboard.records import ActionEnvelope, CommitResult, Decision

log = logging.getLogger(__name__)

INBOX_SIZE = 1024  # two default batches (scorer.max_batch 500): one waits while one commits
COMMIT_TIMEOUT_S = 10.0
SETTLE_TIMEOUT_S = 10.0
FAIL_TIMEOUT_S = 10.0

ScorerHandle = trio.MemorySendChannel[ScorerMsg]
"""How the user actors reach the scorer: the sending end of its inbox."""


def open_inbox() -> tuple[ScorerHandle, trio.MemoryReceiveChannel[ScorerMsg]]:
    """The scorer's inbox: the handle its senders use, and the end the scorer reads."""
    return trio.open_memory_channel[ScorerMsg](INBOX_SIZE)


async def score(scorer: ScorerHandle, decision: Decision, delivery: Delivery) -> None:
    """Hand a decision to the scorer's next transaction; `delivery` is settled after it."""
    await scorer.send(Score(decision, delivery))


async def give_up(
    scorer: ScorerHandle, envelope: ActionEnvelope, delivery: Delivery, reason: str
) -> None:
    """Hand over an action that could not be judged, to be retried or failed (`Unjudged`)."""
    await scorer.send(Unjudged(envelope, delivery, reason))


async def barrier(scorer: ScorerHandle) -> None:
    """Until everything sent to the scorer before this is committed and settled."""
    await inboxes.call(scorer, Barrier)


@dataclass(slots=True)
class _Outcome:
    """What one batch came to: committed results, and how to settle every delivery."""

    results: list[CommitResult] = field(default_factory=list)
    # Each committed decision with its result, in commit order.
    decided: list[tuple[Decision, CommitResult]] = field(default_factory=list)
    ack: list[Delivery] = field(default_factory=list)
    retry: list[tuple[Delivery, ActionEnvelope]] = field(default_factory=list)
    dead: list[tuple[Delivery, str]] = field(default_factory=list)


async def run(
    inbox: trio.MemoryReceiveChannel[ScorerMsg],
    keeper: KeeperHandle,
    flags: FlagsHandle,
    *,
    store: ActionLog,
    broker: Broker,
    config: Config,
    catalogue: Catalogue,
    flag_stats: FlagStats,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    with inbox, keeper, flags:
        task_status.started()
        while True:
            try:
                batch = await inboxes.receive_batch(inbox, config.scorer.max_batch)
            except trio.EndOfChannel:
                return
            await _gather_more(inbox, batch, config.scorer.max_batch, config.scorer.linger_ms)
            metrics.BATCH_SIZE.labels("scorer").observe(len(batch))
            scores, unjudged, barriers = _sorted_out(batch)
            outcome = _Outcome()
            if scores:
                await _commit(store, config, scores, outcome)
                if outcome.results:
                    await update_board(keeper, outcome.results)
                flagging.observe(flags, flag_stats, _decided_actions(outcome, catalogue))
            for item in unjudged:
                log.error(
                    "scorer: action %s could not be judged (%s)",
                    item.envelope.action_id,
                    item.reason,
                )
                await _give_up_on(store, config, item.envelope, item.delivery, item.reason, outcome)
            if scores or unjudged:
                await _settle(broker, outcome)
            for reply in barriers:
                inboxes.reply(reply, None)


async def _gather_more(
    inbox: trio.MemoryReceiveChannel[ScorerMsg], batch: list[ScorerMsg], max_size: int, ms: int
) -> None:
    """Add to `batch` what arrives within `ms`, up to `max_size` (a closed inbox ends it early;
    the next receive sees it closed)."""
    with trio.move_on_after(ms / 1000):
        while len(batch) < max_size:
            try:
                batch.append(await inbox.receive())
            except trio.EndOfChannel:
                return


async def _settle(broker: Broker, outcome: _Outcome) -> None:
    await call_with_retries(
        functools.partial(broker.settle, ack=outcome.ack, retry=outcome.retry, dead=outcome.dead),
        what="settling deliveries",
        timeout_s=SETTLE_TIMEOUT_S,
        attempts=math.inf,
        also_retry=(PublishFailed,),  # settling the same deliveries again is safe
    )


def _sorted_out(
    batch: list[ScorerMsg],
) -> tuple[list[Score], list[Unjudged], list[trio.MemorySendChannel[None]]]:
    """The decisions to commit, the actions to give up on, and the barriers to answer after."""
    scores: list[Score] = []
    unjudged: list[Unjudged] = []
    barriers: list[trio.MemorySendChannel[None]] = []
    for msg in batch:
        match msg:
            case Score():
                scores.append(msg)
            case Unjudged():
                unjudged.append(msg)
            case Barrier(reply):
                barriers.append(reply)
            case _:
                assert_never(msg)
    return scores, unjudged, barriers


async def _commit(store: ActionLog, config: Config, scores: list[Score], outcome: _Outcome) -> None:
    """Commit `scores` (in order) and say in `outcome` how each delivery is to be settled."""
    try:
        results = await call_with_retries(
            functools.partial(store.commit_actions, [score.decision for score in scores]),
            what=f"committing {len(scores)} actions",
            timeout_s=COMMIT_TIMEOUT_S,
            attempts=math.inf,
        )
    except UnknownUser as exc:
        known: list[Score] = []
        for score in scores:
            user_id = score.decision.envelope.user_id
            if user_id in exc.user_ids:
                metrics.ACTIONS_FAILED.labels(score.decision.envelope.action_type).inc()
                outcome.dead.append((score.delivery, f"unknown user {user_id}"))
            else:
                known.append(score)
        if len(known) == len(scores):
            raise
        if known:
            await _commit(store, config, known, outcome)
        return
    except BridgeClosed:
        raise  # shutting down
    except Exception as exc:
        if len(scores) > 1:
            middle = len(scores) // 2
            await _commit(store, config, scores[:middle], outcome)
            await _commit(store, config, scores[middle:], outcome)
            return
        refused = scores[0]
        log.error(
            "scorer: the store refused action %s (attempt %d)",
            refused.decision.envelope.action_id,
            refused.decision.envelope.attempts + 1,
            exc_info=exc,
        )
        reason = f"the store refused the action: {exc!r}"
        await _give_up_on(
            store, config, refused.decision.envelope, refused.delivery, reason, outcome
        )
        return
    metrics.observe_commit([score.decision for score in scores], results)
    if log.isEnabledFor(logging.DEBUG):
        for result in results:
            log.debug(
                "committed action %s: %s%s",
                result.action_id,
                result.outcome.status,
                " (already committed)" if result.duplicate else "",
                extra={"action_id": str(result.action_id)},
            )
    outcome.results.extend(results)
    outcome.decided.extend(
        (score.decision, result) for score, result in zip(scores, results, strict=True)
    )
    outcome.ack.extend(score.delivery for score in scores)


def _decided_actions(outcome: _Outcome, catalogue: Catalogue) -> list[DecidedAction]:
    """The batch's first-time decisions as the flags read them, with the store's outcome (a
    suspended user's action is refused there)."""
    return [
        dataclasses.replace(
            DecidedAction.from_decision(decision, catalogue),
            accepted=result.outcome.status == "completed",
            score_delta=result.outcome.score_delta,
        )
        for decision, result in outcome.decided
        if not result.duplicate
    ]


async def _give_up_on(
    store: ActionLog,
    config: Config,
    envelope: ActionEnvelope,
    delivery: Delivery,
    reason: str,
    outcome: _Outcome,
) -> None:
    """One action that cannot be taken now: try it again later (republished, attempts + 1), or,
    on its last attempt, record it failed and dead-letter it."""
    if envelope.attempts + 1 < config.amqp.max_attempts:
        metrics.ACTIONS_RETRIED.inc()
        outcome.retry.append((delivery, envelope))
        return
    await _record_failed(store, envelope, delivery, reason, outcome)


async def _record_failed(
    store: ActionLog, envelope: ActionEnvelope, delivery: Delivery, reason: str, outcome: _Outcome
) -> None:
    """Record the action `failed` with `reason` (an audit row, whatever it holds), and send it
    to the dead letters, from where an operator may replay it."""
    try:
        await call_with_retries(
            functools.partial(store.fail_action, envelope, reason),
            what=f"recording action {envelope.action_id} as failed",
            timeout_s=FAIL_TIMEOUT_S,
            attempts=math.inf,
        )
    except BridgeClosed:
        raise
    except Exception:
        log.exception("scorer: could not record action %s as failed", envelope.action_id)
    metrics.ACTIONS_FAILED.labels(envelope.action_type).inc()
    outcome.dead.append((delivery, reason))
