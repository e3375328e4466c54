"""The shard of a sharded relay (relay.workers > 1): every line of a metric name goes to one worker, whether C or
Python split the batch."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from relay.runtime.workers import shard_lines

names = st.sampled_from([b"a", b"bb", b"page.views", b"x.y.z", b"", b"\xff\xfe", b"n|o", b"caf\xc3\xa9"])
lines = st.one_of(
    st.builds(lambda n, rest: n + b":" + rest, names, st.binary(max_size=12).map(lambda b: b.replace(b"\n", b""))),
    st.binary(max_size=20).map(lambda b: b.replace(b"\n", b"")),  # no colon at all: the whole line is the name
)
batches = st.lists(lines, max_size=30).map(lambda parts: b"\n".join(parts)) | st.binary(max_size=60)


@settings(max_examples=500, deadline=None)
@given(batches, st.integers(1, 9))
def test_the_c_shard_sends_every_line_where_the_python_one_does(speedups: Any, data: bytes, count: int) -> None:
    assert speedups.shard(data, count) == shard_lines(data, count)


def test_one_metric_name_always_lands_in_one_worker() -> None:
    data = b"\n".join(b"page.views:%d|c|#i:%d" % (i, i) for i in range(50)) + b"\nother:1|g\n"
    shards = shard_lines(data, 4)
    assert sum(1 for shard in shards if b"page.views" in shard) == 1
    assert sorted(b"".join(shards).splitlines()) == sorted(data.splitlines())
