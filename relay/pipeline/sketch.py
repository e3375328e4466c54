"""Sketch: the Agent's DDSketch for distributions (pkg/quantile), so that Datadog merges ours with anyone's.

Keys follow pkg/quantile/config.go: gamma = 1 + 2/128, key(v) = RoundToEven(log_gamma(v)) + bias with
bias 1338, key(-v) = -key(v), values closer to 0 than gamma^-1337 map to key 0. Bins hold at most 65535
(uint16); the sketch holds at most 4096 bins and folds the lowest ones together beyond that.
"""

from __future__ import annotations

import math

from relay.pipeline.model import SketchPoint

EPS = 1.0 / 128.0
GAMMA = 1 + 2 * EPS
LOG_GAMMA = math.log1p(2 * EPS)
_EMIN = math.floor(math.log(1e-9) / LOG_GAMMA)
BIAS = -_EMIN + 1  # 1338
MIN_VALUE = GAMMA ** (1 - BIAS)  # the lowest value with key 1
MAX_KEY = 32766
INF_KEY = 32767
BIN_LIMIT = 4096
MAX_BIN_COUNT = 65535
_CONSTANTS = (MIN_VALUE, LOG_GAMMA, BIAS, MAX_KEY, INF_KEY)

Sample = float | tuple[float, float]  # a value, or (value, sample rate) when the rate is not 1

try:
    from relay._speedups import sketch_insert as _insert_in_c
except ImportError:  # no C compiler where the relay was installed: the same in Python
    _insert_in_c = None


def key(value: float) -> int:
    if value < 0:
        return -key(-value)
    if value < MIN_VALUE:  # 0 included
        return 0
    # Python's round() rounds half to even, as Go's math.RoundToEven does.
    k = round(math.log(value) / LOG_GAMMA) + BIAS
    if k > MAX_KEY:
        return INF_KEY
    return max(k, 1)


def value_of(k: int) -> float:
    """The value a key stands for (its bin's lower bound, as the Agent's sketch reports it)."""
    if k == 0:
        return 0.0
    if abs(k) >= INF_KEY:
        return math.copysign(math.inf, k)
    return math.copysign(GAMMA ** (abs(k) - BIAS), k)


def quantile(keys: list[int], counts: list[int], q: float, low: float, high: float) -> float:
    """The q-quantile of a sketch's bins, as the Agent computes it (rank q·(n-1)), clamped to [low, high]."""
    total = sum(counts)
    if not total:
        return math.nan
    rank, seen = q * (total - 1), 0
    for k, count in sorted(zip(keys, counts, strict=True)):
        seen += count
        if seen > rank:
            return min(max(value_of(k), low), high)
    return high


class Sketch:
    """Counts per key plus exact count, min, max and sum."""

    __slots__ = ("bins", "count", "max", "min", "sum")

    def __init__(self) -> None:
        self.bins: dict[int, int] = {}
        self.count = 0
        self.min = math.inf
        self.max = -math.inf
        self.sum = 0.0

    def insert(self, value: float, times: int = 1) -> None:
        k = key(value)
        self.bins[k] = self.bins.get(k, 0) + times
        self.count += times
        self.sum += value * times
        if value < self.min:
            self.min = value
        if value > self.max:
            self.max = value

    def insert_samples(self, samples: list[Sample]) -> None:
        """Every sample of a list (a float, or (value, rate) counted uint(1/rate) times); in C when built."""
        if _insert_in_c is not None:
            state = (self.count, self.sum, self.min, self.max)
            self.count, self.sum, self.min, self.max = _insert_in_c(samples, self.bins, state, _CONSTANTS)
            return
        for sample in samples:
            if type(sample) is float:
                self.insert(sample)
            else:
                value, rate = sample  # type: ignore[misc]
                self.insert(value, sample_times(rate))

    def to_point(self, timestamp: int) -> SketchPoint:
        keys, counts = self._wire_bins()
        return SketchPoint(timestamp, self.count, self.min, self.max, self.sum, keys, counts)

    def _wire_bins(self) -> tuple[list[int], list[int]]:
        """Ascending keys; a count above 65535 is split over repeated keys, as the Agent's uint16 bins are."""
        ordered = sorted(self.bins.items())
        if len(ordered) > BIN_LIMIT:
            # Fold the lowest keys into the first kept one (the Agent collapses the low end first).
            excess = len(ordered) - BIN_LIMIT + 1
            folded = sum(n for _, n in ordered[:excess])
            ordered = [(ordered[excess - 1][0], folded), *ordered[excess:]]
        keys: list[int] = []
        counts: list[int] = []
        for k, n in ordered:
            while n > MAX_BIN_COUNT:
                keys.append(k)
                counts.append(MAX_BIN_COUNT)
                n -= MAX_BIN_COUNT
            keys.append(k)
            counts.append(n)
        return keys, counts


def sample_times(rate: float) -> int:
    """How many times a distribution sample counts: uint(1/rate), with rates outside (0, 1] taken as 1."""
    if not 0 < rate < 1:
        return 1
    return int(1 / rate)
