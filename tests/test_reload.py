"""Reload without a gap: SIGHUP or `dogstatsd-relay reload` swaps the pipeline inside the same process (same PID),
with the sockets, the stream connections and the unflushed buckets handed over."""

from __future__ import annotations

import asyncio
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter

from datadog import DogStatsd

from tests.conftest import run_relay, wait_for


def _reload_command(relay, config_path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in relay.env.items()}
    return subprocess.run(
        [sys.executable, "-m", "relay", "reload", "-c", str(config_path)], env=env, capture_output=True, text=True,
        timeout=90,
    )  # fmt: skip


def _counting_drops(client: DogStatsd) -> list[int]:
    """Every packet the client failed to send, by its own account (its telemetry counters reset as they are
    sent, so the sends themselves are watched)."""
    drops: list[int] = []
    xmit = client._xmit_packet

    def watched(packet, is_telemetry, queue_mode=False):
        sent = xmit(packet, is_telemetry, queue_mode=queue_mode)
        if not sent:
            drops.append(1)
        return sent

    client._xmit_packet = watched
    return drops


async def test_reload_under_load_from_the_official_client_loses_and_duplicates_nothing(intake, short_tmp):
    """10,000 lines/s for 30 s from the official client (half over UDP at its defaults, half over a Unix datagram
    socket with its buffering on: unbuffered, the kernel's 10-datagram queue refuses sends whatever the relay does,
    see tests/test_client_drops.py), a reload in the middle that changes dogstatsd_tags: every line is counted once at the intake,
    the points after the reload carry the new tag, and neither client saw a send error."""
    stand_in, url = intake
    config_path, uds = short_tmp / "datadog.yaml", short_tmp / "dsd.socket"
    config_path.write_text("dogstatsd_tags: ['phase:before']\n")
    seconds, per_second = 30.0, 10_000
    async with run_relay(short_tmp, url, args=("-c", str(config_path)), DD_DOGSTATSD_SOCKET=str(uds)) as relay:
        pid = relay.status()["info"]["pid"]
        # UDP with the client's defaults (a datagram a line); over the Unix socket with the client's buffering, as
        # its documentation advises there: unbuffered, at 5,000 datagrams/s, a queue of net.unix.max_dgram_qlen
        # (10 here) refuses a few percent of sends with or without a reload (see docs/OPERATIONS.md, Unix datagram clients).
        udp_client = DogStatsd(port=relay.udp_port)
        uds_client = DogStatsd(socket_path=str(uds), disable_buffering=False)
        drops_udp, drops_uds = _counting_drops(udp_client), _counting_drops(uds_client)
        sent = Counter[str]()

        def load() -> None:
            started = time.monotonic()
            tick = 0
            while (elapsed := time.monotonic() - started) < seconds:
                for _ in range(per_second // 200):  # 100 ticks a second, both clients
                    udp_client.increment("reload.udp")
                    uds_client.increment("reload.uds")
                sent["udp"] += per_second // 200
                sent["uds"] += per_second // 200
                tick += 1
                time.sleep(max(0.0, tick / 100 - elapsed))

        sender = threading.Thread(target=load)
        sender.start()
        await asyncio.sleep(seconds / 2)
        config_path.write_text("dogstatsd_tags: ['phase:after']\n")
        reloaded = await asyncio.to_thread(_reload_command, relay, config_path)
        await asyncio.to_thread(sender.join)
        uds_client.flush()
        udp_client.close_socket()
        uds_client.close_socket()
        totals = lambda name: sum(  # noqa: E731
            value for s in stand_in.series if s["metric"] == name for _, value in s["points"]
        )
        await wait_for(lambda: totals("reload.udp") >= sent["udp"] and totals("reload.uds") >= sent["uds"], 30)
        await asyncio.sleep(1.5)  # a late duplicate would show by now
        status = relay.status()
        code, _, err = await relay.stop()
    assert reloaded.returncode == 0, reloaded.stderr
    assert code == 0, err
    by_phase = Counter[str]()
    for s in stand_in.series:
        if s["metric"] in ("reload.udp", "reload.uds"):
            phase = next(t for t in s["tags"] if t.startswith("phase:"))
            by_phase[phase] += sum(value for _, value in s["points"])
    print(
        f"reliability: reload under {per_second:,} lines/s from the official client ({seconds:g} s, UDP + UDS): "
        f"sent {sent['udp']:,} + {sent['uds']:,}, at the intake {totals('reload.udp'):,.0f} + {totals('reload.uds'):,.0f}"
        f" ({by_phase['phase:before']:,.0f} before, {by_phase['phase:after']:,.0f} after the reload); client send "
        f"errors {len(drops_udp) + len(drops_uds)}; PID {pid} → {status['info']['pid']}; {reloaded.stdout.strip()}"
    )
    assert (totals("reload.udp"), totals("reload.uds")) == (sent["udp"], sent["uds"])
    assert drops_udp == [] and drops_uds == []
    assert by_phase["phase:before"] > 0 and by_phase["phase:after"] > 0
    assert status["info"]["pid"] == pid == relay.process.pid and status["info"]["reloads"] == 1


def _total(stand_in, name: str) -> float:
    """The count behind a metric's rate points, summed over what the intake received."""
    return sum(value * s["interval"] for s in stand_in.series if s["metric"] == name for _, value in s["points"])


async def _info(relay) -> dict:
    """The relay's status info, read off the event loop (the intake stand-in shares it) and empty while the
    relay does not answer yet."""
    try:
        return (await asyncio.to_thread(relay.status))["info"]
    except OSError:
        return {}


async def _wait_for_reload(relay, count: int) -> dict:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        info = await _info(relay)
        if info.get("reloads") == count:
            return info
        await asyncio.sleep(0.1)
    raise AssertionError(f"no reload #{count} within 30 s")


async def test_a_bad_configuration_is_refused_with_one_line_and_the_relay_keeps_serving(intake, short_tmp):
    """The CLI checks the file first (exit 2, one line naming the key); a SIGHUP sent by other means is refused by
    the relay itself (one ERROR line, `last_reload` in status); the CLI reports the relay's own refusal with exit 3.
    Through all of it the old pipeline keeps serving, in the same process."""
    stand_in, url = intake
    config_path, other_path = short_tmp / "datadog.yaml", short_tmp / "other.yaml"
    config_path.write_text("dogstatsd_tags: ['phase:before']\n")
    other_path.write_text("dogstatsd_tags: ['phase:other']\n")
    async with run_relay(short_tmp, url, args=("-c", str(config_path))) as relay:
        relay.send_udp(b"refusal.before:1|c")
        config_path.write_text("dogstatsd_buffer_size: lots\n")
        by_cli = await asyncio.to_thread(_reload_command, relay, config_path)
        relay.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while not (info := await _info(relay)).get("last_reload") and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        by_cli_other_file = await asyncio.to_thread(_reload_command, relay, other_path)
        relay.send_udp(b"refusal.after:1|c")
        await wait_for(lambda: _total(stand_in, "refusal.before") == _total(stand_in, "refusal.after") == 1)
        after = await _info(relay)
        code, _, err = await relay.stop()
    expected = "config: dogstatsd_buffer_size: must be an integer, got 'lots'"
    assert (by_cli.returncode, by_cli.stdout, by_cli.stderr.strip()) == (2, "", expected)
    assert info["last_reload"]["result"] == f"refused: {expected}"
    assert (by_cli_other_file.returncode, by_cli_other_file.stderr.strip()) == (3, f"reload: refused: {expected}")
    refusals = [line for line in err.splitlines() if "reload refused" in line]
    assert len(refusals) == 2 and all(expected in line and "ERROR" in line for line in refusals), refusals
    assert after["pid"] == relay.process.pid and after.get("reloads", 0) == 0 and code == 0
    tags = {tag for s in stand_in.series if s["metric"].startswith("refusal.") for tag in s["tags"]}
    assert "phase:before" in tags and "phase:other" not in tags


async def test_stream_clients_and_the_health_port_stay_connected_across_a_reload(intake, short_tmp):
    """A Unix stream client keeps its connection, even with half a frame sent before the reload and the rest
    after; clients that connect throughout the swap, and /healthz asked throughout, are queued by the kernel and
    answered, never refused; the unflushed counts move to the new pipeline, counted once."""
    stand_in, url = intake
    stream = short_tmp / "dsd.stream"
    frame = lambda line: struct.pack("<I", len(line)) + line  # noqa: E731
    async with run_relay(short_tmp, url, DD_DOGSTATSD_STREAM_SOCKET=str(stream), DD_RELAY_FLUSH_INTERVAL="5") as relay:
        client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        client.connect(str(stream))
        split = frame(b"stream.split:1|c")
        client.sendall(frame(b"stream.before:1|c") + split[:6])
        await wait_for(lambda: relay.status()["messages"]["metric"]["ok"] >= 1)
        churned, failures, reloaded = Counter[str](), [], threading.Event()

        def churn() -> None:
            """A new connection, a line and /healthz every 20 ms until the reload is done."""
            while not reloaded.is_set():
                try:
                    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:
                        other.connect(str(stream))
                        other.sendall(frame(b"stream.churn:1|c"))
                    churned["lines"] += 1
                    with urllib.request.urlopen(relay.health + "/healthz", timeout=10) as response:
                        churned[f"healthz {response.status}"] += 1
                except OSError as error:
                    failures.append(repr(error))
                time.sleep(0.02)

        churner = threading.Thread(target=churn)
        churner.start()
        relay.process.send_signal(signal.SIGHUP)
        info = await _wait_for_reload(relay, 1)
        reloaded.set()
        await asyncio.to_thread(churner.join)
        client.sendall(split[6:] + frame(b"stream.after:1|c"))
        names = ("stream.before", "stream.split", "stream.after")
        expected = {**dict.fromkeys(names, 1.0), "stream.churn": float(churned["lines"])}
        await wait_for(lambda: all(_total(stand_in, name) == count for name, count in expected.items()), 20)
        await asyncio.sleep(1.5)  # a duplicate would show by now
        totals = {name: _total(stand_in, name) for name in expected}
        client.close()
        code, _, err = await relay.stop()
    print(f"reliability: stream clients across a reload: {dict(churned)}, failures {failures}")
    assert totals == expected and failures == []
    assert churned["lines"] == churned["healthz 200"] > 3
    assert info["pid"] == relay.process.pid and code == 0, err


async def test_a_sharded_relay_refuses_a_reload_in_status_and_keeps_serving(intake, short_tmp):
    """relay.workers > 1 cannot hand its workers over: SIGHUP is refused (never an exit), and the CLI says so."""
    stand_in, url = intake
    config_path = short_tmp / "datadog.yaml"
    config_path.write_text("relay.workers: 2\n")
    async with run_relay(short_tmp, url, args=("-c", str(config_path))) as relay:
        reloaded = await asyncio.to_thread(_reload_command, relay, config_path)
        relay.send_udp(b"sharded.after:1|c")
        await wait_for(lambda: _total(stand_in, "sharded.after") == 1, 20)
        code, _, err = await relay.stop()
    assert reloaded.returncode == 3, reloaded.stdout + reloaded.stderr
    assert reloaded.stderr.strip() == (
        "reload: refused: reload is not supported with relay.workers > 1; restart the relay to apply a change"
    )
    assert code == 0, err
