"""Operator tools on loopback: loss self-probe, /ready, statsd_forward tee, capture and replay, top and the
cardinality report, additional_endpoints, the clamp warning in status."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from relay.intake.server import Intake
from relay.pipeline.aggregate import Aggregator
from relay.pipeline.model import Context, MetricType
from relay.runtime.capture import MAGIC, Record, encode, read_records
from relay.runtime.health import readiness
from relay.telemetry.stats import Stats
from relay.telemetry.status_document import status_document
from relay.tools.doctor import _workers
from relay.tools.replay import replay
from relay.tools.status import render
from tests.conftest import API_KEY, free_port, run_relay, wait_for
from tests.conftest import config as make_config


def get_json(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=15) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


async def cli(relay_env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in a thread, so that an intake in this loop keeps answering."""
    command = [sys.executable, "-m", "relay", *args]
    env = {**os.environ, **relay_env}
    return await asyncio.to_thread(subprocess.run, command, env=env, capture_output=True, text=True, timeout=60)


# --- loss self-probe and /ready ----------------------------------------------------------------------------------


async def test_probes_come_back_and_never_reach_the_counters_or_the_parser(tmp_path, short_tmp):
    socket_path = str(short_tmp / "dsd.socket")
    async with run_relay(tmp_path, None, DD_RELAY_PROBE_INTERVAL="0.05", DD_DOGSTATSD_SOCKET=socket_path) as relay:
        for _ in range(10):
            relay.send_udp(b"app.hits:1|c\napp.hits:2|c")
        await wait_for(lambda: min(relay.status()["probe"][name]["sent"] for name in ("udp", "uds")) >= 20)
        status = relay.status()
        code, ready = get_json(relay.health + "/ready")
        metrics = relay.metrics_text()
        await relay.stop()
    assert status["listeners"]["udp"]["packets"] == 10  # probes are not client packets
    assert status["messages"]["metric"] == {"ok": 20, "error": 0} and not status["parse_errors"]
    for name in ("udp", "uds"):
        assert status["probe"][name]["lost"] == 0 and status["probe"][name]["loss_ratio"] == 0
    assert code == 200 and ready["ready"] is True and ready["probe_loss"] == {"udp": 0.0, "uds": 0.0}
    assert 'relay_probe_loss_ratio{listener="udp"} 0.0' in metrics
    assert 'relay_probes_lost_total{listener="uds"} 0.0' in metrics


async def test_probe_loss_when_the_queue_is_full_turns_ready_off_then_on_again(tmp_path):
    """The relay is stopped (SIGSTOP) while clients fill its small receive buffer: the probes sent meanwhile find
    the queue full and are dropped by the kernel like the clients' datagrams; once the relay runs again the gap
    in their sequence counts them lost, and /ready says so until a window of probes has come back."""
    env = {"DD_RELAY_PROBE_INTERVAL": "0.05", "DD_DOGSTATSD_SO_RCVBUF": "4096"}
    async with run_relay(tmp_path, None, **env) as relay:
        await wait_for(lambda: relay.status()["probe"]["udp"]["sent"] >= 5)
        relay.process.send_signal(signal.SIGSTOP)
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                for i in range(200):
                    sock.sendto(b"full.queue:%d|c" % i, ("127.0.0.1", relay.udp_port))
            await asyncio.sleep(1)  # ~20 probes sent into the full queue
        finally:
            relay.process.send_signal(signal.SIGCONT)
        await wait_for(lambda: relay.status()["probe"]["udp"]["lost"] > 0)
        code, during = get_json(relay.health + "/ready")
        status = relay.status()
        await wait_for(lambda: get_json(relay.health + "/ready")[0] == 200, timeout=30)  # 60 probes later
        await relay.stop()
    assert status["listeners"]["udp"]["kernel_drops"] > 0
    assert status["probe"]["udp"]["lost"] >= 10 and status["probe"]["udp"]["loss_ratio"] > 0.1
    assert code == 503 and during["ready"] is False
    assert any("probe loss on udp" in reason and "relay.ready_max_probe_loss" in reason for reason in during["reasons"])


async def test_ready_fails_on_a_retry_backlog(tmp_path):
    failing = Intake(api_key=API_KEY, failing_paths={"/api/v2/series": 503})
    runner, port = await failing.start()
    try:
        env = {"DD_RELAY_READY_MAX_RETRY_QUEUE_BYTES": "1"}
        async with run_relay(tmp_path, f"http://127.0.0.1:{port}", **env) as relay:
            relay.send_udp(b"backlog:1|c")
            await wait_for(lambda: get_json(relay.health + "/ready")[0] == 503)
            _, state = get_json(relay.health + "/ready")
            await relay.stop()
    finally:
        await runner.cleanup()
    assert any("relay.ready_max_retry_queue_bytes 1" in reason for reason in state["reasons"]), state


