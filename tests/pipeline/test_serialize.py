"""Serializer: payloads decoded by the intake stand-in (Google's protobuf runtime, JSON) and their size limits."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.intake.server import Intake, decompress
from relay.pipeline.model import Context, Event, Payload, Series, SeriesType, ServiceCheck, SketchSeries
from relay.pipeline.serialize import Serializer
from relay.pipeline.sketch import Sketch
from relay.telemetry.stats import Stats
from tests.conftest import config


def decoded(payloads: list[Payload]) -> Intake:
    intake = Intake()
    for payload in payloads:
        intake._decode(payload.endpoint.value, decompress(payload.body, payload.encoding))
    return intake


def serializer(**overrides: object) -> Serializer:
    return Serializer(config(hostname="relay-host", **overrides), Stats())


SERIES = [
    Series(Context("a.rate", "web-1", ("device:sda1", "env:prod")), SeriesType.RATE, [(1000, 0.5), (1010, -1.25)], 10),
    Series(Context("a.gauge", "", ()), SeriesType.GAUGE, [(1000, 0.0)], 10),
    Series(Context("ünïcode", "h", ("tag:välue",)), SeriesType.GAUGE, [(2**40, 1e300)], 10),
]


@pytest.mark.parametrize("kind", ["zstd", "zlib", "gzip", "none"])
def test_series_v2_protobuf_round_trip(kind):
    payloads = list(serializer(serializer_compressor_kind=kind).series(SERIES))
    assert [p.encoding for p in payloads] == [{"zlib": "deflate", "none": ""}.get(kind, kind)]
    assert decoded(payloads).series == [
        {"metric": "a.rate", "type": "rate", "interval": 10, "points": [(1000, 0.5), (1010, -1.25)],
         "tags": ["env:prod"], "host": "web-1", "device": "sda1"},
        {"metric": "a.gauge", "type": "gauge", "interval": 10, "points": [(1000, 0.0)], "tags": [], "host": "",
         "device": None},
        {"metric": "ünïcode", "type": "gauge", "interval": 10, "points": [(2**40, 1e300)], "tags": ["tag:välue"],
         "host": "h", "device": None},
    ]  # fmt: skip


def test_series_v1_json_matches_the_agent_shape():
    [payload] = serializer(use_v2_api__series="false", serializer_compressor_kind="none").series(SERIES[:1])
    assert payload.endpoint.value == "/api/v1/series"
    assert json.loads(payload.body) == {
        "series": [{"metric": "a.rate", "points": [[1000, 0.5], [1010, -1.25]], "tags": ["env:prod"],
                    "host": "web-1", "type": "rate", "interval": 10, "device": "sda1"}]
    }  # fmt: skip


def test_sketch_round_trip():
    sketch = Sketch()
    for value in (1.0, 2.0, 2.0, -3.5):
        sketch.insert(value)
    [payload] = serializer().sketches([SketchSeries(Context("d", "h", ("t:1",)), [sketch.to_point(1000)])])
    [decoded_sketch] = decoded([payload]).sketches
    assert decoded_sketch == {
        "metric": "d", "host": "h", "tags": ["t:1"],
        "points": [{"ts": 1000, "cnt": 4, "min": -3.5, "max": 2.0, "avg": 0.375, "sum": 1.5,
                    "k": [-1419, 1338, 1383], "n": [1, 1, 2]}],
    }  # fmt: skip


def test_service_checks_and_events_json():
    checks = [ServiceCheck("svc.up", 2, 12345, "h", "down", ("a",))]
    events = [
        Event("T1", "x", 5, "h", priority="low", source_type_name="jenkins", tags=("b",)),
        Event("T2", "y", 6, "h"),
    ]
    s = serializer(serializer_compressor_kind="none")
    [check_payload] = s.service_checks(checks)
    assert json.loads(check_payload.body) == [
        {"check": "svc.up", "host_name": "h", "timestamp": 12345, "status": 2, "message": "down", "tags": ["a"]}
    ]
    bodies = [json.loads(p.body) for p in s.events(events)]
    assert bodies == [
        {"apiKey": "", "events": {"jenkins": [{"msg_title": "T1", "msg_text": "x", "timestamp": 5, "priority": "low",
         "host": "h", "tags": ["b"], "alert_type": "info", "source_type_name": "jenkins"}]},
         "internalHostname": "relay-host"},
        {"apiKey": "", "events": {"api": [{"msg_title": "T2", "msg_text": "y", "timestamp": 6, "priority": "normal",
         "host": "h", "alert_type": "info"}]}, "internalHostname": "relay-host"},
    ]  # fmt: skip


def test_100k_series_split_under_every_limit():
    rng = random.Random(7)
    series = [
        Series(Context(f"metric.{i % 300}", f"host-{i % 7}", (f"id:{rng.getrandbits(64):x}", "env:prod")),
               SeriesType.GAUGE, [(1000, rng.random())], 10)
        for i in range(100_000)
    ]  # fmt: skip
    payloads = list(serializer().series(series))
    assert len(payloads) > 1
    assert all(len(p.body) <= 512_000 and p.raw_size <= 5_242_880 for p in payloads)
    assert sum(p.items for p in payloads) == 100_000
    assert len(decoded(payloads).series) == 100_000


def test_points_limit_splits_one_long_series():
    long_series = Series(Context("ts", "h", ()), SeriesType.GAUGE, [(i, 1.0) for i in range(25_000)], 10)
    payloads = list(serializer().series([long_series]))
    assert len(payloads) == 3
    assert sum(len(s["points"]) for s in decoded(payloads).series) == 25_000


def test_an_item_too_large_even_alone_is_dropped_and_counted():
    s = serializer(serializer_max_series_payload_size=50, serializer_compressor_kind="none")
    payloads = list(s.series([Series(Context("x" * 200, "h", ()), SeriesType.GAUGE, [(1, 1.0)], 10)]))
    assert payloads == [] and s.stats.dropped["payload_too_large"] == 1


@settings(max_examples=40, deadline=None)
@given(
    st.integers(200, 20_000),
    st.integers(1, 50),
    st.lists(st.text(min_size=1, max_size=40), min_size=1, max_size=300),
)
def test_every_payload_is_within_random_limits(max_compressed, max_points, names):
    s = serializer(
        serializer_max_series_payload_size=max_compressed, serializer_max_series_points_per_payload=max_points
    )
    series = [Series(Context(name, "h", ()), SeriesType.GAUGE, [(1, 1.0)], 10) for name in names]
    payloads = list(s.series(series))
    for payload in payloads:
        assert len(payload.body) <= max_compressed and payload.items <= max_points
    assert sum(p.items for p in payloads) + s.stats.dropped["payload_too_large"] == len(names)


_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)


@settings(max_examples=300, deadline=None)
@given(
    name=_text,
    host=_text,
    tags=st.lists(st.one_of(_text, st.just("device:sda1"), st.just("env:prod")), max_size=6),
    points=st.lists(st.tuples(st.integers(0, 2**40), st.floats(allow_nan=False, width=64)), min_size=1, max_size=5),
    kind=st.sampled_from(list(SeriesType)),
    interval=st.integers(0, 100_000),
)
def test_the_c_series_encoder_writes_exactly_the_python_bytes(speedups, name, host, tags, points, kind, interval):
    from relay.pipeline import serialize

    encoder = serialize.ProtobufEncoder()
    series = Series(Context(name, host, tuple(tags)), kind, points, interval)
    python_bytes = b"\x0a" + serialize._length_delimited(encoder.series(series))
    assert encoder.series_item(series) == python_bytes  # C when built; device tags take the Python path
