"""Ingest: both fast paths (Python and C) give exactly what the reference parser gives, on any input."""

from __future__ import annotations

import io
import json
import random
import struct
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from relay.pipeline.aggregate import Aggregator
from relay.pipeline.assemble import Pipeline
from relay.pipeline.enrich import Enricher
from relay.pipeline.ingest import COUNTER, SHAPE_CACHE_LIMIT, Ingest
from relay.pipeline.model import Kind
from relay.pipeline.origin import Origins
from relay.telemetry.stats import Stats
from tests.conftest import config

NAMES = [b"a", b"b.c", b"caf\xc3\xa9", b"_sc", b"_e{1,1}", b"x|y", b"", b"host", b"\xff\xfe"]
VALUES = [b"1", b"-2.5", b"0", b" 1", b"1 ", b"nan", b"-inf", b"0x1p3", b"1e309", b"1_0", b"", b"1:2", b"::3",
          b"member", b"+5", b"1e-400", b"abc", b"9" * 400]  # fmt: skip
SUFFIXES = [b"c", b"g", b"h", b"ms", b"d", b"s", b"c|@0.5", b"h|@0.25", b"d|@0", b"g|#x,y", b"c|#y,x,x",
            b"c|#host:other", b"g|T1000", b"c|T-1", b"G", b"c|@x", b"s|#", b"ms|@2", b"c|c:abc|card:low", b"x",
            b"c|#r:1,x", b"c|#r:2,x", b"c|#x", b"c|#", b"c|#host:r", b"d|#r:3,y:\xff", b"h|#r|#x,r:4",
            b"g|#host:r,r:5", b"c|c:ci-k1", b"g|c:ci-k2|card:orchestrator", b"c|#dd.internal.entity_id:p1",
            b"h|c:in-7|card:high", b"c|c:ci-k1|#dd.internal.entity_id:p1", b"d|c:ci-unknown", b"c|card:none|c:k1"]  # fmt: skip
# metric_tag_filterlist rules on some NAMES, to check that a cut shape means what the line means.
TAG_RULES = [{"metric_name": "a", "tags": ["r"]}, {"metric_name": "caf\u00e9", "action": "include", "tags": ["x", "y"]},
             {"metric_name": "host", "tags": ["host", "x"]}, {"metric_name": "b.c", "tags": ["r"]}]  # fmt: skip
lines = st.one_of(
    st.builds(
        lambda n, v, s: n + b":" + v + b"|" + s,
        st.sampled_from(NAMES),
        st.sampled_from(VALUES),
        st.sampled_from(SUFFIXES),
    ),
    st.sampled_from([b"_e{1,1}:a|b", b"_sc|svc|1|m:x", b"\r", b"no colon", b"a:1"]),
    st.binary(max_size=20),
)
datagrams = st.lists(lines, min_size=1, max_size=12).map(lambda parts: b"\n".join(parts))


class Containers:
    """A container tagger that knows two containers, a pod and a cgroup inode (the real one reads the kubelet:
    tests/tagger and tests/test_origin.py)."""

    generation = 1

    def __init__(self) -> None:
        self.known = {
            "container_id://k1": {"low": ("kube_deployment:one",), "orchestrator": ("pod_name:one-x",)},
            "container_id://k2": {"low": ("kube_deployment:two",), "orchestrator": ("pod_name:two-x",)},
            "kubernetes_pod_uid://p1": {"low": ("kube_namespace:pods",), "orchestrator": ()},
        }

    def tags(self, entity: str, cardinality: str) -> tuple[str, ...] | None:
        levels = self.known.get(entity)
        if levels is None:
            return None
        return levels["low"] + (levels["orchestrator"] if cardinality != "low" else ())

    def container_of_inode(self, inode: int) -> str | None:
        return "k2" if inode == 7 else None

    def state(self) -> dict[str, object]:
        return {}


def pipeline(accelerate: bool = False, tagger: bool = False, **overrides: Any) -> Ingest:
    cfg = config(hostname="h", statsd_metric_blocklist="b.c", dogstatsd_origin_detection_client="true", **overrides)
    stats = Stats()
    aggregator = Aggregator(cfg, stats)
    origins = Origins(cfg, Containers()) if tagger else None
    return Ingest(cfg, stats, Enricher(cfg, origins), aggregator, accelerate=accelerate)


@pytest.fixture(params=["python", "c"])
def accelerate(request: pytest.FixtureRequest) -> bool:
    """Both fast paths: in Python, and in C (relay/_speedups.c; required in CI)."""
    if request.param == "c":
        request.getfixturevalue("speedups")
    return request.param == "c"


def outcome(ingest: Ingest) -> tuple[Any, ...]:
    flushed = ingest.aggregator.flush(2000, force=True)
    series = sorted((s.context, s.type, tuple(s.points)) for s in flushed.series)
    sketches = sorted((s.context, repr(s.points)) for s in flushed.sketches)
    events = [repr(e) for e in flushed.events]
    checks = [repr(c) for c in flushed.service_checks]
    stats = ingest.stats
    return (series, sketches, events, checks, dict(stats.parse.messages), dict(stats.parse.errors), +stats.dropped,
            +stats.parse.tags_filtered)  # fmt: skip


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(datagrams, min_size=1, max_size=8), st.sampled_from(["udp", "uds"]), st.booleans(), st.booleans(),
       st.booleans())  # fmt: skip