def test_readiness_reasons_name_their_keys():
    config = make_config(relay__ready_max_flush_lag=30)
    stats = Stats(started=900.0)
    stats.info["listeners"] = {"udp": "127.0.0.1:8125"}
    stats.aggregate.last_flush_at = 1000.0
    assert readiness(stats, config, 1010.0)["ready"] is True
    late = readiness(stats, config, 1100.0)
    assert late["ready"] is False and late["reasons"] == ["no flush for 100 s > relay.ready_max_flush_lag 30 s"]
    assert readiness(Stats(), config, time.time())["reasons"] == ["listeners not started"]


# --- statsd_forward tee ------------------------------------------------------------------------------------------


async def test_statsd_forward_tees_every_packet_verbatim(tmp_path, short_tmp):
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.settimeout(5)
    stream = str(short_tmp / "stream.socket")
    env = {
        "DD_STATSD_FORWARD_HOST": "127.0.0.1",
        "DD_STATSD_FORWARD_PORT": str(receiver.getsockname()[1]),
        "DD_DOGSTATSD_STREAM_SOCKET": stream,
    }
    datagrams = [b"tee.a:1|c|#x:y", b"tee.b:2|g\ntee.c:3|ms|@0.5", b"not a metric line", b"_sc|tee.check|0"]
    with receiver:
        async with run_relay(tmp_path, None, **env) as relay:
            for datagram in datagrams[:3]:
                relay.send_udp(datagram)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.connect(stream)
                client.sendall(struct.pack("<I", len(datagrams[3])) + datagrams[3])
                received = [await asyncio.to_thread(receiver.recv, 65535) for _ in datagrams]
            await wait_for(lambda: relay.status()["statsd_forward"].get("sent") == 4)
            status = relay.status()
            await relay.stop()
    assert sorted(received) == sorted(datagrams)  # as received, bad line included: the tee does not parse
    assert status["messages"]["metric"]["error"] == 1  # while the relay itself still parses and counts


# --- capture and replay ------------------------------------------------------------------------------------------


async def test_capture_records_datagrams_and_replay_delivers_them_to_another_server(tmp_path, short_tmp):
    socket_path = str(short_tmp / "dsd.socket")
    sent = [b"cap.requests:%d|c|#route:/r%d" % (i, i % 3) for i in range(40)]
    output = tmp_path / "traffic.capture"
    async with run_relay(tmp_path / "a", None, DD_DOGSTATSD_SOCKET=socket_path) as source:
        capture = asyncio.create_task(cli(source.env, "capture", "--seconds", "4", "-o", str(output)))

        def recording() -> bool:  # the CLI has started and a first record came back
            source.send_udp(b"warm.up:1|c")
            return output.exists() and output.stat().st_size > len(MAGIC)

        await wait_for(recording, timeout=20, step=0.1)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as unix:
            for i, datagram in enumerate(sent):
                if i % 4 == 0:
                    unix.sendto(datagram, socket_path)
                else:
                    source.send_udp(datagram)
                await asyncio.sleep(0.005)
        result = await capture
        await source.stop()
    assert result.returncode == 0, result.stderr
    records = list(read_records(output))
    ours = [r for r in records if r.datagram.startswith(b"cap.")]
    assert [r.datagram for r in ours] == sent
    assert [r.transport for r in ours] == ["uds" if i % 4 == 0 else "udp" for i in range(40)]
    assert all(a.seconds <= b.seconds for a, b in itertools.pairwise(records))
    assert f"{len(records):,} datagrams ({len(records):,} lines; udp {len(records) - 10:,}, uds 10)" in result.stdout

    async with run_relay(tmp_path / "b", None) as target:
        replayed = await cli(target.env, "replay", str(output), "--speed", "0")
        await wait_for(lambda: target.status()["messages"]["metric"]["ok"] == len(records))
        await target.stop()
    assert replayed.returncode == 0 and f"{len(records):,} datagrams" in replayed.stdout, replayed.stdout


def test_replay_keeps_the_recorded_pace_divided_by_speed(tmp_path):
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    records = [Record(0.0, "udp", b"a:1|c"), Record(0.3, "udp", b"b:1|c"), Record(0.6, "uds", b"c:1|c")]
    with receiver:
        result = replay(iter(records), f"127.0.0.1:{receiver.getsockname()[1]}", speed=2)
        got = [receiver.recv(100) for _ in records]
    assert got == [b"a:1|c", b"b:1|c", b"c:1|c"] and result.datagrams == 3 and result.errors == 0
    assert result.seconds >= 0.29  # the last one left at 0.6 s / 2


