"""Every action the load test sent, what the server answered, and what became of it."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from scoreboard.loadtest.histogram import Histogram, Series

FINAL_STATUSES = frozenset({"completed", "rejected", "failed"})


class Action:
    """One action: when it was due (time.monotonic()), how it was sent, and its fate."""

    __slots__ = (
        "accepted_at",
        "account",
        "action_id",
        "action_type",
        "body",
        "due",
        "error",
        "leader",
        "measured",
        "new_score",
        "nonce",
        "outcome_via",
        "points",
        "processed_at",
        "replayed",
        "resent",
        "score_delta",
        "status",
        "transport",
    )

    def __init__(
        self,
        *,
        account: int,
        nonce: str,
        action_type: str,
        points: int,
        body: dict[str, Any],
        transport: str,
        leader: bool,
        measured: bool,
        due: float,
    ) -> None:
        self.account = account
        self.nonce = nonce
        self.action_type = action_type
        self.points = points
        self.body = body
        self.transport = transport
        self.leader = leader
        self.measured = measured  # sent in the measured window (not to prime the leaders)
        self.due = due
        self.accepted_at: float | None = None
        self.action_id: str | None = None
        self.error: str | None = None  # why the outcome of sending it is unknown or refused
        self.status: str | None = None  # accepted, then completed/rejected/failed
        self.score_delta: int | None = None
        self.new_score: int | None = None
        self.processed_at: float | None = None
        self.outcome_via: str | None = None  # socket or GET
        self.replayed = False
        self.resent = False

    @property
    def accepted(self) -> bool:
        return self.action_id is not None

    @property
    def processed(self) -> bool:
        return self.status in FINAL_STATUSES

    @property
    def fate_unknown(self) -> bool:
        """Sent, but whether the server queued it is not known (no answer, 503, a timeout, a
        lost connection): the contract says to send it again with the same nonce."""
        if self.action_id is not None:
            return False
        error = self.error
        return (
            error is None
            or error in ("unavailable", "timeout", "connection")
            or (error.startswith("http 5"))
        )


class Ledger:
    """The actions by nonce, the counters and the latency figures of the run."""

    def __init__(self) -> None:
        self.by_nonce: dict[str, Action] = {}
        self.window_start = 0.0
        self.http_latency = Histogram()  # due → 202, POST /api/v1/actions/perform
        self.http_latency_series = Series()
        self.ws_accept_latency = Histogram()  # due → action_result "accepted" over the socket
        self.answers: Counter[str] = Counter()  # "http 202", "ws accepted", "ws rejected ..."
        self.accepted_per_second: Counter[int] = Counter()
        self.processed_per_second: Counter[int] = Counter()
        self.unmatched_results = 0
        self.wrong_delta: list[str] = []
        self.measured_accepted = 0
        self.measured_processed = 0

    def add(self, action: Action) -> None:
        self.by_nonce[action.nonce] = action

    def __iter__(self) -> Iterator[Action]:
        return iter(self.by_nonce.values())

    def second(self, at: float) -> int:
        return int(at - self.window_start)

    def on_http_answer(self, action: Action, status: int, body: Any, at: float) -> None:
        first_answer = action.measured and not action.resent
        if first_answer:
            self.answers[f"http {status}"] += 1
        if status in (200, 202) and isinstance(body, dict) and body.get("action_id"):
            action.error = None
            self._accepted(action, str(body["action_id"]), at)
            if first_answer:
                self.http_latency.add((at - action.due) * 1000)
                self.http_latency_series.add(self.second(action.due), (at - action.due) * 1000)
            if status == 200 and body.get("new_score") is not None:
                status_now = "completed" if body.get("success") else "rejected"
                self._finished(action, status_now, body, at)
        elif status == 429:
            action.error = "rate_limit_exceeded"
        elif status == 503:
            action.error = "unavailable"
        else:
            action.error = f"http {status}"

    def on_transport_error(self, action: Action, error: str) -> None:
        action.error = error
        if action.measured and not action.resent:
            self.answers[f"http {error}" if action.transport == "http" else f"ws {error}"] += 1

    def on_socket_result(self, data: dict[str, Any], at: float) -> None:
        """An `action_result` on a player's socket: for an action sent either way."""
        action = self.by_nonce.get(str(data.get("nonce")))
        if action is None:
            self.unmatched_results += 1
            return
        status = data.get("status")
        if data.get("action_id") and not action.accepted:
            if action.transport == "ws" and action.measured and not action.resent:
                self.answers["ws accepted"] += 1
                self.ws_accept_latency.add((at - action.due) * 1000)
            action.error = None
            self._accepted(action, str(data["action_id"]), at)
        if status in FINAL_STATUSES:
            if action.accepted:
                self._finished(action, str(status), data, at)
            else:  # refused before it was queued
                error = str(data.get("error"))
                action.error = error
                if action.measured:
                    self.answers[f"ws rejected {error}"] += 1

    def on_fetched(self, action: Action, record: dict[str, Any]) -> None:
        """GET /api/v1/actions/<id> answered: the outcome, timed by the server's `processed_at`
        (same machine, same clock) rather than by when the load test asked."""
        if record.get("status") in FINAL_STATUSES and not action.processed:
            at = time.monotonic()
            stamped = record.get("processed_at")
            if isinstance(stamped, str):
                try:
                    wall = datetime.fromisoformat(stamped.replace("Z", "+00:00")).timestamp()
                    at = min(at, wall - (time.time() - time.monotonic()))
                except ValueError:
                    pass
            self._finished(action, str(record["status"]), record, at, via="GET")

    def _accepted(self, action: Action, action_id: str, at: float) -> None:
        action.action_id = action_id
        if action.accepted_at is None:
            action.accepted_at = at
            if action.measured:
                self.measured_accepted += 1
                self.accepted_per_second[self.second(at)] += 1
        if action.status is None:
            action.status = "accepted"

    def _finished(
        self, action: Action, status: str, data: dict[str, Any], at: float, via: str = "socket"
    ) -> None:
        if action.processed:
            return
        action.status = status
        action.score_delta = _int_or_none(data.get("score_delta"))
        action.new_score = _int_or_none(data.get("new_score"))
        action.processed_at = at
        action.outcome_via = via
        if action.measured:
            self.measured_processed += 1
            self.processed_per_second[self.second(at)] += 1
        if status == "completed" and action.score_delta != action.points:
            self.wrong_delta.append(
                f"{action.action_type} {action.action_id}: delta {action.score_delta}, "
                f"catalogue {action.points}"
            )

    # -- views

    def measured(self) -> list[Action]:
        return [a for a in self.by_nonce.values() if a.measured]

    def outcomes_via(self) -> Counter[str]:
        return Counter(a.outcome_via for a in self.by_nonce.values() if a.outcome_via)

    def accepted_without_outcome(self) -> list[Action]:
        return [a for a in self.by_nonce.values() if a.accepted and not a.processed]

    def fate_unknown(self) -> list[Action]:
        return [a for a in self.by_nonce.values() if a.fate_unknown]


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None
