"""The sliding windows the flags are computed on: one per user and rule, one per address, and
the population's growth statistics. Each is bounded, and costs O(1) per attempt (amortized)."""

from __future__ import annotations

import array
import itertools
import math
import statistics
from dataclasses import dataclass

from scoreboard.anticheat.records import (
    BurstEvidence,
    DecidedAction,
    GrowthEvidence,
    RegularityEvidence,
    SharedAddressEvidence,
)

# The median absolute deviation times this estimates the standard deviation of normal data, so
# that a robust z-score reads like an ordinary one.
MAD_TO_SIGMA = 1.4826
# A user's growth is summed in this many buckets across the window: the window slides in steps
# of a twelfth of it, and a user costs at most this many buckets whatever their rate.
GROWTH_BUCKETS = 12
# Users remembered per address: the evidence lists them, and a count beyond it reads "at least".
ADDRESS_USERS_KEPT = 100


class BurstWindow:
    """A user's last attempts, as many as a burst needs: (time, accepted, type, claimed time)."""

    __slots__ = ("_recent", "_size")

    def __init__(self, burst_actions: int) -> None:
        self._size = burst_actions
        self._recent: list[tuple[int, bool, str, int | None]] = []

    def observe(self, at_ms: int, action: DecidedAction, window_ms: int) -> BurstEvidence | None:
        recent = self._recent
        recent.append((at_ms, action.accepted, action.action_type, action.claimed_completion_s))
        if len(recent) > self._size:
            del recent[0]
        if len(recent) < self._size or at_ms - recent[0][0] > window_ms:
            return None
        times = [attempt[0] for attempt in recent]
        claimed = [attempt[3] for attempt in recent if attempt[3] is not None]
        return BurstEvidence(
            actions=len(recent),
            span_ms=times[-1] - times[0],
            shortest_gap_ms=min(b - a for a, b in itertools.pairwise(times)),
            accepted=sum(1 for attempt in recent if attempt[1]),
            action_types=tuple(sorted({attempt[2] for attempt in recent})),
            claimed_completion_span_s=max(claimed) - min(claimed) if claimed else None,
            threshold_actions=self._size,
            threshold_window_ms=window_ms,
        )


class IntervalWindow:
    """A user's last intervals between attempts, with their running sum and sum of squares
    (integers: exact, however long the window slides)."""

    __slots__ = ("_intervals", "_last_ms", "_size", "_sum", "_sum_of_squares")

    def __init__(self, intervals: int) -> None:
        self._size = intervals
        self._intervals = array.array("q")
        self._last_ms: int | None = None
        self._sum = 0
        self._sum_of_squares = 0

    def observe(self, at_ms: int, max_cv: float) -> RegularityEvidence | None:
        last, self._last_ms = self._last_ms, at_ms
        if last is None:
            return None
        interval = at_ms - last
        window = self._intervals
        if len(window) == self._size:
            oldest = window.pop(0)
            self._sum -= oldest
            self._sum_of_squares -= oldest * oldest
        window.append(interval)
        self._sum += interval
        self._sum_of_squares += interval * interval
        count = len(window)
        if count < self._size or self._sum == 0:
            return None
        # n²·variance = n·Σx² - (Σx)², exactly.
        spread = count * self._sum_of_squares - self._sum * self._sum
        stdev_ms = math.sqrt(max(0, spread)) / count
        mean_ms = self._sum / count
        cv = stdev_ms / mean_ms
        if cv > max_cv:
            return None
        return RegularityEvidence(
            intervals=count,
            span_ms=self._sum,
            mean_interval_ms=round(mean_ms, 1),
            stdev_ms=round(stdev_ms, 1),
            cv=round(cv, 5),
            threshold_cv=max_cv,
        )


class GrowthWindow:
    """The points a user gained in the last `GROWTH_BUCKETS` buckets."""

    __slots__ = ("_buckets", "points")

    def __init__(self) -> None:
        self._buckets: list[tuple[int, int]] = []  # (bucket index, points), oldest first
        self.points = 0

    def add(self, at_ms: int, points: int, bucket_ms: int) -> None:
        index = at_ms // bucket_ms
        buckets = self._buckets
        if buckets and buckets[-1][0] >= index:
            buckets[-1] = (buckets[-1][0], buckets[-1][1] + points)
        else:
            buckets.append((index, points))
        self.points += points

    def slide(self, now_ms: int, bucket_ms: int) -> int:
        """The points within the window ending now."""
        oldest_kept = now_ms // bucket_ms - GROWTH_BUCKETS + 1
        buckets = self._buckets
        expired = 0
        while expired < len(buckets) and buckets[expired][0] < oldest_kept:
            self.points -= buckets[expired][1]
            expired += 1
        if expired:
            del buckets[:expired]
        return self.points


@dataclass(frozen=True, slots=True)
class PopulationGrowth:
    """The distribution of the points every user gained in the window, as of a time."""

    as_of_ms: int
    size: int
    median: float
    mad: float

    @classmethod
    def of(cls, points: list[int], as_of_ms: int) -> PopulationGrowth:
        if not points:
            return cls(as_of_ms, 0, 0.0, 0.0)
        median = statistics.median(points)
        mad = statistics.median([abs(value - median) for value in points])
        return cls(as_of_ms, len(points), float(median), float(mad))

    def robust_z(self, points: int) -> float:
        # A population that mostly gained the same (MAD 0) still has a scale of one point.
        return (points - self.median) / max(MAD_TO_SIGMA * self.mad, 1.0)

    def judge(
        self, points: int, *, threshold_z: float, min_points: int, min_population: int
    ) -> GrowthEvidence | None:
        if self.size < min_population or points < min_points:
            return None
        z = self.robust_z(points)
        if z < threshold_z:
            return None
        return GrowthEvidence(
            points=points,
            population=self.size,
            population_median=self.median,
            population_mad=self.mad,
            robust_z=round(z, 2),
            population_as_of_ms=self.as_of_ms,
            threshold_z=threshold_z,
            threshold_points=min_points,
            threshold_population=min_population,
        )


class AddressWindow:
    """The distinct users who acted from one address key."""

    __slots__ = ("_users", "last_seen_ms")

    def __init__(self) -> None:
        # User id → last attempt, least recent first. A plain dict (an OrderedDict costs twice
        # the memory): popping its front stays cheap because it never holds many.
        self._users: dict[int, int] = {}
        self.last_seen_ms = 0

    def observe(
        self, at_ms: int, user_id: int, window_ms: int, threshold: int
    ) -> SharedAddressEvidence | None:
        users = self._users
        users.pop(user_id, None)
        users[user_id] = at_ms
        self.last_seen_ms = max(self.last_seen_ms, at_ms)
        cutoff = at_ms - window_ms
        while users and (
            next(iter(users.values())) < cutoff or len(users) > max(threshold, ADDRESS_USERS_KEPT)
        ):
            del users[next(iter(users))]
        if len(users) < threshold:
            return None
        return SharedAddressEvidence(
            distinct_users=len(users),
            user_ids=tuple(reversed(users)),
            threshold_users=threshold,
        )
