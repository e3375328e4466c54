"""Values every stage shares: what the parser yields, what the aggregator flushes, what the forwarder sends."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import NamedTuple


class MetricType(StrEnum):
    """DogStatsD wire symbols."""

    GAUGE = "g"
    COUNTER = "c"
    HISTOGRAM = "h"
    TIMER = "ms"
    SET = "s"
    DISTRIBUTION = "d"


class Kind(IntEnum):
    """How a bucket keeps a metric type: the one list ingest, the aggregator and relay/_speedups.c share (the C
    module exports its own numbers, and a test holds them equal to these). BLOCKED is a context the blocklist
    drops. Timers are histograms."""

    GAUGE = 0
    COUNTER = 1
    SET = 2
    HISTOGRAM = 3
    DISTRIBUTION = 4
    BLOCKED = 5


KIND_OF = {
    MetricType.GAUGE: Kind.GAUGE,
    MetricType.COUNTER: Kind.COUNTER,
    MetricType.SET: Kind.SET,
    MetricType.HISTOGRAM: Kind.HISTOGRAM,
    MetricType.TIMER: Kind.HISTOGRAM,
    MetricType.DISTRIBUTION: Kind.DISTRIBUTION,
}


class SeriesType(IntEnum):
    """Values of MetricPayload.MetricType in the v2 series protobuf."""

    COUNT = 1
    RATE = 2
    GAUGE = 3


class Context(NamedTuple):
    """What a series is keyed by: tags are deduplicated and sorted once, so tag order never splits a context."""

    name: str
    host: str
    tags: tuple[str, ...]


class Origin(NamedTuple):
    """Where a line says it comes from: its `c:` (container), `e:` (external data) and `card:` (tag cardinality)
    fields, as sent (relay/pipeline/origin.py reads them)."""

    container: str = ""
    external: str = ""
    cardinality: str = ""


class MetricSample(NamedTuple):
    """One parsed metric line; a packed line (v1.1) carries several values."""

    name: str
    type: MetricType
    values: tuple[float, ...]  # empty for sets
    set_value: str  # the raw member for sets, "" otherwise
    rate: float
    tags: tuple[str, ...]
    timestamp: int  # 0 when the line had no |T field
    origin: Origin | None = None  # None when the line had no c:, e: or card: field


@dataclass(slots=True)
class Event:
    title: str
    text: str
    timestamp: int = 0
    host: str | None = None  # None: the relay's hostname; "" is a legitimate empty host
    aggregation_key: str = ""
    priority: str = "normal"
    source_type_name: str = ""
    alert_type: str = "info"
    tags: tuple[str, ...] = ()
    origin: Origin | None = None


@dataclass(slots=True)
class ServiceCheck:
    name: str
    status: int
    timestamp: int = 0
    host: str | None = None
    message: str = ""
    tags: tuple[str, ...] = ()
    origin: Origin | None = None


@dataclass(slots=True)
class Series:
    """One aggregated series: a context, its API type and its points (timestamp, value)."""

    context: Context
    type: SeriesType
    points: list[tuple[int, float]]
    interval: int


@dataclass(slots=True)
class SketchPoint:
    """One Dogsketch: the DDSketch of a distribution context over one bucket."""

    timestamp: int
    count: int
    min: float
    max: float
    sum: float
    keys: list[int]
    counts: list[int]


@dataclass(slots=True)
class SketchSeries:
    context: Context
    points: list[SketchPoint]


@dataclass(slots=True)
class Flushed:
    """Everything one flush produced, ready for the serializer."""

    series: list[Series] = field(default_factory=list)
    sketches: list[SketchSeries] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    service_checks: list[ServiceCheck] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {"series": len(self.series), "sketches": len(self.sketches), "events": len(self.events),
                "service_checks": len(self.service_checks)}  # fmt: skip


class Endpoint(StrEnum):
    """Intake paths; the value is the URL path."""

    SERIES_V2 = "/api/v2/series"
    SERIES_V1 = "/api/v1/series"
    SKETCHES = "/api/beta/sketches"
    CHECK_RUN = "/api/v1/check_run"
    EVENTS = "/intake/"

    @property
    def content_type(self) -> str:
        if self in (Endpoint.SERIES_V2, Endpoint.SKETCHES):
            return "application/x-protobuf"
        return "application/json"


@dataclass(frozen=True, slots=True)
class Payload:
    """One compressed HTTP body for one endpoint; `items` counts the series, sketches, events or checks in it."""

    endpoint: Endpoint
    body: bytes
    encoding: str  # Content-Encoding value, "" for none
    items: int
    raw_size: int
