"""The process's Prometheus metrics: the metric objects the code records into, one line per event.

The objects live in `prometheus_client`'s default registry, one set per process: with
`--processes N` every child serves its own on its own operations port (`scoreboard/http/ops.py`),
so no multiprocess mode (and none of its limits on gauges) is needed. What the supervision tree,
the connection counts, the hub and the broker already count is read when scraped
(`ServerCollector`), never copied into a second set of numbers.

The hottest events (every WebSocket frame) are counted in plain integers (`frames`) and exported
by the collector: a `Counter.inc()` takes a lock, ten times the cost of the frame's own
bookkeeping at thousands of sockets.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from scoreboard import clock

if TYPE_CHECKING:
    from scoreboard.records import CommitResult, Decision
    from scoreboard.supervisor import ChildStatistics

# Latencies of a pipeline that answers in milliseconds and may queue for seconds under load.
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
BATCH_BUCKETS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000)

ACTIONS_ACCEPTED = Counter(
    "scoreboard_actions_accepted",
    "Actions the API accepted (202) once the broker confirmed them, by type.",
    ["type"],
)
ACTIONS_REFUSED = Counter(
    "scoreboard_actions_refused",
    "Perform requests refused before anything was queued, by error (the contract's error code).",
    ["reason"],
)
ACTIONS_COMMITTED = Counter(
    "scoreboard_actions_committed",
    "Actions the worker committed, by type and status (completed, or rejected by the rules); a "
    "redelivered action already committed is not counted again.",
    ["type", "status"],
)
ACTIONS_FAILED = Counter(
    "scoreboard_actions_failed",
    "Actions that exhausted their attempts and went to the dead letters, by type.",
    ["type"],
)
ACTIONS_RETRIED = Counter(
    "scoreboard_actions_retried",
    "Actions republished for another attempt after the store refused them or their judge crashed.",
)
DELIVERIES_REDELIVERED = Counter(
    "scoreboard_deliveries_redelivered",
    "Deliveries the broker flagged as redelivered (a worker or channel died before the ack).",
)
ACCEPT_LATENCY = Histogram(
    "scoreboard_action_accept_seconds",
    "From a perform request's arrival to its 202 (claim, limits, publish with confirm).",
    buckets=LATENCY_BUCKETS,
)
COMMIT_LATENCY = Histogram(
    "scoreboard_action_commit_seconds",
    "From an action's acceptance by the API to its commit by the worker (wall clocks).",
    buckets=LATENCY_BUCKETS,
)
BROADCAST_LATENCY = Histogram(
    "scoreboard_broadcast_lag_seconds",
    "From a board change (the keeper's write) to the snapshot's fan-out to every WebSocket.",
    buckets=LATENCY_BUCKETS,
)
BATCH_SIZE = Histogram(
    "scoreboard_batch_size",
    "Messages per batch: the scorer's transactions, the publisher's confirms, the edge guard's"
    " Redis pipelines.",
    ["stage"],
    buckets=BATCH_BUCKETS,
)
RATE_LIMITED = Counter(
    "scoreboard_rate_limited",
    "Requests answered 429, by the limit that refused them.",
    ["limit"],
)
AUDIT_REFUSALS_RECORDED = Counter(
    "scoreboard_audit_refusals_recorded",
    "Refusals at the edge written to the audit trail by the auditor.",
)
AUDIT_REFUSALS_DROPPED = Counter(
    "scoreboard_audit_refusals_dropped",
    "Refusals at the edge not written to the audit trail: the auditor's inbox was full, or the "
    "store did not take them in time.",
)
BRIDGE_CALL_LATENCY = Histogram(
    "scoreboard_bridge_call_seconds",
    "Calls from trio to the asyncio backends' loop (PostgreSQL, Redis, RabbitMQ), end to end.",
    buckets=LATENCY_BUCKETS,
)
FLAGS_OBSERVED = Counter(
    "scoreboard_flags_observed",
    "Decisions the behavioural flags actor read.",
)
FLAGS_DROPPED = Counter(
    "scoreboard_flags_dropped",
    "Decisions dropped because the flags actor was behind (scores are not affected).",
)
FLAGS_RAISED = Counter(
    "scoreboard_flags_raised",
    "Behavioural flags raised, by kind.",
    ["kind"],
)
QUEUE_DEPTH = Gauge(
    "scoreboard_queue_depth",
    "Messages ready in the broker's queues, read when scraped (actions; failed: the dead letters).",
    ["queue"],
)


@dataclass(slots=True)
class FrameCounts:
    """WebSocket frames, counted in plain integers on the hot path."""

    sent: int = 0
    # Snapshots replaced by a newer one before a slow client took them (latest-value mailbox).
    superseded: int = 0


frames = FrameCounts()


def observe_commit(decisions: Sequence[Decision], results: Sequence[CommitResult]) -> None:
    """Count a committed batch: each new result by type and status, and how long after its
    acceptance it was committed."""
    types = {decision.envelope.action_id: decision.envelope for decision in decisions}
    now_ms = clock.now_ms()
    for result in results:
        envelope = types.get(result.action_id)
        if result.duplicate or envelope is None:
            continue
        ACTIONS_COMMITTED.labels(envelope.action_type, result.outcome.status).inc()
        COMMIT_LATENCY.observe(max(0, now_ms - envelope.received_at_ms) / 1000)


class ConnectionFigures(Protocol):
    @property
    def open(self) -> int: ...
    @property
    def websockets(self) -> int: ...
    @property
    def backlogged(self) -> int: ...
    @property
    def closes(self) -> dict[int, int]: ...


class BroadcastFigures(Protocol):
    broadcasts: int
    last_fanout_s: float
    interval_s: float


class BrokerFigures(Protocol):
    dropped_events: int
    requeued_deliveries: int


SLOW_CLIENT_CLOSE = 1013  # the WebSocket close code for a client that stopped reading


class ServerCollector(Collector):
    """What one server counts itself, read at each scrape: the supervision tree's restarts and
    inbox depths (a row without an inbox has no depth series: none, not 0), and for the API
    role the connection counts and the hub's fan-outs; the broker's own counters."""

    def __init__(
        self,
        statistics: StatisticsSource,
        *,
        connections: ConnectionFigures | None = None,
        broadcast: BroadcastFigures | None = None,
        broker: BrokerStatisticsSource | None = None,
    ) -> None:
        self._statistics = statistics
        self._connections = connections
        self._broadcast = broadcast
        self._broker = broker

    def collect(self) -> Iterator[Metric]:
        yield from actor_metrics(metric_rows(self._statistics()))
        if self._connections is not None:
            yield from connection_metrics(self._connections)
        if self._broadcast is not None:
            yield from broadcast_metrics(self._broadcast)
        if self._broker is not None:
            yield from broker_metrics(self._broker())

    def describe(self) -> Iterator[Metric]:
        return iter(())


class StatisticsSource(Protocol):
    def __call__(self) -> list[ChildStatistics]: ...


class BrokerStatisticsSource(Protocol):
    def __call__(self) -> BrokerFigures: ...


def metric_rows(stats: list[ChildStatistics]) -> list[ChildStatistics]:
    """The rows that make steady metric series: a dynamic supervisor's row (its children
    counted), not the rows of its busiest children, which come and go with the load."""
    dynamic = [f"{stat.id}/" for stat in stats if stat.children is not None]
    return [stat for stat in stats if not stat.id.startswith(tuple(dynamic))]


def actor_metrics(stats: list[ChildStatistics]) -> Iterator[Metric]:
    restarts = CounterMetricFamily(
        "scoreboard_actor_restarts", "Restarts of each supervised actor.", labels=["actor"]
    )
    running = GaugeMetricFamily(
        "scoreboard_actor_running", "Whether each actor runs (1) or not (0).", labels=["actor"]
    )
    depth = GaugeMetricFamily(
        "scoreboard_actor_inbox_depth",
        "Messages waiting in each actor's inbox (actors without an inbox have no series).",
        labels=["actor"],
    )
    children = GaugeMetricFamily(
        "scoreboard_actor_children",
        "Children of each dynamic supervisor (the per-user actors).",
        labels=["actor"],
    )
    for stat in stats:
        restarts.add_metric([stat.id], stat.restarts)
        running.add_metric([stat.id], int(stat.state == "running"))
        if stat.inbox_depth is not None:
            depth.add_metric([stat.id], stat.inbox_depth)
        if stat.children is not None:
            children.add_metric([stat.id], stat.children)
    yield from (restarts, running, depth, children)


def connection_metrics(counts: ConnectionFigures) -> Iterator[Metric]:
    yield GaugeMetricFamily(
        "scoreboard_connections_open",
        "Open TCP connections (HTTP and WebSocket).",
        value=counts.open,
    )
    yield GaugeMetricFamily(
        "scoreboard_websocket_connections", "Open WebSocket connections.", value=counts.websockets
    )
    yield GaugeMetricFamily(
        "scoreboard_websocket_backlogged",
        "WebSockets whose kernel send buffer is full.",
        value=counts.backlogged,
    )
    closes = CounterMetricFamily(
        "scoreboard_websocket_closes",
        "WebSockets closed, by close code (1006: the client vanished without a close).",
        labels=["code"],
    )
    for code, count in sorted(counts.closes.items()):
        closes.add_metric([str(code)], count)
    yield closes
    yield CounterMetricFamily(
        "scoreboard_websocket_slow_client_closes",
        "WebSockets closed 1013 because the client took no frame for the send timeout or fell "
        "too far behind on its own frames.",
        value=counts.closes.get(SLOW_CLIENT_CLOSE, 0),
    )
    yield CounterMetricFamily(
        "scoreboard_websocket_frames_sent",
        "Frames handed to WebSocket sockets (snapshots, action results, score updates).",
        value=frames.sent,
    )
    yield CounterMetricFamily(
        "scoreboard_websocket_frames_dropped",
        "Snapshots a slow client never got because a newer one replaced them.",
        value=frames.superseded,
    )


def broadcast_metrics(broadcast: BroadcastFigures) -> Iterator[Metric]:
    yield CounterMetricFamily(
        "scoreboard_broadcasts",
        "Leaderboard snapshots sent to every WebSocket.",
        value=broadcast.broadcasts,
    )
    yield GaugeMetricFamily(
        "scoreboard_broadcast_fanout_seconds",
        "How long the last snapshot's fan-out took.",
        value=broadcast.last_fanout_s,
    )
    yield GaugeMetricFamily(
        "scoreboard_broadcast_interval_seconds",
        "The current least time between snapshots (the configured minimum, stretched while "
        "fan-outs take long).",
        value=broadcast.interval_s,
    )


def broker_metrics(statistics: BrokerFigures) -> Iterator[Metric]:
    yield CounterMetricFamily(
        "scoreboard_broker_events_dropped",
        "Events not handed to the hub because its channel was full (the next snapshot "
        "supersedes them).",
        value=statistics.dropped_events,
    )
    yield CounterMetricFamily(
        "scoreboard_broker_deliveries_requeued",
        "Deliveries sent back to the queue because the consumer's channel was full or closed.",
        value=statistics.requeued_deliveries,
    )
