"""The memory scenario: the relay at its defaults inside a memory cgroup (the limit a container's manifest gives
it), a steady counter, then a spike of new contexts. Is it OOM-killed, does the steady metric still arrive whole,
is the folding counted, and how close to the limit did the cgroup come.

`python -m benchmarks run --scenario memory-spike --no-record` (RELAY_BENCH_MEMORY_LIMITS=512Mi,1Gi,128Mi; "none"
runs in a cgroup without a limit, measured only). `memory-spike-filterlist` adds metric_tag_filterlist, which drops
the spike's request_id: one context, and all its counts should arrive.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from aiohttp import web

from benchmarks.cgroup import MemoryCgroup
from benchmarks.harness import LOAD_CPU, Relay, _wait, free_port, pinned, send, write_datagrams
from benchmarks.load import BASELINE, Result, labelled_relay
from relay.config_checks import parse_bytes
from relay.intake.server import Intake

LIMITS_VARIABLE = "RELAY_BENCH_MEMORY_LIMITS"
LIMITS = "512Mi,1Gi,128Mi"
STEADY = b"steady.count:1|c"  # one count per datagram: a lost datagram is a lost count
STEADY_RATE = 1000  # counts/s, for the whole window
SPIKE_AT = 3.0  # seconds after the relay answers
SPIKE_LINES = 2_000_000  # each a new context of one metric
SPIKE_RATE = 200_000  # lines/s
PER_DATAGRAM = 20
AFTER_SPIKE = 15.0  # seconds of steady traffic after the spike, then SIGTERM (the final flush)
FILTERLIST = json.dumps([{"metric_name": "spike.req", "action": "exclude", "tags": ["request_id"]}])


class TallyIntake(Intake):
    """The intake stand-in, summing each metric's counts and its distinct contexts as payloads arrive, and keeping
    no series: a spike's millions of series would not fit, and a bounded `keep` would drop the steady one."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.counts: Counter[str] = Counter()  # rates: Σ value * interval; counts: Σ value
        self.contexts: dict[str, set[int]] = {}

    def _decode(self, path: str, raw: bytes) -> int:
        items = super()._decode(path, raw)
        for series in self.series:
            name = series["metric"]
            self.contexts.setdefault(name, set()).add(hash((series["host"], *series["tags"])))
            if series["type"] in ("rate", "count"):
                scale = series["interval"] or 1 if series["type"] == "rate" else 1
                self.counts[name] += sum(value for _, value in series["points"]) * scale
        self.series.clear()
        self.sketches.clear()
        return items

    def tally(self) -> dict[str, Any]:
        return {
            "counts": {name: round(total, 3) for name, total in self.counts.items()},
            "contexts": {name: len(hashes) for name, hashes in self.contexts.items()},
        }

    def app(self) -> web.Application:
        app = super().app()
        app.router.add_get("/_tally", self._answer)
        return app

    async def _answer(self, request: web.Request) -> web.Response:
        return web.json_response(self.tally())


@contextmanager
def tally_intake() -> Iterator[str]:
    """A TallyIntake in its own process on the load core, outside the cgroup; yields its URL."""
    port = free_port(socket.SOCK_STREAM)
    process = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.memory_scenarios", str(port)], preexec_fn=pinned(LOAD_CPU)
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait(lambda: read_tally(url) is not None, "tally intake")
        yield url
    finally:
        process.terminate()
        process.wait()


