"""The `Broker` of embedded mode: a durable queue in SQLite (an outbox) and in-process events.

It shares the store's SQLite file (`sqlite.py`). RabbitMQ's contract, kept:

- `publish_action` returns once the row is committed (WAL, `synchronous=FULL`): the 202 that
  follows survives `kill -9`. A failed write is `PublishFailed`: nothing was accepted.
  `publish_actions` writes its whole batch in one transaction, so all of it fails together.
- One consumer at a time (an exclusive consumer); another `consume_actions` stands by until the
  first ends. Deliveries go oldest first, at most `prefetch` unsettled, handed to trio without
  blocking. A delivery's tag is its row; its `channel_id` is the consumer's incarnation.
- `settle` deletes acked rows; a retry is a new row with attempts + 1, due after the configured
  delay (`amqp.retry_delays_ms`: its `published_at_ms` is when the delay ends, and no row is
  delivered before its `published_at_ms`, as RabbitMQ's delay queues hold it), and a
  dead letter a row of `failed_actions` with the reason, each written in the same transaction
  that deletes the original (atomic, where RabbitMQ publishes then acks). Deliveries of an
  incarnation that has ended are skipped: their rows are delivered again.
- Unsettled rows stay in the table, so the next consumer (after a stop, or after a crash of the
  process) gets them again, flagged `redelivered` (each hand-over is counted in the row).
- The queue's message TTL: a row waiting longer than `amqp.message_ttl_ms` is dead-lettered as
  `dead-lettered by the broker: expired` when the consumer next reads the queue.
- Events are a broadcast to every `consume_events` subscriber of this process; an event that
  does not fit a subscriber's channel is dropped and counted, and `EVENTS_GAP` goes ahead of the
  next one that fits (`event_offers.py`), as it does ahead of the first.

Differences: no priorities (nothing publishes with one); the queue names of `AmqpConfig` are
not used (the tables are the topology); the consumer also polls (`POLL_INTERVAL_S`), so rows
that another process wrote (`scoreboard failed replay`) are picked up.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import sqlite3
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

import trio

from scoreboard import clock
from scoreboard.adapters.event_offers import EventOffers
from scoreboard.adapters.interfaces import (
    EVENTS_GAP,
    BackendUnavailable,
    Broker,
    Delivery,
    PendingAction,
    PublishFailed,
)
from scoreboard.adapters.sqlite import SQLiteDatabase
from scoreboard.config import AmqpConfig
from scoreboard.records import ActionEnvelope
from scoreboard.wire import MalformedMessage, decode_envelope, encode_envelope

# How often an idle consumer looks at the table for rows written by another process.
POLL_INTERVAL_S = 1.0
EXPIRED_REASON = "dead-lettered by the broker: expired"


@dataclass(frozen=True, slots=True)
class BrokerStatistics:
    dropped_events: int  # events not handed to a subscriber because its channel was full
    requeued_deliveries: int  # deliveries left for later because the trio channel was full


@dataclass(frozen=True, slots=True)
class _Row:
    seq: int
    message_id: str
    body: bytes
    redelivered: bool


class EmbeddedBroker(Broker):
    def __init__(self, database: SQLiteDatabase, config: AmqpConfig):
        self._db = database
        self._config = config
        self._incarnations = itertools.count(1)
        self._exclusive = trio.Lock()
        # The running consumer's unsettled rows, by incarnation.
        self._unsettled: dict[int, set[int]] = {}
        self._changed = trio.Event()
        self._subscribers: set[trio.MemorySendChannel[bytes]] = set()
        self._event_offers = EventOffers()
        self._requeued_deliveries = 0

    def statistics(self) -> BrokerStatistics:
        return BrokerStatistics(self._event_offers.dropped, self._requeued_deliveries)

    def _notify(self) -> None:
        """Wake the consumer: there are new rows, or room for more in flight."""
        self._changed.set()
        self._changed = trio.Event()

    async def ping(self) -> None:
        await self._db.read(lambda connection: connection.execute("SELECT 1").fetchone())

    async def unconsumed_queues(self) -> list[str]:
        """None: the consumer runs in this very process, which `/readyz` checks by its actors."""
        await trio.lowlevel.checkpoint()
        return []

    async def declare_topology(self) -> None:
        """Nothing to declare: the tables are created by the SQLite migrations."""

    async def publish_action(self, envelope: ActionEnvelope) -> None:
        [failure] = await self.publish_actions([envelope])
        if failure is not None:
            raise failure

    async def publish_actions(self, envelopes: Sequence[ActionEnvelope]) -> list[Exception | None]:
        """One transaction (one fsync) for the whole batch: all of it is accepted, or none."""
        try:
            await self._db.write(
                functools.partial(_enqueue, [encode_envelope(e) for e in envelopes])
            )
        except BackendUnavailable as exc:
            return [PublishFailed(f"the outbox write failed: {exc}") for _ in envelopes]
        self._notify()
        return [None for _ in envelopes]

    # Consuming

    async def consume_actions(
        self, deliveries: trio.MemorySendChannel[Delivery], prefetch: int
    ) -> None:
        async with self._exclusive:
            incarnation = next(self._incarnations)
            unsettled: set[int] = set()
            self._unsettled[incarnation] = unsettled
            try:
                await self._consume(incarnation, unsettled, deliveries, prefetch)
            finally:
                # Rows of this incarnation that were not settled wait for the next consumer.
                del self._unsettled[incarnation]

    async def _consume(
        self,
        incarnation: int,
        unsettled: set[int],
        deliveries: trio.MemorySendChannel[Delivery],
        prefetch: int,
    ) -> None:
        while True:
            changed = self._changed
            room = prefetch - len(unsettled)
            rows: list[_Row] = []
            handed_all = True
            next_due_ms: int | None = None
            if room > 0:
                now = clock.now_ms()
                take = functools.partial(
                    _take,
                    frozenset(unsettled),
                    room,
                    now,
                    now - self._config.message_ttl_ms,
                )
                rows, next_due_ms = await self._db.write(take)
            for row in rows:
                delivery = Delivery(row.seq, incarnation, row.body, row.message_id, row.redelivered)
                try:
                    deliveries.send_nowait(delivery)
                except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                    # The channel holds the whole prefetch, so this is a mistake or the end:
                    # read this row and the rest again next time.
                    self._requeued_deliveries += 1
                    handed_all = False
                    break
                unsettled.add(row.seq)
            if room <= 0 or len(rows) < room or not handed_all:
                wait_s = POLL_INTERVAL_S
                if next_due_ms is not None:
                    wait_s = min(wait_s, max(0, next_due_ms - clock.now_ms()) / 1000)
                with trio.move_on_after(wait_s):
                    await changed.wait()

    async def settle(
        self,
        *,
        ack: Sequence[Delivery] = (),
        retry: Sequence[tuple[Delivery, ActionEnvelope]] = (),
        dead: Sequence[tuple[Delivery, str]] = (),
    ) -> None:
        """Deliveries not known here (settled already, or of a consumer that ended) are
        skipped. All the rest is one transaction; if it fails, nothing is settled and calling
        `settle` again with the same arguments is safe."""
        acked = [d.delivery_tag for d in ack if self._is_unsettled(d)]
        now = clock.now_ms()
        retried = [
            (
                d.delivery_tag,
                encode_envelope(dataclasses.replace(e, attempts=e.attempts + 1)),
                now + self._config.retry_delay_ms(e.attempts + 1),
            )
            for d, e in retry
            if self._is_unsettled(d)
        ]
        dead_letters = [(d.delivery_tag, reason) for d, reason in dead if self._is_unsettled(d)]
        if not (acked or retried or dead_letters):
            return
        await self._db.write(functools.partial(_settle, acked, retried, dead_letters))
        for delivery in (*ack, *(d for d, _ in retry), *(d for d, _ in dead)):
            self._unsettled.get(delivery.channel_id, set()).discard(delivery.delivery_tag)
        self._notify()

    def _is_unsettled(self, delivery: Delivery) -> bool:
        return delivery.delivery_tag in self._unsettled.get(delivery.channel_id, ())

    # Events

    async def publish_events(self, bodies: Sequence[bytes]) -> None:
        for subscriber in list(self._subscribers):
            for body in bodies:
                self._event_offers.offer(subscriber, body)

    async def consume_events(self, events: trio.MemorySendChannel[bytes]) -> None:
        self._subscribers.add(events)
        self._event_offers.offer(events, EVENTS_GAP)
        try:
            await trio.sleep_forever()
        finally:
            self._subscribers.discard(events)
            self._event_offers.forget(events)

    # The failed queue

    async def queue_depths(self) -> dict[str, int]:
        """The outbox's rows not yet handed out, and the dead letters."""
        return await self._db.read(_queue_depths)

    async def list_failed(self, limit: int) -> list[tuple[bytes, str]]:
        """Up to `limit` dead letters, oldest first, with their reasons."""
        return await self._db.read(functools.partial(_list_failed, limit))

    async def replay_failed(self, limit: int, action_id: str | None = None) -> int:
        """Move up to `limit` dead letters (of `action_id` only, if given) back to the queue
        with their attempts reset."""
        moved = await self._db.write(functools.partial(_replay_failed, limit, action_id))
        self._notify()
        return moved

    async def purge_failed(self, action_id: str | None = None) -> int:
        """Delete every dead letter (of `action_id` only, if given); how many were deleted."""
        return await self._db.write(functools.partial(_purge_failed, action_id))

    # What the edge guard asks after a restart (`memory_board.ClaimHistory`)

    async def nonce_holder(self, user_id: int, nonce: str) -> uuid.UUID | None:
        row = await self._db.read(functools.partial(_nonce_holder, user_id, nonce))
        return None if row is None else uuid.UUID(row)

    async def queued_action(self, action_id: uuid.UUID) -> PendingAction | None:
        body = await self._db.read(functools.partial(_queued_body, str(action_id)))
        if body is None:
            return None
        envelope = decode_envelope(body)
        return PendingAction(
            envelope.user_id, envelope.action_type, envelope.nonce, envelope.received_at_ms
        )


