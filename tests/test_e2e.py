"""End to end: the official `datadog` client → real UDP / Unix sockets → relay subprocess → intake stand-in."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import defaultdict
from typing import Any

import pytest
from datadog.dogstatsd import DogStatsd

from tests.conftest import API_KEY, free_port, run_relay, wait_for


def client(**kwargs: Any) -> DogStatsd:
    return DogStatsd(disable_telemetry=True, disable_buffering=False, **kwargs)


def by_metric(series: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for item in series:
        grouped[item["metric"]].append(item)
    return grouped


def total(series: list[dict[str, Any]], name: str, interval: int = 1) -> float:
    """Sum of value * interval over every point of a rate: what the backend stores as the count."""
    return sum(value * interval for s in series if s["metric"] == name for _, value in s["points"])


def emit_everything(statsd: DogStatsd, prefix: str) -> None:
    statsd.increment(f"{prefix}.views", 3, tags=["env:dev", "page:home"])
    statsd.increment(f"{prefix}.views", 2, tags=["page:home", "env:dev"])  # same context, other tag order
    statsd.decrement(f"{prefix}.stock", tags=["env:dev"])
    statsd.gauge("my_metric", 512, tags=["check_group:test"])
    for value in (1, 10, 4, 5, 2, 2):
        statsd.histogram(f"{prefix}.latency", value)
    statsd.timing(f"{prefix}.timer", 250)
    for value in (1, 2, 3):
        statsd.distribution(f"{prefix}.size", value, tags=["unit:kb"])
    statsd.set(f"{prefix}.users", "alice")
    statsd.set(f"{prefix}.users", "bob")
    statsd.set(f"{prefix}.users", "alice")
    statsd.gauge(f"{prefix}.remote", 7, tags=["host:other-box"])
    statsd.event("Deploy finished", "v1.2 is out\nall good", alert_type="success", tags=["team:core"])
    statsd.service_check(f"{prefix}.can_connect", 2, message="db down", tags=["db:main"])
    statsd.flush()


def assert_everything(intake: Any, prefix: str) -> None:
    series = by_metric(intake.series)
    assert total(intake.series, f"{prefix}.views") == 5
    views = series[f"{prefix}.views"]
    assert {v["type"] for v in views} == {"rate"} and {v["interval"] for v in views} == {1}
    assert sorted(views[0]["tags"]) == ["env:dev", "page:home"] and views[0]["host"] == "test-host"
    assert total(intake.series, f"{prefix}.stock") == -1
    assert series["my_metric"][0]["points"][0][1] == 512 and series["my_metric"][0]["type"] == "gauge"
    assert series["my_metric"][0]["tags"] == ["check_group:test"]
    latency = {suffix: series[f"{prefix}.latency.{suffix}"][0]["points"][0][1] for suffix in
               ("max", "median", "avg", "count", "95percentile")}  # fmt: skip
    assert latency == {"max": 10, "median": 2, "avg": 4, "count": 6, "95percentile": 10}
    assert series[f"{prefix}.latency.count"][0]["type"] == "rate"
    assert series[f"{prefix}.timer.max"][0]["points"][0][1] == 250
    assert series[f"{prefix}.users"][0]["points"][0][1] == 2
    assert series[f"{prefix}.remote"][0]["host"] == "other-box" and series[f"{prefix}.remote"][0]["tags"] == []
    sketch = next(s for s in intake.sketches if s["metric"] == f"{prefix}.size")
    point = sketch["points"][0]
    assert (point["cnt"], point["min"], point["max"], point["sum"], point["avg"]) == (3, 1, 3, 6, 2)
    assert point["k"] == [1338, 1383, 1409] and point["n"] == [1, 1, 1] and sketch["tags"] == ["unit:kb"]
    event = next(e for e in intake.events if e["msg_title"] == "Deploy finished")
    assert event["msg_text"] == "v1.2 is out\nall good" and event["alert_type"] == "success"
    assert event["tags"] == ["team:core"] and event["host"] == "test-host"
    check = next(c for c in intake.service_checks if c["check"] == f"{prefix}.can_connect")
    assert (check["status"], check["message"], check["tags"], check["host_name"]) == (
        2,
        "db down",
        ["db:main"],
        "test-host",
    )


async def test_datadog_client_over_udp_reaches_the_intake_as_the_agent_would_send_it(intake, tmp_path):
    stand_in, url = intake
    async with run_relay(tmp_path, url) as relay:
        emit_everything(client(host="127.0.0.1", port=relay.udp_port), "udp")
        await wait_for(
            lambda: stand_in.events and stand_in.service_checks and stand_in.sketches and len(stand_in.series) >= 12
        )
        code, _, err = await relay.stop()
    assert code == 0, err
    assert_everything(stand_in, "udp")
    request = next(r for r in stand_in.requests if r.path == "/api/v2/series")
    assert request.headers["Content-Encoding"] == "zstd"
    assert request.headers["Content-Type"] == "application/x-protobuf"
    assert request.headers["User-Agent"].startswith("dogstatsd-relay/")


async def test_unix_datagram_and_stream_sockets(intake, short_tmp):
    stand_in, url = intake
    dgram, stream = short_tmp / "dsd.socket", short_tmp / "dsd-stream.socket"
    async with run_relay(
        short_tmp, url, DD_DOGSTATSD_SOCKET=str(dgram), DD_DOGSTATSD_STREAM_SOCKET=str(stream)
    ) as relay:
        emit_everything(client(socket_path=f"unixgram://{dgram}"), "uds")
        emit_everything(client(socket_path=f"unixstream://{stream}"), "stream")
        await wait_for(
            lambda: len(stand_in.events) >= 2 and len(stand_in.service_checks) >= 2 and len(stand_in.sketches) >= 2
        )
        await wait_for(lambda: total(stand_in.series, "stream.views") == 5 and total(stand_in.series, "uds.views") == 5)
        status = relay.status()
        code, _, err = await relay.stop()
    assert code == 0, err
    assert_everything(stand_in, "uds")
    assert_everything(stand_in, "stream")
    assert status["listeners"]["uds"]["packets"] >= 1 and status["listeners"]["uds_stream"]["packets"] >= 1
    assert not dgram.exists() and not stream.exists()


async def test_stream_frames_split_across_writes_and_a_bad_line_beside_good_ones(intake, short_tmp):
    stand_in, url = intake
    stream = short_tmp / "s.socket"
    async with run_relay(short_tmp, url, DD_DOGSTATSD_STREAM_SOCKET=str(stream)) as relay:
        frame = b"framed:1|c\nthis is garbage\nframed:2|c"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(str(stream))
            data = struct.pack("<I", len(frame)) + frame
            sock.sendall(data[:3])
            sock.sendall(data[3:10])
            sock.sendall(data[10:] + struct.pack("<I", 6) + b"x:4|c\n")
        await wait_for(lambda: total(stand_in.series, "framed") == 3 and total(stand_in.series, "x") == 4)
        status = relay.status()
        await relay.stop()
    assert status["messages"]["metric"] == {"ok": 3, "error": 1}
    assert status["listeners"]["uds_stream"]["packets"] == 2


async def test_sigterm_flushes_open_buckets_and_loses_nothing(intake, tmp_path):
    stand_in, url = intake
    async with run_relay(tmp_path, url, DD_RELAY_FLUSH_INTERVAL="60") as relay:
        statsd = client(host="127.0.0.1", port=relay.udp_port)
        for _ in range(2000):
            statsd.increment("shutdown.count", 1)
        statsd.distribution("shutdown.dist", 5)
        statsd.flush()
        await wait_for(lambda: relay.status()["messages"]["metric"]["ok"] == 2001)
        assert stand_in.series == []  # the 60 s bucket is still open
        code, _, err = await relay.stop()
    assert code == 0, err
    assert total(stand_in.series, "shutdown.count", interval=60) == pytest.approx(2000)
    assert stand_in.sketches[0]["points"][0]["cnt"] == 1
    assert "final flush" in err


async def test_intake_errors_then_recovery_deliver_everything_exactly_once(intake, tmp_path):
    stand_in, url = intake
    stand_in.faults.extend([500, 503, 502, 429, 404])
    async with run_relay(tmp_path, url) as relay:
        relay.send_udp(b"outage.count:7|c\noutage.gauge:3|g")
        await wait_for(lambda: total(stand_in.series, "outage.count") == 7, timeout=20)
        status = relay.status()
        await relay.stop()
    assert next(s for s in stand_in.series if s["metric"] == "outage.gauge")["points"][0][1] == 3
    assert len([s for s in stand_in.series if s["metric"] == "outage.gauge"]) == 1
    assert status["forwarder"]["payloads"]["/api/v2/series"]["retried"] == 5
    assert {"500", "503", "502", "429", "404"} <= set(status["forwarder"]["http_errors"])


async def test_rejected_payloads_are_dropped_and_counted_not_retried(intake, tmp_path):
    stand_in, url = intake
    stand_in.faults.extend([403, 400, 413])
    async with run_relay(tmp_path, url) as relay:
        for index in range(3):
            relay.send_udp(b"rejected:1|g")
            await wait_for(
                lambda n=index: relay.status()["forwarder"]["payloads"].get("/api/v2/series", {}).get("dropped", 0) > n
            )
        relay.send_udp(b"accepted:1|g")
        await wait_for(lambda: any(s["metric"] == "accepted" for s in stand_in.series))
        status = relay.status()
        metrics = relay.metrics_text()
        await relay.stop()
    series = status["forwarder"]["payloads"]["/api/v2/series"]
    assert series["dropped"] == 3 and series["retried"] == 0
    assert status["info"]["api_key_valid"] is False  # a 403 marks the key invalid
    assert 'relay_payloads_total{endpoint="/api/v2/series",result="dropped"} 3.0' in metrics
    assert not any(s["metric"] == "rejected" for s in stand_in.series)


async def test_100k_contexts_in_one_flush_are_split_under_the_intake_limits(intake, tmp_path):
    stand_in, url = intake
    # Paced on the relay's own counter: at most ~4,000 lines in flight, well inside the receive buffer.
    async with run_relay(tmp_path, url, DD_RELAY_FLUSH_INTERVAL="60", DD_DOGSTATSD_SO_RCVBUF="4194304") as relay:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for start in range(0, 100_000, 20):
                lines = [f"big.metric.{i % 50}:{i}|g|#shard:{i},env:load-test" for i in range(start, start + 20)]
                sock.sendto("\n".join(lines).encode(), ("127.0.0.1", relay.udp_port))
                if start % 2000 == 0:
                    await wait_for(lambda s=start: relay.status()["messages"]["metric"]["ok"] >= s - 2000)
        await wait_for(lambda: relay.status()["messages"]["metric"]["ok"] == 100_000, timeout=60)
        code, _, err = await relay.stop(timeout=120)
    assert code == 0, err
    assert len(stand_in.series) == 100_000
    series_requests = [r for r in stand_in.requests if r.path == "/api/v2/series"]
    assert len(series_requests) > 1
    assert all(r.status == 202 and r.compressed_size <= 512_000 and r.raw_size <= 5_242_880 for r in series_requests)


async def test_dry_run_without_api_key_prints_the_users_metrics_and_summarizes_the_host_ones(tmp_path):
    """`make run` as a new user sees it: their metrics in the table, the collectors' system.* series in one line,
    and a tag too long for its column marked as cut."""
    long_tag = "team:" + "x" * 80
    async with run_relay(tmp_path, None, DD_RELAY_HOST_COLLECTORS="cpu memory load") as relay:
        relay.send_udp(f"dry.run:5|c|#a:b,{long_tag}".encode())
        await wait_for(lambda: relay.status()["aggregator"]["flushed"].get("series", 0) >= 10)
        code, out, err = await relay.stop()
    assert code == 0, err
    assert "dry run" in out and "would POST /api/v2/series" in out
    table_rows = [line for line in out.splitlines() if line.startswith(("dry.run", "system."))]
    assert table_rows and all(row.startswith("dry.run") for row in table_rows)
    assert any(row.rstrip().endswith("…") and "team:xxx" in row for row in table_rows)
    summary = next(line for line in out.splitlines() if line.startswith("+ "))
    assert "host series from the collectors (" in summary and "system.mem.*" in summary


async def test_status_command_prints_live_counters(intake, tmp_path):
    _stand_in, url = intake
    async with run_relay(tmp_path, url) as relay:
        relay.send_udp(b"status.metric:1|c\nnot a metric")
        await wait_for(lambda: relay.status()["messages"]["metric"]["error"] == 1)
        env = {**os.environ, "DD_RELAY_HEALTH_PORT": relay.env["DD_RELAY_HEALTH_PORT"]}
        text = subprocess.run([sys.executable, "-m", "relay", "status"], env=env, capture_output=True, text=True)
        as_json = subprocess.run(
            [sys.executable, "-m", "relay", "status", "--json"], env=env, capture_output=True, text=True
        )
        await relay.stop()
    assert text.returncode == 0, text.stderr
    assert "Metric Packets: 1" in text.stdout and "Metric Parse Errors: 1" in text.stdout
    assert "***bcdef" in text.stdout and API_KEY not in text.stdout
    assert '"listeners"' in as_json.stdout


def test_bad_configuration_fails_at_start_with_one_line_naming_the_key():
    env = {k: v for k, v in os.environ.items() if not k.startswith("DD_")}
    result = subprocess.run(
        [sys.executable, "-m", "relay", "run"],
        env={**env, "DD_DOGSTATSD_PORT": "70000"},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "config: dogstatsd_port: must be 0..65535, got 70000"


def test_config_command_redacts_the_api_key():
    env = {k: v for k, v in os.environ.items() if not k.startswith("DD_")}
    result = subprocess.run(
        [sys.executable, "-m", "relay", "config"],
        env={**env, "DD_API_KEY": "secretsecretsecret12345"},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0
    assert "api_key: '***12345'" in result.stdout and "secretsecret" not in result.stdout


async def test_oversized_datagrams_are_truncated_and_counted_and_eol_is_enforced(intake, tmp_path):
    stand_in, url = intake
    async with run_relay(tmp_path, url, DD_DOGSTATSD_BUFFER_SIZE="100", DD_DOGSTATSD_EOL_REQUIRED="udp") as relay:
        relay.send_udp(b"kept:1|c\n" + b"lost.tail:1|c\n" * 20)  # 289 bytes: cut at 100, mid-line
        relay.send_udp(b"terminated:1|c\nunterminated:1|c")
        await wait_for(lambda: relay.status()["listeners"]["udp"]["packets"] == 2)
        await wait_for(lambda: total(stand_in.series, "terminated") == 1)
        status = relay.status()
        await relay.stop()
    assert status["listeners"]["udp"]["truncated"] == 1
    assert total(stand_in.series, "kept") == 1 and total(stand_in.series, "lost.tail") == 6  # 6 whole lines fit
    assert status["dropped"]["unterminated"] == 2  # the cut line, and the line without its "\n"
    assert not any(s["metric"] == "unterminated" for s in stand_in.series)


async def test_self_metrics_report_the_relay_through_its_own_pipeline(intake, tmp_path):
    stand_in, url = intake
    async with run_relay(tmp_path, url, DD_RELAY_SELF_METRICS="true") as relay:
        relay.send_udp(b"app.metric:1|c\nbroken")
        await wait_for(lambda: any(s["metric"] == "dogstatsd_relay.packets" for s in stand_in.series))
        await wait_for(lambda: any(s["metric"] == "dogstatsd_relay.messages" and "state:error" in s["tags"]
                                   for s in stand_in.series))  # fmt: skip
        await relay.stop()
    packets = next(s for s in stand_in.series if s["metric"] == "dogstatsd_relay.packets")
    assert packets["tags"] == ["transport:udp"] and packets["host"] == "test-host" and packets["type"] == "rate"
    assert any(s["metric"] == "dogstatsd_relay.contexts" for s in stand_in.series)


async def test_outage_then_restart_delivers_everything_exactly_once(intake, tmp_path):
    stand_in, url = intake
    stand_in.failing_paths["/api/v2/series"] = 503
    outage_started = time.monotonic()
    env = {"DD_RELAY_SPOOL_DIR": str(tmp_path / "spool"), "DD_RELAY_SHUTDOWN_TIMEOUT": "1"}
    async with run_relay(tmp_path, url, **env) as relay:
        for index in range(5):
            relay.send_udp(b"outage.total:%d|c" % (index + 1))
            await asyncio.sleep(1.1)  # one flush each
        await wait_for(lambda: relay.status()["forwarder"]["payloads"].get("/api/v2/series", {}).get("retried", 0) >= 3)
        code, _, err = await relay.stop()
    assert code == 0, err
    assert not any(s["metric"] == "outage.total" for s in stand_in.series)
    spooled = len(list((tmp_path / "spool").glob("*.payload")))
    assert spooled
    del stand_in.failing_paths["/api/v2/series"]
    outage = time.monotonic() - outage_started
    async with run_relay(tmp_path, url, **env) as relay:  # the next start replays the spool
        await wait_for(lambda: total(stand_in.series, "outage.total") == 15)
        await relay.stop()
    points = [point for s in stand_in.series if s["metric"] == "outage.total" for point in s["points"]]
    timestamps = [ts for ts, _ in points]
    assert len(timestamps) == len(set(timestamps))  # no point twice (zero-fill points included)
    print(
        f"reliability: intake outage of {outage:.1f} s across a SIGTERM and a restart: 15 counted in 5 samples, "
        f"{total(stand_in.series, 'outage.total'):g} at the intake, {spooled} payloads spooled, "
        f"{len(timestamps) - len(set(timestamps))} duplicated points"
    )
    assert not list((tmp_path / "spool").glob("*.payload"))


async def test_kernel_drops_are_counted_per_listener(intake, tmp_path):
    _, url = intake
    # The OS default receive buffer (208 KiB) overflows sooner than the relay's default 4 MiB.
    async with run_relay(tmp_path, url, DD_DOGSTATSD_SO_RCVBUF="0") as relay:
        relay.process.send_signal(signal.SIGSTOP)  # the relay stops reading: the kernel buffer overflows
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
                for _ in range(3000):
                    sock.sendto(b"k:1|c|#" + b"x" * 1000, ("127.0.0.1", relay.udp_port))
        finally:
            relay.process.send_signal(signal.SIGCONT)
        await wait_for(lambda: relay.status()["listeners"]["udp"]["kernel_drops"] > 0)
        status, metrics = relay.status(), relay.metrics_text()
        await relay.stop()
    drops = status["listeners"]["udp"]["kernel_drops"]
    assert drops + status["listeners"]["udp"]["packets"] == 3000  # every datagram read or counted as dropped
    assert f'relay_kernel_drops_total{{listener="udp"}} {float(drops)}' in metrics


def _signature(stand_in: Any) -> tuple[Any, ...]:
    """What reached the intake, independent of timestamps and of payload boundaries."""
    series = sorted((s["metric"], s["type"], tuple(sorted(s["tags"])), s["host"], round(sum(v for _, v in s["points"]), 6))
                    for s in stand_in.series if not s["metric"].startswith("dogstatsd_relay."))  # fmt: skip
    sketches = sorted((s["metric"], tuple(s["tags"]), sum(p["cnt"] for p in s["points"])) for s in stand_in.sketches)
    return series, sketches, len(stand_in.events), len(stand_in.service_checks)


async def test_several_workers_send_what_one_process_sends(tmp_path):
    from relay.intake.server import Intake

    rng = random.Random(7)
    datagrams = [
        "\n".join(
            f"work.{kind}.{rng.randint(0, 40)}:{rng.randint(1, 9)}|{kind}|#shard:{rng.randint(0, 5)}"
            for kind in rng.choices(["c", "g", "h", "d", "s", "ms"], k=20)
        ).encode()
        + b"\n_e{5,4}:title|text\n_sc|svc|1"
        for _ in range(300)
    ]
    signatures = []
    for workers in ("1", "3"):
        stand_in = Intake(api_key=API_KEY)
        runner, port = await stand_in.start()
        try:
            env = {"DD_RELAY_WORKERS": workers, "DD_RELAY_FLUSH_INTERVAL": "3600", "DD_DOGSTATSD_SO_RCVBUF": "4194304"}
            async with run_relay(tmp_path / workers, f"http://127.0.0.1:{port}", **env) as relay:
                for datagram in datagrams:
                    relay.send_udp(datagram)
                    await asyncio.sleep(0.002)  # new contexts are the slow path: no kernel drop, same input twice
                await wait_for(lambda: relay.status()["messages"]["metric"]["ok"] == 6000, timeout=30)
                status = relay.status()
                code, _, err = await relay.stop()
            assert code == 0, err
            assert status["messages"]["event"]["ok"] == 300 and status["listeners"]["udp"]["packets"] == 300
            signatures.append(_signature(stand_in))
        finally:
            await runner.cleanup()
    assert signatures[0] == signatures[1]
    assert len(signatures[0][0]) > 100 and signatures[0][2] == 300


async def test_a_dead_worker_costs_its_share_only_and_is_counted(intake, tmp_path):
    _, url = intake
    async with run_relay(tmp_path, url, DD_RELAY_WORKERS="2") as relay:
        relay.send_udp(b"\n".join(b"before.%d:1|c" % i for i in range(50)))
        await wait_for(lambda: relay.status()["messages"]["metric"]["ok"] == 50)
        children = subprocess.run(["pgrep", "-P", str(relay.process.pid), "-f", "spawn_main"], capture_output=True,
                                  text=True).stdout.split()  # fmt: skip
        os.kill(int(children[0]), signal.SIGKILL)
        for _ in range(20):
            relay.send_udp(b"\n".join(b"after.%d:1|c" % i for i in range(50)))
            await asyncio.sleep(0.05)
        await wait_for(lambda: relay.status()["dropped"].get("worker_down", 0) > 0)
        status = relay.status()
        code, _, err = await relay.stop()
    assert code == 0, err
    assert status["listeners"]["udp"]["packets"] == 21
    assert "worker-" in err and "is gone" in err


async def test_host_tags_go_with_the_host_metadata_and_optionally_on_every_series(intake, tmp_path):
    stand_in, url = intake
    env = {"DD_TAGS": "team:core role:web", "DD_ENV": "prod", "DD_ENABLE_METADATA_COLLECTION": "true"}
    async with run_relay(tmp_path, url, **env) as relay:
        relay.send_udp(b"plain:1|c|#a:b")
        await wait_for(lambda: stand_in.host_metadata and any(s["metric"] == "plain" for s in stand_in.series))
        await relay.stop()
    metadata = stand_in.host_metadata[0]
    assert metadata["host-tags"] == {"system": ["team:core", "role:web", "env:prod"]}
    assert metadata["internalHostname"] == "test-host" and metadata["meta"]["hostname"] == "test-host"
    assert next(s for s in stand_in.series if s["metric"] == "plain")["tags"] == ["a:b"]  # not on metrics by default
    async with run_relay(tmp_path, url, **env, DD_RELAY_HOST_TAGS_ON_METRICS="true") as relay:
        relay.send_udp(b"tagged:1|c|#a:b")
        await wait_for(lambda: any(s["metric"] == "tagged" for s in stand_in.series))
        await relay.stop()
    tagged = next(s for s in stand_in.series if s["metric"] == "tagged")
    assert sorted(tagged["tags"]) == ["a:b", "env:prod", "role:web", "team:core"]


async def test_a_port_clash_names_its_key_and_health_takes_set(intake, tmp_path):
    _, url = intake

    def relay_command(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "relay", *args], env={**first.env, **env}, capture_output=True,
                              text=True, timeout=60)  # fmt: skip

    async with run_relay(tmp_path, url) as first:
        udp = await asyncio.to_thread(relay_command, "run", DD_RELAY_HEALTH_PORT=str(free_port(socket.SOCK_STREAM)))
        health = await asyncio.to_thread(relay_command, "run", DD_DOGSTATSD_PORT=str(free_port()))
        port = first.env["DD_RELAY_HEALTH_PORT"]
        probe = await asyncio.to_thread(relay_command, "health", "--set", f"relay.health_port={port}",
                                        DD_RELAY_HEALTH_PORT="1")  # fmt: skip
        await first.stop()
    assert udp.returncode == 3 and f"dogstatsd_port: cannot listen on UDP 127.0.0.1:{first.udp_port}" in udp.stderr
    assert health.returncode == 3 and f"relay.health_port: cannot listen on 127.0.0.1:{port}" in health.stderr
    assert probe.returncode == 0, probe.stderr


def test_intake_without_protobuf_says_what_to_install():
    hide = "import sys; sys.modules['google'] = None; from relay.cli import main; sys.exit(main(['intake']))"
    result = subprocess.run([sys.executable, "-c", hide], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert (
        result.stderr == "intake: the stand-in decodes payloads with protobuf: pip install 'dogstatsd-relay[intake]'\n"
    )
