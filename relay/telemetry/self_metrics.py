"""relay.self_metrics: the relay's own telemetry sent as series, under its own namespace (never datadog.agent.*)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from relay.pipeline.model import Context, Series, SeriesType
from relay.telemetry.stats import Stats

SELF_PREFIX = "dogstatsd_relay."
# (series name, tag keys, the counter): what relay.self_metrics sends, as per-second rates.
_RATES: tuple[tuple[str, tuple[str, ...], Callable[[Stats], Counter[Any]]], ...] = (
    ("packets", ("transport",), lambda stats: stats.listen.packets),
    ("messages", ("type", "state"), lambda stats: stats.parse.messages),
    ("samples_dropped", ("reason",), lambda stats: stats.dropped),
    ("payloads", ("endpoint", "result"), lambda stats: stats.forward.payloads),
)


class SelfMetrics:
    """The relay's own telemetry as series: counter deltas since the last flush as rates, plus three gauges."""

    def __init__(self, stats: Stats, host: str) -> None:
        self.stats = stats
        self.host = host
        self.previous: dict[str, dict[Any, int]] = {}  # the counters at the last flush

    def series(self, timestamp: int, interval: int) -> list[Series]:
        stats, host = self.stats, self.host
        series = []
        for name, keys, counter_of in _RATES:
            last = self.previous.setdefault(name, {})
            for labels, value in counter_of(stats).items():
                values = labels if isinstance(labels, tuple) else (labels,)
                tags = tuple(f"{key}:{label}" for key, label in zip(keys, values, strict=True))
                delta = value - last.get(labels, 0)
                last[labels] = value
                context = Context(SELF_PREFIX + name, host, tags)
                series.append(Series(context, SeriesType.RATE, [(timestamp, delta / interval)], interval))
        for name, reading in (
            ("contexts", stats.gauges.contexts()),
            ("flush.duration", stats.aggregate.last_flush_seconds),
            ("retry_queue.bytes", stats.gauges.retry_queue_bytes()),
        ):
            context = Context(SELF_PREFIX + name, host, ())
            series.append(Series(context, SeriesType.GAUGE, [(timestamp, float(reading))], interval))
        return series