def test_fast_path_equals_reference_path(accelerate, sequence, transport, eol_required, tag_rules, tagger):
    """With or without a container tagger (origin fields and entity ids then add tags)."""
    overrides = {"dogstatsd_eol_required": "udp uds"} if eol_required else {}
    overrides["histogram_copy_to_distribution"] = "true"
    if tag_rules:
        overrides["metric_tag_filterlist"] = json.dumps(TAG_RULES)
    fast, reference = pipeline(accelerate, tagger, **overrides), pipeline(False, tagger, **overrides)
    for data in sequence * 2:  # the second time round, every shape is cached
        fast.datagram(data, transport, 1000.0)
        reference.reference(data, transport, 1000.0)
    assert outcome(fast) == outcome(reference)


def test_a_known_shape_costs_no_parse_and_timestamps_are_never_cached(accelerate):
    ingest = pipeline(accelerate)
    ingest.datagram(b"a:1|c|#x\na:1|g|T100\nb.c:1|g", "udp", 1000.0)
    assert set(ingest.shapes) == {b"a:c|#x", b"b.c:g"}
    ingest.datagram(b"a:41|c|#x", "udp", 1000.0)
    assert ingest.aggregator.bucket(1000).counters == {0: 42.0}


def test_the_c_fast_path_learns_plain_first_sightings_itself(monkeypatch, speedups):
    """Plain lines (a decimal value, @rate, #tags) are learned in C, the same as in Python; anything else is
    still learned in Python (timestamps, packed values, host: tags, invalid UTF-8, empty tags)."""
    fast = pipeline(True, dogstatsd_tags="team:a", histogram_copy_to_distribution="true")
    learned_in_python: list[bytes] = []
    first_sight = fast._first_sight
    monkeypatch.setattr(
        fast, "_first_sight", lambda line, *rest: learned_in_python.append(line) or first_sight(line, *rest)
    )
    plain = [
        b"c:1|c|@0.5|#b,a,a",
        b"g:-2.5|g",
        b"h:3|ms|#team:a",
        b"d:4|d|@0.25",
        b"s:member|s|#z",
        b"b.c:1|c",
        b"x:1|c||#q|c:abc",
        b"b.c:member|s",
    ]
    other = [b"t:1|g|T100", b"p:1:2|h", b"o:1|c|#host:web", b"u\xff:1|c", b"e:1|c|#a,"]
    data = b"\n".join(plain + other)
    fast.datagram(data, "udp", 1000.0)
    reference = pipeline(dogstatsd_tags="team:a", histogram_copy_to_distribution="true")
    reference.reference(data, "udp", 1000.0)
    assert learned_in_python == other
    assert outcome(fast) == outcome(reference)
    assert fast.shapes[b"c:c|@0.5|#b,a,a"][1:] == (COUNTER, 2.0, -1)  # a counter's shape holds its scale


def test_expired_contexts_take_their_shapes_with_them():
    pipe = Pipeline(config(hostname="h"), out=io.StringIO())
    ingest = pipe.ingest
    ingest.datagram(b"a:1|g", "udp", 1000.0)
    pipe.take(1010)
    assert ingest.shapes
    pipe.take(1100)
    assert ingest.shapes == {} and ingest.aggregator.contexts == 0
    ingest.datagram(b"a:2|g", "udp", 1200.0)
    assert pipe.take(1210).series[0].points == [(1200, 2.0)]


def test_the_shape_cache_is_bounded(monkeypatch):
    import relay.pipeline.ingest

    monkeypatch.setattr(relay.pipeline.ingest, "SHAPE_CACHE_LIMIT", 3)
    ingest = pipeline()
    ingest.datagram(b"\n".join(b"m%d:1|c" % i for i in range(10)), "udp", 1000.0)
    assert len(ingest.shapes) <= 3 < SHAPE_CACHE_LIMIT
    assert sum(ingest.aggregator.bucket(1000).counters.values()) == 10


def test_the_c_and_python_kinds_are_the_same_numbers(speedups):
    """relay/_speedups.c has its own enum of kinds; model.Kind is the one list, and the two must agree."""
    assert {kind.name: getattr(speedups, kind.name) for kind in Kind} == {kind.name: kind.value for kind in Kind}


