"""relay.workers > 1: what each worker reports every second, and the main process's sum of those reports."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from relay.telemetry.stats import Stats

# What a worker process reports to the main one: everything but the listeners' counters, as "group.name".
WORKER_COUNTERS = (
    "parse.messages", "parse.errors", "dropped", "aggregate.flushed", "forward.payloads", "forward.payload_bytes",
    "forward.http_errors", "forward.spooled", "aggregate.context_overflow", "parse.tags_filtered",
    "listen.client_drops",
)  # fmt: skip
WORKER_GAUGES = (
    "contexts", "custom_metrics_estimate", "retry_queue_bytes", "retry_queue_payloads", "spool_bytes", "spool_payloads",
)  # fmt: skip


def worker_report(stats: Stats) -> dict[str, Any]:
    """A worker's counters as JSON-safe data (tuple keys become lists)."""
    aggregate = stats.aggregate
    return {
        "counters": {name: [[key, value] for key, value in _counter(stats, name).items()] for name in WORKER_COUNTERS},
        "gauges": {name: getattr(stats.gauges, name)() for name in WORKER_GAUGES},
        "flush": [aggregate.flushes, aggregate.flush_seconds, aggregate.last_flush_seconds, aggregate.last_flush_at],
        "api_key_valid": stats.info.get("api_key_valid"),
        "destinations": {label: worker_report(destination) for label, destination in stats.destinations.items()},
    }


def absorb_reports(stats: Stats, local_dropped: Counter[str], reports: list[dict[str, Any]]) -> None:
    """The main process's view: its own listener counters plus the sum of every worker's report."""
    for name in WORKER_COUNTERS:
        total: Counter[Any] = Counter(local_dropped) if name == "dropped" else Counter()
        for report in reports:
            for key, value in report["counters"][name]:
                total[tuple(key) if isinstance(key, list) else key] += value
        counter = _counter(stats, name)
        counter.clear()
        counter.update(total)
    for name in WORKER_GAUGES:
        setattr(stats.gauges, name, _summed_gauge(reports, name))
    flushes, aggregate = [r["flush"] for r in reports], stats.aggregate
    aggregate.flushes = sum(f[0] for f in flushes)
    aggregate.flush_seconds = sum(f[1] for f in flushes)
    aggregate.last_flush_seconds = max((f[2] for f in flushes), default=0.0)
    aggregate.last_flush_at = max((f[3] for f in flushes), default=0.0)
    if reports:
        stats.info["api_key_valid"] = reports[0]["api_key_valid"]
    for label in reports[0]["destinations"] if reports else ():
        destination = stats.destinations.setdefault(label, Stats())
        absorb_reports(destination, Counter(), [report["destinations"][label] for report in reports])


def _counter(stats: Stats, name: str) -> Counter[Any]:
    counter = stats.counter(name)
    assert counter is not None, f"{name} is one of Stats' counters"
    return counter


def _summed_gauge(reports: list[dict[str, Any]], name: str) -> Callable[[], int]:
    """A gauge that reads the sum of the workers' last reports at the time of asking."""
    return lambda: int(sum(report["gauges"][name] for report in reports))
