"""Parse: datagram bytes → MetricSample | Event | ServiceCheck | ParseError, line by line.

The grammar is the Datadog Agent's (comp/dogstatsd/server/impl/parse*.go), byte for byte: nothing is trimmed,
repeated optional fields overwrite earlier ones, unknown fields are ignored, and a bad line becomes a ParseError
without touching its neighbours.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator

from relay.pipeline.model import Event, MetricSample, MetricType, Origin, ServiceCheck

METRIC, EVENT, SERVICE_CHECK = "metric", "event", "service_check"
UNTERMINATED = "unterminated"  # dogstatsd_eol_required: counted apart, like the Agent's UnterminatedMetricErrors

_TYPES: dict[bytes, MetricType] = {t.value.encode(): t for t in MetricType}
_INT = re.compile(rb"[+-]?[0-9]+")
_HEX_FLOAT = re.compile(rb"[+-]?0[xX](?=\.?[0-9a-fA-F])[0-9a-fA-F]*\.?[0-9a-fA-F]*[pP][+-]?[0-9]+")
_INF_WORDS = frozenset((b"inf", b"+inf", b"-inf", b"infinity", b"+infinity", b"-infinity"))
_INT64_MAX = 2**63 - 1
_PRIORITIES = frozenset(("normal", "low"))
_ALERT_TYPES = frozenset(("error", "warning", "info", "success"))
_SERVICE_CHECK_STATUSES = {b"0": 0, b"1": 1, b"2": 2, b"3": 3}
_ORIGIN_FIELDS = (b"c:", b"e:")  # with card:, the fields that say where a line comes from (protocol v1.2+)


class ParseError(Exception):
    """A rejected line: `kind` is metric | event | service_check | unterminated; `reason` in the Agent's words."""

    def __init__(self, kind: str, reason: str, line: bytes = b"") -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason
        self.line = line


def datagram_lines(data: bytes) -> Iterator[tuple[bytes, bool]]:
    """The datagram's non-blank lines, exactly one CR dropped from each and nothing else trimmed, each with whether
    it ended in LF (only the last one can be unterminated)."""
    lines = data.split(b"\n")
    last = lines.pop()  # b"" when the datagram ends with "\n"
    for line in lines:
        if line[-1:] == b"\r":
            line = line[:-1]
        if line:
            yield line, True
    if last[-1:] == b"\r":
        last = last[:-1]
    if last:
        yield last, False


def parse_datagram(
    data: bytes, *, eol_required: bool = False, timestamps: bool = True
) -> Iterator[MetricSample | Event | ServiceCheck | ParseError]:
    """Yield one item per non-blank line; an unterminated last line is an error when `eol_required`."""
    for line, terminated in datagram_lines(data):
        yield parse_terminated(line, terminated, eol_required, timestamps)


def parse_terminated(
    line: bytes, terminated: bool, eol_required: bool, timestamps: bool = True
) -> MetricSample | Event | ServiceCheck | ParseError:
    """One line of `datagram_lines`: parsed, or an error when it lacks the LF that `eol_required` asks for."""
    if terminated or not eol_required:
        return parse_line(line, timestamps)
    return ParseError(UNTERMINATED, "unterminated message", line)


def parse_line(line: bytes, timestamps: bool = True) -> MetricSample | Event | ServiceCheck | ParseError:
    """Classify one non-empty line by its prefix and parse it; never raises."""
    try:
        if line.startswith(b"_e{"):
            return parse_event(line)
        if line.startswith(b"_sc"):
            return parse_service_check(line)
        return parse_metric(line, timestamps)
    except ParseError as error:
        error.line = line
        return error