@pytest.mark.parametrize("namespace", ["", "app"])  # with a namespace, the C fast path learns nothing itself
def test_a_tag_filtered_out_makes_one_context_one_shape_and_keeps_every_count(accelerate, namespace):
    rule = {"metric_name": f"{namespace}.spike.req".lstrip("."), "tags": ["request_id"]}
    cfg = config(hostname="h", statsd_metric_namespace=namespace, metric_tag_filterlist=json.dumps([rule]))
    pipe = Pipeline(cfg, accelerate=accelerate, out=io.StringIO())
    for start in range(0, 10_000, 50):
        lines = [b"spike.req:1|c|#request_id:%d,env:prod" % i for i in range(start, start + 50)]
        lines.append(b"other:1|c|#request_id:%d" % start)  # no rule: one context each
        pipe.ingest.datagram(b"\n".join(lines), "udp", 1000.0)
    assert pipe.aggregator.contexts == 1 + 200 and len(pipe.enricher._cache) <= 1 + 200
    assert sum(key.startswith(b"spike.req:") for key in pipe.ingest.shapes) == 1
    assert pipe.stats.parse.tags_filtered == {rule["metric_name"]: 10_000}
    series = {s.context.name: s for s in pipe.take(1010, force=True).series if s.context.name.endswith("spike.req")}
    [spike] = series.values()
    assert spike.context.tags == ("env:prod",) and spike.points == [(1000, 10_000 / spike.interval)]


def test_the_c_fast_path_leaves_the_filtered_metrics_to_python(monkeypatch, speedups):
    fast = pipeline(True, metric_tag_filterlist=json.dumps([{"metric_name": "f", "tags": ["r"]}]))
    learned_in_python: list[bytes] = []
    first_sight = fast._first_sight
    monkeypatch.setattr(
        fast, "_first_sight", lambda line, *rest: learned_in_python.append(line) or first_sight(line, *rest)
    )
    fast.datagram(b"g:1|c|#r:1\n", "udp", 1000.0)  # C learns a metric no rule cuts
    # From the first line a rule cuts, Python takes the rest of the datagram in one call: g's too
    fast.datagram(b"f:1|c|#r:1\nf:1|c|#r:2\ng:1|c|#r:1\nf:1|c|#q", "udp", 1000.0)
    assert learned_in_python == [b"f:1|c|#r:1", b"f:1|c|#r:2", b"f:1|c|#q"]
    assert set(fast.shapes) == {b"f:c|#", b"g:c|#r:1", b"f:c|#q"}
    fast.datagram(b"f:1|c|#q", "udp", 1000.0)  # a filtered metric's line that the rule leaves whole: C takes it
    assert len(learned_in_python) == 3 and fast.aggregator.bucket(1000).counters == {0: 2.0, 1: 2.0, 2: 2.0}


def test_origin_tags_are_learned_once_per_shape_and_the_c_path_leaves_them_to_python(accelerate):
    """A line's origin (c:, card:, dd.internal.entity_id) adds its tags on the fast paths as on the reference path:
    the shape holds them, so a known line costs no lookup."""
    ingest = pipeline(accelerate, tagger=True)
    data = b"m:1|c|c:ci-k1\nm:1|c|c:ci-k2|card:orchestrator\nm:1|c|#dd.internal.entity_id:p1\nm:1|c|c:ci-zz\nm:1|c"
    for _ in range(3):
        ingest.datagram(data, "udp", 1000.0)
    counted = {s.context.tags: s.points[0][1] for s in ingest.aggregator.flush(2000, force=True).series}
    assert counted == {
        ("kube_deployment:one",): 0.3, ("kube_deployment:two", "pod_name:two-x"): 0.3, ("kube_namespace:pods",): 0.3,
        (): 0.6,  # the unknown container's lines and the plain ones: one context, no tag lost or added
    }  # fmt: skip
    assert ingest.enricher.unresolved == {"container_id://zz"} and len(ingest.shapes) == 5


def test_the_c_number_parser_reads_every_short_decimal_as_float_does(speedups):
    """The C fast path reads a decimal of up to 15 digits without strtod (an exact integer, one division): the
    double must be float()'s, bit for bit, for any such decimal (200,000 random ones, and the edges)."""
    ingest = pipeline(True)
    rng = random.Random(26)
    texts = ["0", "-0", "+0", "0.1", "0.3", "1.000000000000001", "999999999999999", "0.000000000000001",
             "-123456789.012345", "9007199254740.99", "00000000000001.5", "1.", ".5", "-.25"]  # fmt: skip
    for _ in range(200_000):
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 15)))
        point = rng.randint(0, len(digits))
        texts.append(
            rng.choice(["", "-", "+"]) + (digits[:point] + "." + digits[point:] if rng.random() < 0.8 else digits)
        )
    data = b"\n".join(b"v%d:%s|g" % (index, text.encode()) for index, text in enumerate(texts))
    ingest.datagram(data, "udp", 1000.0)  # first sights: learned by C, the reference path for none of them
    ingest.datagram(data, "udp", 1000.0)  # known shapes: every value through the C parser
    gauges = ingest.aggregator.bucket(1000).gauges
    slots = {shape.slot: key for key, shape in ingest.shapes.items()}
    assert len(gauges) == len(texts)
    for slot, value in gauges.items():
        text = texts[int(slots[slot].split(b":")[0][1:])]
        assert struct.pack("<d", value) == struct.pack("<d", float(text)), text
