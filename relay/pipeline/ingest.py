"""Ingest: datagram bytes → parse → enrich → aggregator, where a known line costs a dict lookup and a float().

The line minus its value, `name:rest after the value`, is the key of a shape cache: the reference parser and
the enricher run once per shape and record (slot, kind, rate); a metric of metric_tag_filterlist is keyed without
the tags its rule removes, so a tag unique to each line (a request id) costs no entry. A line whose shape is
known, whose value is a plain finite number and whose datagram has no CR takes the fast path. Anything else (new
shapes, packed values, timestamps, events, service checks, errors) goes through the reference path, which is the
plain parser, so both paths give the same result on any input (tests/pipeline/test_ingest.py checks this with
hypothesis).

Why a valid shape stays valid for any value: its name holds no ":" or "|", the value ends at the first "|", and
a value that float() accepts holds neither, so the reference parser would split the line exactly the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

from relay.config import Config
from relay.logs import RateLimitedLog
from relay.pipeline.aggregate import Aggregator
from relay.pipeline.buckets import NO_SLOT, Bucket, effective_rate
from relay.pipeline.enrich import Enricher
from relay.pipeline.model import KIND_OF, Context, Event, Kind, MetricSample, ServiceCheck
from relay.pipeline.parse import UNTERMINATED, ParseError, datagram_lines, parse_datagram, parse_line
from relay.telemetry.stats import Stats

logger = logging.getLogger(__name__)

# Plain ints for the hot loop (comparing with an IntEnum member costs more); the kinds are model.Kind's.
GAUGE, COUNTER, SET, HISTOGRAM, BLOCKED = (int(k) for k in (Kind.GAUGE, Kind.COUNTER, Kind.SET, Kind.HISTOGRAM,
                                                            Kind.BLOCKED))  # fmt: skip
SHAPE_CACHE_LIMIT = 2_000_000  # entries; cleared when full (a miss only costs one reference parse)
SENDERS_LIMIT = 1_000  # Unix socket senders' containers with shapes of their own; all forgotten when more


class Shape(NamedTuple):
    """What a line's shape (`name:` + what follows its value) is known to mean; relay/_speedups.c reads and
    makes these too (as tuples of the same four fields)."""

    slot: int  # the context's slot in the aggregator (NO_SLOT when blocked)
    kind: int  # a model.Kind
    scale: float  # a counter's 1 / rate; a histogram's or distribution's sample rate
    copy: int  # histogram_copy_to_distribution: the distribution's slot, or NO_SLOT


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
        # dogstatsd_origin_detection: a Unix socket sender's container's lines have its tags, so shapes of their own
        self.sender_shapes: dict[str, dict[bytes, Shape]] = {}
        self.accelerated = accelerated_ingest() if accelerate else None
        # Under a flood of new contexts the cache must stay bounded too: twice the context limit is plenty.
        self.shape_limit = min(SHAPE_CACHE_LIMIT, 2 * config.relay_max_contexts or SHAPE_CACHE_LIMIT)
        self.log = RateLimitedLog(logger)
        self.learner = self._learner() if self.accelerated is not None else None
        # Metrics whose tags a metric_tag_filterlist rule cuts, as their lines start (without mapper or namespace).
        plain = not (enricher.profiles or enricher.namespace)
        self.cut_names = frozenset(name.encode() for name in enricher.tag_rules) if plain else frozenset()
        self._origins_seen = self.origins_generation

    def _learner(self) -> tuple[Any, ...] | None:
        """What the C fast path needs to learn a context's first sight itself (see learn() in _speedups.c): the
        enricher's plain case only; with a namespace, mapper profiles or a prefix blocklist, Python learns. Python
        also learns the metrics of metric_tag_filterlist (whose names C is given: without a mapper or a namespace,
        a line's name is its metric's), as it keys them by their cut shape."""
        enricher, aggregator = self.enricher, self.aggregator
        encodable = all(_utf8(text) for text in (enricher.hostname, *enricher.extra_tags))
        if enricher.profiles or enricher.namespace or enricher.blocklist_prefixes or not encodable:
            return None
        return (
            Context, Shape, enricher.hostname, enricher.extra_tags, enricher.blocklist, enricher.strings,
            enricher.cache_limit, aggregator.slot, aggregator.copy_slot, self.shape_limit,
            frozenset(enricher.tag_rules), enricher.origins is not None,
        )  # fmt: skip

    def datagram(self, data: bytes, transport: str, now: float, sender: str = "") -> None:
        """The hot path. `transport` is udp, uds or uds_stream; uds_stream follows the uds EOL rule. `sender`:
        the container of the process that sent it over a Unix socket (dogstatsd_origin_detection)."""
        if b"\r" in data or (data[-1:] != b"\n" and self.eol_required_for(transport)):
            self.reference(data, transport, now, sender)
            return
        bucket = self.aggregator.bucket(now)
        if self.accelerated is None:
            ok, blocked = self._lines(data.split(b"\n"), bucket, now, sender)
        else:
            ok = blocked = 0
            offset, size = 0, len(data)
            learner = None if sender else self.learner  # a sender's origin tags: Python learns its shapes
            # The C loop stops at the first line it cannot take; that line goes through _lines, so the lines of a
            # datagram are still applied in order (a gauge keeps its last value).
            while offset < size:
                shapes = self._shapes_of(sender) if sender else self.shapes  # learning may have replaced it
                done, skipped, offset = self.accelerated(data, offset, shapes, bucket, learner, not sender)
                ok, blocked = ok + done, blocked + skipped
                if offset < size:
                    end = data.find(b"\n", offset)
                    end = size if end < 0 else end
                    if data[offset : data.find(b":", offset, end)] in self.cut_names:
                        end = size  # a rule cuts its tags in Python: the rest of the datagram too, in one call
                    done, skipped = self._lines(data[offset:end].split(b"\n"), bucket, now, sender)
                    ok, blocked, offset = ok + done, blocked + skipped, end + 1
        if ok:
            self.stats.parse.messages["metric", "ok"] += ok
        if blocked:
            self.stats.dropped["blocklist"] += blocked

    @property
    def origins_generation(self) -> int:
        """The container tagger's generation (it grows when it learns or forgets an entity); 0 without one."""
        origins = self.enricher.origins
        return 0 if origins is None else origins.generation

    def learn_origins_again(self) -> None:
        """When the tagger knows more (the flush loop asks every half second), the lines of origins it did not
        know are learned again, now with their tags (a shape holds its context's tags). Every shape goes, since
        which shape had which origin is not kept; a kubelet that is down changes nothing, so costs nothing."""
        origins = self.enricher.origins
        if origins is None or origins.generation == self._origins_seen:
            return
        self._origins_seen = origins.generation
        unresolved = self.enricher.unresolved
        known = {entity for entity in unresolved if origins.known(entity)}
        if known:
            unresolved -= known
            self.forget_shapes()

    def _new_shapes(self, sender: str) -> dict[bytes, Shape]:
        """An empty shape cache in place of a full one. Never cleared in place: the C fast path mirrors the dict
        it was last given, entries only ever added (_speedups.c, SHAPE CACHE)."""
        shapes: dict[bytes, Shape] = {}
        if sender:
            self.sender_shapes[sender] = shapes
        else:
            self.shapes = shapes
        return shapes

    def _shapes_of(self, sender: str) -> dict[bytes, Shape]:
        shapes = self.sender_shapes.get(sender)
        if shapes is None:
            if len(self.sender_shapes) >= SENDERS_LIMIT:
                self.sender_shapes.clear()
            shapes = self.sender_shapes[sender] = {}
        return shapes

    def _lines(self, lines: Iterable[bytes], bucket: Bucket, now: float, sender: str = "") -> tuple[int, int]:
        """The fast path in Python (relay/_speedups.c does the same in C); returns (accepted, blocklisted)."""
        shapes = self._shapes_of(sender) if sender else self.shapes
        ok = blocked = 0
        for line in lines:
            if not line:
                continue
            name, _, rest = line.partition(b":")
            value, _, suffix = rest.partition(b"|")
            key = name + b":" + suffix
            shape = shapes.get(key)
            if shape is None:
                shape = self._first_sight(line, now, key, sender)
                if shape is None:
                    continue
            slot, kind, scale, copy = shape
            if kind == SET:
                if not value:
                    self._line(line, now, sender)
                    continue
                ok += 1
                bucket.member(slot, value.decode("utf-8", "replace"))
                continue
            try:
                number = float(value)
            except ValueError:
                self._line(line, now, sender)
                continue
            # NaN, Inf and overflow (x - x is not 0), and whitespace that float() forgives but Go does not.
            if number - number != 0.0 or value[0] <= 32 or value[-1] <= 32:
                self._line(line, now, sender)
                continue
            ok += 1
            if kind == COUNTER:
                bucket.count(slot, number * scale)
            elif kind == GAUGE:
                bucket.gauge(slot, number)
            elif kind == BLOCKED:
                blocked += 1
            else:
                bucket.samples(kind, slot, [number if scale == 1.0 else (number, scale)], copy)
        return ok, blocked

    def reference(self, data: bytes, transport: str, now: float, sender: str = "") -> None:
        """The plain path: the reference parser, one item at a time."""
        eol = self.eol_required_for(transport)
        if self.enricher.tag_rules:  # counted line by line, as the fast path counts them
            for line, _ in datagram_lines(data):
                name, _, rest = line.partition(b":")
                self._cut_tags(name + b":" + rest.partition(b"|")[2])
        self._handle(parse_datagram(data, eol_required=eol, timestamps=self.timestamps), now, sender)

    def _line(self, line: bytes, now: float, sender: str) -> None:
        """One line the fast path cannot take, through the reference parser."""
        self._handle((parse_line(line, self.timestamps),), now, sender)

    def _first_sight(self, line: bytes, now: float, key: bytes, sender: str) -> Shape | None:
        """Learn the shape of a plain metric line and return it (the fast path then takes the line); anything
        else is handled here through the reference path. A line whose tags a metric_tag_filterlist rule cuts is
        known by its cut shape, so a tag that differs on every line (a request id) adds no shape."""
        shapes = self._shapes_of(sender) if sender else self.shapes
        if self.enricher.tag_rules:
            cut = self._cut_tags(key)
            if cut != key:
                shape = shapes.get(cut)
                if shape is not None:
                    return shape
                key = cut
        item = parse_line(line, self.timestamps)
        if type(item) is not MetricSample or item.timestamp or len(item.values) > 1:
            self._handle((item,), now, sender)
            return None
        if len(shapes) >= self.shape_limit:
            shapes = self._new_shapes(sender)
        context = self.enricher.context(item.name, item.tags, item.origin, sender)
        if context is None:
            shape = Shape(NO_SLOT, BLOCKED, 1.0, NO_SLOT)
        else:
            kind = int(KIND_OF[item.type])
            scale = 1.0 / effective_rate(item.rate) if kind == COUNTER else item.rate
            copy = self.aggregator.copy_slot(context) if kind == HISTOGRAM else NO_SLOT
            shape = Shape(self.aggregator.slot(context), kind, scale, copy)
        shapes[key] = shape
        return shape

    def _cut_tags(self, key: bytes) -> bytes:
        """A line's shape without the tags its metric's metric_tag_filterlist rule removes; each line the rule
        cuts is counted (parse.tags_filtered, by metric), whatever then becomes of its value."""
        name, _, suffix = key.partition(b":")
        rule = self.enricher.tag_rule(name.decode("utf-8", "replace"))
        if rule is None:
            return key
        cut = rule.cut_shape(suffix)
        if cut == suffix:
            return key
        self.stats.parse.tags_filtered[rule.metric_name] += 1
        return name + b":" + cut

    def _handle(
        self, items: Iterable[MetricSample | Event | ServiceCheck | ParseError], now: float, sender: str = ""
    ) -> None:
        stats, aggregator, enricher = self.stats, self.aggregator, self.enricher
        for item in items:
            if type(item) is MetricSample:
                values = len(item.values) or 1
                stats.parse.messages["metric", "ok"] += values
                context = enricher.context(item.name, item.tags, item.origin, sender)
                if context is None:
                    stats.dropped["blocklist"] += values
                else:
                    aggregator.add(context, item.type, item.values, item.set_value, item.rate, item.timestamp, now)
            elif type(item) is Event:
                stats.parse.messages["event", "ok"] += 1
                aggregator.add_event(enricher.event(item, sender), now)
            elif type(item) is ServiceCheck:
                stats.parse.messages["service_check", "ok"] += 1
                aggregator.add_service_check(enricher.service_check(item, sender), now)
            else:
                self._count_error(item)  # type: ignore[arg-type]

    def _count_error(self, error: ParseError) -> None:
        if error.kind == UNTERMINATED:
            self.stats.dropped["unterminated"] += 1
        else:
            self.stats.parse.messages[error.kind, "error"] += 1
            self.stats.parse.errors[error.reason] += 1
        self.log.log(
            logging.ERROR,
            error.kind,
            "Dogstatsd: error parsing %s message %r: %s",
            error.kind,
            error.line[:200],
            error.reason,
        )

    def forget_shapes(self) -> None:
        """Every shape and cached context goes (a miss only costs a reference parse): the memory guard, or origins
        the tagger now knows."""
        self.shapes = {}
        self.sender_shapes = {}
        self.enricher.forget_cached()

    def forget(self, expired: set[int]) -> None:
        """Expired contexts lose their slots, so the shapes that point at them go too."""
        self.shapes = _without(self.shapes, expired)
        self.sender_shapes = {sender: _without(shapes, expired) for sender, shapes in self.sender_shapes.items()}


def _without(shapes: dict[bytes, Shape], expired: set[int]) -> dict[bytes, Shape]:
    return {key: shape for key, shape in shapes.items() if shape.slot not in expired and shape.copy not in expired}
