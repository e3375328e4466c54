"""Dry run: no API key, so nothing leaves the machine; each flush is printed as a table instead."""

from __future__ import annotations

import time

from relay.pipeline.model import Flushed, Payload
from relay.telemetry.stats import Stats


class DryRunSink:
    """No API key: nothing leaves the machine; the relay prints each flush instead and counts the payloads."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        stats.info["endpoint"] = "none (dry run: no API key)"
        stats.info["api_key"] = ""
        stats.info["api_key_valid"] = None

    async def start(self) -> None:
        return None

    def send(self, payload: Payload) -> None:
        self.stats.forward.payloads[payload.endpoint.value, "dry_run"] += 1

    async def close(self, timeout: float) -> None:
        return None


HOST_METRICS_PREFIX = "system."  # the host collectors' metrics, the Agent's names: one line in a dry run


def render_flush(flushed: Flushed, payloads: list[Payload]) -> str:
    """What one flush would have sent, as a table; printed instead of sending when there is no API key."""
    stamp = time.strftime("%H:%M:%S")
    lines = [f"--- flush at {stamp}: nothing sent (dry run, no API key) ---"]
    host_series = [s for s in flushed.series if s.context.name.startswith(HOST_METRICS_PREFIX)]
    rows = [
        (s.context.name, s.type.name.lower(), _points(s.points), s.context.host, ",".join(s.context.tags))
        for s in flushed.series
        if not s.context.name.startswith(HOST_METRICS_PREFIX)
    ]
    rows += [
        (
            s.context.name,
            "sketch",
            " ".join(f"n={p.count} avg={p.sum / p.count:g}" for p in s.points),
            s.context.host,
            ",".join(s.context.tags),
        )
        for s in flushed.sketches
    ]
    if rows:
        lines += _table(("metric", "type", "points (ts=value)", "host", "tags"), sorted(rows))
    if host_series:
        families = sorted({_family(s.context.name) for s in host_series})
        lines.append(f"+ {len(host_series)} host series from the collectors ({', '.join(families)}); "
                     "relay.host_collectors: [] turns them off")  # fmt: skip
    for event in flushed.events:
        lines.append(f"event [{event.alert_type}] {event.title!r} host={event.host} tags={','.join(event.tags)}")
    for check in flushed.service_checks:
        lines.append(f"service check {check.name} status={check.status} host={check.host} {check.message!r}")
    for payload in payloads:
        lines.append(
            f"would POST {payload.endpoint.value}: {payload.items} items, {len(payload.body):,} bytes "
            f"{payload.encoding or 'uncompressed'} ({payload.raw_size:,} raw)"
        )
    return "\n".join(lines) + "\n"


def _family(name: str) -> str:
    """system.cpu.user → system.cpu.*; system.uptime stays itself."""
    parts = name.split(".")
    return ".".join(parts[:2]) + ".*" if len(parts) > 2 else name


def _points(points: list[tuple[int, float]]) -> str:
    return " ".join(f"{timestamp}={value:g}" for timestamp, value in points)


CELL_WIDTH = 60  # a longer cell is cut, and ends with … to say so


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    widths = [min(CELL_WIDTH, max(len(str(row[i])) for row in [header, *rows])) for i in range(len(header))]
    line = "  ".join(f"{{:<{width}}}" for width in widths)
    return [line.format(*header), line.format(*("-" * w for w in widths))] + [
        line.format(*(_cut(str(cell)) for cell in row)) for row in rows
    ]


def _cut(cell: str) -> str:
    return cell if len(cell) <= CELL_WIDTH else cell[: CELL_WIDTH - 1] + "…"
