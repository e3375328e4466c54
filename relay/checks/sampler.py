"""Check sampler: what one check instance submitted in a run → series, with the Agent's check semantics.

gauge: last value; count: sum, sent as a count; monotonic_count: the increase since the previous value (the
first value only with flush_first_value, a decrease is a reset and sends nothing); rate: the per-second change
since the previous run, sent as a gauge (nothing on the first run or on a decrease); increment/decrement: the
sum as a rate; histogram: the configured aggregates and percentiles; historate: the same over the per-second
rates between consecutive submissions of one run (the first only primes it, and one run never sees another's).
"""

from __future__ import annotations

import itertools
import math
import time
from collections import Counter
from typing import Any

from relay.checks.base import COUNT, COUNTER, GAUGE, HISTOGRAM, HISTORATE, MONOTONIC_COUNT, RATE
from relay.pipeline.buckets import HistogramSpec, histogram_points
from relay.pipeline.model import Context, Event, Series, SeriesType, ServiceCheck
from relay.pipeline.sketch import Sample

Key = tuple[int, str, str, tuple[str, ...]]  # (metric type, name, host, tags)


class CheckSampler:
    def __init__(
        self, hostname: str, histogram_spec: HistogramSpec, host_tags: tuple[str, ...] = (),
        instance_tags: tuple[str, ...] = (),
    ) -> None:  # fmt: skip
        self.hostname = hostname  # "" with the instance's empty_default_hostname
        self.metric_tags = (*host_tags, *instance_tags)  # host tags only with relay.host_tags_on_metrics
        self.instance_tags = instance_tags  # the instance's `tags` and `service`, on everything it submits
        self.histogram_spec = histogram_spec
        self.values: dict[Key, list[float]] = {}
        self.flush_first: set[Key] = set()
        self.previous: dict[Key, tuple[float, float]] = {}  # last value and its time, across runs
        self.submitted_at: dict[Key, list[float]] = {}  # historate: when each value came, within the run
        self.service_checks: list[ServiceCheck] = []
        self.events: list[Event] = []
        self.nonfinite: Counter[str] = Counter()  # NaN and Inf dropped, by metric name, since the last take
        self.samples = 0

    def submit_metric(self, mtype: int, name: str, value: float, tags: Any, hostname: str, first: bool) -> None:
        if not math.isfinite(value):
            self.nonfinite[name] += 1
            return
        key = (mtype, name, hostname or self.hostname, tuple(sorted({*(tags or ()), *self.metric_tags})))
        self.values.setdefault(key, []).append(value)
        if mtype == HISTORATE:
            self.submitted_at.setdefault(key, []).append(time.monotonic())
        if first:
            self.flush_first.add(key)
        self.samples += 1

    def take_nonfinite(self) -> Counter[str]:
        taken, self.nonfinite = self.nonfinite, Counter()
        return taken

    def submit_service_check(self, name: str, status: int, tags: Any, hostname: str, message: str) -> None:
        tags = tuple(sorted({*(tags or ()), *self.instance_tags}))
        self.service_checks.append(ServiceCheck(name, status, 0, hostname or self.hostname, message, tags))

    def submit_event(self, event: dict[str, Any]) -> None:
        self.events.append(
            Event(
                title=str(event.get("msg_title", "")),
                text=str(event.get("msg_text", "")),
                timestamp=int(event.get("timestamp") or 0),
                host=event.get("host") or self.hostname,
                aggregation_key=str(event.get("aggregation_key") or ""),
                priority=str(event.get("priority") or "normal"),
                source_type_name=str(event.get("source_type_name") or ""),
                alert_type=str(event.get("alert_type") or "info"),
                tags=tuple(sorted({*(event.get("tags") or ()), *self.instance_tags})),
            )
        )

    def commit(self, now: float, interval: int) -> tuple[list[Series], list[ServiceCheck], list[Event]]:
        """Everything of the run that just ended; the sampler is then empty but for rate/monotonic memory."""
        timestamp = int(now)
        series: list[Series] = []
        for key, values in self.values.items():
            _, name, host, tags = key
            context = Context(name, host, tags)
            for suffix, series_type, value in self._points(key, values, now):
                named = context._replace(name=name + suffix) if suffix else context
                series.append(Series(named, series_type, [(timestamp, value)], interval))
        checks, events = self.service_checks, self.events
        self.values, self.flush_first, self.service_checks, self.events = {}, set(), [], []
        self.submitted_at = {}
        return series, checks, events

    def _points(self, key: Key, values: list[float], now: float) -> list[tuple[str, SeriesType, float]]:
        """The Agent's check sampler, by submission type: stateless ones from this run's values, the rest against
        what the previous run left."""
        mtype = key[0]
        if mtype == GAUGE:
            return [("", SeriesType.GAUGE, values[-1])]
        if mtype == COUNT:
            return [("", SeriesType.COUNT, sum(values))]
        if mtype == COUNTER:
            return [("", SeriesType.RATE, sum(values))]
        if mtype == HISTOGRAM:
            samples: list[Sample] = [float(v) for v in values]
            return histogram_points(samples, self.histogram_spec, 1)
        if mtype == HISTORATE:
            timed = list(itertools.pairwise(zip(values, self.submitted_at[key], strict=True)))
            rates: list[Sample] = [float((v2 - v1) / (t2 - t1)) for (v1, t1), (v2, t2) in timed if t2 > t1]
            return histogram_points(rates, self.histogram_spec, 1) if rates else []
        return self._stateful_points(key, values, now)

    def _stateful_points(self, key: Key, values: list[float], now: float) -> list[tuple[str, SeriesType, float]]:
        """rate and monotonic_count: the difference with the last value of the previous run."""
        mtype = key[0]
        previous = self.previous.get(key)
        self.previous[key] = (values[-1], now)
        if mtype == RATE:
            if previous is None or now <= previous[1] or values[-1] < previous[0]:
                return []  # the first run, or the counter was reset
            return [("", SeriesType.GAUGE, (values[-1] - previous[0]) / (now - previous[1]))]
        if mtype == MONOTONIC_COUNT:
            chain = values if previous is None else [previous[0], *values]
            increase = sum(b - a for a, b in itertools.pairwise(chain) if b >= a)  # a decrease is a reset
            if previous is None:
                if key in self.flush_first:
                    increase += values[0]
                elif len(values) == 1:
                    return []  # the first value only tells where the counter starts
            return [("", SeriesType.COUNT, increase)]
        return []
