"""A broken intake: the relay retries or sends as the Agent would, counts it, and never stops ingesting."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from tests.conftest import free_port, run_relay, wait_for
from tests.test_e2e import total


@pytest.mark.parametrize(
    ("behaviour", "expected"),
    [("hang", "retried"), ("reset", "retried"), ("refused", "retried"), ("slow", "sent"), ("garbage", "sent")],
)
async def test_broken_intake(intake, tmp_path, behaviour, expected):
    stand_in, url = intake
    if behaviour == "refused":
        url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    else:
        stand_in.behaviour = behaviour
    async with run_relay(tmp_path, url, DD_FORWARDER_TIMEOUT="1") as relay:
        for index in range(1, 11):  # ingest goes on while the intake misbehaves
            relay.send_udp(b"fault.count:%d|c" % index)
            await asyncio.sleep(0.25)
        await wait_for(lambda: relay.status()["messages"]["metric"]["ok"] == 10)
        await wait_for(lambda: relay.status()["forwarder"]["payloads"].get("/api/v2/series", {}).get(expected, 0) > 0)
        if expected == "retried" and behaviour != "refused":
            stand_in.behaviour = "normal"  # the intake heals: everything still arrives, once
            await wait_for(lambda: total(stand_in.series, "fault.count") == 55, timeout=30)
        status = relay.status()
        code, _, err = await relay.stop(timeout=60)
    assert code == 0, err
    assert status["dropped"].get("internal_error", 0) == 0
    series = status["forwarder"]["payloads"].get("/api/v2/series", {})
    print(
        f"reliability: intake that is {behaviour}: 10 samples ingested meanwhile, payloads sent {series.get('sent', 0)}, "
        f"retried {series.get('retried', 0)}, at the intake {total(stand_in.series, 'fault.count'):g} of 55"
    )
    if expected == "sent":
        assert total(stand_in.series, "fault.count") == 55
    if behaviour == "refused":
        assert "ClientConnectorError" in status["forwarder"]["http_errors"]


def test_a_bug_in_ingest_costs_its_datagram_is_counted_and_logged_with_its_traceback(caplog):
    import io
    import logging

    from relay.runtime.server import Relay
    from tests.conftest import config

    relay = Relay(config(hostname="h", relay__host_collectors=""), out=io.StringIO())

    def broken(data: bytes, transport: str, now: float, sender: str = "") -> None:
        raise RuntimeError("injected bug")

    relay.pipeline.ingest.datagram = broken  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR):
        relay.pipeline.datagram(b"a:1|c", "udp")
        relay.pipeline.datagram(b"b:1|c", "udp")  # logged once: the log is rate-limited
    assert relay.stats.dropped["internal_error"] == 2
    assert caplog.text.count("internal error in ingest (udp)") == 1
    assert "RuntimeError: injected bug" in caplog.text and "Traceback" in caplog.text


async def test_shutdown_during_a_flush_lets_it_finish_and_every_count_arrives_once(intake, tmp_path):
    """Cancelling a flush half way lost the buckets it had taken out: 0 of 99,620 counts in the issue's run."""
    import io
    import time

    from relay.config import Config
    from relay.runtime.loop import final_flush, flush_loop
    from relay.runtime.server import Relay
    from tests.conftest import API_KEY

    stand_in, url = intake
    environ = {"DD_API_KEY": API_KEY, "DD_DD_URL": url, "DD_HOSTNAME": "h", "DD_RELAY_HOST_COLLECTORS": "",
               "DD_RELAY_FLUSH_INTERVAL": "1", "DD_ENABLE_METADATA_COLLECTION": "false",
               "DD_RELAY_SPOOL_DIR": str(tmp_path)}  # fmt: skip
    relay = Relay(Config.load(None, environ), out=io.StringIO())
    loop, flushing = asyncio.get_running_loop(), asyncio.Event()
    pipeline = relay.pipeline
    build = pipeline._build_and_serialize

    def slow_build(work, self_metrics_at):  # a flush of many contexts takes a while
        loop.call_soon_threadsafe(flushing.set)
        time.sleep(0.5)
        return build(work, self_metrics_at)

    pipeline._build_and_serialize = slow_build  # type: ignore[method-assign]
    await pipeline.sink.start()
    flusher = asyncio.create_task(flush_loop(pipeline, relay.should_exit))
    for i in range(1000):
        pipeline.datagram(b"closed.%d:1|c" % (i % 100), "udp")
    await asyncio.wait_for(flushing.wait(), 5)
    await asyncio.sleep(0.1)  # the flush is half way through
    for i in range(1000):
        pipeline.datagram(b"open.%d:1|c" % (i % 100), "udp")
    await final_flush(pipeline, flusher, relay.should_exit)
    counts = {prefix: sum(total(stand_in.series, f"{prefix}.{i}") for i in range(100)) for prefix in ("closed", "open")}
    assert counts == {"closed": 1000, "open": 1000}


