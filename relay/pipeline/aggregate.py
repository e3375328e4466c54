"""Aggregate: samples → buckets of `relay.flush_interval` seconds → flush(now) → series and sketches.

The Agent's time sampler (pkg/aggregator/time_sampler.go): a bucket flushes once it is closed
(start + interval <= start of the current one); counters keep reporting 0 for dogstatsd_expiry_seconds after
their last sample; contexts idle for dogstatsd_context_expiry_seconds are forgotten; timestamped gauges and
counters bypass the buckets. The clock is always an argument: nothing here reads the time.

Each context gets a slot (an int) the first time it is seen; buckets are keyed by slot, so the ingest hot path
never hashes a Context (see relay/pipeline/ingest.py). A context is (name, host, tags) per metric type: the same name
sent as a gauge and as a counter gives two series.
"""

from __future__ import annotations

import math
from array import array
from collections import Counter
from collections.abc import Iterable
from typing import Any

from relay.config import Config
from relay.pipeline.buckets import (
    NO_SLOT,
    Bucket,
    FlushWork,
    HistogramSpec,
    Packed,
    effective_rate,
    histogram_points,
    sketch_of,
)
from relay.pipeline.client_telemetry import ClientDrops
from relay.pipeline.model import (
    KIND_OF,
    Context,
    Event,
    Flushed,
    Kind,
    MetricType,
    Series,
    SeriesType,
    ServiceCheck,
    SketchSeries,
)
from relay.pipeline.sketch import Sample
from relay.telemetry.stats import Stats

OVERFLOW_METRIC = "dogstatsd_relay.context_overflow"
NEVER = -(2**63)  # a counter that had no sample (a bucket start can be any int, 0 and negative included)
FOLD_AT = 4096  # distribution samples of one context kept raw before they are folded into its sketch
PACK_AT = 64  # histogram samples of one context kept as Python floats before they are packed into doubles
MAX_PER_FLUSH = 100_000  # events, and service checks, kept between two flushes
OVERFLOW_LABELS = 200  # distinct (metric, tag key) pairs counted apart; the rest go to ("other", "other")


