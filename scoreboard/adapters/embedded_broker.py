"""The `Broker` of embedded mode: a durable queue in SQLite (an outbox) and in-process events.

It shares the store's SQLite file (`sqlite.py`). RabbitMQ's contract, kept:

- `publish_action` returns once the row is committed (WAL, `synchronous=FULL`): the 202 that
  follows survives `kill -9`. A failed write is `PublishFailed`: nothing was accepted.
  `publish_actions` writes its whole batch in one transaction, so all of it fails together.
- One consumer at a time (an exclusive consumer); another `consume_actions` stands by until the
  first ends. Deliveries go oldest first, at most `prefetch` unsettled, handed to trio without
  blocking. A delivery's tag is its row; its `channel_id` is the consumer's incarnation.
- `settle` deletes acked rows; a retry is a new row with attempts + 1 and a dead letter a row of
  `failed_actions` with the reason, each written in the same transaction that deletes the
  original (atomic, where RabbitMQ publishes then acks). Deliveries of an incarnation that has
  ended are skipped: their rows are delivered again.
- Unsettled rows stay in the table, so the next consumer (after a stop, or after a crash of the
  process) gets them again, flagged `redelivered` (each hand-over is counted in the row).
- The queue's message TTL: a row waiting longer than `amqp.message_ttl_ms` is dead-lettered as
  `dead-lettered by the broker: expired` when the consumer next reads the queue.
- Events are a broadcast to every `consume_events` subscriber of this process; an event that
  does not fit a subscriber's channel is dropped and counted.

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
from scoreboard.adapters.interfaces import (
    BackendUnavailable,
    Broker,
    Delivery,
    PendingAction,
    PublishFailed,
)
from scoreboard.adapters.sqlite import SQLiteDatabase
from scoreboard.config import AmqpConfig
from scoreboard.model import ActionEnvelope, MalformedMessage

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
        self._dropped_events = 0
        self._requeued_deliveries = 0

    def statistics(self) -> BrokerStatistics:
        return BrokerStatistics(self._dropped_events, self._requeued_deliveries)

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
            await self._db.write(functools.partial(_enqueue, [e.encode() for e in envelopes]))
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
        after_seq = 0
        while True:
            changed = self._changed
            room = prefetch - len(unsettled)
            rows: list[_Row] = []
            handed_all = True
            if room > 0:
                take = functools.partial(
                    _take,
                    after_seq,
                    frozenset(unsettled),
                    room,
                    clock.now_ms() - self._config.message_ttl_ms,
                )
                rows = await self._db.write(take)
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
                after_seq = row.seq
            if room <= 0 or len(rows) < room or not handed_all:
                with trio.move_on_after(POLL_INTERVAL_S):
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
        retried = [
            (d.delivery_tag, dataclasses.replace(e, attempts=e.attempts + 1).encode())
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
                try:
                    subscriber.send_nowait(body)
                except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                    self._dropped_events += 1

    async def consume_events(self, events: trio.MemorySendChannel[bytes]) -> None:
        self._subscribers.add(events)
        try:
            await trio.sleep_forever()
        finally:
            self._subscribers.discard(events)

    # The failed queue

    async def queue_depths(self) -> dict[str, int]:
        """The outbox's rows not yet handed out, and the dead letters."""
        return await self._db.read(_queue_depths)

    async def list_failed(self, limit: int) -> list[tuple[bytes, str]]:
        """Up to `limit` dead letters, oldest first, with their reasons."""
        return await self._db.read(functools.partial(_list_failed, limit))

    async def replay_failed(self, limit: int) -> int:
        """Move up to `limit` dead letters back to the queue with their attempts reset."""
        moved = await self._db.write(functools.partial(_replay_failed, limit))
        self._notify()
        return moved

    # What the edge guard asks after a restart (`memory_board.ClaimHistory`)

    async def nonce_holder(self, user_id: int, nonce: str) -> uuid.UUID | None:
        row = await self._db.read(functools.partial(_nonce_holder, user_id, nonce))
        return None if row is None else uuid.UUID(row)

    async def queued_action(self, action_id: uuid.UUID) -> PendingAction | None:
        body = await self._db.read(functools.partial(_queued_body, str(action_id)))
        if body is None:
            return None
        envelope = ActionEnvelope.decode(body)
        return PendingAction(
            envelope.user_id, envelope.action_type, envelope.nonce, envelope.received_at_ms
        )


