"""Parser: table tests from the Agent's grammar (spec sections 1.2-1.6) and hypothesis properties."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.pipeline.model import Event, MetricSample, MetricType, ServiceCheck
from relay.pipeline.parse import ParseError, parse_datagram, parse_float, parse_int, parse_line


def metric(line: bytes, timestamps: bool = True) -> MetricSample:
    item = parse_line(line, timestamps)
    assert isinstance(item, MetricSample), item
    return item


def rejected(line: bytes) -> str:
    item = parse_line(line)
    assert isinstance(item, ParseError), item
    return item.reason


@pytest.mark.parametrize(
    ("line", "name", "metric_type", "values", "rate", "tags", "timestamp"),
    [
        (b"daemon:666|g", "daemon", MetricType.GAUGE, (666.0,), 1.0, (), 0),
        (b"daemon:666|c|@0.5|#sometag1:somevalue1,sometag2", "daemon", MetricType.COUNTER, (666.0,), 0.5,
         ("sometag1:somevalue1", "sometag2"), 0),
        (b"daemon:666|h", "daemon", MetricType.HISTOGRAM, (666.0,), 1.0, (), 0),
        (b"daemon:666|ms", "daemon", MetricType.TIMER, (666.0,), 1.0, (), 0),
        (b"daemon:666|d", "daemon", MetricType.DISTRIBUTION, (666.0,), 1.0, (), 0),
        (b"daemon:-1e3|g", "daemon", MetricType.GAUGE, (-1000.0,), 1.0, (), 0),
        (b"daemon:1:2:3|h", "daemon", MetricType.HISTOGRAM, (1.0, 2.0, 3.0), 1.0, (), 0),
        (b"daemon:::1::2:|c", "daemon", MetricType.COUNTER, (1.0, 2.0), 1.0, (), 0),
        (b"daemon:1|g|T1657100430", "daemon", MetricType.GAUGE, (1.0,), 1.0, (), 1657100430),
        (b"daemon:1|g|#a|#b", "daemon", MetricType.GAUGE, (1.0,), 1.0, ("b",), 0),  # last wins, not merged
        (b"daemon:1|g|@0.1|@0.2", "daemon", MetricType.GAUGE, (1.0,), 0.2, (), 0),
        (b"daemon:1|g|#", "daemon", MetricType.GAUGE, (1.0,), 1.0, (), 0),
        (b"daemon:1|g|#a,,b,", "daemon", MetricType.GAUGE, (1.0,), 1.0, ("a", "", "b", ""), 0),
        (b"daemon:1|g|m:unknown|f:x||", "daemon", MetricType.GAUGE, (1.0,), 1.0, (), 0),
        (b"daemon:1|g|c:container-id|e:it-false|card:high", "daemon", MetricType.GAUGE, (1.0,), 1.0, (), 0),
        (b" a b:1|c", " a b", MetricType.COUNTER, (1.0,), 1.0, (), 0),  # nothing is trimmed
        (b"daemon:0x1p-2|g", "daemon", MetricType.GAUGE, (0.25,), 1.0, (), 0),
        (b"caf\xc3\xa9:1|g|#t\xc3\xa9:1", "café", MetricType.GAUGE, (1.0,), 1.0, ("té:1",), 0),
        (b"daemon:1|c|@0", "daemon", MetricType.COUNTER, (1.0,), 0.0, (), 0),  # parsed; handled in aggregation
        (b"daemon:1|c|@-1", "daemon", MetricType.COUNTER, (1.0,), -1.0, (), 0),
    ],
)  # fmt: skip
def test_metric_lines(line, name, metric_type, values, rate, tags, timestamp):
    sample = metric(line)
    assert (sample.name, sample.type, sample.values, sample.rate, sample.tags, sample.timestamp) == (
        name, metric_type, values, rate, tags, timestamp,
    )  # fmt: skip


def test_set_value_is_kept_verbatim_colons_included():
    sample = metric(b"daemon:abc:def|s|#a")
    assert (sample.set_value, sample.values, sample.tags) == ("abc:def", (), ("a",))


def test_timestamp_field_ignored_without_the_no_aggregation_pipeline():
    assert metric(b"daemon:1|g|Tgarbage", timestamps=False).timestamp == 0


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"daemon", "invalid dogstatsd message format"),
        (b"daemon:1", "invalid dogstatsd message format"),
        (b"daemon|g", "invalid name and value"),
        (b":1|g", "invalid name and value"),
        (b"daemon:|g", "invalid name and value"),
        (b"daemon:1|G", "invalid metric type"),
        (b"daemon:1|g ", "invalid metric type"),
        (b"daemon:1|timer", "invalid metric type"),
        (b"daemon:abc|g", "could not parse dogstatsd metric value"),
        (b"daemon:1:x|g", "could not parse dogstatsd metric value"),
        (b"daemon:::|g", "no value found"),
        (b"daemon: 1|g", "could not parse dogstatsd metric value"),
        (b"daemon:1e309|g", "could not parse dogstatsd metric value"),
        (b"daemon:1|g|@abc", "could not parse dogstatsd sample rate"),
        (b"daemon:1|g|T0", "dogstatsd timestamp should be > 0"),
        (b"daemon:1|g|T-5", "dogstatsd timestamp should be > 0"),
        (b"daemon:1|g|T1.5", "dogstatsd timestamp should be > 0"),
        (b"_scale:1|g", "invalid dogstatsd service check format"),  # any "_sc" line is a service check
    ],
)
def test_rejected_metric_lines(line, reason):
    assert rejected(line) == reason


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"1", 1.0), (b"+1", 1.0), (b"-0.1", -0.1), (b"1e23", 1e23), (b"1E23", 1e23), (b"625e-3", 0.625),
        (b".5", 0.5), (b"5.", 5.0), (b"1_23.50_0_0e+1_2", 1.235e14), (b"0x1p-2", 0.25), (b"0x1.8p1", 3.0),
        (b"0x_1_2.3_4_5p+1_2", float.fromhex("0x12.345p+12")), (b"2e-324", 0.0), (b"1e-400000", 0.0),
        (b"inf", math.inf), (b"+INF", math.inf), (b"-Infinity", -math.inf),
    ],
)  # fmt: skip
def test_go_float_accepted(raw, expected):
    assert parse_float(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [b"-nan", b"+nan", b"infinit", b"_123.5e+12", b"123_.5e+12", b"1__23.5e+12", b"123.5e+12_", b"0x1", b"0x1e2",
     b"1p2", b"1e309", b"2e308", b"-1e400", b" 1", b"1 ", b"1\t", "١٢".encode(), b"", b"0x1p99999"],
)  # fmt: skip
def test_go_float_rejected(raw):
    with pytest.raises(ValueError):
        parse_float(raw)


def test_nan_parses_and_is_dropped_later():
    assert math.isnan(metric(b"daemon:nan|g").values[0])


@pytest.mark.parametrize(
    ("raw", "expected"), [(b"12", 12), (b"+12", 12), (b"-3", -3), (b"1_2", None), (b" 1", None), (b"", None),
                          (b"9223372036854775807", 2**63 - 1), (b"9223372036854775808", None)],
)  # fmt: skip
def test_go_int(raw, expected):
    assert parse_int(raw) == expected


def test_event_with_every_field():
    event = parse_line(b"_e{10,10}:test title|test\\ntext|d:21|h:localhost|k:agg|p:low|s:src|t:warning|#tag1,tag2:test")
    assert event == Event(
        title="test title", text="test\ntext", timestamp=21, host="localhost", aggregation_key="agg",
        priority="low", source_type_name="src", alert_type="warning", tags=("tag1", "tag2:test"),
    )  # fmt: skip


def test_event_lengths_are_utf8_bytes_and_invalid_optional_values_are_ignored():
    event = parse_line("_e{6,4}:titré|text|p:urgent|t:test|d:abc".encode())
    assert isinstance(event, Event)
    assert (event.title, event.text, event.priority, event.alert_type, event.timestamp) == (
        "titré", "text", "normal", "info", 0,
    )  # fmt: skip


def test_event_empty_text_and_unchecked_header_byte():
    event = parse_line(b"_e{5,0]:title|")
    assert isinstance(event, Event) and (event.title, event.text) == ("title", "")


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"_e{0,4}:|text", "invalid event: empty title"),
        (b"_e{5,4}:title", "invalid event"),
        (b"_e{5,10}:title|text", "invalid event"),
        (b"_e{a,4}:title|text", "invalid event header"),
        (b"_e{-5,4}:title|text", "invalid event header"),
        (b"_e{54}:title|text", "invalid event"),  # header shorter than 7 bytes
        (b"_e{544}:title|text", "invalid event header"),
        (b"_e{5}:title", "invalid event"),
        (b"_e{5,4}", "invalid event"),
    ],
)
def test_rejected_events(line, reason):
    assert rejected(line) == reason


def test_service_check_with_every_field():
    check = parse_line(b"_sc|agent.up|1|d:21|h:localhost|#tag1:test,tag2|m:this is fine\\n m\\:x")
    assert check == ServiceCheck(
        name="agent.up", status=1, timestamp=21, host="localhost", message="this is fine\\n m\\:x",
        tags=("tag1:test", "tag2"),
    )  # fmt: skip


def test_service_check_last_field_wins_and_bad_timestamp_is_ignored():
    check = parse_line(b"_sc|x|0|#a|#b|h:one|h:two|d:bad")
    assert isinstance(check, ServiceCheck) and (check.tags, check.host, check.timestamp) == (("b",), "two", 0)


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"_sc|agent.up", "invalid dogstatsd service check format"),
        (b"_sc||0", "invalid dogstatsd service check name"),
        (b"_sc|x|4", "invalid dogstatsd service check status"),
        (b"_sc|x|01", "invalid dogstatsd service check status"),
        (b"_sc|x| 0", "invalid dogstatsd service check status"),
    ],
)
def test_rejected_service_checks(line, reason):
    assert rejected(line) == reason


def test_datagram_lines_blank_lines_and_one_carriage_return():
    items = list(parse_datagram(b"a:1|c\r\n\n\r\nb:2|g\r\r\nc:3|c"))
    assert [type(i).__name__ for i in items] == ["MetricSample", "ParseError", "MetricSample"]
    assert items[1].line == b"b:2|g\r"  # only one CR is dropped; the type "g\r" is invalid


def test_unterminated_last_line_when_eol_is_required():
    items = list(parse_datagram(b"a:1|c\nb:2|c", eol_required=True))
    assert isinstance(items[0], MetricSample) and isinstance(items[1], ParseError)
    assert items[1].kind == "unterminated"
    assert all(isinstance(i, MetricSample) for i in parse_datagram(b"a:1|c\nb:2|c\n", eol_required=True))


def test_bad_line_between_good_ones():
    items = list(parse_datagram(b"a:1|c\ngarbage\n_e{x}:y\n_sc|z\nb:2|c"))
    assert [i.name for i in items if isinstance(i, MetricSample)] == ["a", "b"]
    assert [i.kind for i in items if isinstance(i, ParseError)] == ["metric", "event", "service_check"]


# --- properties ----------------------------------------------------------------------------------------------

good_lines = st.sampled_from(
    [b"a:1|c", b"b.c:2.5|g|#x:y", b"h:1:2|h|@0.5", b"s:member|s", b"d:3|d|#t", b"_e{1,1}:a|b", b"_sc|n|0|m:x"]
)


@settings(max_examples=3000)
@given(st.binary(max_size=300))
def test_any_bytes_never_raise(data):
    for item in parse_datagram(data, eol_required=True):
        assert isinstance(item, MetricSample | Event | ServiceCheck | ParseError)
    list(parse_datagram(data))


@settings(max_examples=1000)
@given(good_lines, st.binary(max_size=80).filter(lambda b: b"\n" not in b), good_lines)
def test_a_bad_line_never_changes_its_neighbours(first, middle, last):
    alone = [parse_line(first), parse_line(last)]
    items = list(parse_datagram(first + b"\n" + middle + b"\n" + last))
    assert items[0] == alone[0] and items[-1] == alone[1]


@settings(max_examples=500)
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_repr_of_any_float_parses_back_exactly(value):
    assert parse_float(repr(value).encode()) == value
