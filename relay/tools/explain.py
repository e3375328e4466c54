"""Explain: one datagram through the real stages, line by line: parse, enrich, aggregate, serialize. Pure.

What `dogstatsd-relay explain '<datagram>'` prints: for each line, what the parser read (or exactly why it was
rejected), the origin it came from and the tags that added (with a container tagger), the context it lands in
after mapping, namespace, blocklist, host tags and metric_tag_filterlist (the rule and the tags it removed), then
what a flush of this datagram alone would send and the payloads it would make.
"""

from __future__ import annotations

import dataclasses
import io
from collections import Counter
from dataclasses import replace
from typing import Any

from relay.config import Config
from relay.pipeline.assemble import Pipeline
from relay.pipeline.enrich import Enricher
from relay.pipeline.model import Event, Flushed, MetricSample, ServiceCheck
from relay.pipeline.origin import ContainerTagger
from relay.pipeline.parse import ParseError, datagram_lines, parse_terminated


def explain(
    config: Config, data: bytes, now: float, transport: str = "udp", tagger: ContainerTagger | None = None
) -> dict[str, Any]:
    """Each line goes through the relay's own ingest (fast path and all) into a pipeline of its own; what the
    parser and the enricher made of it is shown beside what the aggregator kept. `tagger`: the container tagger
    whose tags the lines' origins add (the relay's, on Kubernetes or with docker_host)."""
    pipeline = Pipeline(replace(config, api_key=""), out=io.StringIO(), tagger=tagger)  # a dry run: nothing is sent
    stats, enricher = pipeline.stats, pipeline.enricher
    lines = []
    eol_required = config.eol_required_for(transport)
    for raw, terminated in datagram_lines(data):
        item = parse_terminated(raw, terminated, eol_required, config.dogstatsd_no_aggregation_pipeline)
        before = Counter(stats.dropped)
        pipeline.ingest.datagram(raw + b"\n" if terminated else raw, transport, now)
        dropped = Counter(stats.dropped) - before
        if type(item) is MetricSample:
            entry: dict[str, Any] = _metric(item, enricher, dropped)
        elif type(item) is Event:
            entry = {"kind": "event", "parsed": dataclasses.asdict(enricher.event(item)), "outcome": "sent"}
        elif type(item) is ServiceCheck:
            entry = {"kind": "service_check", "parsed": dataclasses.asdict(enricher.service_check(item))}
            entry["outcome"] = "sent"
        else:
            assert isinstance(item, ParseError)
            entry = {
                "kind": item.kind,
                "line": item.line.decode("utf-8", "replace"),
                "outcome": f"rejected: {item.reason}",
            }
        lines.append(entry)
    flushed = pipeline.take(now, force=True)
    payloads = pipeline.serializer.payloads(flushed)
    return {
        "lines": lines,
        "would_send": _flushed(flushed),
        "payloads": [
            {
                "endpoint": p.endpoint.value,
                "items": p.items,
                "raw_bytes": p.raw_size,
                "bytes": len(p.body),
                "encoding": p.encoding or "none",
            }
            for p in payloads
        ],
        "dropped": {reason: count for reason, count in stats.dropped.items() if reason != "unterminated"},
    }


def _metric(item: MetricSample, enricher: Enricher, dropped: Counter[str]) -> dict[str, Any]:
    """A metric line: the context it lands in, and the metric_tag_filterlist rule that cut its tags, if any."""
    parsed = {**item._asdict(), "type": item.type.value, "origin": item.origin._asdict() if item.origin else None}
    entry: dict[str, Any] = {"kind": "metric", "parsed": parsed}
    if enricher.origins is not None:
        resolved = enricher.origin_tags(item.tags, item.origin)
        entry["origin"] = {
            "entities": list(resolved.entities), "cardinality": resolved.cardinality, "added": list(resolved.tags),
            "unknown": list(resolved.unknown),
        }  # fmt: skip
    context = enricher.context(item.name, item.tags, item.origin)
    if context is None:
        entry["outcome"] = "dropped: the name is in statsd_metric_blocklist"
        return entry
    entry["context"] = context._asdict()
    entry["outcome"] = _outcome(item, dropped)
    tag_filter = enricher.tag_filter(item.name, item.tags)
    if tag_filter is not None:
        rule, removed = tag_filter
        entry["tag_filter"] = {
            "metric_name": rule.metric_name, "action": rule.action, "keys": sorted(rule.keys), "removed": list(removed),
        }  # fmt: skip
    return entry