class Aggregator:
    def __init__(self, config: Config, stats: Stats) -> None:
        self.interval = config.relay_flush_interval
        self.counter_expiry = config.dogstatsd_expiry_seconds
        self.context_expiry = config.dogstatsd_context_expiry_seconds
        self.histogram_spec = HistogramSpec.from_config(config.histogram_aggregates, config.histogram_percentiles)
        self.max_contexts = config.relay_max_contexts
        # One metric's share: past it only that metric folds, so a spike of one name never starves the others.
        self.max_per_metric = config.relay_max_contexts_per_metric or self.max_contexts // 2
        self.per_metric: dict[str, int] = {}  # live contexts by metric name
        self.held_at = 0  # the memory guard's cap on new contexts (relay/memory.py); 0: none
        self._folded: dict[tuple[str, str, tuple[str, ...]], Context] = {}  # (name, host, tag keys) → folded
        self.client_drops = ClientDrops(stats.listen.client_drops)
        self.copy_prefix = (
            config.histogram_copy_to_distribution_prefix if config.histogram_copy_to_distribution else None
        )
        self.stats = stats
        self.buckets: dict[int, Bucket] = {}
        self.slot_of: dict[Context, int] = {}
        # Indexed by slot: lists cost 8 bytes a context where dicts cost about 100. Freed slots are reused.
        self.context_of: list[Context | None] = []
        self.last_seen = array("q")  # start of the last bucket with a sample, per slot
        self._free_slots: list[int] = []
        # Per slot, the start of the last bucket where its counter had a sample, or NEVER: 8 bytes a context where
        # a dict of the counters cost about 100.
        self.counter_last_sampled = array("q")
        self.timestamped: list[tuple[int, SeriesType, int, float]] = []
        self.passthrough: list[Series] = []  # series made elsewhere (checks), sent at the next flush as they are
        self.events: list[Event] = []
        self.service_checks: list[ServiceCheck] = []
        self.last_cutoff = 0
        self.last_flushed_estimate = 0  # custom metrics of the fullest bucket of the last flush

    # What a reload hands to the next pipeline (relay/runtime/handoff.py): every context and sample not yet flushed.
    HANDOFF = (
        "buckets", "slot_of", "context_of", "last_seen", "_free_slots", "counter_last_sampled", "timestamped",
        "passthrough", "events", "service_checks", "last_cutoff", "last_flushed_estimate",
    )  # fmt: skip

    def handoff(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.HANDOFF}

    def adopt(self, state: dict[str, Any]) -> None:
        """The previous pipeline's state, before anything is ingested here (the slots are its slots)."""
        for name in self.HANDOFF:
            setattr(self, name, state[name])
        if isinstance(self.counter_last_sampled, dict):  # the state of a relay from before the array
            sampled = array("q", [NEVER]) * len(self.context_of)
            for slot, start in self.counter_last_sampled.items():
                sampled[slot] = start
            self.counter_last_sampled = sampled
        self.per_metric = dict(Counter(context.name for context in self.slot_of))
        for context, slot in self.slot_of.items():
            self.client_drops.watch(slot, context)

    @property
    def contexts(self) -> int:
        return len(self.slot_of)

    def slot(self, context: Context) -> int:
        """The slot of a context, made on first sight; past relay.max_contexts, the metric's share of it or the
        memory guard's hold, the context is folded first."""
        slot = self.slot_of.get(context)
        if slot is not None:
            return slot
        live, per_metric = len(self.slot_of), self.per_metric
        if (
            self.max_contexts and (live >= self.max_contexts or per_metric.get(context.name, 0) >= self.max_per_metric)
        ) or (self.held_at and live >= self.held_at):
            context = self._fold(context)
            slot = self.slot_of.get(context)
            if slot is not None:
                return slot
        per_metric[context.name] = per_metric.get(context.name, 0) + 1
        if self._free_slots:
            slot = self._free_slots.pop()
            self.context_of[slot] = context
            self.last_seen[slot] = self.last_cutoff  # so that a slot never used still expires
        else:
            slot = len(self.context_of)
            self.context_of.append(context)
            self.last_seen.append(self.last_cutoff)
            self.counter_last_sampled.append(NEVER)
        self.slot_of[context] = slot
        self.client_drops.watch(slot, context)
        return slot

    def hold(self, held: bool) -> None:
        """The memory guard: while held, no context is added beyond those live now (expired ones make room)."""
        self.held_at = (self.held_at or max(len(self.slot_of), 1)) if held else 0

    def _fold(self, context: Context) -> Context:
        """Over the limit, new contexts are folded, not lost: every tag value becomes `overflow`, and the counter
        says which metric and tag key overflowed. Should even folded contexts grow past a 10 % headroom (random
        metric names), the name is folded too."""
        name, host, tags = context
        keys = tuple(sorted({tag.partition(":")[0] if ":" in tag else "" for tag in tags}))
        overflow = self.stats.aggregate.context_overflow
        for key in keys or ("",):
            label = (name, key)
            if label not in overflow and len(overflow) >= OVERFLOW_LABELS:
                label = ("other", "other")
            overflow[label] += 1
        folded = self._folded.get((name, host, keys))
        if folded is None:  # a flood folds into few contexts: each is built once, not once a line
            if len(self._folded) >= OVERFLOW_LABELS:
                self._folded.clear()
            folded = Context(name, host, tuple(f"{key}:overflow" if key else "overflow" for key in keys))
            self._folded[name, host, keys] = folded
        if folded not in self.slot_of and len(self.slot_of) >= (self.held_at or self.max_contexts) * 1.1:
            self.stats.dropped["context_overflow_name_folded"] += 1
            folded = Context(OVERFLOW_METRIC, host, ())
        return folded

    def cardinality(self, top: int = 20, scan: int = 100_000) -> dict[str, Any]:
        """Live contexts per metric name (exact), and distinct values per tag key of the top metrics (from at most
        `scan` contexts, so that asking never stalls ingest)."""
        per_metric: Counter[str] = Counter()
        values: dict[str, dict[str, set[str]]] = {}
        for scanned, context in enumerate(c for c in self.context_of if c is not None):
            if scanned >= scan:
                break
            per_metric[context.name] += 1
            by_key = values.setdefault(context.name, {})
            for tag in context.tags:
                key, _, value = tag.partition(":")
                by_key.setdefault(key, set()).add(value)
        return {
            "contexts": self.contexts,
            "custom_metrics_estimate": self.custom_metrics_estimate(),
            "scanned": min(self.contexts, scan),
            "max_contexts": self.max_contexts,
            "max_contexts_per_metric": self.max_per_metric,
            "top_metrics": [
                {"metric": name, "contexts": count,
                 "tag_values": dict(sorted(((k, len(v)) for k, v in values[name].items()), key=lambda kv: -kv[1])[:10])}
                for name, count in per_metric.most_common(top)
            ],
        }  # fmt: skip

    def custom_metrics_estimate(self) -> int:
        """What Datadog would bill, from the fullest bucket, open or last flushed: one custom metric per gauge,
        count or set context, one per histogram aggregate and percentile, five per distribution."""
        return max([self.last_flushed_estimate, *map(self._estimate, self.buckets.values())])

    def _estimate(self, bucket: Bucket) -> int:
        spec = self.histogram_spec
        per_histogram = len(spec.aggregates) + len(spec.percentiles)
        return (
            len(bucket.gauges) + len(bucket.counters) + len(bucket.sets) + per_histogram * len(bucket.histograms)
            + 5 * len(bucket.distributions)
        )  # fmt: skip

    def bucket(self, now: float) -> Bucket:
        second = int(now)
        start = second - second % self.interval
        bucket = self.buckets.get(start)
        if bucket is None:
            bucket = self.buckets[start] = Bucket(start)
        return bucket

    def copy_slot(self, context: Context) -> int:
        """histogram_copy_to_distribution: the slot of the distribution a histogram is copied to, or NO_SLOT."""
        if self.copy_prefix is None:
            return NO_SLOT
        return self.slot(context._replace(name=self.copy_prefix + context.name))

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
        """Add every value of one parsed line; NaN and Inf are dropped here, as in the Agent. The reference path."""
        if not math.isfinite(sum(values)):  # rare: only then look at each value
            finite = tuple(value for value in values if math.isfinite(value))
            self.stats.dropped["nan_or_inf"] += len(values) - len(finite)
            if not finite:
                return
            values = finite
        slot = self.slot(context)
        if timestamp:
            self.add_timestamped(slot, metric_type, values, timestamp)
            return
        bucket, kind = self.bucket(now), KIND_OF[metric_type]
        if kind == Kind.GAUGE:
            bucket.gauge(slot, values[-1])
        elif kind == Kind.COUNTER:
            bucket.count(slot, sum(values) * (1.0 / effective_rate(rate)))
        elif kind == Kind.SET:
            bucket.member(slot, set_value)
        else:
            samples: list[Sample] = [float(v) for v in values] if rate == 1 else [(float(v), rate) for v in values]
            copy = self.copy_slot(context) if kind == Kind.HISTOGRAM else NO_SLOT
            bucket.samples(kind, slot, samples, copy)

    def add_timestamped(self, slot: int, metric_type: MetricType, values: tuple[float, ...], timestamp: int) -> None:
        """Protocol v1.3: only gauges and counters, one point each, no sample rate (the Agent's no-aggregation path)."""
        if metric_type is MetricType.GAUGE:
            self.timestamped.extend((slot, SeriesType.GAUGE, timestamp, value) for value in values)
        elif metric_type is MetricType.COUNTER:
            self.timestamped.extend((slot, SeriesType.RATE, timestamp, value / self.interval) for value in values)
        else:
            self.stats.dropped["timestamped_unsupported_type"] += len(values)

    def add_series(self, series: list[Series]) -> None:
        """Series already computed (a check's run): they leave with the next flush, untouched."""
        self.passthrough.extend(series)

    def add_event(self, event: Event, now: float) -> None:
        if len(self.events) >= MAX_PER_FLUSH:  # a flood of events must not grow memory without bound
            self.stats.dropped["events_over_limit"] += 1
            return
        if not event.timestamp:
            event.timestamp = int(now)
        self.events.append(event)

    def add_service_check(self, check: ServiceCheck, now: float) -> None:
        if len(self.service_checks) >= MAX_PER_FLUSH:
            self.stats.dropped["service_checks_over_limit"] += 1
            return
        if not check.timestamp:
            check.timestamp = int(now)
        self.service_checks.append(check)

    def flush(self, now: float, *, force: bool = False) -> Flushed:
        """Everything whose bucket is closed at `now`; with `force` (shutdown) the open buckets too. For an
        aggregator fed by samples only (checks, tests): with ingest in front, Pipeline.take also forgets shapes."""
        work = self.detach(now, force=force)
        flushed = self.build(work)
        self.finish(work)
        return flushed

    def fold_samples(self) -> int:
        """Distribution samples of the open buckets into their sketches, once a context holds FOLD_AT of them:
        what the Agent does on arrival, so that a flood of samples costs bins, not memory. Histogram samples
        into doubles, once a context holds PACK_AT of them. The lists are emptied in place (ingest keeps
        appending to them). Returns the samples folded or packed."""
        folded = 0
        for bucket in list(self.buckets.values()):
            for slot, samples in bucket.distributions.items():
                if len(samples) >= FOLD_AT:
                    bucket.folded[slot] = sketch_of(samples, bucket.folded.get(slot))
                    folded += len(samples)
                    samples.clear()
            for slot, samples in bucket.histograms.items():
                if len(samples) >= PACK_AT:
                    packed = bucket.packed.get(slot)
                    if packed is None:
                        packed = bucket.packed[slot] = Packed()
                    packed.add(samples)
                    folded += len(samples)
                    samples.clear()
        return folded

    def detach(self, now: float, *, force: bool = False) -> FlushWork:
        """Step 1, cheap, on the ingest thread: take the closed buckets out and decide the zero points."""
        second = int(now)
        cutoff = second - second % self.interval
        last_sampled = self.counter_last_sampled
        for start in sorted(self.buckets):  # open buckets too: a counter's last sample may be in one
            for slot in self.buckets[start].counters:
                last_sampled[slot] = start
        closed = [self.buckets.pop(start) for start in sorted(self.buckets) if force or start + self.interval <= cutoff]
        if closed:
            self.last_flushed_estimate = max(map(self._estimate, closed))
        for bucket in closed:
            self.client_drops.read(bucket)
        zeros = [(bucket.start, self._zero_slots(bucket.start, bucket.counters)) for bucket in closed]
        if not closed and not self.buckets and cutoff - self.last_cutoff >= self.interval:
            # No bucket pending at all: one zero point for the interval that just ended (Agent quirk:
            # when open buckets exist, nothing is zero-filled in this flush).
            zeros.append((cutoff - self.interval, self._zero_slots(cutoff - self.interval, {})))
        self.last_cutoff = max(self.last_cutoff, cutoff)
        work = FlushWork(cutoff, closed, zeros, self.timestamped, self.events, self.service_checks, self.passthrough)
        self.timestamped, self.events, self.service_checks, self.passthrough = [], [], [], []
        return work

    def build(self, work: FlushWork) -> Flushed:
        """Step 2, the arithmetic: reads only what `detach` took out, so it may run in another thread while
        ingest goes on (slots are freed in `finish` only, so every slot it reads keeps its context)."""
        series = _SeriesBuilder(self.context_of, self.interval)
        sketches: dict[int, SketchSeries] = {}
        buckets, zeros = {bucket.start: bucket for bucket in work.closed}, dict(work.zeros)
        for start in sorted(buckets.keys() | zeros.keys()):  # in time order: each series' points stay sorted
            if start in buckets:
                self._flush_bucket(buckets[start], series, sketches)
            series.add_all("", SeriesType.RATE, start, ((slot, 0.0) for slot in zeros.get(start, ())))
        return Flushed(
            series=[*series.all(), *self._timestamped_series(work.timestamped), *work.passthrough],
            sketches=list(sketches.values()),
            events=work.events,
            service_checks=work.service_checks,
        )

    def finish(self, work: FlushWork) -> set[int]:
        """Step 3, on the ingest thread: record when each context was last seen, then forget idle ones; returns
        the slots forgotten (their shapes in ingest must go too)."""
        last_seen = self.last_seen
        for bucket in work.closed:  # dict by dict: a set of every slot would cost a million ints at the peak
            start = bucket.start
            for held in bucket.holders():
                for slot in held:
                    last_seen[slot] = start
        for slot, _, timestamp, _ in work.timestamped:
            last_seen[slot] = max(last_seen[slot], timestamp)
        return self._expire_contexts(work.cutoff)

    def _flush_bucket(self, bucket: Bucket, series: _SeriesBuilder, sketches: dict[int, SketchSeries]) -> None:
        start, interval = bucket.start, self.interval
        series.add_all("", SeriesType.GAUGE, start, bucket.gauges.items())
        series.add_all(
            "", SeriesType.RATE, start, ((slot, total / interval) for slot, total in bucket.counters.items())
        )
        sets = []
        for slot, members in bucket.sets.items():
            if slot in bucket.gauges:  # both would be gauge points of one series at one timestamp
                self.stats.dropped["type_conflict"] += 1
            else:
                sets.append((slot, float(len(members))))
        series.add_all("", SeriesType.GAUGE, start, sets)
        for slot, samples in bucket.histograms.items():
            try:  # the arithmetic with the most code: a bug in it costs one context, counted
                points = histogram_points(samples, self.histogram_spec, interval, bucket.packed.get(slot))
            except Exception:
                self.stats.internal_error("flush (histogram)")
                continue
            for suffix, series_type, value in points:
                series.add_all(suffix, series_type, start, ((slot, value),))
        for slot, samples in bucket.distributions.items():
            try:
                point = sketch_of(samples, bucket.folded.get(slot)).to_point(start)
            except Exception:
                self.stats.internal_error("flush (distribution)")
                continue
            entry = sketches.get(slot)
            if entry is None:
                entry = sketches[slot] = SketchSeries(self._context(slot), [])
            entry.points.append(point)

    def _zero_slots(self, start: int, sampled: dict[int, float]) -> array[int]:
        """Counters without data in this bucket report 0 until dogstatsd_expiry_seconds after their last sample.
        In slot order, 8 bytes each (FlushWork.parts cuts them by slot range)."""
        zeros, expiry, last_sampled = array("q"), self.counter_expiry, self.counter_last_sampled
        for slot, last in enumerate(last_sampled):
            if last == NEVER or slot in sampled:
                continue
            if last + expiry > start:
                zeros.append(slot)
            else:
                last_sampled[slot] = NEVER
        return zeros

    def _timestamped_series(self, samples: list[tuple[int, SeriesType, int, float]]) -> list[Series]:
        series: dict[tuple[int, SeriesType], Series] = {}
        for slot, series_type, timestamp, value in samples:
            entry = series.get((slot, series_type))
            if entry is None:
                entry = series[slot, series_type] = Series(self._context(slot), series_type, [], self.interval)
            entry.points.append((timestamp, value))
        return list(series.values())

    def _context(self, slot: int) -> Context:
        context = self.context_of[slot]
        assert context is not None, "a slot in a bucket always has its context"
        return context

    def _expire_contexts(self, cutoff: int) -> set[int]:
        """Forget contexts idle for dogstatsd_context_expiry_seconds, unless a counter still reports zeros."""
        horizon = cutoff - self.context_expiry
        idle = [
            slot
            for slot, seen in enumerate(self.last_seen)
            if seen < horizon and self.context_of[slot] is not None and self.counter_last_sampled[slot] == NEVER
        ]
        open_holders = [held for bucket in self.buckets.values() for held in bucket.holders()]
        expired = {slot for slot in idle if not any(slot in held for held in open_holders)}
        per_metric = self.per_metric
        for slot in expired:
            context = self.context_of[slot]
            assert context is not None
            del self.slot_of[context]
            self.client_drops.forget(slot)
            per_metric[context.name] -= 1
            if not per_metric[context.name]:
                del per_metric[context.name]
            self.context_of[slot] = None
        self._free_slots.extend(expired)
        return expired


class _SeriesBuilder:
    """Series of one flush, one per (slot, name suffix, type); several closed buckets add points to the same one."""

    def __init__(self, context_of: list[Context | None], interval: int) -> None:
        self.context_of = context_of
        self.interval = interval
        self.by_kind: dict[tuple[str, SeriesType], dict[int, Series]] = {}

    def add_all(
        self, suffix: str, series_type: SeriesType, timestamp: int, values: Iterable[tuple[int, float]]
    ) -> None:
        by_slot = self.by_kind.get((suffix, series_type))
        if by_slot is None:
            by_slot = self.by_kind[suffix, series_type] = {}
        context_of, interval = self.context_of, self.interval
        for slot, value in values:
            entry = by_slot.get(slot)
            if entry is None:
                context = context_of[slot]
                assert context is not None
                if suffix:
                    context = context._replace(name=context.name + suffix)
                by_slot[slot] = Series(context, series_type, [(timestamp, value)], interval)
            else:
                entry.points.append((timestamp, value))

    def all(self) -> list[Series]:
        return [series for by_slot in self.by_kind.values() for series in by_slot.values()]
