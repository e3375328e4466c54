"""Serialize: flushed series, sketches, service checks and events → compressed Payloads within the intake's limits.

Series go to /api/v2/series as the protobuf MetricPayload (or JSON to /api/v1/series), distributions to
/api/beta/sketches as SketchPayload, both hand-written like the Agent's serializer (DataDog/agent-payload
proto/metrics/agent_payload.proto). No Payload leaving this module is over its limits.
"""

from __future__ import annotations

import gzip
import json
import struct
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import zstandard

from relay.config import Config
from relay.pipeline.model import Endpoint, Event, Flushed, Payload, Series, ServiceCheck, SketchSeries
from relay.telemetry.stats import Stats

_DOUBLE = struct.Struct("<d")


@dataclass(frozen=True, slots=True)
class Limits:
    max_compressed: int
    max_raw: int
    max_points: int = 0  # 0: no point limit


class Compressor:
    """serializer_compressor_kind → the function and its Content-Encoding."""

    def __init__(self, kind: str, zstd_level: int = 1) -> None:
        self.compress: Callable[[bytes], bytes]
        if kind == "zstd":
            self.compress, self.encoding = zstandard.ZstdCompressor(level=zstd_level).compress, "zstd"
        elif kind in ("zlib", "deflate"):  # a zlib stream is what the Agent sends as "deflate"
            self.compress, self.encoding = zlib.compress, "deflate"
        elif kind == "gzip":
            self.compress, self.encoding = gzip.compress, "gzip"
        else:
            self.compress, self.encoding = bytes, ""


class Serializer:
    """Builds every Payload of one flush; items too large to send even alone are dropped and counted."""

    def __init__(self, config: Config, stats: Stats) -> None:
        self.compressor = Compressor(config.serializer_compressor_kind, config.serializer_zstd_compressor_level)
        self.series_limits = Limits(
            config.serializer_max_series_payload_size,
            config.serializer_max_series_uncompressed_payload_size,
            config.serializer_max_series_points_per_payload,
        )
        self.other_limits = Limits(config.serializer_max_payload_size, config.serializer_max_uncompressed_payload_size)
        self.use_v2 = config.use_v2_api_series
        self.hostname = config.hostname
        self.stats = stats
        self.protobuf = ProtobufEncoder()

    def payloads(self, flushed: Flushed) -> list[Payload]:
        """Every payload of one flush: series, sketches, service checks, events."""
        return [
            *self.series(flushed.series),
            *self.sketches(flushed.sketches),
            *self.service_checks(flushed.service_checks),
            *self.events(flushed.events),
        ]

    def series(self, series: list[Series]) -> Iterator[Payload]:
        pieces = [piece for s in series for piece in _split_points(s, self.series_limits.max_points)]
        if self.use_v2:
            encode = self.protobuf.series_item
            items = self._each(lambda s: (encode(s), len(s.points)), pieces, "series")
            yield from self._pack(Endpoint.SERIES_V2, items, b"", b"", b"", self.series_limits)
        else:
            items = self._each(lambda s: (_json(_series_json(s)), len(s.points)), pieces, "series")
            yield from self._pack(Endpoint.SERIES_V1, items, b'{"series":[', b",", b"]}", self.series_limits)

    def sketches(self, sketches: list[SketchSeries]) -> Iterator[Payload]:
        items = self._each(lambda s: (b"\x0a" + _length_delimited(self.protobuf.sketch(s)), 0), sketches, "sketches")
        # The Agent closes every SketchPayload with an empty CommonMetadata (field 2).
        yield from self._pack(Endpoint.SKETCHES, items, b"", b"", b"\x12\x00", self.other_limits)

    def service_checks(self, checks: list[ServiceCheck]) -> Iterator[Payload]:
        items = self._each(lambda c: (_json(_service_check_json(c)), 0), checks, "service checks")
        yield from self._pack(Endpoint.CHECK_RUN, items, b"[", b",", b"]", self.other_limits)

    def events(self, events: list[Event]) -> Iterator[Payload]:
        """The v1 intake groups events by source type name, "api" when there is none."""
        for source, group in _group_by_source(events).items():
            head = b'{"apiKey":"","events":{' + _json(source) + b":["
            tail = b']},"internalHostname":' + _json(self.hostname) + b"}"
            items = self._each(lambda e: (_json(_event_json(e)), 0), group, "events")
            yield from self._pack(Endpoint.EVENTS, items, head, b",", tail, self.other_limits)

    def host_metadata(self, document: dict[str, Any]) -> Payload:
        """The Agent's v5 host metadata (see server.host_metadata), posted to /intake/."""
        raw = _json(document)
        return Payload(Endpoint.EVENTS, self.compressor.compress(raw), self.compressor.encoding, 1, len(raw))

    def _each(
        self, encode: Callable[[Any], tuple[bytes, int]], things: Iterable[Any], kind: str
    ) -> Iterator[tuple[bytes, int]]:
        """Each item encoded; a bug encoding one costs that item (counted), not the payload or the flush."""
        for thing in things:
            try:
                yield encode(thing)
            except Exception:
                self.stats.internal_error(f"serialize ({kind})")

    def _pack(
        self,
        endpoint: Endpoint,
        items: Iterable[tuple[bytes, int]],
        head: bytes,
        separator: bytes,
        tail: bytes,
        limits: Limits,
    ) -> Iterator[Payload]:
        """Greedy batches under the raw size and point limits, then halved until each compresses under its limit."""
        envelope = len(head) + len(tail)
        batch: list[bytes] = []
        size, points = envelope, 0
        for encoded, item_points in items:
            added = len(encoded) + (len(separator) if batch else 0)
            over_points = limits.max_points and points + item_points > limits.max_points
            if batch and (size + added > limits.max_raw or over_points):
                yield from self._compress(endpoint, batch, head, separator, tail, limits)
                batch, size, points = [], envelope, 0
                added = len(encoded)
            batch.append(encoded)
            size += added
            points += item_points
        if batch:
            yield from self._compress(endpoint, batch, head, separator, tail, limits)

    def _compress(
        self, endpoint: Endpoint, batch: list[bytes], head: bytes, separator: bytes, tail: bytes, limits: Limits
    ) -> Iterator[Payload]:
        raw = head + separator.join(batch) + tail
        body = self.compressor.compress(raw)
        if len(body) <= limits.max_compressed and len(raw) <= limits.max_raw:
            yield Payload(endpoint, body, self.compressor.encoding, len(batch), len(raw))
        elif len(batch) > 1:
            middle = len(batch) // 2
            yield from self._compress(endpoint, batch[:middle], head, separator, tail, limits)
            yield from self._compress(endpoint, batch[middle:], head, separator, tail, limits)
        else:
            self.stats.dropped["payload_too_large"] += 1