def parse_metric(line: bytes, timestamps: bool = True) -> MetricSample:
    fields = line.split(b"|")
    if len(fields) < 2:
        raise ParseError(METRIC, "invalid dogstatsd message format")
    name, colon, raw_value = fields[0].partition(b":")
    if not colon or not name or not raw_value:
        raise ParseError(METRIC, "invalid name and value")
    metric_type = _TYPES.get(fields[1])
    if metric_type is None:
        raise ParseError(METRIC, "invalid metric type")
    rate, timestamp = 1.0, 0
    tags: tuple[str, ...] = ()
    origin = None
    for field in fields[2:]:
        prefix = field[:1]
        if prefix in b"ce" and (field[:2] in _ORIGIN_FIELDS or field[:5] == b"card:"):
            origin = _origin_field(origin, field)
        elif prefix == b"#":
            tags = parse_tags(field[1:])
        elif prefix == b"@":
            try:
                rate = parse_float(field[1:])
            except ValueError:
                raise ParseError(METRIC, "could not parse dogstatsd sample rate") from None
        elif prefix == b"T" and timestamps:
            parsed = parse_int(field[1:])
            if parsed is None or parsed < 1:
                raise ParseError(METRIC, "dogstatsd timestamp should be > 0")
            timestamp = parsed
        # Everything else (unknown, empty) is ignored.
    if metric_type is MetricType.SET:
        return MetricSample(_text(name), metric_type, (), _text(raw_value), rate, tags, timestamp, origin)
    return MetricSample(_text(name), metric_type, parse_values(raw_value), "", rate, tags, timestamp, origin)


def _origin_field(origin: Origin | None, field: bytes) -> Origin:
    """`c:` (container), `e:` (external data) or `card:` (cardinality) onto the line's origin; a repeated field
    overwrites the earlier one, as every field does."""
    origin = origin or Origin()
    if field[:2] == b"c:":
        return origin._replace(container=_text(field[2:]))
    if field[:2] == b"e:":
        return origin._replace(external=_text(field[2:]))
    return origin._replace(cardinality=_text(field[5:]))


def parse_values(raw: bytes) -> tuple[float, ...]:
    """One value, or a packed list (protocol v1.1) where empty entries are skipped."""
    try:
        if b":" not in raw:
            return (parse_float(raw),)
        values = tuple(parse_float(part) for part in raw.split(b":") if part)
    except ValueError:
        raise ParseError(METRIC, "could not parse dogstatsd metric value") from None
    if not values:
        raise ParseError(METRIC, "no value found")
    return values


def parse_tags(raw: bytes) -> tuple[str, ...]:
    """Split on every comma, no trimming; empty tags survive here and are dropped in enrich."""
    if not raw:
        return ()
    return tuple(_text(raw).split(","))


def parse_float(raw: bytes) -> float:
    """Go's strconv.ParseFloat(s, 64): hex floats accepted; whitespace, signed NaN and overflow rejected."""
    try:
        value = float(raw)
    except ValueError:
        if _HEX_FLOAT.fullmatch(raw.replace(b"_", b"")) and _underscores_ok(raw):
            try:
                return float.fromhex(raw.replace(b"_", b"").decode())
            except OverflowError:
                raise ValueError("value out of range") from None
        raise
    # float() trims bytes <= 0x20; ParseFloat does not. No valid literal starts or ends with one.
    if raw[0] <= 0x20 or raw[-1] <= 0x20:
        raise ValueError("whitespace")
    if math.isinf(value) and raw.lower() not in _INF_WORDS:
        raise ValueError("value out of range")
    if math.isnan(value) and raw[:1] in (b"+", b"-"):
        raise ValueError("signed NaN")
    return value


def _underscores_ok(raw: bytes) -> bool:
    """Go's underscoreOK for hex literals: an underscore only between digits or after the 0x prefix."""
    body = raw.lstrip(b"+-")[2:]
    previous = "digit"  # the base prefix counts as a digit
    for byte in body:
        if chr(byte) in "0123456789abcdefABCDEF":
            previous = "digit"
        elif byte == 0x5F:  # "_"
            if previous != "digit":
                return False
            previous = "underscore"
        elif previous == "underscore":
            return False
        else:
            previous = "other"
    return previous != "underscore"


