"""The status document: the JSON behind /status and `dogstatsd-relay status`, read from Stats when asked."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from relay.telemetry.stats import Stats

MESSAGE_TYPES = ("metric", "event", "service_check")


def status_document(stats: Stats) -> dict[str, Any]:
    """The status JSON: what `dogstatsd-relay status` prints."""
    gauges, listen, aggregate, messages = stats.gauges, stats.listen, stats.aggregate, stats.parse.messages
    kernel_drops, queue_drops, queued = (
    gauges.by_listener("kernel_drops"), gauges.by_listener("queue_drops"), gauges.by_listener("queue_bytes")
    )  # fmt: skip
    return {
        "info": {**stats.info, "uptime_seconds": round(time.time() - stats.started, 1)},
        "listeners": {
            transport: {
                "packets": listen.packets[transport],
                "bytes": listen.bytes[transport],
                "truncated": listen.truncated[transport],
                "read_errors": listen.read_errors[transport],
                "kernel_drops": kernel_drops.get(transport, 0),
                "queue_drops": queue_drops.get(transport, 0),
                "queued_bytes": queued.get(transport, 0),
            }
            for transport in sorted(set(stats.info.get("listeners", {})) | set(listen.packets))
        },
        # relay.workers > 1: lines not yet handed to each worker
        "worker_queue_bytes": {name: read() for name, read in gauges.worker_queues.items()},
        "probe": {
            listener: {"sent": listen.probes[listener], "lost": listen.probes_lost[listener], "loss_ratio": ratio}
            for listener, ratio in gauges.probe_loss().items()
        },
        "statsd_forward": dict(listen.forwarded),
        # what the official clients say they could not send (their telemetry), by transport
        "client_drops": _client_drops(listen.client_drops),
        # the container tagger (on Kubernetes or with docker_host): what it knows, its last error, origins not known
        "tagger": gauges.tagger(),
        "messages": {kind: {"ok": messages[kind, "ok"], "error": messages[kind, "error"]} for kind in MESSAGE_TYPES},
        "parse_errors": dict(stats.parse.errors),
        "tags_filtered": dict(stats.parse.tags_filtered.most_common(20)),  # metric_tag_filterlist, lines cut
        "checks": gauges.checks(),
        "check_errors": dict(stats.check_errors),
        "check_config_errors": dict(stats.check_config_errors),
        "context_overflow": folding(stats, 20),
        "dropped": dict(stats.dropped),
        "memory": {
            **stats.info.get("memory", {}),
            "used": gauges.memory_used(),
            "holds": aggregate.memory_holds,
            "captures_paused": sum(listen.taps_paused.values()),
        },
        "degraded": stats.info.get("degraded", []),
        "aggregator": {
            "contexts": gauges.contexts(),
            "flushes": aggregate.flushes,
            "last_flush_seconds": round(aggregate.last_flush_seconds, 4),
            "last_flush_at": aggregate.last_flush_at,
            "flushed": dict(aggregate.flushed),
        },
        "forwarder": {
            **forwarder_document(stats),
            "additional_endpoints": {
                label: {
                    **forwarder_document(destination),
                    "api_key_valid": destination.info.get("api_key_valid"),
                    "dropped": dict(destination.dropped),
                }
                for label, destination in stats.destinations.items()
            },
        },
    }


def folding(stats: Stats, top: int) -> list[dict[str, Any]]:
    """The metrics whose new contexts fold (past relay.max_contexts or their share), by tag key, most first."""
    return [
        {"metric": metric, "tag_key": key, "contexts": count}
        for (metric, key), count in stats.aggregate.context_overflow.most_common(top)
    ]


def forwarder_document(stats: Stats) -> dict[str, Any]:
    forward, gauges = stats.forward, stats.gauges
    return {
        "payloads": _nested(forward.payloads),
        "bytes_sent": dict(forward.payload_bytes),
        "http_errors": dict(forward.http_errors),
        "retry_queue_bytes": gauges.retry_queue_bytes(),
        "retry_queue_payloads": gauges.retry_queue_payloads(),
        "spooled": dict(forward.spooled),
        "spool_bytes": gauges.spool_bytes(),
        "spool_payloads": gauges.spool_payloads(),
    }


def _client_drops(counted: Counter[tuple[str, str, str]]) -> dict[str, dict[str, dict[str, int]]]:
    """{transport: {client: {total, writer, queue}}}."""
    nested: dict[str, dict[str, dict[str, int]]] = {}
    for (transport, client, kind), count in sorted(counted.items()):
        nested.setdefault(transport, {}).setdefault(client, {})[kind] = count
    return nested


def _nested(counter: Counter[tuple[str, str]]) -> dict[str, dict[str, int]]:
    nested: dict[str, dict[str, int]] = {}
    for (outer, inner), value in sorted(counter.items()):
        nested.setdefault(outer, {"sent": 0, "dropped": 0, "retried": 0})[inner] = value
    return nested