# The jobs, each run in the database's thread (`SQLiteDatabase.read` / `write`).


def _identity(body: bytes) -> tuple[str, int | None, str | None]:
    """Message id, user and nonce of a body (a body that is not an envelope has none)."""
    try:
        envelope = decode_envelope(body)
    except MalformedMessage:
        return "", None, None
    return str(envelope.action_id), envelope.user_id, envelope.nonce


def _enqueue(
    bodies: list[bytes], connection: sqlite3.Connection, due_at_ms: Sequence[int] = ()
) -> None:
    """Queue the bodies, now or each at its `due_at_ms`. A row's `published_at_ms` is when it
    enters the queue (a retry: when its delay ends, as RabbitMQ moves it from its delay queue
    then): no consumer sees it before, and its message TTL counts from then."""
    now = clock.now_ms()
    due = list(due_at_ms) or [now] * len(bodies)
    connection.executemany(
        "INSERT INTO outbox (message_id, user_id, nonce, body, published_at_ms)"
        " VALUES (?, ?, ?, ?, ?)",
        [(*_identity(body), body, at) for body, at in zip(bodies, due, strict=True)],
    )


def _dead_letter(seq: int, reason: str, connection: sqlite3.Connection) -> None:
    connection.execute(
        "INSERT INTO failed_actions (message_id, user_id, nonce, body, reason, failed_at_ms)"
        " SELECT message_id, user_id, nonce, body, ?, ? FROM outbox WHERE seq = ?",
        (reason, clock.now_ms(), seq),
    )
    connection.execute("DELETE FROM outbox WHERE seq = ?", (seq,))