async def test_a_bug_at_each_stage_costs_its_item_only_and_is_counted(intake, tmp_path, caplog):
    """Bugs injected into ingest, the flush arithmetic, the serializer, the forwarder and a check's submission:
    each costs the datagram or the item at hand, counted as internal_error and logged with its traceback once;
    the relay keeps running and everything else arrives."""
    import io
    import logging

    from relay.config import Config
    from relay.pipeline import aggregate
    from relay.runtime.server import Relay
    from tests.checks.test_checks import SEED_CHECK, agent_layout
    from tests.conftest import API_KEY

    stand_in, url = intake
    confd = agent_layout(tmp_path, {"custom_hello": SEED_CHECK}, {"custom_hello.yaml": "instances: [{}]"})
    environ = {"DD_API_KEY": API_KEY, "DD_DD_URL": url, "DD_HOSTNAME": "h", "DD_RELAY_HOST_COLLECTORS": "",
               "DD_RELAY_FLUSH_INTERVAL": "1", "DD_ENABLE_METADATA_COLLECTION": "false",
               "DD_RELAY_SPOOL_DIR": str(tmp_path / "spool"), "DD_CONFD_PATH": str(confd),
               "DD_RELAY_CHECKS_BASE": "builtin"}  # fmt: skip
    relay = Relay(Config.load(None, environ), out=io.StringIO())
    pipeline = relay.pipeline
    assert pipeline.checks is not None and len(pipeline.checks.instances) == 1

    datagram, histogram_points = pipeline.ingest.datagram, aggregate.histogram_points

    def ingest_bug(data: bytes, transport: str, now: float, sender: str = "") -> None:
        if b"ingest.bug" in data:
            raise RuntimeError("injected ingest bug")
        datagram(data, transport, now)

    def flush_bug(samples, *args):
        if 666.0 in samples:
            raise RuntimeError("injected flush bug")
        return histogram_points(samples, *args)

    encode = pipeline.serializer.protobuf.series_item

    def serialize_bug(series):
        if series.context.name == "serialize.bug":
            raise RuntimeError("injected serialize bug")
        return encode(series)

    post, failed_once = pipeline.sink._post, []  # type: ignore[attr-defined]

    async def forward_bug(payload):
        if payload.endpoint.value == "/api/v1/check_run" and not failed_once:
            failed_once.append(payload)
            raise RuntimeError("injected forward bug")
        return await post(payload)

    instance = pipeline.checks.instances[0]  # type: ignore[union-attr]
    commit, check_bugs = instance.sampler.commit, []

    def check_bug(*args):
        if not check_bugs:
            check_bugs.append(1)
            raise RuntimeError("injected check bug")
        return commit(*args)

    pipeline.ingest.datagram = ingest_bug  # type: ignore[method-assign]
    aggregate.histogram_points = flush_bug  # type: ignore[assignment]
    pipeline.serializer.protobuf.series_item = serialize_bug  # type: ignore[method-assign]
    pipeline.sink._post = forward_bug  # type: ignore[attr-defined]
    instance.sampler.commit = check_bug  # type: ignore[method-assign]
    instance.config = dataclasses.replace(instance.config, interval=0.3)
    try:
        with caplog.at_level(logging.ERROR, logger="relay.internal"):
            task = asyncio.create_task(relay.run())
            await asyncio.sleep(0.3)
            for _ in range(2):
                pipeline.datagram(b"ingest.bug:1|c", "udp")
            pipeline.datagram(b"ok.count:1|c\nflush.bug:666|h\nok.hist:5|h\nserialize.bug:1|g\n_sc|lost|0\n", "udp")
            await wait_for(lambda: total(stand_in.series, "ok.count") == 1 and stand_in.service_checks == [])
            pipeline.datagram(b"ok.count:1|c\n_sc|kept|0\n", "udp")
            await wait_for(lambda: total(stand_in.series, "ok.count") == 2)
            await wait_for(lambda: [c["check"] for c in stand_in.service_checks] == ["kept"])
            await wait_for(lambda: any(s["metric"] == "my_metric" for s in stand_in.series))  # the check goes on
            relay.should_exit.set()
            await asyncio.wait_for(task, 30)
    finally:
        aggregate.histogram_points = histogram_points  # type: ignore[assignment]
    assert relay.stats.dropped["internal_error"] == 2 + 1 + 1 + 1 + 1  # ingest twice, flush, serialize, forward, check
    assert any(s["metric"] == "ok.hist.max" for s in stand_in.series)
    assert not any(s["metric"].startswith(("flush.bug", "serialize.bug")) for s in stand_in.series)
    for stage in ("ingest", "flush (histogram)", "serialize (series)", "forward (/api/v1/check_run)", "check"):
        assert f"internal error in {stage}" in caplog.text, stage
    assert caplog.text.count("RuntimeError: injected ingest bug") == 1  # the second one within the window is not logged
    assert "Traceback" in caplog.text


