"""The Prometheus view of Stats: metric families made at scrape time from the counters and gauges.

Like prometheus_client's ProcessCollector, `RelayCollector` holds no state of its own and reads Stats when scraped.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily

from relay.telemetry.stats import Stats


class RelayCollector:
    """Turns Stats into Prometheus metric families at scrape time."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        yield from self._listen(self.stats)
        yield from self._parse_and_aggregate(self.stats)
        yield from self._forward(self.stats)
        yield from self._memory(self.stats)
        yield from _tagger_families(self.stats.gauges.tagger())
        yield from self._destinations()

    @staticmethod
    def _memory(s: Stats) -> Iterator[Metric]:
        yield from _memory_families(s)

    @staticmethod
    def _listen(s: Stats) -> Iterator[Metric]:
        yield _counter("relay_packets", "Datagrams or frames received.", ["transport"], s.listen.packets)
        yield _counter("relay_bytes", "Bytes received.", ["transport"], s.listen.bytes)
        yield _counter(
            "relay_packets_truncated",
            "Datagrams longer than dogstatsd_buffer_size.",
            ["transport"],
            s.listen.truncated,
        )
        yield _counter("relay_packet_read_errors", "Socket read errors.", ["transport"], s.listen.read_errors)
        yield _counter("relay_client_packets_dropped", "Datagrams the clients could not send, from their own telemetry "
                       "(total, writer: the send failed, queue: the client's queue was full).",
                       ["transport", "client", "kind"], s.listen.client_drops)  # fmt: skip
        yield _counter(
            "relay_kernel_drops",
            "Datagrams the kernel dropped because the socket's receive buffer was full.",
            ["listener"],
            s.gauges.by_listener("kernel_drops"),
        )
        yield _counter(
            "relay_receive_queue_drops",
            "Datagrams the reader thread dropped because relay.receive_queue_bytes was full.",
            ["listener"],
            s.gauges.by_listener("queue_drops"),
        )
        yield _gauge_family(
            "relay_receive_queue_bytes",
            "Bytes of datagrams read from the socket and waiting for ingest.",
            ["listener"],
            s.gauges.by_listener("queue_bytes"),
        )
        yield _gauge_family(
            "relay_worker_queue_bytes",
            "relay.workers > 1: bytes of lines waiting for each worker (relay.worker_queue_bytes at most).",
            ["worker"],
            {name: read() for name, read in s.gauges.worker_queues.items()},
        )
        yield _gauge_family(
            "relay_probe_loss_ratio",
            "Share of the loss self-probes lost in the listener's queue, over the last 60 probes.",
            ["listener"],
            s.gauges.probe_loss(),
        )
        yield _counter("relay_probes", "Loss self-probes sent.", ["listener"], s.listen.probes)
        yield _counter(
            "relay_probes_lost", "Loss self-probes that never came back.", ["listener"], s.listen.probes_lost
        )
        yield _counter(
            "relay_statsd_forward_packets",
            "Packets teed to statsd_forward_host, by result (sent or error).",
            ["result"],
            s.listen.forwarded,
        )

    @staticmethod
    def _parse_and_aggregate(s: Stats) -> Iterator[Metric]:
        yield _counter("relay_messages", "Messages parsed, one per metric value.", ["type", "state"], s.parse.messages)
        yield _counter("relay_parse_errors", "Lines rejected by the parser.", ["reason"], s.parse.errors)
        yield _counter("relay_tags_filtered", "Lines whose tags a metric_tag_filterlist rule cut, by metric.",
                       ["metric"], s.parse.tags_filtered)  # fmt: skip
        yield _counter("relay_samples_dropped", "Samples dropped after parsing.", ["reason"], s.dropped)
        yield _gauge("relay_contexts", "Live aggregation contexts.", s.gauges.contexts())
        yield _counter(
            "relay_context_overflow",
            "New contexts folded past relay.max_contexts, by metric and tag key.",
            ["metric", "tag_key"],
            s.aggregate.context_overflow,
        )
        yield _counter("relay_flushes", "Aggregator flushes.", [], {(): s.aggregate.flushes})
        summary = SummaryMetricFamily("relay_flush_duration_seconds", "Aggregate, serialize and compress time.")
        summary.add_metric([], count_value=s.aggregate.flushes, sum_value=s.aggregate.flush_seconds)
        yield summary
        yield _counter("relay_flushed_items", "Items flushed, by data type.", ["data_type"], s.aggregate.flushed)

    @staticmethod
    def _forward(s: Stats) -> Iterator[Metric]:
        yield _counter("relay_payloads", "Payloads by outcome.", ["endpoint", "result"], s.forward.payloads)
        yield _counter(
            "relay_payload_bytes", "Compressed bytes accepted by the intake.", ["endpoint"], s.forward.payload_bytes
        )
        yield _counter("relay_http_errors", "Failed intake requests.", ["code"], s.forward.http_errors)
        yield _gauge("relay_retry_queue_bytes", "Bytes of payloads waiting to be sent.", s.gauges.retry_queue_bytes())
        yield _gauge("relay_retry_queue_payloads", "Payloads waiting to be sent.", s.gauges.retry_queue_payloads())
        yield _counter("relay_spooled_payloads", "Payloads written to the disk spool.", ["endpoint"], s.forward.spooled)
        yield _gauge("relay_spool_bytes", "Bytes of payloads in the disk spool.", s.gauges.spool_bytes())
        yield _gauge("relay_spool_payloads", "Payloads in the disk spool.", s.gauges.spool_payloads())
        yield _gauge(
            "relay_api_key_valid",
            "1 when the intake accepted the API key.",
            s.info.get("api_key_valid") is True,
        )

    def _destinations(self) -> Iterator[Metric]:
        """additional_endpoints: the forwarder's counters once more, per destination."""
        destinations = self.stats.destinations.items()
        prefix = "relay_additional_endpoint_"
        yield _counter(
            prefix + "payloads",
            "Payloads by outcome, per additional endpoint.",
            ["destination", "endpoint", "result"],
            {(label, *key): value for label, d in destinations for key, value in d.forward.payloads.items()},
        )
        yield _counter(
            prefix + "samples_dropped",
            "Samples in payloads dropped, per additional endpoint.",
            ["destination", "reason"],
            {(label, reason): value for label, d in destinations for reason, value in d.dropped.items()},
        )
        yield _gauge_family(
            prefix + "retry_queue_bytes",
            "Bytes waiting, per additional endpoint.",
            ["destination"],
            {label: d.gauges.retry_queue_bytes() for label, d in destinations},
        )
        yield _gauge_family(
            prefix + "api_key_valid",
            "1 when the destination accepted its API key.",
            ["destination"],
            {label: float(d.info.get("api_key_valid") is True) for label, d in destinations},
        )


