"""Forwarder: the Agent's outcome table and backoff, and the bounded queue (against the intake stand-in)."""

from __future__ import annotations

import json
import time

import pytest

from relay.pipeline.forward import HttpSink, backoff_seconds, outcome
from relay.pipeline.model import Endpoint, Payload
from relay.pipeline.spool import Spool
from relay.telemetry.stats import Stats
from tests.conftest import API_KEY, config, wait_for


@pytest.mark.parametrize(
    ("status", "expected"),
    [(200, "sent"), (202, "sent"), (302, "sent"), (400, "dropped"), (403, "dropped"), (413, "dropped"),
     (404, "retried"), (408, "retried"), (429, "retried"), (500, "retried"), (503, "retried"), (None, "retried")],
)  # fmt: skip
def test_outcomes(status, expected):
    assert outcome(status) == expected


def test_backoff_grows_with_jitter_and_is_capped():
    for errors, (low, high) in {1: (2, 4), 2: (4, 8), 3: (8, 16), 4: (16, 32), 5: (32, 64)}.items():
        for _ in range(50):
            assert low <= backoff_seconds(errors, 2, 2, 64) <= high
    assert backoff_seconds(6, 2, 2, 64) == 64 == backoff_seconds(60, 2, 2, 64)


def payload(size: int = 10, endpoint: Endpoint = Endpoint.CHECK_RUN) -> Payload:
    return Payload(endpoint, b"[" + b" " * (size - 2) + b"]", "", 1, size)


async def test_full_queue_without_spool_drops_the_oldest_and_counts_it(intake):
    stand_in, url = intake
    stats = Stats()
    sink = HttpSink(config(dd_url=url, api_key=API_KEY, forwarder_retry_queue_payloads_max_size=25), stats)
    stand_in.faults.extend([500] * 1000)
    await sink.start()
    for _ in range(4):
        sink.send(payload())
    assert sink.queue_bytes == 20 and stats.dropped["retry_queue_full"] == 2
    stand_in.faults.clear()
    await wait_for(lambda: sink.queue_bytes == 0)
    await sink.close(1)
    assert stats.forward.payloads["/api/v1/check_run", "sent"] == 2
    assert stats.forward.payloads["/api/v1/check_run", "dropped"] == 2


async def test_full_queue_goes_to_the_spool_and_everything_arrives_in_order(intake, tmp_path):
    stand_in, url = intake
    stats = Stats()
    cfg = config(dd_url=url, api_key=API_KEY, forwarder_retry_queue_payloads_max_size=40, forwarder_backoff_base=0.01)
    sink = HttpSink(cfg, stats, Spool(tmp_path, 10_000, 1.0, stats))
    stand_in.failing_paths["/api/v1/check_run"] = 503
    await sink.start()
    for index in range(6):
        sink.send(Payload(Endpoint.CHECK_RUN, json.dumps([{"check": str(index)}]).encode(), "", 1, 0))
    await wait_for(lambda: len(sink.spool) == 4)  # 16-byte payloads: 2 fit in 40; the rest, written in a thread
    assert stats.dropped["retry_queue_full"] == 0
    del stand_in.failing_paths["/api/v1/check_run"]
    await wait_for(lambda: len(stand_in.service_checks) == 6)
    await sink.close(1)
    assert [c["check"] for c in stand_in.service_checks] == ["0", "1", "2", "3", "4", "5"]
    assert len(sink.spool) == 0 and not list(tmp_path.glob("*.payload"))


async def test_a_failing_endpoint_does_not_hold_up_the_others(intake):
    stand_in, url = intake
    stats = Stats()
    sink = HttpSink(config(dd_url=url, api_key=API_KEY, forwarder_backoff_base=0.01), stats)
    stand_in.failing_paths["/api/beta/sketches"] = 500
    await sink.start()
    sink.send(payload(endpoint=Endpoint.SKETCHES))
    sink.send(payload())
    await wait_for(lambda: stats.forward.payloads["/api/v1/check_run", "sent"] == 1)
    assert (
        stats.forward.payloads["/api/beta/sketches", "retried"] >= 1
        and stats.forward.payloads["/api/beta/sketches", "sent"] == 0
    )
    await sink.close(0.1)


async def test_retry_after_is_honoured_on_429(intake):
    stand_in, url = intake
    stats = Stats()
    sink = HttpSink(config(dd_url=url, api_key=API_KEY, forwarder_backoff_base=0.01), stats)
    stand_in.faults.append(429)
    stand_in.retry_after = "1"
    await sink.start()
    started = time.monotonic()
    sink.send(payload())
    await wait_for(lambda: stats.forward.payloads["/api/v1/check_run", "sent"] == 1)
    await sink.close(1)
    assert time.monotonic() - started >= 1.0


async def test_shutdown_during_an_outage_spools_what_is_unsent(intake, tmp_path):
    stand_in, url = intake
    stats = Stats()
    stand_in.faults.extend([500] * 1000)
    sink = HttpSink(config(dd_url=url, api_key=API_KEY), stats, Spool(tmp_path, 10_000, 1.0, stats))
    await sink.start()
    sink.send(payload())
    await wait_for(lambda: stats.forward.payloads["/api/v1/check_run", "retried"] >= 1)
    await sink.close(0.2)
    assert len(list(tmp_path.glob("*.payload"))) == 1 and stats.dropped["shutdown_unsent"] == 0


async def test_api_key_validation_is_reported(intake):
    _, url = intake
    stats = Stats()
    sink = HttpSink(config(dd_url=url, api_key="wrong-key-12345"), stats)
    await sink.start()
    await wait_for(lambda: stats.info["api_key_valid"] is False)
    await sink.close(1)
    assert stats.info["api_key"] == "***12345"


async def test_unreachable_intake_is_retried_then_counted_at_shutdown():
    stats = Stats()
    sink = HttpSink(config(dd_url="http://127.0.0.1:9", api_key=API_KEY, forwarder_backoff_base=0.01), stats)
    await sink.start()
    sink.send(payload())
    await wait_for(lambda: stats.forward.payloads["/api/v1/check_run", "retried"] >= 2)
    await sink.close(0.1)
    assert stats.dropped["shutdown_unsent"] == 1 and stats.forward.payloads["/api/v1/check_run", "dropped"] == 1
