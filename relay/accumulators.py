"""Accumulators: what a bucket holds per metric type, and how each becomes points at flush.

Buckets keep plain dicts keyed by a context's slot (an int): adding a sample is one dict operation, and all the
arithmetic of the Agent's pkg/metrics (gauge.go, counter.go, set.go, histogram.go) happens once, at flush.
A histogram or distribution sample is a float (rate 1) or a (value, rate) tuple.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from relay.model import SeriesType
from relay.sketch import Sample, Sketch

Point = tuple[str, SeriesType, float]  # (name suffix, API type, value)


def effective_rate(rate: float) -> float:
    """Sample rates outside (0, 1] count as 1, so `@0` or `@-1` can never yield Inf or negative weights."""
    return rate if 0 < rate <= 1 else 1.0


@dataclass(slots=True)
class Bucket:
    """Everything received in one interval, by type then slot."""

    start: int
    gauges: dict[int, float] = field(default_factory=dict)  # last value
    counters: dict[int, float] = field(default_factory=dict)  # sum of value / rate
    sets: dict[int, set[str]] = field(default_factory=dict)
    histograms: dict[int, list[Sample]] = field(default_factory=dict)  # h and ms
    distributions: dict[int, list[Sample]] = field(default_factory=dict)
    folded: dict[int, Sketch] = field(default_factory=dict)  # distribution samples already in a sketch

    def slots(self) -> set[int]:
        return set().union(self.gauges, self.counters, self.sets, self.histograms, self.distributions)


@dataclass(frozen=True, slots=True)
class HistogramSpec:
    """histogram_aggregates and histogram_percentiles, parsed once."""

    aggregates: tuple[str, ...]
    percentiles: tuple[int, ...]  # 95 for "0.95"

    @classmethod
    def from_config(cls, aggregates: tuple[str, ...], percentiles: tuple[str, ...]) -> HistogramSpec:
        parsed = sorted({int(float(p) * 100 + 0.5) for p in percentiles})
        return cls(tuple(dict.fromkeys(aggregates)), tuple(parsed))


def histogram_points(samples: list[Sample], spec: HistogramSpec, interval: int) -> list[Point]:
    """Weight int(1/rate), sum of value/rate, quantiles by weighted nearest rank with no interpolation."""
    if all(type(sample) is float for sample in samples):
        return _unweighted_points(sorted(samples), spec, interval)  # type: ignore[type-var]
    weighted: list[tuple[float, int]] = []
    total = 0.0
    for sample in samples:
        if type(sample) is float:
            weighted.append((sample, 1))
            total += sample
        else:
            value, rate = sample  # type: ignore[misc]
            rate = effective_rate(rate)
            weighted.append((value, int(1 / rate)))
            total += value / rate
    weighted.sort()
    count = sum(weight for _, weight in weighted)
    values = {"max": weighted[-1][0], "min": weighted[0][0], "sum": total, "avg": total / count}
    points: list[Point] = []
    for aggregate in spec.aggregates:
        if aggregate == "count":
            points.append((".count", SeriesType.RATE, count / interval))
        elif aggregate == "median":
            points.append((".median", SeriesType.GAUGE, _rank(weighted, (count - 1) // 2)))
        else:
            points.append((f".{aggregate}", SeriesType.GAUGE, values[aggregate]))
    for percentile in spec.percentiles:
        target = max(percentile * count - 1, 0) // 100
        points.append((f".{percentile}percentile", SeriesType.GAUGE, _rank(weighted, target)))
    return points


def _unweighted_points(ordered: list[float], spec: HistogramSpec, interval: int) -> list[Point]:
    """The same as the weighted rule when every weight is 1: the rank is an index (the usual case, and faster)."""
    count, total = len(ordered), sum(ordered)
    values = {"max": ordered[-1], "min": ordered[0], "sum": total, "avg": total / count}
    points: list[Point] = []
    for aggregate in spec.aggregates:
        if aggregate == "count":
            points.append((".count", SeriesType.RATE, count / interval))
        elif aggregate == "median":
            points.append((".median", SeriesType.GAUGE, ordered[(count - 1) // 2]))
        else:
            points.append((f".{aggregate}", SeriesType.GAUGE, values[aggregate]))
    for percentile in spec.percentiles:
        points.append((f".{percentile}percentile", SeriesType.GAUGE, ordered[max(percentile * count - 1, 0) // 100]))
    return points


def _rank(ordered: list[tuple[float, int]], target: int) -> float:
    """The first value whose cumulative weight exceeds `target` (pkg/metrics/histogram.go)."""
    cumulative = 0
    for value, weight in ordered:
        cumulative += weight
        if cumulative > target:
            return value
    return ordered[-1][0]


def sketch_of(samples: list[Sample], sketch: Sketch | None = None) -> Sketch:
    """A distribution's samples as the Agent's DDSketch (inserted into `sketch` when given); a sample with rate r
    is inserted uint(1/r) times."""
    sketch = Sketch() if sketch is None else sketch
    sketch.insert_samples(samples)
    return sketch
