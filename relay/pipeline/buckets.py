"""Buckets: what a bucket holds per metric type, the one place a sample lands, and how each becomes points at
flush.

Buckets keep plain dicts keyed by a context's slot (an int): adding a sample is one dict operation, and all the
arithmetic of the Agent's pkg/metrics (gauge.go, counter.go, set.go, histogram.go) happens once, at flush.
A histogram or distribution sample is a float (rate 1) or a (value, rate) tuple. Twice a second the histogram
samples that piled up are packed into doubles (`Packed`), as the Agent keeps them in a float64 slice: 8 bytes a
sample, or 16 with its rate, instead of a Python float in a list.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from relay.pipeline.model import Event, Kind, Series, SeriesType, ServiceCheck
from relay.pipeline.sketch import Sample, Sketch

try:  # the C versions (relay/_speedups.c), identical in result; optional
    from relay._speedups import histogram_pack as _pack_in_c
    from relay._speedups import histogram_summary as _summary_in_c
except ImportError:
    _pack_in_c = _summary_in_c = None

Point = tuple[str, SeriesType, float]  # (name suffix, API type, value)
HISTOGRAM = int(Kind.HISTOGRAM)
T = TypeVar("T")
NO_SLOT = -1  # no such slot: a shape with no distribution copy, or a blocked context


def effective_rate(rate: float) -> float:
    """Sample rates outside (0, 1] count as 1, so `@0` or `@-1` can never yield Inf or negative weights."""
    return rate if 0 < rate <= 1 else 1.0


@dataclass(slots=True)
class Packed:
    """A histogram's samples as doubles, in arrival order; `rates` stays None until a sample has a rate."""

    values: bytearray = field(default_factory=bytearray)
    rates: bytearray | None = None

    def add(self, samples: list[Sample]) -> None:
        if _pack_in_c is not None:
            self.rates = _pack_in_c(samples, self.values, self.rates)
            return
        values = array("d", (s if type(s) is float else s[0] for s in samples))  # type: ignore[index]
        if self.rates is None and any(type(s) is not float for s in samples):
            self.rates = bytearray(array("d", [1.0]) * (len(self.values) // 8))
        self.values += values.tobytes()
        if self.rates is not None:
            self.rates += array("d", (1.0 if type(s) is float else s[1] for s in samples)).tobytes()  # type: ignore[index]

    def samples(self) -> list[Sample]:
        """Back to the samples they were (a float is a float; a rate makes a tuple), for the Python arithmetic."""
        values = array("d", self.values).tolist()
        if self.rates is None:
            return values  # type: ignore[return-value]
        return [(value, rate) for value, rate in zip(values, array("d", self.rates).tolist(), strict=True)]


@dataclass(slots=True)
class Bucket:
    """Everything received in one interval, by type then slot, and the one place a sample is added to it.

    Ingest's Python fast path and the aggregator's reference path call these methods; relay/_speedups.c is
    handed the bucket and does the same arithmetic on its dicts (apply_number), held equal by the tests."""

    start: int
    gauges: dict[int, float] = field(default_factory=dict)  # last value
    counters: dict[int, float] = field(default_factory=dict)  # sum of value / rate
    sets: dict[int, set[str]] = field(default_factory=dict)
    histograms: dict[int, list[Sample]] = field(default_factory=dict)  # h and ms
    packed: dict[int, Packed] = field(default_factory=dict)  # histogram samples already packed
    distributions: dict[int, list[Sample]] = field(default_factory=dict)
    folded: dict[int, Sketch] = field(default_factory=dict)  # distribution samples already in a sketch

    def slots(self) -> set[int]:
        return set().union(*self.holders())

    def holders(self) -> tuple[Mapping[int, object], ...]:
        """The dicts keyed by slot that hold a sample (packed and folded samples have theirs in these too)."""
        return self.gauges, self.counters, self.sets, self.histograms, self.distributions

    def part(self, slots: range) -> Bucket:
        """A copy holding only `slots` (a flush built in parts); its lists and sketches are shared, not copied."""
        return Bucket(
            self.start, _only(self.gauges, slots), _only(self.counters, slots), _only(self.sets, slots),
            _only(self.histograms, slots), _only(self.packed, slots), _only(self.distributions, slots),
            _only(self.folded, slots),
        )  # fmt: skip

    def gauge(self, slot: int, value: float) -> None:
        self.gauges[slot] = value

    def count(self, slot: int, amount: float) -> None:
        """`amount` is already scaled by the sample rate (value / rate)."""
        self.counters[slot] = self.counters.get(slot, 0.0) + amount

    def member(self, slot: int, member: str) -> None:
        members = self.sets.get(slot)
        if members is None:
            members = self.sets[slot] = set()
        members.add(member)

    def samples(self, kind: int, slot: int, samples: list[Sample], copy: int = NO_SLOT) -> None:
        """Histogram or distribution samples (a float, or (value, rate)); `copy`: the slot of the distribution
        a histogram is copied to (histogram_copy_to_distribution), or NO_SLOT."""
        target = self.histograms if kind == HISTOGRAM else self.distributions
        kept = target.get(slot)
        if kept is None:
            kept = target[slot] = []
        kept.extend(samples)
        if copy != NO_SLOT:
            self.distributions.setdefault(copy, []).extend(samples)


@dataclass(slots=True)
class FlushWork:
    """What `detach` took out of the aggregator for one flush."""

    cutoff: int
    closed: list[Bucket]
    zeros: list[tuple[int, array[int]]]  # (bucket start, counters that report 0 there, in slot order)
    timestamped: list[tuple[int, SeriesType, int, float]]
    events: list[Event]
    service_checks: list[ServiceCheck]
    passthrough: list[Series]

    @property
    def items(self) -> int:
        """Contexts, points, events and service checks: what is lost if this flush cannot be built."""
        contexts = sum(len(bucket.slots()) for bucket in self.closed)
        return contexts + len(self.timestamped) + len(self.events) + len(self.service_checks) + len(self.passthrough)

    def parts(self, slot_count: int, size: int) -> Iterator[FlushWork]:
        """The same work in parts of at most `size` slots (slot order), so that a flush of a million contexts
        builds and encodes one part at a time instead of holding every series at once. The first part carries
        the points, events and checks that are not in buckets. A work no larger than `size` is its own part."""
        if slot_count <= size:
            yield self
            return
        for low in range(0, slot_count, size):
            chosen = range(low, min(low + size, slot_count))
            first = low == 0
            yield FlushWork(
                self.cutoff,
                [bucket.part(chosen) for bucket in self.closed],
                [
                    (start, slots[bisect_left(slots, low) : bisect_left(slots, chosen.stop)])
                    for start, slots in self.zeros
                ],
                self.timestamped if first else [],
                self.events if first else [],
                self.service_checks if first else [],
                self.passthrough if first else [],
            )


def _only(held: dict[int, T], slots: range) -> dict[int, T]:
    return {slot: held[slot] for slot in slots if slot in held} if held else {}


@dataclass(frozen=True, slots=True)
class HistogramSpec:
    """histogram_aggregates and histogram_percentiles, parsed once."""

    aggregates: tuple[str, ...]
    percentiles: tuple[int, ...]  # 95 for "0.95"

    @classmethod
    def from_config(cls, aggregates: tuple[str, ...], percentiles: tuple[str, ...]) -> HistogramSpec:
        parsed = sorted({int(float(p) * 100 + 0.5) for p in percentiles})
        return cls(tuple(dict.fromkeys(aggregates)), tuple(parsed))


def histogram_points(
    samples: list[Sample], spec: HistogramSpec, interval: int, packed: Packed | None = None
) -> list[Point]:
    """Weight int(1/rate), sum of value/rate, quantiles by weighted nearest rank with no interpolation. `packed`
    holds the samples that came before `samples` (their order matters for the sum, and for ties); with the C
    arithmetic, `samples` are packed into it (at flush, the bucket is already detached)."""
    if _summary_in_c is not None:
        packed = packed if packed is not None else Packed()
        packed.add(samples)
        summary = _summary_in_c(packed.values, packed.rates, spec.percentiles)
        if summary is not None:
            count, total, low, high, median, ranks = summary
            return _points(count, total, low, high, median, ranks, spec, interval)
        samples = packed.samples()
    elif packed is not None:
        samples = packed.samples() + samples
    if all(type(sample) is float for sample in samples):
        return _unweighted_points(sorted(samples), spec, interval)  # type: ignore[arg-type]  # floats, checked
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


def _points(
    count: int, total: float, low: float, high: float, median: float, ranks: tuple[float, ...], spec: HistogramSpec,
    interval: int,
) -> list[Point]:  # fmt: skip
    """The points of a histogram from its summary (what relay/_speedups.c's histogram_summary returns)."""
    values = {"max": high, "min": low, "sum": total, "avg": total / count, "median": median}
    points: list[Point] = []
    for aggregate in spec.aggregates:
        if aggregate == "count":
            points.append((".count", SeriesType.RATE, count / interval))
        else:
            points.append((f".{aggregate}", SeriesType.GAUGE, values[aggregate]))
    points += [(f".{p}percentile", SeriesType.GAUGE, rank) for p, rank in zip(spec.percentiles, ranks, strict=True)]
    return points


def _unweighted_points(ordered: list[float], spec: HistogramSpec, interval: int) -> list[Point]:
    """The same as the weighted rule when every weight is 1: the rank is an index (the usual case, and faster)."""
    count, total = len(ordered), 0.0
    for value in ordered:  # one addition at a time in sorted order (sum() compensates on Python 3.12+)
        total += value
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
