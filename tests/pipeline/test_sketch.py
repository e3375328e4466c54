"""Sketch: the Agent's key mapping (spec 2.3 F) and bin limits."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.pipeline.sketch import BIN_LIMIT, GAMMA, MAX_BIN_COUNT, Sketch, key


@pytest.mark.parametrize(
    ("value", "expected"),
    [(1, 1338), (2, 1383), (3.5, 1419), (10, 1487), (100, 1635), (1000, 1784), (0.5, 1293), (1e-9, 1),
     (1e9, 2675), (-1, -1338), (0, 0), (1e-12, 0), (1e300, 32767)],
)  # fmt: skip
def test_agent_keys(value, expected):
    assert key(value) == expected


@given(st.floats(min_value=1e-8, max_value=1e100))
def test_relative_error_within_the_sketch_accuracy(value):
    lower = GAMMA ** (key(value) - 1338)
    assert abs(lower - value) / value <= (GAMMA - 1) + 1e-12


def test_counts_above_uint16_are_split_over_repeated_keys():
    sketch = Sketch()
    sketch.insert(1.0, MAX_BIN_COUNT * 2 + 5)
    point = sketch.to_point(0)
    assert point.keys == [1338, 1338, 1338] and point.counts == [MAX_BIN_COUNT, MAX_BIN_COUNT, 5]


def test_bin_limit_folds_the_lowest_keys():
    sketch = Sketch()
    for exponent in range(BIN_LIMIT + 100):
        sketch.insert(GAMMA ** (exponent - 1000))
    point = sketch.to_point(0)
    assert len(point.keys) == BIN_LIMIT and sum(point.counts) == BIN_LIMIT + 100 == point.count
    assert point.keys == sorted(point.keys)


def test_summary_stats_are_exact():
    sketch = Sketch()
    for value in (3.0, -2.0, 10.0):
        sketch.insert(value, 2)
    point = sketch.to_point(1000)
    assert (point.count, point.min, point.max, point.sum) == (6, -2.0, 10.0, 22.0)
    assert not math.isinf(point.sum)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.floats(allow_nan=False, allow_infinity=False, min_value=-1e300, max_value=1e300),
            st.tuples(
                st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12),
                st.sampled_from([0.5, 0.25, 0.1, 0.3, 1.0, 0.0, -1.0, 2.0]),
            ),
        ),
        max_size=200,
    )
)
def test_inserting_a_list_in_c_gives_exactly_the_one_by_one_sketch(speedups, samples):
    from relay.pipeline import sketch as sketch_module

    one_by_one = Sketch()
    for sample in samples:
        if isinstance(sample, float):
            one_by_one.insert(sample)
        else:
            one_by_one.insert(sample[0], sketch_module.sample_times(sample[1]))
    batch = Sketch()
    batch.insert_samples(samples)
    assert (batch.bins, batch.count, batch.min, batch.max) == (one_by_one.bins, one_by_one.count, one_by_one.min,
                                                               one_by_one.max)  # fmt: skip
    assert batch.sum == one_by_one.sum or (math.isnan(batch.sum) and math.isnan(one_by_one.sum))


def test_the_python_fallback_inserts_a_list_the_same_way(monkeypatch, speedups):
    from relay.pipeline import sketch as sketch_module

    samples = [1.0, (3.5, 0.25), -2.0, (1e-12, 1.0), 1e9]
    with_c = Sketch()
    with_c.insert_samples(samples)
    monkeypatch.setattr(sketch_module, "_insert_in_c", None)
    fallback = Sketch()
    fallback.insert_samples(samples)
    assert (fallback.bins, fallback.count, fallback.sum, fallback.min, fallback.max) == (
        with_c.bins, with_c.count, with_c.sum, with_c.min, with_c.max,
    )  # fmt: skip
    assert fallback.count == 8 and fallback.bins[0] == 1