def _take(
    unsettled: frozenset[int],
    limit: int,
    now: int,
    expired_before_ms: int,
    connection: sqlite3.Connection,
) -> tuple[list[_Row], int | None]:
    """Dead-letter what waited too long, then the first `limit` rows in the queue (published
    by now) that are not in flight, counted as delivered once more; and when the next row not
    yet in the queue (a retry waiting for its delay) enters it (None: none waits)."""
    expired = connection.execute(
        "SELECT seq FROM outbox WHERE published_at_ms < ?", (expired_before_ms,)
    ).fetchall()
    for (seq,) in expired:
        if seq not in unsettled:
            _dead_letter(seq, EXPIRED_REASON, connection)
    rows = [
        _Row(row["seq"], row["message_id"], row["body"], row["deliveries"] > 0)
        for row in connection.execute(
            "SELECT seq, message_id, body, deliveries FROM outbox WHERE published_at_ms <= ?"
            " ORDER BY seq LIMIT ?",
            (now, limit + len(unsettled)),
        )
        if row["seq"] not in unsettled
    ][:limit]
    connection.executemany(
        "UPDATE outbox SET deliveries = deliveries + 1 WHERE seq = ?", [(r.seq,) for r in rows]
    )
    (next_due,) = connection.execute(
        "SELECT min(published_at_ms) FROM outbox WHERE published_at_ms > ?", (now,)
    ).fetchone()
    return rows, next_due