def _outcome(item: MetricSample, dropped: Counter[str]) -> str:
    """What the aggregator did with the line's values: kept, or dropped and why (NaN, a type conflict, ...)."""
    kept = "timestamped: sent as it is" if item.timestamp else "aggregated"
    if not dropped:
        return kept
    reasons = ", ".join(f"{count} value(s) as {reason}" for reason, count in sorted(dropped.items()))
    return f"dropped: {reasons}" if sum(dropped.values()) >= max(1, len(item.values)) else f"{kept}; dropped {reasons}"


def rejected(result: dict[str, Any]) -> int:
    """Lines rejected by the parser or dropped whole: `explain` exits 1 when there is any."""
    return sum(line["outcome"].startswith(("rejected", "dropped")) for line in result["lines"])


def _flushed(flushed: Flushed) -> dict[str, Any]:
    return {
        "series": [
            {"metric": s.context.name, "type": s.type.name.lower(), "points": s.points, "host": s.context.host,
             "tags": list(s.context.tags), "interval": s.interval}
            for s in flushed.series
        ],
        "sketches": [
            {"metric": s.context.name, "host": s.context.host, "tags": list(s.context.tags),
             "count": sum(p.count for p in s.points), "keys": s.points[0].keys if s.points else []}
            for s in flushed.sketches
        ],
        "events": [e.title for e in flushed.events],
        "service_checks": [c.name for c in flushed.service_checks],
    }  # fmt: skip


def render(result: dict[str, Any]) -> str:
    """The text of `dogstatsd-relay explain`."""
    out = []
    for number, line in enumerate(result["lines"], 1):
        parsed = line.get("parsed") or {"line": line.get("line")}
        out.append(f"line {number} ({line['kind']}): {line['outcome']}")
        out.append("  parsed:  " + ", ".join(f"{k}={v!r}" for k, v in parsed.items() if v not in ("", (), None)))
        if "context" in line:
            context = line["context"]
            out.append(f"  context: name={context['name']!r} host={context['host']!r} tags={list(context['tags'])}")
        if "origin" in line:
            origin = line["origin"]
            came = ", ".join(origin["entities"]) or "no origin"
            unknown = f"; not known yet: {origin['unknown']}" if origin["unknown"] else ""
            out.append(f"  origin:  {came} ({origin['cardinality']}) added {origin['added']}{unknown}")
        if "tag_filter" in line:
            rule = line["tag_filter"]
            removed = f"removed {rule['removed']}" if rule["removed"] else "removed nothing"
            out.append(f"  metric_tag_filterlist: {rule['metric_name']} {rule['action']} {rule['keys']}: {removed}")
    would = result["would_send"]
    out.append("would send:")
    out += [
        f"  series {s['metric']} ({s['type']}) {s['points']} host={s['host']!r} tags={s['tags']}"
        for s in would["series"]
    ]
    out += [f"  sketch {s['metric']} count={s['count']} keys={s['keys']} tags={s['tags']}" for s in would["sketches"]]
    out += [f"  event {title!r}" for title in would["events"]]
    out += [f"  service check {name}" for name in would["service_checks"]]
    out += [f"  payload {p['endpoint']}: {p['items']} items, {p['bytes']} bytes {p['encoding']} ({p['raw_bytes']} raw)"
            for p in result["payloads"]]  # fmt: skip
    for reason, count in result["dropped"].items():
        out.append(f"  dropped ({reason}): {count}")
    return "\n".join(out) + "\n"