def parse_int(raw: bytes) -> int | None:
    """Go's strconv.ParseInt(s, 10, 64): ASCII digits with an optional sign; None when invalid."""
    if not _INT.fullmatch(raw):
        return None
    value = int(raw)
    return value if -_INT64_MAX - 1 <= value <= _INT64_MAX else None


def parse_event(line: bytes) -> Event:
    """`_e{<title length>,<text length>}:<title>|<text>|d:..|h:..|k:..|p:..|s:..|t:..|#tags`, lengths in bytes."""
    header, colon, rest = line.partition(b":")
    if not colon or len(header) < 7:
        raise ParseError(EVENT, "invalid event")
    # The Agent strips "_e{" and the last header byte without checking that it is "}".
    title_len_raw, comma, text_len_raw = header[3:-1].partition(b",")
    title_len, text_len = parse_int(title_len_raw), parse_int(text_len_raw)
    if not comma or title_len is None or text_len is None or title_len < 0 or text_len < 0:
        raise ParseError(EVENT, "invalid event header")
    if title_len == 0:
        raise ParseError(EVENT, "invalid event: empty title")
    if len(rest) < title_len + 1 + text_len:
        raise ParseError(EVENT, "invalid event")
    event = Event(
        title=_event_text(rest[:title_len]),
        text=_event_text(rest[title_len + 1 : title_len + 1 + text_len]),
    )
    for field in rest[title_len + 1 + text_len :].split(b"|"):
        _event_field(event, field)
    return event


def _shared_field(item: Event | ServiceCheck, field: bytes) -> bool:
    """`d:`, `h:`, `#` and the origin fields mean the same for events and service checks; True when `field` was
    one of them.
    An invalid timestamp is ignored and the item kept, like the Agent."""
    prefix = field[:2]
    if prefix == b"d:":
        timestamp = parse_int(field[2:])
        if timestamp is not None:
            item.timestamp = timestamp
    elif prefix == b"h:":
        item.host = _text(field[2:])
    elif field[:1] == b"#":
        item.tags = parse_tags(field[1:])
    elif field[:2] in _ORIGIN_FIELDS or field[:5] == b"card:":
        item.origin = _origin_field(item.origin, field)
    else:
        return False
    return True


def _event_field(event: Event, field: bytes) -> None:
    """Apply one optional event field; an invalid value is ignored and the event kept, like the Agent."""
    if _shared_field(event, field):
        return
    prefix, value = field[:2], field[2:]
    if prefix == b"k:":
        event.aggregation_key = _text(value)
    elif prefix == b"p:" and _text(value) in _PRIORITIES:
        event.priority = _text(value)
    elif prefix == b"s:":
        event.source_type_name = _text(value)
    elif prefix == b"t:" and _text(value) in _ALERT_TYPES:
        event.alert_type = _text(value)


def parse_service_check(line: bytes) -> ServiceCheck:
    """`_sc|<name>|<status>|d:..|h:..|#tags|m:..`; the message is passed through unescaped, like the Agent."""
    fields = line.split(b"|")
    if len(fields) < 3 or fields[0] != b"_sc":
        raise ParseError(SERVICE_CHECK, "invalid dogstatsd service check format")
    if not fields[1]:
        raise ParseError(SERVICE_CHECK, "invalid dogstatsd service check name")
    status = _SERVICE_CHECK_STATUSES.get(fields[2])
    if status is None:
        raise ParseError(SERVICE_CHECK, "invalid dogstatsd service check status")
    check = ServiceCheck(name=_text(fields[1]), status=status)
    for field in fields[3:]:
        if not _shared_field(check, field) and field[:2] == b"m:":
            check.message = _text(field[2:])
    return check


def _text(raw: bytes) -> str:
    """Names and tags are opaque bytes upstream; invalid UTF-8 becomes U+FFFD so payloads stay valid."""
    return raw.decode("utf-8", "replace")


def _event_text(raw: bytes) -> str:
    """Clients escape newlines as the two bytes backslash-n; only that sequence is unescaped."""
    return _text(raw.replace(b"\\n", b"\n"))
