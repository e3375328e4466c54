"""Accumulators: one small class per metric type; add() samples of one context in one bucket, flush() its points.

Semantics follow the Agent's pkg/metrics (gauge.go, counter.go, set.go, histogram.go).
"""

from __future__ import annotations

from dataclasses import dataclass

from relay.model import SeriesType

Point = tuple[str, SeriesType, float]  # (name suffix, API type, value)


def effective_rate(rate: float) -> float:
    """Sample rates outside (0, 1] count as 1, so `@0` or `@-1` can never yield Inf or negative weights."""
    return rate if 0 < rate <= 1 else 1.0


class Gauge:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def add(self, value: float, rate: float) -> None:
        self.value = value

    def flush(self, interval: int) -> list[Point]:
        return [("", SeriesType.GAUGE, self.value)]


class Counter:
    """Sum of value / rate, sent as a per-second rate (the backend multiplies back by the interval)."""

    __slots__ = ("total",)

    def __init__(self) -> None:
        self.total = 0.0

    def add(self, value: float, rate: float) -> None:
        self.total += value / effective_rate(rate)

    def flush(self, interval: int) -> list[Point]:
        return [("", SeriesType.RATE, self.total / interval)]


class Set:
    __slots__ = ("members",)

    def __init__(self) -> None:
        self.members: set[str] = set()

    def add(self, value: str, rate: float) -> None:  # type: ignore[override]
        self.members.add(value)

    def flush(self, interval: int) -> list[Point]:
        return [("", SeriesType.GAUGE, float(len(self.members)))]


@dataclass(frozen=True, slots=True)
class HistogramSpec:
    """histogram_aggregates and histogram_percentiles, parsed once."""

    aggregates: tuple[str, ...]
    percentiles: tuple[int, ...]  # 95 for "0.95"

    @classmethod
    def from_config(cls, aggregates: tuple[str, ...], percentiles: tuple[str, ...]) -> HistogramSpec:
        parsed = sorted({int(float(p) * 100 + 0.5) for p in percentiles})
        return cls(tuple(dict.fromkeys(aggregates)), tuple(parsed))


class Histogram:
    """Weighted samples; weight int(1/rate) as in the Agent; quantiles by weighted nearest rank, no interpolation."""

    __slots__ = ("samples", "spec", "sum")

    def __init__(self, spec: HistogramSpec) -> None:
        self.spec = spec
        self.samples: list[tuple[float, int]] = []
        self.sum = 0.0

    def add(self, value: float, rate: float) -> None:
        rate = effective_rate(rate)
        self.samples.append((value, int(1 / rate)))
        self.sum += value / rate

    def flush(self, interval: int) -> list[Point]:
        ordered = sorted(self.samples)
        count = sum(weight for _, weight in ordered)
        values = {
            "max": ordered[-1][0],
            "min": ordered[0][0],
            "sum": self.sum,
            "avg": self.sum / count,
        }
        points: list[Point] = []
        for aggregate in self.spec.aggregates:
            if aggregate == "count":
                points.append((".count", SeriesType.RATE, count / interval))
            elif aggregate == "median":
                points.append((".median", SeriesType.GAUGE, _rank(ordered, (count - 1) // 2)))
            else:
                points.append((f".{aggregate}", SeriesType.GAUGE, values[aggregate]))
        for percentile in self.spec.percentiles:
            target = max(percentile * count - 1, 0) // 100
            points.append((f".{percentile}percentile", SeriesType.GAUGE, _rank(ordered, target)))
        return points


def _rank(ordered: list[tuple[float, int]], target: int) -> float:
    """The first value whose cumulative weight exceeds `target` (pkg/metrics/histogram.go)."""
    cumulative = 0
    for value, weight in ordered:
        cumulative += weight
        if cumulative > target:
            return value
    return ordered[-1][0]


Accumulator = Gauge | Counter | Set | Histogram
