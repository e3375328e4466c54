"""The reader thread (relay/_reader.c): sockets drain while the interpreter is busy; what overflows is counted.

Each test blocks its own event loop with time.sleep, as a long flush or a check would block the relay's, and
sends real datagrams to a real socket meanwhile.
"""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from datadog.dogstatsd.base import DogStatsd

from relay.runtime.listen import Listeners
from relay.telemetry.stats import Stats
from tests.conftest import config, free_port, run_relay, wait_for


@pytest.fixture(autouse=True)
def _built(native_reader_module: Any) -> None:
    """Every test here needs the native reader: required in CI, skipped with the reason elsewhere."""


async def start(received: list[bytes], **overrides: object) -> tuple[Listeners, Stats]:
    stats = Stats()
    listeners = Listeners(
        config(**{"dogstatsd_port": free_port(), "relay__probe_interval": 0, **overrides}),
        stats,
        lambda data, transport: received.append(data),
    )
    await listeners.start()
    return listeners, stats


def lines(received: list[bytes]) -> list[bytes]:
    return [line for data in received for line in data.split(b"\n") if line]


async def test_a_busy_interpreter_loses_no_datagram():
    """20,000 datagrams while the loop sleeps for a second: the socket buffer alone would hold a few thousand."""
    received: list[bytes] = []
    listeners, stats = await start(received)
    port = listeners.config.dogstatsd_port
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        started = time.monotonic()
        for i in range(20_000):
            client.sendto(b"busy.line:%d|c" % i, ("127.0.0.1", port))
        time.sleep(max(0.0, 1 - (time.monotonic() - started)))  # the loop is blocked the whole time
    await wait_for(
        lambda: stats.listen.packets["udp"] + stats.gauges.by_listener("kernel_drops")["udp"] >= 20_000, timeout=10
    )
    await listeners.stop()
    assert len(lines(received)) == 20_000
    assert stats.gauges.by_listener("kernel_drops")["udp"] == 0 and stats.gauges.by_listener("queue_drops")["udp"] == 0
    assert stats.listen.packets["udp"] == 20_000


async def test_a_full_queue_stops_the_reading_and_every_datagram_is_delivered_or_counted():
    """Past relay.receive_queue_bytes the thread waits for the loop: the socket's buffer (here the OS default)
    holds what follows, then the kernel drops and counts. Nothing vanishes in between."""
    received: list[bytes] = []
    listeners, stats = await start(received, relay__receive_queue_bytes=10_000, dogstatsd_so_rcvbuf=0)
    port = listeners.config.dogstatsd_port
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        for _ in range(2000):
            client.sendto(b"q:1|c|#" + b"x" * 93, ("127.0.0.1", port))  # 100 bytes: 100 fill the queue
        time.sleep(0.3)  # the loop is blocked: the queue fills, then the kernel's buffer

    def accounted() -> int:
        return (
            stats.listen.packets["udp"]
            + stats.gauges.by_listener("queue_drops")["udp"]
            + stats.gauges.by_listener("kernel_drops")["udp"]
        )

    await wait_for(lambda: accounted() >= 2000, timeout=10)
    total, kernel, delivered = accounted(), stats.gauges.by_listener("kernel_drops")["udp"], stats.listen.packets["udp"]
    await listeners.stop()  # /proc no longer shows a closed socket's drops
    assert total == 2000  # each datagram delivered or counted, once
    assert kernel > 0 and 100 <= delivered < 2000


async def test_truncation_is_counted_on_the_thread_as_on_the_loop():
    received: list[bytes] = []
    listeners, stats = await start(received, dogstatsd_buffer_size=100)
    port = listeners.config.dogstatsd_port
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.sendto(b"short:1|c", ("127.0.0.1", port))
        client.sendto(b"long:1|c|#" + b"t" * 200, ("127.0.0.1", port))
        client.sendto(b"exact:1|c|#" + b"t" * 89, ("127.0.0.1", port))  # 100 bytes: kept whole
    await wait_for(lambda: stats.listen.packets["udp"] == 3)
    await listeners.stop()
    assert stats.listen.truncated["udp"] == 1
    assert sorted(map(len, lines(received))) == [9, 100, 100]


async def test_stop_delivers_what_the_queue_and_the_socket_still_hold():
    received: list[bytes] = []
    listeners, _ = await start(received)
    port = listeners.config.dogstatsd_port
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        for i in range(5000):
            client.sendto(b"late:%d|c" % i, ("127.0.0.1", port))
    await listeners.stop()  # no loop turn in between: everything is still queued or in the kernel
    assert len(lines(received)) == 5000


def test_the_queue_maps_memory_as_datagrams_come_and_gives_a_burst_back_once_delivered(native_reader_module):
    """relay.receive_queue_bytes is a bound, not an allocation: nothing is mapped before the first datagram, and
    the megabytes a burst took are unmapped once the loop has taken it all."""
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
    ):
        server.bind(("127.0.0.1", 0))
        reader = native_reader_module.Reader(server.fileno(), 8192, 64 * 2**20)
        try:
            assert reader.buffer_bytes == 0
            for _ in range(100_000):  # 2 MB queued, while nothing is taken (the kernel may drop some meanwhile)
                if reader.queued_bytes >= 2 * 2**20:
                    break
                client.sendto(b"burst:1|c|#" + b"x" * 989, server.getsockname())
            burst = reader.buffer_bytes
            while reader.take(256 * 1024)[3]:
                pass
            drained = reader.buffer_bytes
        finally:
            reader.stop()
    assert burst >= 2 * 2**20 and drained <= 2 * 2**20  # each buffer keeps at most 1 MiB


async def test_the_event_loop_reader_stays_for_relay_receive_queue_bytes_0():
    received: list[bytes] = []
    listeners, stats = await start(received, relay__receive_queue_bytes=0)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        client.sendto(b"loop:1|c", ("127.0.0.1", listeners.config.dogstatsd_port))
    await wait_for(lambda: received)
    await listeners.stop()
    assert "udp" not in stats.gauges.by_listener("queue_bytes")
    assert received == [b"loop:1|c"]


async def test_the_official_client_bursting_over_a_unix_socket_loses_nothing_it_sent(intake, tmp_path):
    """The Python client at its defaults (no buffering, a non-blocking socket) drops on EAGAIN when the socket's
    queue is full (net.unix.max_dgram_qlen, often 10), and counts it; whatever its send accepted must arrive.
    How many it manages to send depends on how soon the reader wakes (benchmarks: client-uds)."""
    _, url = intake
    path = Path(tmp_path / "dsd.socket")
    sent, tries = 600, 5
    async with run_relay(tmp_path, url, DD_DOGSTATSD_SOCKET=str(path), DD_RELAY_FLUSH_INTERVAL="60") as relay:
        accepted, arrived = [], []

        def packets() -> int:
            return int(relay.status()["listeners"]["uds"]["packets"])

        for attempt in range(tries):
            before = packets()
            client = DogStatsd(socket_path=str(path))  # its defaults: its own telemetry after 10 s, none here
            for i in range(sent):
                client.increment("burst.uds", tags=[f"try:{attempt}", f"i:{i % 10}"])
            client.close_socket()
            accepted.append(client.packets_sent)
            await wait_for(lambda expected=before + client.packets_sent: packets() >= expected)
            await asyncio.sleep(0.1)
            arrived.append(packets() - before)
        await relay.stop()
    print(f"reliability: official client over UDS, {sent} metrics a try: sent {accepted}, arrived {arrived}")
    assert arrived == accepted