def read_tally(url: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(url + "/_tally", timeout=30) as response:
            return json.load(response)
    except OSError:
        return None


class SteadyCounter(threading.Thread):
    """`steady.count` at `rate` datagrams/s, paced every 10 ms, until stopped; `sent` is what left the socket."""

    def __init__(self, port: int, rate: int = STEADY_RATE) -> None:
        super().__init__(daemon=True)
        self.port, self.rate, self.sent = port, rate, 0
        self.stopped = threading.Event()

    def run(self) -> None:
        started = time.monotonic()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            while not self.stopped.wait(0.01):
                due = int((time.monotonic() - started) * self.rate)
                while self.sent < due:
                    sock.sendto(STEADY, ("127.0.0.1", self.port))
                    self.sent += 1

    def stop(self) -> int:
        self.stopped.set()
        self.join()
        return self.sent


def spike_file() -> Path:
    lines = [b"spike.req:1|c|#request_id:%d,env:prod" % i for i in range(SPIKE_LINES)]
    return write_datagrams([b"\n".join(lines[i : i + PER_DATAGRAM]) for i in range(0, SPIKE_LINES, PER_DATAGRAM)])


def watch(relay: Relay, until: float, last: dict[str, Any]) -> None:
    """Poll the status until `until` (monotonic; at least once), keeping the last answer and the most contexts
    seen. A relay that was OOM-killed answers no more, but the window keeps its length (the steady count with it)."""
    while True:
        status = relay.status() if relay.process.poll() is None else None
        if status is not None:
            contexts = status.get("aggregator", {}).get("contexts", 0)
            last.update(status, max_contexts_seen=max(contexts, last.get("max_contexts_seen", 0)))
        if time.monotonic() >= until:
            return
        time.sleep(0.5)


def spike_window(label: str, limit: int | None, file: Path, filterlist: bool) -> dict[str, Any]:
    """One relay in a fresh cgroup and a fresh intake: steady counts, the spike at SPIKE_AT, SIGTERM at the end."""
    env = {"DD_METRIC_TAG_FILTERLIST": FILTERLIST} if filterlist else {}
    last: dict[str, Any] = {}
    with tally_intake() as url, MemoryCgroup(limit) as group, ThreadPoolExecutor(1) as pool:
        relay = labelled_relay(url, label, preexec=group.preexec, **env)
        steady = SteadyCounter(relay.port)
        try:
            steady.start()
            watch(relay, time.monotonic() + SPIKE_AT, last)
            seconds = SPIKE_LINES / SPIKE_RATE
            spike = pool.submit(send, f"udp:{relay.port}", file, SPIKE_RATE / PER_DATAGRAM, seconds)
            watch(relay, time.monotonic() + seconds + AFTER_SPIKE, last)
            sent = steady.stop()
            watch(relay, 0, last)  # once more, before SIGTERM
            stopped = time.monotonic()
            relay.stop()
            shutdown = time.monotonic() - stopped
        finally:
            steady.stop()
            relay.stop()
        tally = read_tally(url) or {"counts": {}, "contexts": {}}
        return row(label, limit, group, relay.process.returncode, last, tally, sent, spike.result(), shutdown)


def row(
    label: str, limit: int | None, group: MemoryCgroup, code: int, status: dict[str, Any], tally: dict[str, Any],
    steady_sent: int, spike: dict[str, float], shutdown: float,
) -> dict[str, Any]:  # fmt: skip
    """What one window showed, from the cgroup, the relay's last status and the intake's tally."""
    overflow = [r for r in status.get("context_overflow", []) if r["metric"] == "spike.req"]
    udp = status.get("listeners", {}).get("udp", {})
    peak = group.peak_bytes()
    return {
        "relay": label,
        "limit_mib": None if limit is None else limit // 2**20,
        "exit_code": code,
        "oom_kills": group.oom_kills(),
        "steady_at_intake": round(tally["counts"].get("steady.count", 0)),
        "steady_sent": steady_sent,
        "spike_lines_sent": int(spike["sent"]) * PER_DATAGRAM,
        "spike_at_intake": round(tally["counts"].get("spike.req", 0)),
        "spike_contexts_at_intake": tally["contexts"].get("spike.req", 0),
        "contexts": status.get("max_contexts_seen", 0),  # the most the status showed: a killed relay had more
        "folded_lines": max((r["contexts"] for r in overflow), default=0),
        "dropped": status.get("dropped", {}),
        "lines_parsed": status.get("messages", {}).get("metric", {}).get("ok", 0),
        "kernel_drops": udp.get("kernel_drops", 0),  # datagrams: the socket buffer was full
        "queue_drops": udp.get("queue_drops", 0),  # datagrams: the relay's receive queue was full
        "peak_mib": round(peak / 2**20),
        "peak_percent_of_limit": None if limit is None else round(100 * peak / limit, 1),
        "memory_status": status.get("memory"),
        "shutdown_seconds": round(shutdown, 1),
    }


def memory_spike(seconds: float, filterlist: bool = False) -> Result:
    """Each limit of RELAY_BENCH_MEMORY_LIMITS, for this relay (and, with --baseline REV, that revision's, as
    "before"). `seconds` is not used: the window is the spike's."""
    limits = [None if text == "none" else parse_bytes(text) for text in
              os.environ.get(LIMITS_VARIABLE, LIMITS).split(",")]  # fmt: skip
    labels = ["after", "before"] if BASELINE["tree"] is not None else ["after"]
    file = spike_file()
    rows = []
    try:
        for limit in limits:
            for label in labels:
                rows.append(spike_window(label, limit, file, filterlist))
                print(table(rows[-1:], header=len(rows) == 1), file=sys.stderr, flush=True)
    finally:
        file.unlink()
    name = "memory-spike-filterlist" if filterlist else "memory-spike"
    summary: dict[str, Any] = {
        "steady_counts_per_s": STEADY_RATE,
        "spike": f"{SPIKE_LINES:,} new contexts, {SPIKE_RATE:,} lines/s, {PER_DATAGRAM} a datagram, {SPIKE_AT:g} s in",
        "filterlist": FILTERLIST if filterlist else None,
        **{f"{r['relay']}_{r['limit_mib'] or 'none'}": r for r in rows},
    }
    print(table(rows), flush=True)
    return Result(name, summary, [], {"kind": "none"})


COLUMNS = (
    ("relay", "relay"), ("limit MiB", "limit_mib"), ("exit", "exit_code"), ("OOM kills", "oom_kills"),
    ("steady at intake / sent", "steady"), ("contexts", "contexts"), ("folded lines", "folded_lines"),
    ("spike at intake / sent", "spike"), ("spike contexts at intake", "spike_contexts_at_intake"),
    ("kernel / queue drops", "drops"), ("peak MiB", "peak_mib"), ("peak % of limit", "peak_percent_of_limit"),
)  # fmt: skip


def table(rows: list[dict[str, Any]], header: bool = True) -> str:
    """The rows as a Markdown table, for RESULTS.md."""
    cells = [
        {**r, "steady": f"{r['steady_at_intake']:,} / {r['steady_sent']:,}",
         "spike": f"{r['spike_at_intake']:,} / {r['spike_lines_sent']:,}",
         "drops": f"{r['kernel_drops']:,} / {r['queue_drops']:,}"}
        for r in rows
    ]  # fmt: skip
    lines = [f"| {' | '.join(title for title, _ in COLUMNS)} |", "|" + "---|" * len(COLUMNS)] if header else []
    for cell in cells:
        values = [cell[key] if cell[key] is not None else "none" for _, key in COLUMNS]
        lines.append("| " + " | ".join(f"{v:,}" if isinstance(v, int) else str(v) for v in values) + " |")
    return "\n".join(lines)


async def serve(port: int) -> None:
    """`python -m benchmarks.memory_scenarios PORT`: the TallyIntake, until terminated."""
    await TallyIntake().start("127.0.0.1", port)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
