"""Ingest: datagram bytes → parse → enrich → aggregator, where a known line costs a dict lookup and a float().

The line minus its value, `name:rest after the value`, is the key of a shape cache: the reference parser and
the enricher run once per shape and record (slot, kind, rate). A line whose shape is known, whose value is a
plain finite number and whose datagram has no CR takes the fast path. Anything else (new shapes, packed
values, timestamps, events, service checks, errors) goes through the reference path, which is the plain parser,
so both paths give the same result on any input (tests/test_ingest.py checks this with hypothesis).

Why a valid shape stays valid for any value: its name holds no ":" or "|", the value ends at the first "|", and
a value that float() accepts holds neither, so the reference parser would split the line exactly the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from relay.config import Config
from relay.logs import RateLimitedLog
from relay.pipeline.aggregate import Aggregator
from relay.pipeline.buckets import Bucket, effective_rate
from relay.pipeline.enrich import Enricher
from relay.pipeline.model import Context, Event, MetricSample, MetricType, ServiceCheck
from relay.pipeline.parse import UNTERMINATED, ParseError, parse_datagram, parse_line
from relay.telemetry import Stats

logger = logging.getLogger(__name__)

GAUGE, COUNTER, SET, HISTOGRAM, DISTRIBUTION, BLOCKED = range(6)
_KINDS = {
    MetricType.GAUGE: GAUGE,
    MetricType.COUNTER: COUNTER,
    MetricType.SET: SET,
    MetricType.HISTOGRAM: HISTOGRAM,
    MetricType.TIMER: HISTOGRAM,
    MetricType.DISTRIBUTION: DISTRIBUTION,
}
SHAPE_CACHE_LIMIT = 2_000_000  # entries; cleared when full (a miss only costs one reference parse)

Shape = tuple[int, int, float, int]  # (slot, kind, rate or counter scale, slot of the distribution copy or -1)


def accelerated_ingest() -> Callable[..., tuple[int, int, int]] | None:
    """The C version of the fast path when it was built (it is optional: without a compiler, Python does it)."""
    try:
        from relay._speedups import ingest
    except ImportError:
        return None
    return ingest


def _utf8(text: str) -> bool:
    """False for a str that UTF-8 cannot hold (lone surrogates, from a mis-encoded environment)."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