def test_a_capture_cut_short_is_read_up_to_its_last_whole_record(tmp_path):
    path = tmp_path / "cut.capture"
    whole = encode(0.5, "udp", b"x:1|c")
    path.write_bytes(MAGIC + whole + encode(0.6, "uds_stream", b"y:2|c")[:-2])
    assert list(read_records(path)) == [Record(0.5, "udp", b"x:1|c")]
    (tmp_path / "other").write_bytes(b"garbage")
    try:
        list(read_records(tmp_path / "other"))
    except ValueError as error:
        assert "not a dogstatsd-relay capture" in str(error)
    else:
        raise AssertionError("a file that is not a capture must be refused")


# --- top and the cardinality report ------------------------------------------------------------------------------


def test_custom_metric_estimate_counts_like_datadog():
    aggregator = Aggregator(make_config(), Stats())
    for user in range(10):
        context = Context("api.latency", "h", (f"user:{user}",))
        aggregator.add(context, MetricType.HISTOGRAM, (1.0,), "", 1.0, 0, 1000.0)
    aggregator.add(Context("api.hits", "h", ()), MetricType.COUNTER, (1.0,), "", 1.0, 0, 1000.0)
    aggregator.add(Context("api.size", "h", ()), MetricType.DISTRIBUTION, (1.0,), "", 1.0, 0, 1000.0)
    # 10 histograms x (max median avg count + p95) + 1 count + 5 for a distribution
    assert aggregator.cardinality()["custom_metrics_estimate"] == 10 * 5 + 1 + 5


async def test_top_shows_lines_per_second_and_contexts_of_a_running_relay(tmp_path):
    async with run_relay(tmp_path, None) as relay:
        stop = threading.Event()

        def traffic() -> None:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                i = 0
                while not stop.is_set():
                    sock.sendto(b"top.busy:1|c|#user:%d\ntop.quiet:1|g" % (i % 50), ("127.0.0.1", relay.udp_port))
                    i += 1
                    time.sleep(0.001)

        sender = threading.Thread(target=traffic)
        sender.start()
        try:
            await wait_for(lambda: relay.status()["aggregator"]["contexts"] == 51)

            def whole_cycle_in_one_bucket() -> dict | None:
                # The estimate is per bucket: a bucket boundary inside the first 50 users splits them, so wait
                # until one bucket (open or last flushed) has seen them all.
                _, report = get_json(relay.health + "/debug/cardinality?sample=0.5")
                return report if report["custom_metrics_estimate"] == 51 else None

            report = await wait_for(whole_cycle_in_one_bucket)
            shown = await cli(relay.env, "top", "--once", "--interval", "0.5")
        finally:
            stop.set()
            sender.join()
        await relay.stop()
    rates = {row["metric"]: row["lines_per_s"] for row in report["top_by_lines"]}
    assert rates["top.busy"] > 0 and abs(rates["top.busy"] - rates["top.quiet"]) <= 0.1 * rates["top.busy"] + 4
    assert report["top_metrics"][0] == {"metric": "top.busy", "contexts": 50, "tag_values": {"user": 50}}
    assert shown.returncode == 0, shown.stderr
    assert "top.busy" in shown.stdout and "user=50" in shown.stdout and "custom metrics" in shown.stdout


# --- additional_endpoints ----------------------------------------------------------------------------------------


