"""Aggregate: samples → buckets of `relay.flush_interval` seconds → flush(now) → series and sketches.

The Agent's time sampler (pkg/aggregator/time_sampler.go): a bucket flushes once it is closed
(start + interval <= start of the current one); counters keep reporting 0 for dogstatsd_expiry_seconds after
their last sample; contexts idle for dogstatsd_context_expiry_seconds are forgotten; timestamped gauges and
counters bypass the buckets. The clock is always an argument: nothing here reads the time.
"""

from __future__ import annotations

import math

from relay.accumulators import Accumulator, Counter, Gauge, Histogram, HistogramSpec, Set
from relay.config import Config
from relay.model import Context, Event, Flushed, MetricType, Series, SeriesType, ServiceCheck, SketchSeries
from relay.sketch import Sketch, sample_times
from relay.telemetry import Stats

_NUMERIC = {MetricType.GAUGE: Gauge, MetricType.COUNTER: Counter}
_HISTOGRAMS = (MetricType.HISTOGRAM, MetricType.TIMER)


class Aggregator:
    def __init__(self, config: Config, stats: Stats) -> None:
        self.interval = config.relay_flush_interval
        self.counter_expiry = config.dogstatsd_expiry_seconds
        self.context_expiry = config.dogstatsd_context_expiry_seconds
        self.histogram_spec = HistogramSpec.from_config(config.histogram_aggregates, config.histogram_percentiles)
        self.copy_prefix = (
            config.histogram_copy_to_distribution_prefix if config.histogram_copy_to_distribution else None
        )
        self.stats = stats
        self.buckets: dict[int, dict[Context, Accumulator]] = {}
        self.sketch_buckets: dict[int, dict[Context, Sketch]] = {}
        self.counter_last_sampled: dict[Context, int] = {}
        self.last_seen: dict[Context, int] = {}
        self.timestamped: dict[tuple[Context, SeriesType], Series] = {}
        self.events: list[Event] = []
        self.service_checks: list[ServiceCheck] = []
        self.last_cutoff = 0

    @property
    def contexts(self) -> int:
        return len(self.last_seen)

    def add(
        self,
        context: Context,
        metric_type: MetricType,
        values: tuple[float, ...],
        set_value: str,
        rate: float,
        timestamp: int,
        now: float,
    ) -> None:
        """Add every value of one parsed line to its context; NaN and Inf are dropped here, as in the Agent."""
        if not math.isfinite(sum(values)):  # rare: only then look at each value
            finite = tuple(value for value in values if math.isfinite(value))
            self.stats.dropped["nan_or_inf"] += len(values) - len(finite)
            if not finite:
                return
            values = finite
        second = int(now)
        if timestamp:
            self._add_timestamped(context, metric_type, values, timestamp)
            return
        self.last_seen[context] = second
        start = second - second % self.interval
        if metric_type is MetricType.DISTRIBUTION:
            self._add_distribution(context, values, rate, start)
            return
        bucket = self.buckets.get(start)
        if bucket is None:
            bucket = self.buckets[start] = {}
        accumulator = bucket.get(context)
        if accumulator is None:
            accumulator = bucket[context] = self._new_accumulator(metric_type)
        if metric_type is MetricType.SET:
            if type(accumulator) is not Set:
                self.stats.dropped["type_conflict"] += 1
                return
            accumulator.add(set_value, rate)
            return
        if type(accumulator) is Set:  # a number sent to a context that is a set in this bucket
            self.stats.dropped["type_conflict"] += len(values)
            return
        if metric_type is MetricType.COUNTER or type(accumulator) is Counter:
            self.counter_last_sampled[context] = second
        for value in values:
            accumulator.add(value, rate)
        if self.copy_prefix is not None and metric_type in _HISTOGRAMS:
            copy = Context(self.copy_prefix + context.name, context.host, context.tags)
            self.last_seen[copy] = second
            self._add_distribution(copy, values, rate, start)

    def _new_accumulator(self, metric_type: MetricType) -> Accumulator:
        if metric_type in _HISTOGRAMS:
            return Histogram(self.histogram_spec)
        if metric_type is MetricType.SET:
            return Set()
        return _NUMERIC[metric_type]()

    def _add_distribution(self, context: Context, values: tuple[float, ...], rate: float, start: int) -> None:
        bucket = self.sketch_buckets.get(start)
        if bucket is None:
            bucket = self.sketch_buckets[start] = {}
        sketch = bucket.get(context)
        if sketch is None:
            sketch = bucket[context] = Sketch()
        times = sample_times(rate)
        for value in values:
            sketch.insert(value, times)

    def _add_timestamped(
        self, context: Context, metric_type: MetricType, values: tuple[float, ...], timestamp: int
    ) -> None:
        """Protocol v1.3: only gauges and counters, one point each, no sample rate (the Agent's no-aggregation path)."""
        if metric_type is MetricType.GAUGE:
            series_type, scale = SeriesType.GAUGE, 1.0
        elif metric_type is MetricType.COUNTER:
            series_type, scale = SeriesType.RATE, 1.0 / self.interval
        else:
            self.stats.dropped["timestamped_unsupported_type"] += len(values)
            return
        series = self.timestamped.get((context, series_type))
        if series is None:
            series = self.timestamped[context, series_type] = Series(context, series_type, [], self.interval)
        series.points.extend((timestamp, value * scale) for value in values)

    def add_event(self, event: Event, now: float) -> None:
        if not event.timestamp:
            event.timestamp = int(now)
        self.events.append(event)

    def add_service_check(self, check: ServiceCheck, now: float) -> None:
        if not check.timestamp:
            check.timestamp = int(now)
        self.service_checks.append(check)

    def flush(self, now: float, *, force: bool = False) -> Flushed:
        """Everything whose bucket is closed at `now`; with `force` (shutdown) the open buckets too."""
        second = int(now)
        cutoff = second - second % self.interval
        closed = sorted(
            start
            for start in self.buckets.keys() | self.sketch_buckets.keys()
            if force or start + self.interval <= cutoff
        )
        series: dict[tuple[Context, SeriesType], Series] = {}
        for start in closed:
            self._flush_bucket(start, self.buckets.pop(start, {}), series)
        if not closed and not self.buckets and cutoff - self.last_cutoff >= self.interval:
            # No bucket pending at all: one zero point for the interval that just ended (Agent quirk:
            # when open buckets exist, nothing is zero-filled in this flush).
            self._zero_fill(cutoff - self.interval, set(), series)
        self.last_cutoff = max(self.last_cutoff, cutoff)
        sketches = self._flush_sketches(closed)
        flushed = Flushed(
            series=[*series.values(), *self.timestamped.values()],
            sketches=sketches,
            events=self.events,
            service_checks=self.service_checks,
        )
        self.timestamped, self.events, self.service_checks = {}, [], []
        self._expire_contexts(cutoff)
        return flushed

    def _flush_bucket(
        self, start: int, bucket: dict[Context, Accumulator], out: dict[tuple[Context, SeriesType], Series]
    ) -> None:
        for context, accumulator in bucket.items():
            for suffix, series_type, value in accumulator.flush(self.interval):
                key_context = context._replace(name=context.name + suffix) if suffix else context
                _append(out, key_context, series_type, start, value, self.interval)
        self._zero_fill(start, bucket, out)

    def _zero_fill(
        self,
        start: int,
        sampled: dict[Context, Accumulator] | set[Context],
        out: dict[tuple[Context, SeriesType], Series],
    ) -> None:
        """Counters without data in this bucket report 0 until dogstatsd_expiry_seconds after their last sample."""
        expired = []
        for context, last_sampled in self.counter_last_sampled.items():
            if context in sampled:
                continue
            if last_sampled + self.counter_expiry > start:
                _append(out, context, SeriesType.RATE, start, 0.0, self.interval)
            else:
                expired.append(context)
        for context in expired:
            del self.counter_last_sampled[context]

    def _flush_sketches(self, closed: list[int]) -> list[SketchSeries]:
        sketches: dict[Context, SketchSeries] = {}
        for start in closed:
            for context, sketch in self.sketch_buckets.pop(start, {}).items():
                entry = sketches.get(context)
                if entry is None:
                    entry = sketches[context] = SketchSeries(context, [])
                entry.points.append(sketch.to_point(start))
        return list(sketches.values())

    def _expire_contexts(self, cutoff: int) -> None:
        expired = [
            context
            for context, seen in self.last_seen.items()
            if seen + self.context_expiry < cutoff and context not in self.counter_last_sampled
        ]
        for context in expired:
            del self.last_seen[context]


def _append(
    out: dict[tuple[Context, SeriesType], Series],
    context: Context,
    series_type: SeriesType,
    timestamp: int,
    value: float,
    interval: int,
) -> None:
    series = out.get((context, series_type))
    if series is None:
        series = out[context, series_type] = Series(context, series_type, [], interval)
    series.points.append((timestamp, value))
