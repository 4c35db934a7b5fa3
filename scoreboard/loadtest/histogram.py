"""Latency histograms with logarithmic buckets (1 % wide), mergeable across processes.

A load test records millions of latencies in several processes; keeping every value would cost
more memory than the sockets. Buckets 1 % wide keep each percentile within 1 % of the exact
nearest-rank value, while the count and the maximum stay exact. Values that never arrived are
counted apart and rank above every recorded value, so a percentile that falls among them is
reported as missing instead of being hidden.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

BUCKETS_PER_E = 100  # ln(value) * 100: a bucket spans a factor of e^0.01 (about 1 %)
SMALLEST_MS = 0.01  # everything below lands in bucket 0
_LOG_SMALLEST = math.log(SMALLEST_MS)
_log = math.log


def bucket_of(value_ms: float) -> int:
    if value_ms <= SMALLEST_MS:
        return 0
    return int((math.log(value_ms) - _LOG_SMALLEST) * BUCKETS_PER_E) + 1


def bucket_value(bucket: int) -> float:
    """The geometric middle of a bucket: what a percentile falling in it reports."""
    if bucket == 0:
        return SMALLEST_MS
    return math.exp(_LOG_SMALLEST + (bucket - 0.5) / BUCKETS_PER_E)


class Histogram:
    """Counts of latencies in milliseconds, plus the exact count, maximum and missing values."""

    __slots__ = ("buckets", "count", "max_ms", "missing", "total_ms")

    def __init__(self) -> None:
        self.buckets: dict[int, int] = {}
        self.count = 0
        self.missing = 0
        self.max_ms = 0.0
        self.total_ms = 0.0

    def add(self, value_ms: float) -> None:
        if value_ms > SMALLEST_MS:  # bucket_of, inlined: this runs for every frame received
            bucket = int((_log(value_ms) - _LOG_SMALLEST) * BUCKETS_PER_E) + 1
        else:
            bucket = 0
            value_ms = max(value_ms, 0.0)
        self.buckets[bucket] = self.buckets.get(bucket, 0) + 1
        self.count += 1
        self.total_ms += value_ms
        if value_ms > self.max_ms:
            self.max_ms = value_ms

    def add_missing(self, count: int = 1) -> None:
        self.missing += count

    def merge(self, other: Histogram) -> None:
        for bucket, count in other.buckets.items():
            self.buckets[bucket] = self.buckets.get(bucket, 0) + count
        self.count += other.count
        self.missing += other.missing
        self.total_ms += other.total_ms
        self.max_ms = max(self.max_ms, other.max_ms)

    def percentile(self, percent: float) -> float | None:
        """Nearest-rank percentile over recorded and missing values: None when it falls among
        the missing ones (or nothing was recorded), math-wise +infinity."""
        population = self.count + self.missing
        if population == 0:
            return None
        rank = max(1, math.ceil(percent / 100 * population))
        if rank > self.count:
            return None
        seen = 0
        for bucket in sorted(self.buckets):
            seen += self.buckets[bucket]
            if seen >= rank:
                return min(bucket_value(bucket), self.max_ms)
        return self.max_ms

    def summary(self) -> dict[str, Any]:
        """count, missing, p50/p95/p99 (None when missing), max and mean, in ms."""
        return {
            "count": self.count,
            "missing": self.missing,
            "p50": _rounded(self.percentile(50)),
            "p95": _rounded(self.percentile(95)),
            "p99": _rounded(self.percentile(99)),
            "max": _rounded(self.max_ms) if self.count else None,
            "mean": _rounded(self.total_ms / self.count) if self.count else None,
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "buckets": {str(bucket): count for bucket, count in self.buckets.items()},
            "count": self.count,
            "missing": self.missing,
            "max_ms": self.max_ms,
            "total_ms": self.total_ms,
        }

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Histogram:
        histogram = cls()
        histogram.buckets = {int(bucket): int(count) for bucket, count in raw["buckets"].items()}
        histogram.count = int(raw["count"])
        histogram.missing = int(raw["missing"])
        histogram.max_ms = float(raw["max_ms"])
        histogram.total_ms = float(raw["total_ms"])
        return histogram

    @classmethod
    def of(cls, values_ms: Iterable[float]) -> Histogram:
        histogram = cls()
        for value in values_ms:
            histogram.add(value)
        return histogram


class Series:
    """One histogram per whole second since a start: the data of a latency-over-time chart."""

    __slots__ = ("seconds",)

    def __init__(self) -> None:
        self.seconds: dict[int, Histogram] = {}

    def add(self, second: int, value_ms: float) -> None:
        histogram = self.seconds.get(second)
        if histogram is None:
            histogram = self.seconds[second] = Histogram()
        histogram.add(value_ms)

    def merge(self, other: Series) -> None:
        for second, histogram in other.seconds.items():
            self.seconds.setdefault(second, Histogram()).merge(histogram)

    def points(self, percent: float) -> list[tuple[int, float | None]]:
        return [(s, self.seconds[s].percentile(percent)) for s in sorted(self.seconds)]

    def maxima(self) -> list[tuple[int, float | None]]:
        return [(s, self.seconds[s].max_ms) for s in sorted(self.seconds)]

    def to_json(self) -> dict[str, Any]:
        return {str(second): h.to_json() for second, h in self.seconds.items()}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Series:
        series = cls()
        series.seconds = {int(second): Histogram.from_json(h) for second, h in raw.items()}
        return series


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