async def test_additional_endpoints_each_get_everything_with_their_own_key_and_retries(intake, tmp_path):
    main, url = intake
    second_key = "fedcba9876543210fedcba9876543210"
    second = Intake(api_key=second_key, failing_paths={"/api/v2/series": 503})  # an outage at the second org only
    runner, port = await second.start()
    try:
        endpoints = json.dumps({f"http://127.0.0.1:{port}": [second_key]})
        async with run_relay(tmp_path, url, DD_ADDITIONAL_ENDPOINTS=endpoints) as relay:
            relay.send_udp(b"dual.hits:3|c|#org:both")
            await wait_for(lambda: any(s["metric"] == "dual.hits" for s in main.series))
            status = relay.status()
            second.failing_paths.clear()  # the second org recovers: its own retry sends the payload
            await wait_for(lambda: any(s["metric"] == "dual.hits" for s in second.series))
            metrics = relay.metrics_text()
            shown = await cli(relay.env, "status")
            await relay.stop()
    finally:
        await runner.cleanup()

    def points(intake: Intake) -> list[tuple[Any, ...]]:  # in time order: retries may deliver out of order
        return sorted(tuple(p) for s in intake.series if s["metric"] == "dual.hits" for p in s["points"])

    assert points(main) == points(second) and any(value == 3.0 for _, value in points(main))  # 3 in a 1 s bucket
    # Each stand-in answers 403 to any key but its own: none did, so each destination got its own key.
    assert 403 not in {r.status for r in main.requests + second.requests}
    label = f"127.0.0.1:{port} ***43210"
    assert status["forwarder"]["additional_endpoints"][label]["payloads"]["/api/v2/series"]["retried"] >= 1
    assert (
        f'relay_additional_endpoint_payloads_total{{destination="{label}",endpoint="/api/v2/series",result="sent"}}'
        in metrics
    )
    assert f"Additional Endpoint {label}" in shown.stdout
    assert second_key not in shown.stdout + metrics and API_KEY not in shown.stdout + metrics


def test_additional_endpoints_from_the_environment_and_errors_that_never_show_a_key():
    from relay.config import Config, ConfigError

    config = Config.load(
        None, {"DD_ADDITIONAL_ENDPOINTS": '{"https://app.datadoghq.eu/": ["k1xxxxxxxx", "k2xxxxxxxx"]}'}
    )
    assert config.additional_endpoints == (
        ("https://app.datadoghq.eu", "k1xxxxxxxx"),
        ("https://app.datadoghq.eu", "k2xxxxxxxx"),
    )
    assert config.redacted()["additional_endpoints"] == {"https://app.datadoghq.eu": ["***xxxxx", "***xxxxx"]}
    for bad in ('{"ftp://x": ["secretkey123"]}', '["secretkey123"]', "{not json secretkey123"):
        try:
            Config.load(None, {"DD_ADDITIONAL_ENDPOINTS": bad})
        except ConfigError as error:
            assert str(error).startswith("additional_endpoints: ") and "secretkey123" not in str(error)
        else:
            raise AssertionError(bad)


# --- status and doctor -------------------------------------------------------------------------------------------


def test_status_warns_when_the_kernel_clamped_the_receive_buffer():
    stats = Stats()
    stats.info.update({"listeners": {"udp": "127.0.0.1:8125"}, "receive_buffers": {"udp": 212992},
                       "receive_buffers_wanted": {"udp": 8388608}})  # fmt: skip
    text = render({**status_document(stats), "cardinality": {}})
    assert "[WARNING] receive buffer 212,992 bytes, clamped from dogstatsd_so_rcvbuf 8,388,608" in text
    assert "net.core.rmem_max" in text


def test_doctor_weighs_workers_against_cores_and_loss():
    losing = {"listeners": {"udp": {"kernel_drops": 5}}, "probe": {}}
    one = make_config()
    assert _workers(one, losing, 8, 1)[0] == "WARN" and "relay.workers: auto" in _workers(one, losing, 8, 1)[2]
    assert _workers(make_config(relay__workers=2), None, 2, 1)[0] == "WARN"
    assert _workers(make_config(relay__workers=4), None, 2, 1)[0] == "WARN"
    assert _workers(one, {"listeners": {}, "probe": {}}, 8, 3) == (
        "OK", "workers", "relay.workers 1 on 8 cores, 3 local client sockets connected to UDP",
    )  # fmt: skip


def test_local_udp_clients_counts_connected_sockets():
    from relay.tools.doctor import local_udp_clients

    port = free_port()
    before = local_udp_clients(port)
    clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    try:
        for client in clients:
            client.connect(("127.0.0.1", port))
        assert local_udp_clients(port) == before + 3
    finally:
        for client in clients:
            client.close()


async def test_the_tools_work_on_a_sharded_relay_too(tmp_path):
    async with run_relay(tmp_path, None, DD_RELAY_WORKERS="2", DD_RELAY_PROBE_INTERVAL="0.1") as relay:
        # urlopen returns once the headers are in: by then the capture is recording
        url = relay.health + "/debug/capture?seconds=1.5"
        with await asyncio.to_thread(urllib.request.urlopen, url) as response:
            for i in range(30):
                relay.send_udp(b"sharded.m%d:1|c|#k:%d\nsharded.h:%d|h" % (i % 3, i, i))
            records = await asyncio.to_thread(response.read)
        await wait_for(lambda: get_json(relay.health + "/debug/cardinality")[1]["contexts"] == 31)

        def estimate_of_one_whole_batch() -> dict | None:
            # The estimate is per bucket: send the batch again until one lands in a single bucket.
            for i in range(30):
                relay.send_udp(b"sharded.m%d:1|c|#k:%d\nsharded.h:%d|h" % (i % 3, i, i))
            _, report = get_json(relay.health + "/debug/cardinality")
            return report if report["custom_metrics_estimate"] == 30 + 5 else None

        report = await wait_for(estimate_of_one_whole_batch, step=0.3)
        code, ready = get_json(relay.health + "/ready")
        status = relay.status()
        await relay.stop()
    assert records.startswith(MAGIC) and records.count(b"sharded.h:") == 30
    assert report["workers"] == 2 and report["contexts"] == 31  # 30 counters, one histogram
    assert code == 200 and ready["ready"] is True and status["probe"]["udp"]["sent"] > 0


