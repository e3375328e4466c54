"""The intake stand-in's page: what reached it, for a person. The page (page.html) is static and asks for
JSON every 2 s, updating in place; the views here compute that JSON from what the stand-in decoded.

/_api/metrics?q=TEXT   one row per metric whose name or tags contain TEXT: kind, contexts, latest value
/_api/metric?name=NAME  every context of the metric with its points over time; distributions with percentiles
/_api/requests          the latest requests: time, endpoint, status, sizes, the API key (redacted), items
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

from relay.config import redact
from relay.pipeline.sketch import quantile

PERCENTILES = (0.5, 0.75, 0.95, 0.99)
MAX_CONTEXTS = 20  # per metric in the detail view: a plot of more is unreadable


Items = Iterable[dict[str, Any]]  # decoded series or sketches, as the stand-in keeps them


def metric_index(series: Items, sketches: Items, query: str) -> list[dict[str, Any]]:
    """One row per metric: for series the type and the latest point, for distributions the latest count and p95."""
    rows: dict[str, dict[str, Any]] = {}
    query = query.strip().lower()
    for item in series:
        if not item["points"] or not _matches(item, query):
            continue
        row = rows.setdefault(item["metric"], {"metric": item["metric"], "kind": item["type"], "contexts": set()})
        row["contexts"].add((item["host"] or "", tuple(item["tags"])))
        timestamp, value = item["points"][-1]
        if timestamp >= row.get("last_seen", 0):
            row["last_seen"], row["latest"] = timestamp, _number(value)
    for item in sketches:
        if not item["points"] or not _matches(item, query):
            continue
        row = rows.setdefault(item["metric"], {"metric": item["metric"], "kind": "distribution", "contexts": set()})
        row["contexts"].add((item["host"] or "", tuple(item["tags"])))
        point = item["points"][-1]
        if point["ts"] >= row.get("last_seen", 0):
            p95 = quantile(point["k"], point["n"], 0.95, point["min"], point["max"])
            row["last_seen"], row["latest"] = point["ts"], f"n={point['cnt']} p95={_number(p95)}"
    return [{**row, "contexts": len(row["contexts"])} for _, row in sorted(rows.items())]


def metric_detail(series: Items, sketches: Items, name: str) -> dict[str, Any]:
    """Every context of one metric with its points in time order (at most MAX_CONTEXTS, the busiest first)."""
    contexts: dict[tuple[str, tuple[str, ...]], dict[str, Any]] = {}
    for item in series:
        if item["metric"] == name:
            context = contexts.setdefault(_key(item), {"host": item["host"] or "", "tags": item["tags"],
                                                        "type": item["type"], "points": []})  # fmt: skip
            context["points"] += [[timestamp, _finite(value)] for timestamp, value in item["points"]]
    for item in sketches:
        if item["metric"] == name:
            context = contexts.setdefault(_key(item), {"host": item["host"] or "", "tags": item["tags"],
                                                        "type": "distribution", "points": []})  # fmt: skip
            for point in item["points"]:
                context["points"].append({
                    "ts": point["ts"], "count": point["cnt"], "min": point["min"], "max": point["max"],
                    "avg": point["avg"], **{f"p{round(q * 100)}": _finite(quantile(point["k"], point["n"], q,
                                                                                      point["min"], point["max"]))
                                            for q in PERCENTILES},
                })  # fmt: skip
    ordered = sorted(contexts.values(), key=lambda c: -len(c["points"]))
    for context in ordered:
        context["points"].sort(key=lambda p: p[0] if isinstance(p, list) else p["ts"])
    return {"metric": name, "contexts": ordered[:MAX_CONTEXTS], "total_contexts": len(ordered)}


def request_log(requests: Iterable[Any], limit: int = 100) -> list[dict[str, Any]]:
    """The latest requests first; the API key only as `***` and its last five characters."""
    return [
        {"at": r.at, "method": r.method, "path": r.path, "status": r.status, "bytes": r.compressed_size,
         "raw_bytes": r.raw_size, "api_key": redact(r.api_key), "items": r.items}
        for r in reversed(list(requests)[-limit:])
    ]  # fmt: skip


def _matches(item: dict[str, Any], query: str) -> bool:
    return not query or query in item["metric"].lower() or any(query in tag.lower() for tag in item["tags"])


def _key(item: dict[str, Any]) -> tuple[str, tuple[str, ...]]:
    return item["host"] or "", tuple(item["tags"])


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _number(value: float) -> str:
    return f"{value:.6g}"
