"""Spool: payloads survive on disk in order; damage is set aside and counted, never a crash."""

from __future__ import annotations

import time

from relay.pipeline.model import Endpoint, Payload
from relay.pipeline.spool import Spool
from relay.telemetry.stats import Stats


def payload(index: int, endpoint: Endpoint = Endpoint.SERIES_V2) -> Payload:
    return Payload(endpoint, b"body-%d" % index, "zstd", index, 100 + index)


def test_payloads_come_back_in_order_after_a_restart(tmp_path):
    spool = Spool(tmp_path, 1 << 20, 1.0, Stats())
    for index in range(3):
        assert spool.put(payload(index))
    spool.put(payload(9, Endpoint.SKETCHES))
    again = Spool(tmp_path, 1 << 20, 1.0, Stats())  # a new process
    assert len(again) == 4
    seen = []
    while (oldest := again.oldest(Endpoint.SERIES_V2)) is not None:
        path, item = oldest
        seen.append(item)
        again.remove(path)
    assert seen == [payload(0), payload(1), payload(2)]
    assert again.oldest(Endpoint.SKETCHES)[1] == payload(9, Endpoint.SKETCHES)


def test_corrupt_and_truncated_files_are_set_aside_and_counted(tmp_path):
    stats = Stats()
    spool = Spool(tmp_path, 1 << 20, 1.0, stats)
    for index in range(3):
        spool.put(payload(index))
    first, second, _ = sorted(tmp_path.glob("*.payload"))
    first.write_bytes(first.read_bytes()[:-2])  # truncated
    second.write_bytes(b"\x00garbage\n" + b"\xff" * 10)
    (tmp_path / "00000000000000000001-00000001-not_an_endpoint.payload").write_bytes(b"{}")
    (tmp_path / "half-written.tmp").write_bytes(b"x")  # a crash between write and rename
    spool = Spool(tmp_path, 1 << 20, 1.0, stats)
    assert spool.oldest(Endpoint.SERIES_V2)[1] == payload(2)
    assert stats.dropped["spool_corrupt"] == 2
    assert len(list((tmp_path / "corrupt").iterdir())) == 3 and not list(tmp_path.glob("*.tmp"))


def test_the_cap_evicts_the_oldest_first_and_counts_it(tmp_path):
    stats = Stats()
    spool = Spool(tmp_path, 1 << 20, 1.0, stats)
    spool.put(payload(0))
    spool = Spool(tmp_path, spool.bytes * 3 + 10, 1.0, stats)  # room for three files
    for index in range(1, 5):
        spool.put(payload(index))
    assert stats.dropped["spool_evicted"] == 2
    assert spool.oldest(Endpoint.SERIES_V2)[1] == payload(2)


def test_a_full_disk_is_not_written(tmp_path):
    stats = Stats()
    spool = Spool(tmp_path, 1 << 20, 0.0001, stats)  # any real disk is fuller than 0.01 %
    assert not spool.put(payload(7))
    assert stats.dropped["spool_disk_full"] == 7 and len(spool) == 0


async def test_the_sink_writes_the_spool_in_a_thread_never_on_the_event_loop(tmp_path, monkeypatch):
    """A slow disk must not stall ingest: the fsyncs happen in a worker thread; what waits for them is bounded."""
    import threading

    from relay.pipeline import spool as spool_module
    from relay.pipeline.forward import HttpSink
    from tests.conftest import config

    write, writers = spool_module.write_atomically, []

    def slow_write(path, data):
        writers.append(threading.current_thread())
        time.sleep(0.05)  # a slow disk
        write(path, data)

    monkeypatch.setattr(spool_module, "write_atomically", slow_write)
    stats = Stats()
    spool = Spool(tmp_path, 1 << 20, 1.0, stats)
    settings = config(api_key="k" * 32, dd_url="http://127.0.0.1:9", forwarder_retry_queue_payloads_max_size=1)
    monkeypatch.setattr("relay.pipeline.forward._SPOOL_BACKLOG_MIN", 1)
    sink = HttpSink(settings, stats, spool)  # never started: every payload overflows the 1-byte queue to the spool
    for index in range(5):
        sink.send(payload(index))
    assert writers == []  # nothing written during send()
    await sink.close(0)
    assert writers and threading.main_thread() not in writers
    # What the slow disk could not take in time was dropped and counted: nothing is lost silently.
    assert len(spool) == len(writers) and len(spool) + stats.forward.payloads["/api/v2/series", "dropped"] == 5
