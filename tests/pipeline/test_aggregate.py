"""Aggregator: the Agent's vectors (spec section 2.3) and properties. Time is an argument: nothing sleeps."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.pipeline.aggregate import Aggregator
from relay.pipeline.model import Context, Flushed, MetricType, SeriesType
from relay.telemetry.stats import Stats
from tests.conftest import config


def aggregator(**overrides: object) -> Aggregator:
    return Aggregator(config(**overrides), Stats())


def add(agg: Aggregator, name: str, metric_type: MetricType, value: float | str, now: float, rate: float = 1.0,
        tags: tuple[str, ...] = (), timestamp: int = 0) -> None:  # fmt: skip
    values = () if isinstance(value, str) else (float(value),)
    agg.add(
        Context(name, "h", tags), metric_type, values, value if isinstance(value, str) else "", rate, timestamp, now
    )


def points(flushed: Flushed) -> dict[tuple[str, SeriesType], list[tuple[int, float]]]:
    return {(s.context.name, s.type): s.points for s in flushed.series}


def test_counter_vector_a():
    agg = aggregator()
    add(agg, "c", MetricType.COUNTER, 2, 55, rate=0.5)
    for value in (1, 2, 5, 0, 8, 3):
        add(agg, "c", MetricType.COUNTER, value, 55)
    assert points(agg.flush(60)) == {("c", SeriesType.RATE): [(50, pytest.approx(2.3))]}
    add(agg, "c", MetricType.COUNTER, 5, 65, rate=0.5)
    add(agg, "c", MetricType.COUNTER, 3, 65, rate=0.5)
    assert points(agg.flush(70))[("c", SeriesType.RATE)] == [(60, pytest.approx(1.6))]


def test_counter_zero_fill_and_expiry_vector_b():
    agg = aggregator()
    add(agg, "counter1", MetricType.COUNTER, 1, 1004)
    add(agg, "counter2", MetricType.COUNTER, 2, 1002)
    add(agg, "gauge", MetricType.GAUGE, 2, 1003, tags=("bar", "foo"))
    assert points(agg.flush(1010)) == {
        ("counter1", SeriesType.RATE): [(1000, 0.1)],
        ("counter2", SeriesType.RATE): [(1000, 0.2)],
        ("gauge", SeriesType.GAUGE): [(1000, 2.0)],
    }
    add(agg, "counter2", MetricType.COUNTER, 2, 1034)
    add(agg, "counter1", MetricType.COUNTER, 1, 1010)
    add(agg, "counter2", MetricType.COUNTER, 2, 1020)
    assert points(agg.flush(1040)) == {
        ("counter1", SeriesType.RATE): [(1010, 0.1), (1020, 0.0), (1030, 0.0)],
        ("counter2", SeriesType.RATE): [(1010, 0.0), (1020, 0.2), (1030, 0.2)],
    }
    assert points(agg.flush(1045)) == {}
    assert points(agg.flush(1050)) == {
        ("counter1", SeriesType.RATE): [(1040, 0.0)],
        ("counter2", SeriesType.RATE): [(1040, 0.0)],
    }
    assert points(agg.flush(1329)) == {("counter2", SeriesType.RATE): [(1310, 0.0)]}
    assert points(agg.flush(1800)) == {}
    assert agg.contexts == 0


def histogram_points(samples: list[tuple[float, float]], **overrides: object) -> dict[str, float]:
    agg = aggregator(**overrides)
    for value, rate in samples:
        add(agg, "h", MetricType.HISTOGRAM, value, 1000, rate=rate)
    return {name.removeprefix("h."): pts[0][1] for (name, _), pts in points(agg.flush(1010)).items()}


def test_histogram_vector_c_defaults():
    result = histogram_points([(v, 1) for v in (1, 10, 4, 5, 2, 2)])
    assert result == {"max": 10, "median": 2, "avg": 4, "count": 0.6, "95percentile": 10}


def test_histogram_vector_c_min_sum():
    assert histogram_points([(v, 1) for v in (1, 10, 4, 5, 2, 2)], histogram_aggregates="min sum") == {
        "min": 1, "sum": 24, "95percentile": 10,
    }  # fmt: skip


def test_histogram_vector_c_weighted():
    result = histogram_points(
        [(1, 1), (2, 0.5), (3, 0.2), (10, 0.5)],
        histogram_aggregates="max min median avg sum count",
        histogram_percentiles="0.2 0.8 0.95",
    )
    assert result == {
        "max": 10, "min": 1, "median": 3, "avg": 4, "sum": 40, "count": 1,
        "20percentile": 2, "80percentile": 3, "95percentile": 10,
    }  # fmt: skip


def test_histogram_count_is_a_rate_and_timers_are_histograms():
    agg = aggregator()
    add(agg, "t", MetricType.TIMER, 250, 1000)
    kinds = {name: series_type for (name, series_type) in points(agg.flush(1010))}
    assert kinds["t.count"] is SeriesType.RATE and kinds["t.max"] is SeriesType.GAUGE


def test_time_sampler_vector_d_buckets():
    agg = aggregator()
    for now in (12345, 12355, 12365):
        add(agg, "my.metric.name", MetricType.GAUGE, 1, now)
        add(agg, "distribution.metric.name1", MetricType.DISTRIBUTION, 1, now)
    flushed = agg.flush(12360)
    assert points(flushed) == {("my.metric.name", SeriesType.GAUGE): [(12340, 1.0), (12350, 1.0)]}
    assert [p.timestamp for p in flushed.sketches[0].points] == [12340, 12350]
    assert [p.count for p in flushed.sketches[0].points] == [1, 1]


def test_forced_flush_includes_open_buckets():
    agg = aggregator()
    for now in (999, 1010, 1022):
        add(agg, "c", MetricType.COUNTER, 1, now)
    assert [ts for ts, _ in points(agg.flush(1000, force=True))[("c", SeriesType.RATE)]] == [990, 1010, 1020]


def test_gauges_are_last_value_and_never_zero_filled():
    agg = aggregator()
    for value in (5, 3, 9):
        add(agg, "g", MetricType.GAUGE, value, 1001)
    assert points(agg.flush(1010)) == {("g", SeriesType.GAUGE): [(1000, 9.0)]}
    assert points(agg.flush(1020)) == {}


def test_sets_count_unique_members_and_ignore_sample_rate():
    agg = aggregator()
    for member in ("a", "b", "a", "c"):
        add(agg, "s", MetricType.SET, member, 1001, rate=0.1)
    assert points(agg.flush(1010)) == {("s", SeriesType.GAUGE): [(1000, 3.0)]}


def test_nan_and_inf_are_dropped_and_counted():
    agg = aggregator()
    agg.add(Context("g", "h", ()), MetricType.GAUGE, (math.nan,), "", 1, 0, 1001)
    agg.add(Context("h", "h", ()), MetricType.HISTOGRAM, (math.inf, 2.0), "", 1, 0, 1001)
    agg.add(Context("d", "h", ()), MetricType.DISTRIBUTION, (-math.inf,), "", 1, 0, 1001)
    flushed = agg.flush(1010)
    assert set(points(flushed)) == {(f"h.{s}", t) for s, t in [("max", SeriesType.GAUGE), ("median", SeriesType.GAUGE),
                                    ("avg", SeriesType.GAUGE), ("count", SeriesType.RATE),
                                    ("95percentile", SeriesType.GAUGE)]}  # fmt: skip
    assert flushed.sketches == []
    assert agg.stats.dropped["nan_or_inf"] == 3


@pytest.mark.parametrize("rate", [0.0, -1.0, 2.0, math.nan])
def test_out_of_range_sample_rates_count_as_one(rate):
    agg = aggregator()
    add(agg, "c", MetricType.COUNTER, 10, 1001, rate=rate)
    add(agg, "h", MetricType.HISTOGRAM, 10, 1001, rate=rate)
    add(agg, "d", MetricType.DISTRIBUTION, 10, 1001, rate=rate)
    flushed = agg.flush(1010)
    result = points(flushed)
    assert result[("c", SeriesType.RATE)] == [(1000, 1.0)]
    assert result[("h.count", SeriesType.RATE)] == [(1000, 0.1)]
    assert flushed.sketches[0].points[0].count == 1


def test_distribution_sample_rate_inserts_one_over_rate_times():
    agg = aggregator()
    add(agg, "d", MetricType.DISTRIBUTION, 3, 1001, rate=0.25)
    point = agg.flush(1010).sketches[0].points[0]
    assert (point.count, point.sum, point.keys, point.counts) == (4, 12.0, [1409], [4])


def test_distribution_samples_are_folded_into_their_sketch_as_they_pile_up():
    from relay.pipeline.aggregate import FOLD_AT

    folded, raw = aggregator(), aggregator()
    values = [(i * 7919 % 10_007) / 3 for i in range(3 * FOLD_AT)]
    for i, value in enumerate(values):
        for agg in (folded, raw):
            add(agg, "d", MetricType.DISTRIBUTION, value, 1001, rate=0.5 if i % 3 else 1.0)
        if i % 1000 == 999:
            folded.fold_samples()  # what the relay does twice a second
    (bucket,) = folded.buckets.values()
    assert len(bucket.distributions[folded.slot_of[Context("d", "h", ())]]) < FOLD_AT  # memory stays bounded
    a, b = folded.flush(1010).sketches[0].points[0], raw.flush(1010).sketches[0].points[0]
    assert (a.count, a.min, a.max, a.keys, a.counts) == (b.count, b.min, b.max, b.keys, b.counts)
    assert math.isclose(a.sum, b.sum, rel_tol=1e-12)  # the same sum, added in another order


def test_histogram_samples_are_packed_as_they_pile_up():
    from relay.pipeline.aggregate import PACK_AT

    packed, raw = aggregator(), aggregator()
    for i in range(10 * PACK_AT):
        for agg in (packed, raw):
            add(agg, "h", MetricType.HISTOGRAM, (i * 7919 % 10_007) / 3, 1001, rate=0.5 if i % 3 else 1.0)
        if i % 100 == 99:
            packed.fold_samples()
    (bucket,) = packed.buckets.values()
    slot = packed.slot_of[Context("h", "h", ())]
    assert len(bucket.histograms[slot]) < PACK_AT and len(bucket.packed[slot].values) >= 9 * PACK_AT * 8
    assert points(packed.flush(1010)) == points(raw.flush(1010))  # exactly: the same sums in the same order


def test_timestamped_gauges_and_counters_bypass_buckets():
    agg = aggregator()
    add(agg, "tg", MetricType.GAUGE, 5, 2000, timestamp=1500)
    add(agg, "tc", MetricType.COUNTER, 30, 2000, rate=0.5, timestamp=1500)  # no sample rate in this path
    add(agg, "th", MetricType.HISTOGRAM, 1, 2000, timestamp=1500)
    result = points(agg.flush(2001))  # the bucket of arrival is still open: they leave anyway
    assert result == {("tg", SeriesType.GAUGE): [(1500, 5.0)], ("tc", SeriesType.RATE): [(1500, 3.0)]}
    assert agg.stats.dropped["timestamped_unsupported_type"] == 1


def test_histogram_copy_to_distribution():
    agg = aggregator(histogram_copy_to_distribution="true", histogram_copy_to_distribution_prefix="dist.")
    add(agg, "lat", MetricType.HISTOGRAM, 7, 1001)
    flushed = agg.flush(1010)
    assert ("lat.max", SeriesType.GAUGE) in points(flushed)
    assert flushed.sketches[0].context.name == "dist.lat"


def test_one_name_sent_with_two_types_gives_one_series_per_type_but_never_two_gauges():
    agg = aggregator()
    add(agg, "x", MetricType.GAUGE, 1, 1001)
    add(agg, "x", MetricType.SET, "member", 1001)  # a set is a gauge too: it would collide, so it is counted
    add(agg, "x", MetricType.COUNTER, 4, 1001)
    assert points(agg.flush(1010)) == {("x", SeriesType.GAUGE): [(1000, 1.0)], ("x", SeriesType.RATE): [(1000, 0.4)]}
    assert agg.stats.dropped["type_conflict"] == 1


def test_events_and_service_checks_get_a_timestamp_and_leave_at_the_next_flush():
    from relay.pipeline.model import Event, ServiceCheck

    agg = aggregator()
    agg.add_event(Event("t", "x"), 1234.5)
    agg.add_service_check(ServiceCheck("c", 0, timestamp=99), 1234.5)
    flushed = agg.flush(1235)
    assert flushed.events[0].timestamp == 1234 and flushed.service_checks[0].timestamp == 99
    assert agg.flush(1250).events == []


def test_flush_interval_sets_bucket_width_and_series_interval():
    agg = aggregator(relay__flush_interval=15)
    add(agg, "c", MetricType.COUNTER, 30, 1007)
    flushed = agg.flush(1020)
    assert flushed.series[0].points == [(1005, 2.0)] and flushed.series[0].interval == 15


@settings(max_examples=300)
@given(st.lists(st.tuples(st.floats(-1e6, 1e6), st.sampled_from([1.0, 0.5, 0.25, 0.1])), min_size=1, max_size=50))
def test_counter_value_times_interval_is_the_sum_of_value_over_rate(samples):
    agg = aggregator()
    for value, rate in samples:
        add(agg, "c", MetricType.COUNTER, value, 1001, rate=rate)
    [(_, value)] = points(agg.flush(1010))[("c", SeriesType.RATE)]
    assert value * 10 == pytest.approx(sum(v / r for v, r in samples), rel=1e-9, abs=1e-6)


@settings(max_examples=300)
@given(st.lists(st.floats(-1e9, 1e9), min_size=1, max_size=100))
def test_histogram_aggregates_bound_each_other(values):
    agg = aggregator(histogram_aggregates="max min median avg sum count")
    for value in values:
        add(agg, "h", MetricType.HISTOGRAM, value, 1001)
    result = {name: pts[0][1] for (name, _), pts in points(agg.flush(1010)).items()}
    assert result["h.min"] <= result["h.median"] <= result["h.95percentile"] <= result["h.max"]
    assert result["h.count"] * 10 == pytest.approx(len(values))
    assert result["h.median"] in values and result["h.95percentile"] in values


@settings(max_examples=300)
@given(st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=60), st.sampled_from(["0.5", "0.95 0.99", "0 0.01 1"]))
def test_unweighted_histograms_match_the_weighted_rule(values, percentiles):
    from relay.pipeline.buckets import HistogramSpec, histogram_points

    spec = HistogramSpec.from_config(("max", "min", "median", "avg", "sum", "count"), tuple(percentiles.split()))
    plain = histogram_points([float(v) for v in values], spec, 10)
    weighted = histogram_points([(float(v), 1.0) for v in values], spec, 10)
    assert [(s, t) for s, t, _ in plain] == [(s, t) for s, t, _ in weighted]
    assert [v for _, _, v in plain] == pytest.approx([v for _, _, v in weighted])


def test_contexts_past_the_limit_are_folded_not_lost():
    agg = aggregator(relay__max_contexts=3, relay__max_contexts_per_metric=3)
    for user in range(10):
        add(agg, "logins", MetricType.COUNTER, 1, 1001, tags=(f"user:{user}", "env:prod"))
    flushed = agg.flush(1010).series
    assert sum(s.points[0][1] for s in flushed) * 10 == pytest.approx(10)  # every sample kept
    assert len(flushed) == 4 and agg.contexts == 4  # 3, plus the folded one
    assert agg.stats.aggregate.context_overflow == {("logins", "env"): 7, ("logins", "user"): 7}
    folded = [c for c in agg.context_of if c is not None and "user:overflow" in c.tags]
    assert folded == [Context("logins", "h", ("env:overflow", "user:overflow"))]


def test_one_metric_past_its_share_folds_alone_and_the_others_still_get_new_contexts():
    agg = aggregator(relay__max_contexts=100)  # a metric's share: half of it
    for request in range(1000):
        add(agg, "spike.req", MetricType.COUNTER, 1, 1001, tags=(f"request_id:{request}", "env:prod"))
    for user in range(40):
        add(agg, "logins", MetricType.COUNTER, 1, 1001, tags=(f"user:{user}",))
    assert agg.per_metric == {"spike.req": 51, "logins": 40}  # 50, plus the folded one
    assert agg.stats.aggregate.context_overflow[("spike.req", "request_id")] == 950
    assert ("logins", "user") not in agg.stats.aggregate.context_overflow
    flushed = agg.flush(1010).series
    assert sum(s.points[0][1] for s in flushed if s.context.name == "spike.req") * 10 == pytest.approx(1000)


def test_the_memory_guard_holds_new_contexts_until_old_ones_expire():
    agg = aggregator(relay__max_contexts=1000, dogstatsd_context_expiry_seconds=10)
    for user in range(10):
        add(agg, "logins", MetricType.GAUGE, 1, 1001, tags=(f"user:{user}",))
    agg.hold(True)
    add(agg, "other", MetricType.GAUGE, 1, 1001, tags=("user:new",))
    assert agg.contexts == 11 and ("other", "user") in agg.stats.aggregate.context_overflow  # folded, kept
    agg.flush(1010)
    agg.flush(1040)  # the 11 expire: room for new ones, still under the hold
    add(agg, "other", MetricType.GAUGE, 1, 1041, tags=("user:new",))
    assert Context("other", "h", ("user:new",)) in agg.slot_of
    agg.hold(False)
    assert agg.held_at == 0


def test_even_folded_contexts_are_bounded():
    agg = aggregator(relay__max_contexts=10)
    for index in range(100):  # random names: folding tags alone cannot help
        add(agg, f"random.{index}", MetricType.GAUGE, 1, 1001)
    assert agg.contexts <= 12 and agg.stats.dropped["context_overflow_name_folded"] > 0
    names = {s.context.name for s in agg.flush(1010).series}
    assert "dogstatsd_relay.context_overflow" in names


def test_cardinality_report():
    agg = aggregator()
    for index in range(30):
        add(agg, "api.hits", MetricType.COUNTER, 1, 1001, tags=(f"path:/p{index % 6}", f"id:{index}"))
    add(agg, "other", MetricType.GAUGE, 1, 1001)
    report = agg.cardinality()
    assert report["top_metrics"][0] == {"metric": "api.hits", "contexts": 30, "tag_values": {"id": 30, "path": 6}}


sample_values = st.one_of(
    st.sampled_from([0.0, -0.0, 1.0, -1.0, 2.5, 1e300, -1e300, 5e-324]),
    st.floats(allow_nan=False, allow_infinity=False, width=64),
)
sample_rates = st.sampled_from([0.5, 0.1, 0.3, 1e-3, 0.0, -1.0, 2.0, 1e-20, 0.9999])
histogram_samples = st.lists(st.one_of(sample_values, st.tuples(sample_values, sample_rates)), min_size=1, max_size=300)


@settings(max_examples=500, deadline=None)
@given(histogram_samples, st.integers(0, 300), st.sampled_from(["0.95", "0.5 0.99", "1.0 0.0 0.75"]))
def test_packed_histograms_in_c_give_the_python_points_exactly(speedups, samples, split, percentiles):
    """Packed samples (in C when built) against the plain Python arithmetic on the same samples, in order."""
    from relay.pipeline import buckets as accumulators
    from relay.pipeline.buckets import HistogramSpec, Packed, histogram_points

    spec = HistogramSpec.from_config(("max", "min", "median", "avg", "sum", "count"), tuple(percentiles.split()))
    packed = Packed()
    packed.add(samples[:split])
    in_c = histogram_points(list(samples[split:]), spec, 10, packed)
    summary, pack = accumulators._summary_in_c, accumulators._pack_in_c
    accumulators._summary_in_c = accumulators._pack_in_c = None
    try:
        python_packed = Packed()
        python_packed.add(samples[:split])
        packed_in_python = histogram_points(list(samples[split:]), spec, 10, python_packed)
        in_python = histogram_points(list(samples), spec, 10)
    finally:
        accumulators._summary_in_c, accumulators._pack_in_c = summary, pack
    exactly = [(n, t, repr(v)) for n, t, v in in_python]  # repr tells -0.0 from 0.0
    assert [(n, t, repr(v)) for n, t, v in in_c] == exactly
    assert [(n, t, repr(v)) for n, t, v in packed_in_python] == exactly