def test_line_counter_stays_bounded_and_unbiased_under_a_flood():
    from relay.runtime.taps import LineCounter

    counter = LineCounter()
    for i in range(300_000):  # far above 20,000 datagrams a second, and random names
        counter(b"flood.%d:1|c\nsteady:1|g" % i, "udp")
    assert counter.stride > 1 and len(counter.lines) <= LineCounter.MAX_NAMES + 1
    assert abs(counter.lines[b"steady"] - 300_000) < 0.1 * 300_000  # every n-th datagram, counted n times
    assert sum(counter.lines.values()) > 0.9 * 600_000


def test_line_counter_folds_names_past_its_limit(monkeypatch):
    from relay.runtime.taps import LineCounter

    monkeypatch.setattr(LineCounter, "MAX_NAMES", 10)
    counter = LineCounter()
    for i in range(100):
        counter(b"random.%d:1|c" % i, "udp")
    assert len(counter.lines) == 11 and counter.lines[LineCounter.OTHERS] == 90


async def test_captures_and_samplings_at_once_are_limited(tmp_path):
    from relay.runtime.health import MAX_OPEN_TAPS

    loop = asyncio.get_running_loop()
    async with run_relay(tmp_path, None) as relay:
        with ThreadPoolExecutor(MAX_OPEN_TAPS) as pool:
            url = relay.health + "/debug/capture?seconds=2"
            # urlopen returns once the headers are in: by then each capture is recording
            opened = await asyncio.gather(
                *(loop.run_in_executor(pool, urllib.request.urlopen, url) for _ in range(MAX_OPEN_TAPS))
            )
            code, text = await loop.run_in_executor(pool, get_text, relay.health + "/debug/cardinality?sample=0.1")
            for response in opened:
                with response:
                    await loop.run_in_executor(pool, response.read)
        await relay.stop()
    assert code == 429 and "already open" in text
    assert [response.status for response in opened] == [200] * MAX_OPEN_TAPS


def get_text(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=15) as response:
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


async def test_debug_endpoints_refuse_bad_durations(tmp_path):
    async with run_relay(tmp_path, None) as relay:
        answers = [
            get_text(relay.health + path)[0]
            for path in ("/debug/capture?seconds=nan", "/debug/cardinality?sample=abc", "/debug/cardinality?top=-3")
        ]
        await relay.stop()
    assert answers == [400, 400, 200]


async def test_a_probe_that_cannot_start_turns_itself_off_and_says_so(monkeypatch, caplog):
    from relay.runtime import probe as probe_module

    def no_shared_file(*args: Any, **kwargs: Any) -> Any:
        raise OSError("no memory file, and a read-only /tmp")

    monkeypatch.setattr(probe_module, "_shared_file", no_shared_file)
    stats = Stats()
    probe = probe_module.Probe(stats, 0.1)
    probe.add_target("udp", socket.AF_INET, ("127.0.0.1", 9))
    await asyncio.wait_for(probe.run(), 5)  # returns instead of failing the relay
    assert stats.gauges.probe_loss() == {} and "loss self-probe off" in caplog.text


def test_replay_says_why_it_cannot_play_a_file(tmp_path, short_tmp):
    capture = tmp_path / "ok.capture"
    capture.write_bytes(MAGIC + encode(0.0, "udp", b"a:1|c"))
    (tmp_path / "other").write_bytes(b"not a capture")
    cases = [
        (tmp_path / "other", "127.0.0.1:9", "not a dogstatsd-relay capture"),
        (capture, f"unix:{short_tmp / 'nobody.socket'}", "No such file or directory"),
    ]
    for path, target, reason in cases:
        command = [sys.executable, "-m", "relay", "replay", str(path), "--target", target]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert result.returncode == 1 and reason in result.stderr, result.stderr
