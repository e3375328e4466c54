"""The relay's own counters, grouped by the stage that owns them, and the gauges read from their owners.

Hot paths bump plain ints here; nothing in this package runs per packet. Every drop is counted where it happens,
in `dropped` by reason, whatever the stage: one table answers "what did the relay lose, and why".
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict

from relay import __version__
from relay.config import Config
from relay.logs import RateLimitedLog


@dataclass
class ListenCounters:
    packets: Counter[str] = field(default_factory=Counter)  # by transport
    bytes: Counter[str] = field(default_factory=Counter)
    truncated: Counter[str] = field(default_factory=Counter)  # datagrams longer than dogstatsd_buffer_size
    read_errors: Counter[str] = field(default_factory=Counter)
    forwarded: Counter[str] = field(default_factory=Counter)  # statsd_forward tee: sent | error
    probes: Counter[str] = field(default_factory=Counter)  # loss self-probes sent, by listener
    probes_lost: Counter[str] = field(default_factory=Counter)
    # (transport, client, total|writer|queue): datagrams the clients themselves dropped, from their own telemetry
    client_drops: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    taps_paused: Counter[str] = field(default_factory=Counter)  # datagrams a capture skipped: its memory share full


@dataclass
class ParseCounters:
    messages: Counter[tuple[str, str]] = field(default_factory=Counter)  # (type, ok|error), one per value
    errors: Counter[str] = field(default_factory=Counter)  # by reason
    tags_filtered: Counter[str] = field(default_factory=Counter)  # lines a metric_tag_filterlist rule cut, by metric


@dataclass
class AggregateCounters:
    context_overflow: Counter[tuple[str, str]] = field(default_factory=Counter)  # (metric, tag key) folded
    flushes: int = 0
    flush_seconds: float = 0.0
    last_flush_seconds: float = 0.0
    last_flush_at: float = 0.0
    flushed: Counter[str] = field(default_factory=Counter)  # series | sketches | events | service_checks
    memory_holds: int = 0  # times the memory guard stopped new contexts (relay/memory.py)


@dataclass
class ForwardCounters:
    payloads: Counter[tuple[str, str]] = field(default_factory=Counter)  # (endpoint, sent|dropped|retried|...)
    payload_bytes: Counter[str] = field(default_factory=Counter)  # compressed bytes accepted, by endpoint
    http_errors: Counter[str] = field(default_factory=Counter)  # by status code or error kind
    spooled: Counter[str] = field(default_factory=Counter)  # payloads written to the disk spool, by endpoint


def _zero() -> int:
    return 0


ListenerGauge = Literal["kernel_drops", "queue_drops", "queue_bytes"]


@dataclass
class ListenerGauges:
    """One listener's gauges; None where the listener has no such thing (a Unix socket has no /proc row, a
    socket read on the loop has no reader queue)."""

    kernel_drops: Callable[[], int] | None = None  # from /proc/net/udp*
    queue_drops: Callable[[], int] | None = None  # the native reader's queue
    queue_bytes: Callable[[], int] | None = None


@dataclass
class Gauges:
    """Values read at the time of asking, from the object that owns them; each owner sets its own once."""

    contexts: Callable[[], int] = _zero  # the aggregator
    custom_metrics_estimate: Callable[[], int] = _zero
    retry_queue_bytes: Callable[[], int] = _zero  # the forwarder
    retry_queue_payloads: Callable[[], int] = _zero
    spool_bytes: Callable[[], int] = _zero  # the disk spool
    spool_payloads: Callable[[], int] = _zero
    probe_loss: Callable[[], dict[str, float]] = dict  # the loss self-probe, by listener, over the last minute
    checks: Callable[[], list[dict[str, Any]]] = list  # the check runner, per instance
    listeners: dict[str, ListenerGauges] = field(default_factory=dict)
    worker_queues: dict[str, Callable[[], int]] = field(default_factory=dict)  # relay.workers > 1, by worker
    memory_used: Callable[[], dict[str, int]] = dict  # the memory guard: bytes by holder, and resident
    tap_bytes: Callable[[], int] = _zero  # captures' buffers
    tagger: Callable[[], dict[str, Any]] = dict  # the container tagger's state and the origins it did not know

    def listener(self, name: str) -> ListenerGauges:
        return self.listeners.setdefault(name, ListenerGauges())

    def by_listener(self, gauge: ListenerGauge) -> dict[str, int]:
        readings = {name: getattr(gauges, gauge) for name, gauges in self.listeners.items()}
        return {name: int(read()) for name, read in readings.items() if read is not None}


class Info(TypedDict, total=False):
    """What status shows about the relay itself, set by the part that knows it."""

    version: str
    hostname: str
    flush_interval: int
    pid: int
    workers: int
    worker_pids: list[int]
    listeners: dict[str, Any]  # name → address
    unix_dgram_qlen: int | None  # net.unix.max_dgram_qlen where the relay's Unix datagram socket is
    health: str  # host:port of the health endpoint
    receive_buffers: dict[str, int]
    receive_buffers_wanted: dict[str, int]
    endpoint: str
    api_key: str  # redacted
    api_key_valid: bool | None
    rejected_streak: int
    last_rejection: int | str | None  # the HTTP status of the last payload the intake rejected
    reloads: int
    last_reload: dict[str, Any] | None
    last_capture: dict[str, int]
    memory: dict[str, Any]  # the limit, where it was read, and each holder's share (relay/memory.py)
    degraded: list[str]  # what degraded in the last minute, and why (the memory guard)


@dataclass
class Stats:
    """Every counter and gauge of one relay process (or of one additional endpoint, in `destinations`)."""

    started: float = field(default_factory=time.time)
    listen: ListenCounters = field(default_factory=ListenCounters)
    parse: ParseCounters = field(default_factory=ParseCounters)
    aggregate: AggregateCounters = field(default_factory=AggregateCounters)
    forward: ForwardCounters = field(default_factory=ForwardCounters)
    dropped: Counter[str] = field(default_factory=Counter)  # samples dropped after parsing, by reason
    gauges: Gauges = field(default_factory=Gauges)
    info: Info = field(default_factory=lambda: Info())
    check_errors: dict[str, list[str]] = field(default_factory=dict)  # check → why it could not be loaded
    check_config_errors: dict[str, list[str]] = field(default_factory=dict)  # check → bad files and instances
    destinations: dict[str, Stats] = field(default_factory=dict)  # additional_endpoints: "host ***key" → counters
    internal_log: RateLimitedLog = field(default_factory=lambda: RateLimitedLog(logging.getLogger("relay.internal")))

    def describe(self, config: Config) -> None:
        """What status shows of any relay process, standalone or the main one of a sharded relay."""
        self.info.update(
            {"version": __version__, "hostname": config.hostname, "flush_interval": config.relay_flush_interval}
        )

    def internal_error(self, stage: str, items: int = 1) -> None:
        """The safety net of every stage: a bug costs the datagram or the items at hand, never the relay. Counted
        as dropped (internal_error) and logged with its traceback, once per stage per window. Call it from an
        `except` block."""
        self.dropped["internal_error"] += items
        self.internal_log.log(
            logging.ERROR, stage, "internal error in %s: %d item(s) dropped", stage, items, exc_info=True
        )

    def counter_groups(self) -> dict[str, Any]:
        return {"listen": self.listen, "parse": self.parse, "aggregate": self.aggregate, "forward": self.forward}

    def handoff(self) -> dict[str, Any]:
        """The counters a reload carries over, so that the new pipeline's counters go on from where these were
        (a Prometheus counter that restarts at zero reads as a process restart)."""
        counters = {
            f"{group}.{name}": value
            for group, counters in self.counter_groups().items()
            for name, value in vars(counters).items()
            if isinstance(value, Counter)
        }
        return {**counters, "dropped": self.dropped, "started": self.started,
                "reloads": self.info.get("reloads", 0), "last_reload": self.info.get("last_reload")}  # fmt: skip

    def counter(self, name: str) -> Counter[Any] | None:
        """The counter a reload's state or a worker's report calls `name`: "group.name", or "dropped"."""
        group, _, attribute = name.rpartition(".")
        owner = self.counter_groups().get(group) if group else self
        counter = getattr(owner, attribute, None)
        return counter if isinstance(counter, Counter) else None

    def adopt(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            mine = self.counter(key)
            if isinstance(value, Counter) and mine is not None:
                mine.update(value)
        self.started = state.get("started", self.started)
        self.info["reloads"] = state.get("reloads", 0)
        self.info["last_reload"] = state.get("last_reload")

    def record_flush(self, seconds: float, counts: Mapping[str, int]) -> None:
        """`counts`: series, sketches, events and service checks sent by the flush (Flushed.counts)."""
        aggregate = self.aggregate
        aggregate.flushes += 1
        aggregate.flush_seconds += seconds
        aggregate.last_flush_seconds = seconds
        aggregate.last_flush_at = time.time()
        aggregate.flushed.update(counts)