def _memory_families(s: Stats) -> Iterator[Metric]:
    memory = s.info.get("memory")
    if not memory:
        return
    yield _gauge("relay_memory_limit_bytes", f"The memory the relay lives under ({memory['source']}).",
                 memory["limit_bytes"])  # fmt: skip
    yield _gauge_family("relay_memory_share_bytes", "Each holder's share of the memory budget.", ["holder"],
                        memory["shares"])  # fmt: skip
    yield _gauge_family("relay_memory_bytes", "Each holder's use now (contexts estimated); resident: the process's.",
                        ["holder"], s.gauges.memory_used())  # fmt: skip
    yield _gauge("relay_max_contexts", "Contexts allowed by relay.max_contexts and the memory budget.",
                 memory["max_contexts"])  # fmt: skip
    yield CounterMetricFamily("relay_memory_holds", "Times the memory guard stopped new contexts (resident memory "
                              "over 85 % of the limit).", value=s.aggregate.memory_holds)  # fmt: skip
    yield _counter("relay_captures_paused", "Datagrams a capture skipped: its share of memory was full.", ["tap"],
                   s.listen.taps_paused)  # fmt: skip


def _tagger_families(tagger: Mapping[str, Any]) -> Iterator[Metric]:
    """The container tagger's state (none without a tagger)."""
    if not tagger:
        return
    yield _gauge("relay_tagger_pods", "Pods the container tagger knows (the kubelet's pod list).", tagger["pods"])
    yield _gauge("relay_tagger_containers", "Containers the container tagger knows.", tagger["containers"])
    yield _gauge("relay_tagger_origins_unresolved", "Origins (containers, pods) lines came from that the tagger "
                 "did not know: their lines went on without those tags.", tagger["origins_unresolved"])  # fmt: skip
    yield CounterMetricFamily("relay_tagger_untagged", "Contexts, events and service checks made without their "
                              "origin's tags (it was not known yet).", value=tagger["untagged"])  # fmt: skip
    yield CounterMetricFamily("relay_tagger_errors", "Failed reads of the kubelet's pods or of Docker's containers.",
                              value=tagger["errors"])  # fmt: skip
    yield _gauge("relay_tagger_last_success_timestamp_seconds", "When the tagger last read its source (0: never).",
                 tagger["last_success_at"] or 0)  # fmt: skip


def _counter(name: str, doc: str, labels: list[str], values: Any) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=labels)
    for key, value in sorted(values.items()):
        label_values = list(key) if isinstance(key, tuple) else [key]
        family.add_metric(label_values, value)
    return family


def _gauge_family(name: str, doc: str, labels: list[str], values: Mapping[str, float]) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, doc, labels=labels)
    for key, value in sorted(values.items()):
        family.add_metric([key], value)
    return family


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=float(value))


def build_registry(stats: Stats) -> CollectorRegistry:
    """A registry of our own (never the global one): relay counters plus the process's CPU and memory."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RelayCollector(stats))
    ProcessCollector(registry=registry)
    return registry