def _split_points(series: Series, max_points: int) -> Iterator[Series]:
    """A series with more points than one payload may hold is sent as several series of the same context."""
    if not max_points or len(series.points) <= max_points:
        yield series
        return
    for start in range(0, len(series.points), max_points):
        yield Series(series.context, series.type, series.points[start : start + max_points], series.interval)


def _device_and_tags(tags: tuple[str, ...]) -> tuple[str, list[str]]:
    """A `device:` tag becomes the series' device, as in the Agent's serializer."""
    device, kept = "", []
    for tag in tags:
        if tag.startswith("device:"):
            device = tag[7:]
        else:
            kept.append(tag)
    return device, kept


# --- protobuf, hand-written --------------------------------------------------------------------------------------

try:
    from relay._speedups import series_item as _series_item_in_c
except ImportError:  # no C compiler where the relay was installed: the same bytes in Python
    _series_item_in_c = None

_SMALL_VARINTS = [bytes([n]) if n < 0x80 else bytes([(n & 0x7F) | 0x80, n >> 7]) for n in range(1 << 14)]
_FIELD_CACHE_LIMIT = 200_000  # encoded names, tags and hosts kept between flushes; cleared when full


def _varint(value: int) -> bytes:
    if 0 <= value < 1 << 14:
        return _SMALL_VARINTS[value]
    value &= 0xFFFFFFFFFFFFFFFF  # negative int64 → ten-byte two's complement, as protobuf does
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _length_delimited(data: bytes) -> bytes:
    return _varint(len(data)) + data


def _string(tag: bytes, text: str) -> bytes:
    return tag + _length_delimited(text.encode())


class _FieldCache(dict[str, bytes]):
    """Encoded string fields: names, tags and hosts repeat across contexts and flushes."""

    def __init__(self, tag: bytes) -> None:
        super().__init__()
        self.tag = tag

    def __missing__(self, text: str) -> bytes:
        if len(self) >= _FIELD_CACHE_LIMIT:
            self.clear()
        encoded = self[text] = _string(self.tag, text)
        return encoded