@pytest.mark.parametrize("queue_bytes", ["33554432", "4096"])  # the default, then one too small for 5 s
async def test_a_stopped_worker_never_stalls_the_main_process_and_its_lines_arrive_or_are_counted(
    intake, tmp_path, queue_bytes
):
    """relay.workers 2, one worker SIGSTOPped for 5 s under 1,000 lines/s: /healthz keeps answering at once (the
    main process never waits for a worker) and each line the stopped worker was meant to get is delivered after
    SIGCONT, or counted as worker_queue_full."""
    import signal
    import time
    import urllib.request

    import psutil

    stand_in, url = intake
    env = {"DD_RELAY_WORKERS": "2", "DD_RELAY_WORKER_QUEUE_BYTES": queue_bytes}
    async with run_relay(tmp_path, url, **env) as relay:
        worker = psutil.Process(relay.status()["info"]["worker_pids"][0])
        sent, slowest, pad = 0, 0.0, b"pad:" + b"x" * 100  # 1 MB in 5 s: more than the pipe buffers

        async def send(seconds: float) -> None:
            nonlocal sent, slowest
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                relay.send_udp(b"".join(b"stop.%d:1|c|#%s\n" % (sent + i, pad) for i in range(10)))
                sent += 10
                started = time.monotonic()
                await asyncio.to_thread(lambda: urllib.request.urlopen(relay.health + "/healthz", timeout=5).read())
                slowest = max(slowest, time.monotonic() - started)
                await asyncio.sleep(0.01)

        await send(1)
        worker.send_signal(signal.SIGSTOP)
        try:
            await send(5)
            stopped_slowest = slowest
        finally:
            worker.send_signal(signal.SIGCONT)
        await send(1)
        dropped = lambda: relay.status()["dropped"].get("worker_queue_full", 0)  # noqa: E731
        arrived = lambda: sum(total(stand_in.series, f"stop.{i}") for i in range(sent))  # noqa: E731
        await wait_for(lambda: arrived() + dropped() == sent, timeout=30)
        delivered, counted = arrived(), dropped()
        code, _, err = await relay.stop()
    assert code == 0, err
    print(
        f"reliability: worker SIGSTOPped 5 s, relay.worker_queue_bytes {queue_bytes}: slowest /healthz "
        f"{stopped_slowest * 1000:.0f} ms; {sent:,} lines sent, {delivered:,.0f} arrived, {counted:,} counted as "
        "worker_queue_full"
    )
    assert stopped_slowest < 1.0  # blocked on the worker's pipe, it took the whole 5 s
    assert (counted > 0) == (queue_bytes == "4096")


@pytest.mark.parametrize("offset", [-0.5, 0.06, 0.3, 0.8])  # seconds after a bucket boundary (the flush starts)
async def test_sigterm_at_any_moment_of_a_100k_context_flush_delivers_every_count_exactly_once(
    intake, tmp_path, offset
):
    """The issue's scenario: 100 k counter contexts, then SIGTERM before, at the start of, in the middle of and
    after the flush of their bucket (about half a second at this size). Every accepted count arrives once."""
    import signal
    import time
    from collections import Counter

    stand_in, url = intake
    contexts, interval = 100_000, 2
    async with run_relay(tmp_path, url, DD_RELAY_FLUSH_INTERVAL=str(interval)) as relay:
        # Start just after a boundary, so that every line lands in one bucket.
        await asyncio.sleep(interval - time.time() % interval + 0.05)
        for start in range(0, contexts, 100):
            relay.send_udp(b"".join(b"term.%d:1|c\n" % i for i in range(start, start + 100)))
            if start % 5000 == 0:
                await asyncio.sleep(0.01)
        accepted = await wait_for(lambda: (ok := relay.status()["messages"]["metric"]["ok"]) == contexts and ok)
        boundary = time.time() + interval - time.time() % interval
        await asyncio.sleep(max(boundary + offset - time.time(), 0))
        relay.process.send_signal(signal.SIGTERM)
        code, _, err = await relay.stop(timeout=60)
    assert code == 0, err
    counts: Counter[str] = Counter()
    for series in stand_in.series:
        if series["metric"].startswith("term."):
            counts[series["metric"]] += sum(value * interval for _, value in series["points"])
    print(f"reliability: SIGTERM {offset:+.2f} s from the flush of {contexts:,} contexts: {sum(counts.values()):,.0f} "
          f"of {accepted:,} accepted counts at the intake, {sum(c != 1 for c in counts.values())} contexts off")  # fmt: skip
    assert len(counts) == contexts and set(counts.values()) == {1}