def _settle(
    acked: list[int],
    retried: list[tuple[int, bytes, int]],
    dead_letters: list[tuple[int, str]],
    connection: sqlite3.Connection,
) -> None:
    connection.executemany("DELETE FROM outbox WHERE seq = ?", [(seq,) for seq in acked])
    _enqueue([body for _, body, _ in retried], connection, [due for _, _, due in retried])
    connection.executemany("DELETE FROM outbox WHERE seq = ?", [(seq,) for seq, _, _ in retried])
    for seq, reason in dead_letters:
        _dead_letter(seq, reason, connection)


def _queue_depths(connection: sqlite3.Connection) -> dict[str, int]:
    (actions,) = connection.execute("SELECT count(*) FROM outbox").fetchone()
    (failed,) = connection.execute("SELECT count(*) FROM failed_actions").fetchone()
    return {"actions": actions, "failed": failed}


def _list_failed(limit: int, connection: sqlite3.Connection) -> list[tuple[bytes, str]]:
    rows = connection.execute(
        "SELECT body, reason FROM failed_actions ORDER BY seq LIMIT ?", (limit,)
    )
    return [(bytes(row["body"]), row["reason"]) for row in rows]


def _replay_failed(limit: int, action_id: str | None, connection: sqlite3.Connection) -> int:
    rows = connection.execute(
        "SELECT seq, body FROM failed_actions WHERE coalesce(?, message_id) = message_id"
        " ORDER BY seq LIMIT ?",
        (action_id, limit),
    ).fetchall()
    bodies = []
    for row in rows:
        body = bytes(row["body"])
        # A body that is not an envelope goes back as it is: the consumer dead-letters it again.
        with contextlib.suppress(MalformedMessage):
            body = encode_envelope(dataclasses.replace(decode_envelope(body), attempts=0))
        bodies.append(body)
    _enqueue(bodies, connection)
    connection.executemany(
        "DELETE FROM failed_actions WHERE seq = ?", [(row["seq"],) for row in rows]
    )
    return len(rows)


def _purge_failed(action_id: str | None, connection: sqlite3.Connection) -> int:
    deleted = connection.execute(
        "DELETE FROM failed_actions WHERE coalesce(?, message_id) = message_id", (action_id,)
    )
    return deleted.rowcount


_NONCE_HOLDER = """
SELECT action_id FROM action_logs WHERE user_id = :user_id AND nonce = :nonce
UNION ALL
SELECT action_id FROM action_failures WHERE user_id = :user_id AND nonce = :nonce
UNION ALL
SELECT message_id FROM outbox WHERE user_id = :user_id AND nonce = :nonce
UNION ALL
SELECT message_id FROM failed_actions WHERE user_id = :user_id AND nonce = :nonce
LIMIT 1
"""


def _nonce_holder(user_id: int, nonce: str, connection: sqlite3.Connection) -> str | None:
    row = connection.execute(_NONCE_HOLDER, {"user_id": user_id, "nonce": nonce}).fetchone()
    return None if row is None else str(row[0])


def _queued_body(message_id: str, connection: sqlite3.Connection) -> bytes | None:
    row = connection.execute(
        "SELECT body FROM outbox WHERE message_id = ? ORDER BY seq LIMIT 1", (message_id,)
    ).fetchone()
    return None if row is None else bytes(row["body"])
