"""A flood of new contexts (1,000,000 a minute): contexts stay capped, memory stays flat, nothing goes unseen."""

from __future__ import annotations

import asyncio
import socket
import statistics
import time
from pathlib import Path

from tests.conftest import run_relay, wait_for

RATE = 1_000_000 / 60  # new contexts per second
SECONDS = 12


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def test_context_flood_keeps_memory_flat_and_counts_everything(intake, tmp_path):
    _, url = intake
    async with run_relay(tmp_path, url, DD_RELAY_MAX_CONTEXTS="20000", DD_DOGSTATSD_SO_RCVBUF="4194304") as relay:
        samples: list[tuple[float, float]] = []
        sent, started = 0, time.monotonic()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            while (elapsed := time.monotonic() - started) < SECONDS:
                while sent < elapsed * RATE:
                    lines = [b"flood.requests:1|c|#request_id:%d,env:prod" % (sent + i) for i in range(20)]
                    sock.sendto(b"\n".join(lines), ("127.0.0.1", relay.udp_port))
                    sent += 20
                samples.append((elapsed, rss_mib(relay.process.pid)))
                await asyncio.sleep(0.05)
        udp = lambda: relay.status()["listeners"]["udp"]  # noqa: E731
        await wait_for(lambda: udp()["packets"] + udp()["kernel_drops"] == sent // 20, timeout=30)
        status = relay.status()
        await relay.stop()
    late = [rss for elapsed, rss in samples if elapsed > SECONDS / 2]
    print(
        f"reliability: flood of {sent:,} new contexts in {SECONDS} s (1,000,000 a minute), relay.max_contexts 20,000: "
        f"RSS {min(late):.0f}-{max(late):.0f} MiB in the second half, peak {max(rss for _, rss in samples):.0f} MiB, "
        f"{status['aggregator']['contexts']:,} contexts, {status['listeners']['udp']['kernel_drops']} datagrams "
        "dropped by the kernel (and counted)"
    )
    # Flat: between the second and the last quarter of the flood (~100,000 new contexts) the median RSS grows by less
    # than 32 MiB; with no context limit it grows by ~115 MiB over the same span (measured, 2026-11). Bounded, it
    # grows 5-10 MiB, up to 19 MiB with both cores saturated by other work: the allocator's fragmentation as the
    # capped caches fill and clear, which levels off (82 to 89 MiB over 30 s). Medians, because single samples
    # swing with the allocator, the GC and the 10 s flush.
    quarter = len(samples) // 4
    second, last = (
        statistics.median(rss for _, rss in part) for part in (samples[quarter : 2 * quarter], samples[-quarter:])
    )
    assert last - second < 32 and max(late) < 130, samples
    assert status["aggregator"]["contexts"] <= 22_000
    overflow = {(row["metric"], row["tag_key"]): row["contexts"] for row in status["context_overflow"]}
    read = status["listeners"]["udp"]["packets"]
    assert overflow[("flood.requests", "request_id")] > read * 20 // 2
    assert status["messages"]["metric"]["ok"] == read * 20  # every datagram read was counted, line by line
