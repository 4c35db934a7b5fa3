"""What the flag detectors read (`DecidedAction`) and what they raise (`Flag`, with evidence)."""

from __future__ import annotations

import dataclasses
import uuid
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from scoreboard.catalogue import Catalogue
from scoreboard.records import Decision

FlagKind = Literal["burst", "regular_intervals", "score_growth", "shared_address"]
FLAG_KINDS: tuple[FlagKind, ...] = ("burst", "regular_intervals", "score_growth", "shared_address")


@dataclass(frozen=True, slots=True)
class DecidedAction:
    """One attempt and what was decided about it, accepted or refused (wherever it was refused:
    the bursts of a script show in its refused attempts)."""

    action_id: uuid.UUID
    user_id: int
    action_type: str
    # The decision's clock: when the API received the attempt, which every rule judges by.
    decided_at_ms: int
    # The completion time the client claims (unix seconds), if the action type has one.
    claimed_completion_s: int | None
    score_delta: int
    ip: str
    accepted: bool

    @classmethod
    def from_decision(cls, decision: Decision, catalogue: Catalogue) -> DecidedAction:
        envelope = decision.envelope
        claimed: int | None = None
        entry = catalogue.get(envelope.action_type)
        if entry is not None:
            for name, kind in entry.fields:
                value = envelope.action_data.get(name)
                if kind == "unix_seconds" and isinstance(value, int):
                    claimed = value
                    break
        return cls(
            action_id=envelope.action_id,
            user_id=envelope.user_id,
            action_type=envelope.action_type,
            decided_at_ms=envelope.received_at_ms,
            claimed_completion_s=claimed,
            score_delta=decision.outcome.score_delta,
            ip=envelope.ip,
            accepted=decision.outcome.status == "completed",
        )


@dataclass(frozen=True, slots=True)
class BurstEvidence:
    """`actions` attempts within `span_ms`, at least `threshold_actions` within
    `threshold_window_ms` being the rule."""

    KIND: ClassVar[FlagKind] = "burst"
    actions: int
    span_ms: int
    shortest_gap_ms: int
    accepted: int
    action_types: tuple[str, ...]
    # First to last claimed completion time, in seconds (None: no action claimed one). Play
    # recorded offline and sent at once claims times far apart; a script's burst claims one.
    claimed_completion_span_s: int | None
    threshold_actions: int
    threshold_window_ms: int


@dataclass(frozen=True, slots=True)
class RegularityEvidence:
    """The user's last `intervals` intervals between attempts, and their spread."""

    KIND: ClassVar[FlagKind] = "regular_intervals"
    intervals: int
    span_ms: int
    mean_interval_ms: float
    stdev_ms: float
    cv: float
    threshold_cv: float


@dataclass(frozen=True, slots=True)
class GrowthEvidence:
    """The user's points within the window against the population's (every user who acted in
    the window, as of `population_as_of_ms`): robust z = (points - median) / (1.4826 · MAD)."""

    KIND: ClassVar[FlagKind] = "score_growth"
    points: int
    population: int
    population_median: float
    population_mad: float
    robust_z: float
    population_as_of_ms: int
    threshold_z: float
    threshold_points: int
    threshold_population: int


@dataclass(frozen=True, slots=True)
class SharedAddressEvidence:
    """Distinct users who acted from the address within the window (the most recent
    `len(user_ids)` of them are listed)."""

    KIND: ClassVar[FlagKind] = "shared_address"
    distinct_users: int
    user_ids: tuple[int, ...]
    threshold_users: int


def subject_of(user_id: int | None, address: str) -> str:
    """Who a flag is about: `user:<id>`, or `address:<key>` for an address flag."""
    return f"address:{address}" if user_id is None else f"user:{user_id}"


Evidence = BurstEvidence | RegularityEvidence | GrowthEvidence | SharedAddressEvidence
EVIDENCE_TYPES: dict[FlagKind, type[Evidence]] = {
    evidence.KIND: evidence
    for evidence in (BurstEvidence, RegularityEvidence, GrowthEvidence, SharedAddressEvidence)
}


def evidence_as_json(evidence: Evidence) -> dict[str, Any]:
    return {
        name: list(value) if isinstance(value, tuple) else value
        for name, value in dataclasses.asdict(evidence).items()
    }


def evidence_from_json(kind: FlagKind, fields: dict[str, Any]) -> Evidence:
    """The evidence as `evidence_as_json` wrote it (lists back to tuples)."""
    values: dict[str, Any] = {
        name: tuple(value) if isinstance(value, list) else value for name, value in fields.items()
    }
    return EVIDENCE_TYPES[kind](**values)


@dataclass(frozen=True, slots=True)
class Flag:
    """A behaviour worth an operator's look, with the numbers that triggered it. A flag never
    changes a score. `user_id` is the user's (None for an address flag); `address` is the
    address key of the attempt that raised it (for an address flag, the address flagged).
    The window is in the decisions' time; `raised_at_ms` is the detector's clock."""

    user_id: int | None
    address: str
    window_start_ms: int
    window_end_ms: int
    raised_at_ms: int
    evidence: Evidence

    @property
    def kind(self) -> FlagKind:
        return self.evidence.KIND

    @property
    def subject(self) -> str:
        return subject_of(self.user_id, self.address)

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "user_id": self.user_id,
            "address": self.address,
            "window_start_ms": self.window_start_ms,
            "window_end_ms": self.window_end_ms,
            "raised_at_ms": self.raised_at_ms,
            "evidence": evidence_as_json(self.evidence),
        }


@dataclass(frozen=True, slots=True)
class FlagRecord:
    """A stored flag: its id, and whether (when, by whom) an operator cleared it."""

    flag_id: int
    flag: Flag
    cleared_at_ms: int | None = None
    cleared_by: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.flag_id,
            "subject": self.flag.subject,
            **self.flag.as_json(),
            "cleared_at_ms": self.cleared_at_ms,
            "cleared_by": self.cleared_by,
        }


@dataclass(frozen=True, slots=True)
class FlagQuery:
    """Which stored flags to list, newest first: `before_id` pages on (the last id seen)."""

    user_id: int | None = None
    since_ms: int | None = None
    kind: FlagKind | None = None
    standing_only: bool = False
    before_id: int | None = None
    limit: int = 50