class ProtobufEncoder:
    """MetricSeries and Sketch messages; the field caches make a flush of known contexts mostly lookups."""

    def __init__(self) -> None:
        self.series_names = _FieldCache(b"\x12")  # MetricSeries.metric = 2
        self.series_tags = _FieldCache(b"\x1a")  # MetricSeries.tags = 3
        self.host_resources: dict[str, bytes] = {}
        self.timestamps: dict[int, bytes] = {}
        self.sketch_names = _FieldCache(b"\x0a")  # Sketch.metric = 1
        self.sketch_hosts = _FieldCache(b"\x12")  # Sketch.host = 2
        self.sketch_tags = _FieldCache(b"\x22")  # Sketch.tags = 4

    def series_item(self, series: Series) -> bytes:
        """The MetricPayload entry (field 1) of one series: in C when built (the same bytes, and a context seen
        once costs no cache entry), here otherwise and for a `device:` tag."""
        if _series_item_in_c is not None:
            name, host, tags = series.context
            item = _series_item_in_c(name, host, tags, series.points, series.type, series.interval)
            if item is not None:
                return item
        return b"\x0a" + _length_delimited(self.series(series))

    def series(self, series: Series) -> bytes:
        """MetricSeries: resources=1, metric=2, tags=3, points=4, type=5, interval=8."""
        name, host, tags = series.context
        resource = self.host_resources.get(host)
        if resource is None:
            resource = self.host_resources[host] = b"\x0a" + _length_delimited(
                _string(b"\x0a", "host") + _string(b"\x12", host)
            )
        out = [resource]
        if any(tag.startswith("device:") for tag in tags):
            device, kept = _device_and_tags(tags)
            out.append(b"\x0a" + _length_delimited(_string(b"\x0a", "device") + _string(b"\x12", device)))
            tags = tuple(kept)
        out.append(self.series_names[name])
        encoded_tags = self.series_tags
        out += [encoded_tags[tag] for tag in tags]
        for timestamp, value in series.points:  # MetricPoint: value=1 (double), timestamp=2 (int64)
            encoded_timestamp = self.timestamps.get(timestamp)
            if encoded_timestamp is None:
                if len(self.timestamps) >= _FIELD_CACHE_LIMIT:
                    self.timestamps.clear()
                encoded_timestamp = self.timestamps[timestamp] = b"\x10" + _varint(timestamp)
            point = b"\x09" + _DOUBLE.pack(value) + encoded_timestamp
            out.append(b"\x22" + _SMALL_VARINTS[len(point)] + point)
        out.append(b"\x28" + _SMALL_VARINTS[series.type] + b"\x40" + _varint(series.interval))
        return b"".join(out)

    def sketch(self, sketch: SketchSeries) -> bytes:
        """Sketch: metric=1, host=2, tags=4, dogsketches=7."""
        name, host, tags = sketch.context
        out = [self.sketch_names[name], self.sketch_hosts[host]]
        out += [self.sketch_tags[tag] for tag in tags]
        for point in sketch.points:
            keys = b"".join(_varint((k << 1) ^ (k >> 31)) for k in point.keys)  # sint32: zigzag
            counts = b"".join(_varint(n) for n in point.counts)
            dogsketch = b"".join(
                (
                    b"\x08" + _varint(point.timestamp),
                    b"\x10" + _varint(point.count),
                    b"\x19" + _DOUBLE.pack(point.min),
                    b"\x21" + _DOUBLE.pack(point.max),
                    b"\x29" + _DOUBLE.pack(point.sum / point.count),
                    b"\x31" + _DOUBLE.pack(point.sum),
                    b"\x3a" + _length_delimited(keys),
                    b"\x42" + _length_delimited(counts),
                )
            )
            out.append(b"\x3a" + _length_delimited(dogsketch))
        return b"".join(out)


# --- JSON --------------------------------------------------------------------------------------------------------


def _json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _series_json(series: Series) -> dict[str, object]:
    device, tags = _device_and_tags(series.context.tags)
    item: dict[str, object] = {
        "metric": series.context.name,
        "points": [[timestamp, value] for timestamp, value in series.points],
        "tags": tags,
        "host": series.context.host,
        "type": series.type.name.lower(),
        "interval": series.interval,
    }
    if device:
        item["device"] = device
    return item


def _service_check_json(check: ServiceCheck) -> dict[str, object]:
    return {
        "check": check.name,
        "host_name": check.host,
        "timestamp": check.timestamp,
        "status": check.status,
        "message": check.message,
        "tags": list(check.tags),
    }


def _event_json(event: Event) -> dict[str, object]:
    """Optional fields are omitted when empty, like the Agent's serializer."""
    item: dict[str, object] = {"msg_title": event.title, "msg_text": event.text, "timestamp": event.timestamp}
    optional = {
        "priority": event.priority,
        "host": event.host,
        "tags": list(event.tags),
        "alert_type": event.alert_type,
        "aggregation_key": event.aggregation_key,
        "source_type_name": event.source_type_name,
    }
    item.update({key: value for key, value in optional.items() if value})
    return item


def _group_by_source(events: list[Event]) -> dict[str, list[Event]]:
    groups: dict[str, list[Event]] = {}
    for event in events:
        groups.setdefault(event.source_type_name or "api", []).append(event)
    return groups