# The jobs, each run in the database's thread (`SQLiteDatabase.read` / `write`).


def _identity(body: bytes) -> tuple[str, int | None, str | None]:
    """Message id, user and nonce of a body (a body that is not an envelope has none)."""
    try:
        envelope = ActionEnvelope.decode(body)
    except MalformedMessage:
        return "", None, None
    return str(envelope.action_id), envelope.user_id, envelope.nonce


def _enqueue(bodies: list[bytes], connection: sqlite3.Connection) -> None:
    now = clock.now_ms()
    connection.executemany(
        "INSERT INTO outbox (message_id, user_id, nonce, body, published_at_ms)"
        " VALUES (?, ?, ?, ?, ?)",
        [(*_identity(body), body, now) for body in bodies],
    )


def _dead_letter(seq: int, reason: str, connection: sqlite3.Connection) -> None:
    connection.execute(
        "INSERT INTO failed_actions (message_id, user_id, nonce, body, reason, failed_at_ms)"
        " SELECT message_id, user_id, nonce, body, ?, ? FROM outbox WHERE seq = ?",
        (reason, clock.now_ms(), seq),
    )
    connection.execute("DELETE FROM outbox WHERE seq = ?", (seq,))


def _take(
    after_seq: int,
    unsettled: frozenset[int],
    limit: int,
    expired_before_ms: int,
    connection: sqlite3.Connection,
) -> list[_Row]:
    """Dead-letter what waited too long, then the next `limit` rows after `after_seq` that are
    not in flight, counted as delivered once more."""
    expired = connection.execute(
        "SELECT seq FROM outbox WHERE published_at_ms < ?", (expired_before_ms,)
    ).fetchall()
    for (seq,) in expired:
        if seq not in unsettled:
            _dead_letter(seq, EXPIRED_REASON, connection)
    rows = [
        _Row(row["seq"], row["message_id"], row["body"], row["deliveries"] > 0)
        for row in connection.execute(
            "SELECT seq, message_id, body, deliveries FROM outbox WHERE seq > ?"
            " ORDER BY seq LIMIT ?",
            (after_seq, limit + len(unsettled)),
        )
        if row["seq"] not in unsettled
    ][:limit]
    connection.executemany(
        "UPDATE outbox SET deliveries = deliveries + 1 WHERE seq = ?", [(r.seq,) for r in rows]
    )
    return rows


def _settle(
    acked: list[int],
    retried: list[tuple[int, bytes]],
    dead_letters: list[tuple[int, str]],
    connection: sqlite3.Connection,
) -> None:
    connection.executemany("DELETE FROM outbox WHERE seq = ?", [(seq,) for seq in acked])
    _enqueue([body for _, body in retried], connection)
    connection.executemany("DELETE FROM outbox WHERE seq = ?", [(seq,) for seq, _ in retried])
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


def _replay_failed(limit: int, connection: sqlite3.Connection) -> int:
    rows = connection.execute(
        "SELECT seq, body FROM failed_actions ORDER BY seq LIMIT ?", (limit,)
    ).fetchall()
    bodies = []
    for row in rows:
        body = bytes(row["body"])
        # A body that is not an envelope goes back as it is: the consumer dead-letters it again.
        with contextlib.suppress(MalformedMessage):
            body = dataclasses.replace(ActionEnvelope.decode(body), attempts=0).encode()
        bodies.append(body)
    _enqueue(bodies, connection)
    connection.executemany(
        "DELETE FROM failed_actions WHERE seq = ?", [(row["seq"],) for row in rows]
    )
    return len(rows)


_NONCE_HOLDER = """
SELECT action_id FROM action_logs WHERE user_id = :user_id AND nonce = :nonce
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