class Ingest:
    def __init__(
        self, config: Config, stats: Stats, enricher: Enricher, aggregator: Aggregator, accelerate: bool = True
    ) -> None:
        self.stats = stats
        self.enricher = enricher
        self.aggregator = aggregator
        self.timestamps = config.dogstatsd_no_aggregation_pipeline
        self.eol_required_for = config.eol_required_for
        self.shapes: dict[bytes, Shape] = {}  # b"name:suffix" (a name holds no ":", so the key is unambiguous)
        self.accelerated = accelerated_ingest() if accelerate else None
        # Under a flood of new contexts the cache must stay bounded too: twice the context limit is plenty.
        self.shape_limit = min(SHAPE_CACHE_LIMIT, 2 * config.relay_max_contexts or SHAPE_CACHE_LIMIT)
        self.log = RateLimitedLog(logger)
        self.learner = self._learner() if self.accelerated is not None else None
        aggregator.on_expire = self._forget

    def _learner(self) -> tuple[Any, ...] | None:
        """What the C fast path needs to learn a context's first sight itself (see learn() in _speedups.c): the
        enricher's plain case only; with a namespace, mapper profiles or a prefix blocklist, Python learns."""
        enricher, aggregator = self.enricher, self.aggregator
        encodable = all(_utf8(text) for text in (enricher.hostname, *enricher.extra_tags))
        if enricher.profiles or enricher.namespace or enricher.blocklist_prefixes or not encodable:
            return None
        return (
            Context, enricher.hostname, enricher.extra_tags, enricher.blocklist, enricher.strings,
            enricher.cache_limit, aggregator.slot, aggregator.copy_slot, self.shape_limit,
        )  # fmt: skip

    def datagram(self, data: bytes, transport: str, now: float) -> None:
        """The hot path. `transport` is udp, uds or uds_stream; uds_stream follows the uds EOL rule."""
        if b"\r" in data or (data[-1:] != b"\n" and self.eol_required_for(transport)):
            self.reference(data, transport, now)
            return
        bucket = self.aggregator.bucket(now)
        if self.accelerated is None:
            ok, blocked = self._lines(data.split(b"\n"), bucket, now)
        else:
            ok = blocked = 0
            offset, size = 0, len(data)
            # The C loop stops at the first line it cannot take; that line goes through _lines, so the lines of a
            # datagram are still applied in order (a gauge keeps its last value).
            while offset < size:
                done, skipped, offset = self.accelerated(
                    data, offset, self.shapes, bucket.gauges, bucket.counters, bucket.sets,
                    bucket.histograms, bucket.distributions, self.learner,
                )  # fmt: skip
                ok, blocked = ok + done, blocked + skipped
                if offset < size:
                    end = data.find(b"\n", offset)
                    end = size if end < 0 else end
                    done, skipped = self._lines((data[offset:end],), bucket, now)
                    ok, blocked, offset = ok + done, blocked + skipped, end + 1
        if ok:
            self.stats.messages["metric", "ok"] += ok
        if blocked:
            self.stats.dropped["blocklist"] += blocked

    def _lines(self, lines: Iterable[bytes], bucket: Bucket, now: float) -> tuple[int, int]:
        """The fast path in Python (relay/_speedups.c does the same in C); returns (accepted, blocklisted)."""
        gauges, counters, histograms, distributions = (
            bucket.gauges, bucket.counters, bucket.histograms, bucket.distributions,
        )  # fmt: skip
        shapes = self.shapes
        ok = blocked = 0
        for line in lines:
            if not line:
                continue
            name, _, rest = line.partition(b":")
            value, _, suffix = rest.partition(b"|")
            key = name + b":" + suffix
            shape = shapes.get(key)
            if shape is None:
                shape = self._first_sight(line, now, key)
                if shape is None:
                    continue
            slot, kind, rate, copy = shape
            if kind == SET:
                if not value:
                    self._line(line, now)
                    continue
                ok += 1
                members = bucket.sets.get(slot)
                if members is None:
                    members = bucket.sets[slot] = set()
                members.add(value.decode("utf-8", "replace"))
                continue
            try:
                number = float(value)
            except ValueError:
                self._line(line, now)
                continue
            # NaN, Inf and overflow (x - x is not 0), and whitespace that float() forgives but Go does not.
            if number - number != 0.0 or value[0] <= 32 or value[-1] <= 32:
                self._line(line, now)
                continue
            ok += 1
            if kind == COUNTER:
                counters[slot] = counters.get(slot, 0.0) + number * rate
            elif kind == GAUGE:
                gauges[slot] = number
            elif kind == BLOCKED:
                blocked += 1
            else:
                sample = number if rate == 1.0 else (number, rate)
                target = histograms if kind == HISTOGRAM else distributions
                samples = target.get(slot)
                if samples is None:
                    samples = target[slot] = []
                samples.append(sample)
                if copy >= 0:
                    distributions.setdefault(copy, []).append(sample)
        return ok, blocked

    def reference(self, data: bytes, transport: str, now: float) -> None:
        """The plain path: the reference parser, one item at a time."""
        eol = self.eol_required_for(transport)
        self._handle(parse_datagram(data, eol_required=eol, timestamps=self.timestamps), now)

    def _line(self, line: bytes, now: float) -> None:
        """One line the fast path cannot take, through the reference parser."""
        self._handle((parse_line(line, self.timestamps),), now)

    def _first_sight(self, line: bytes, now: float, key: bytes) -> Shape | None:
        """Learn the shape of a plain metric line and return it (the fast path then takes the line); anything
        else is handled here through the reference path."""
        item = parse_line(line, self.timestamps)
        if type(item) is not MetricSample or item.timestamp or len(item.values) > 1:
            self._handle((item,), now)
            return None
        if len(self.shapes) >= self.shape_limit:
            self.shapes.clear()
        context = self.enricher.context(item.name, item.tags)
        if context is None:
            shape: Shape = (-1, BLOCKED, 1.0, -1)
        else:
            kind = _KINDS[item.type]
            rate = item.rate
            if kind == COUNTER:
                rate = 1.0 / effective_rate(rate)  # the counter's scale
            copy = self.aggregator.copy_slot(context) if kind == HISTOGRAM else -1
            shape = (self.aggregator.slot(context), kind, rate, copy)
        self.shapes[key] = shape
        return shape

    def _handle(self, items: Iterable[MetricSample | Event | ServiceCheck | ParseError], now: float) -> None:
        stats, aggregator, enricher = self.stats, self.aggregator, self.enricher
        for item in items:
            if type(item) is MetricSample:
                values = len(item.values) or 1
                stats.messages["metric", "ok"] += values
                context = enricher.context(item.name, item.tags)
                if context is None:
                    stats.dropped["blocklist"] += values
                else:
                    aggregator.add(context, item.type, item.values, item.set_value, item.rate, item.timestamp, now)
            elif type(item) is Event:
                stats.messages["event", "ok"] += 1
                aggregator.add_event(enricher.event(item), now)
            elif type(item) is ServiceCheck:
                stats.messages["service_check", "ok"] += 1
                aggregator.add_service_check(enricher.service_check(item), now)
            else:
                self._count_error(item)  # type: ignore[arg-type]

    def _count_error(self, error: ParseError) -> None:
        if error.kind == UNTERMINATED:
            self.stats.dropped["unterminated"] += 1
        else:
            self.stats.messages[error.kind, "error"] += 1
            self.stats.parse_errors[error.reason] += 1
        self.log.log(
            logging.ERROR,
            error.kind,
            "Dogstatsd: error parsing %s message %r: %s",
            error.kind,
            error.line[:200],
            error.reason,
        )

    def _forget(self, expired: set[int]) -> None:
        """Expired contexts lose their slots, so the shapes that point at them go too."""
        self.shapes = {
            key: shape for key, shape in self.shapes.items() if shape[0] not in expired and shape[3] not in expired
        }
