"""The reader scenarios: the relay "before" and "after" (another revision with --baseline) and the C reader,
on the same load; first sights, histogram flushes, the official client over a Unix socket, hostile bursts."""

from __future__ import annotations

import os
import random
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.harness import (
    HERE,
    LOAD_CPU,
    SERVER_CPU,
    CReader,
    Intake,
    Relay,
    Server,
    Window,
    compiled,
    free_port,
    measure,
    pinned,
    process_usage,
    write_datagrams,
)
from benchmarks.load import (
    BASELINE,
    READERS,
    SEED,
    Result,
    datagrams,
    labelled_relay,
    sweep_each,
)


def reader_fixed_rates(seconds: float, rates: tuple[int, ...] = (300_000, 500_000, 800_000)) -> Result:
    """The 6-type mix offered at fixed rates (lines/s) to the relay before and after, at its defaults otherwise:
    the share of lines accepted, flushes included (a window spans two or more of them), and how long the last
    flush took."""
    file = write_datagrams(datagrams(20, 1000, True, 5000))
    intake = Intake()
    summary: dict[str, Any] = {"lines_per_datagram": 20, "contexts": 1000, "type_mix": True}
    windows: list[Window] = []
    try:
        for label in READERS:
            relay = labelled_relay(intake.url, label)
            try:
                for rate in rates:
                    window = measure(relay, file, 20, rate / 20, seconds)
                    windows.append(window)
                    summary[f"{label}_accepted_percent_at_{rate // 1000}k"] = round(100 * (1 - window.loss), 3)
                    flush = (relay.status() or {}).get("aggregator", {}).get("last_flush_seconds")
                    summary[f"{label}_last_flush_seconds_at_{rate // 1000}k"] = flush
            finally:
                relay.stop()
    finally:
        intake.stop()
        file.unlink()
    return Result("reader-mix", summary, windows, {"kind": "load", "windows": [w.as_dict() for w in windows]})


def mix_at(seconds: float, rate: int = 3_000_000) -> Result:
    """The 6-type mix at a fixed `rate` lines/s for `seconds`, nothing pinned (relay and generator), to the relay
    and (with --baseline REV) the relay of that revision: lossless or not, and where it lost."""
    file = write_datagrams(datagrams(20, 1000, True, 5000))
    intake = Intake()
    everywhere = set(os.sched_getaffinity(0))
    summary: dict[str, Any] = {"lines_per_datagram": 20, "contexts": 1000, "type_mix": True, "offered_lines_per_s":
                               rate, "seconds": seconds, "pinned": "nothing"}  # fmt: skip
    windows: list[Window] = []
    try:
        for label in READERS:
            relay = labelled_relay(intake.url, label, cpus=everywhere)
            try:
                window = measure(relay, file, 20, rate / 20, seconds, load_cpus=None)
            finally:
                relay.stop()
            windows.append(window)
            sent_lines = window.sent_datagrams * 20
            summary[f"{label}_sent_lines_per_s"] = round(sent_lines / window.seconds)
            summary[f"{label}_accepted_percent"] = round(100 * (1 - window.loss), 3)
            summary[f"{label}_kernel_drops"], summary[f"{label}_queue_drops"] = window.kernel_drops, window.queue_drops
    finally:
        intake.stop()
        file.unlink()
    return Result(
        f"mix-{rate // 1_000_000}m", summary, windows, {"kind": "load", "windows": [w.as_dict() for w in windows]}
    )


def reader_new_contexts(seconds: float, rates: tuple[int, ...] = (50_000, 100_000, 200_000)) -> Result:
    """300,000 counter contexts never seen before, offered once at each rate (lines/s), 20 a datagram, to a fresh
    relay before and after; then 1,000,000 at the highest rate, with the relay's RSS. `seconds` is not used."""
    summary: dict[str, Any] = {"lines_per_datagram": 20}
    windows: list[Window] = []
    intake = Intake()
    try:
        for count, offered in [*((300_000, rate) for rate in rates), (1_000_000, rates[-1])]:
            names = [f"bench.new.{i % 1000}:1|c|#env:bench,id:{i}" for i in range(count)]
            file = write_datagrams([("\n".join(names[i : i + 20])).encode() for i in range(0, count, 20)])
            for label in READERS:
                relay = labelled_relay(intake.url, label, DD_RELAY_FLUSH_INTERVAL="10")
                try:
                    window = measure(relay, file, 20, offered / 20, count / offered)
                    _, rss = process_usage(relay.process.pid)
                finally:
                    relay.stop()
                windows.append(window)
                key = f"{label}_{count // 1000}k_at_{offered // 1000}k"
                summary[f"{key}_accepted_percent"] = round(100 * (1 - window.loss), 2)
                summary[f"{key}_counted_lines"] = window.server_counted_lines
                summary[f"{key}_rss_mib"] = round(rss / 2**20)
            file.unlink()
    finally:
        intake.stop()
    return Result("reader-new-contexts", summary, windows, {"kind": "none"})


def reader_throughput(seconds: float, per_datagram: int) -> Result:
    """Counters, `per_datagram` lines a datagram: the highest rate with < 0.1 % loss, and flat out, for the relay
    before and after and for the C reader (which only counts datagrams) on the same load."""
    file = write_datagrams(datagrams(per_datagram, 1000, False, max(5000, 100_000 // per_datagram)))
    intake = Intake()
    summary: dict[str, Any] = {"lines_per_datagram": per_datagram}
    servers: list[Callable[[], Server]] = [
        *(lambda label=label: labelled_relay(intake.url, label) for label in READERS),
        CReader,
    ]
    try:
        windows = sweep_each(servers, file, per_datagram, seconds, summary)
    finally:
        intake.stop()
        file.unlink()
    name = f"reader-udp-{per_datagram}"
    return Result(name, summary, windows, {"kind": "load", "windows": [w.as_dict() for w in windows]})


FIRST_SIGHT = """
import json, sys, time
from relay.config import Config
try:  # this layout, or the flat one of revisions before it (a --baseline)
    from relay.pipeline.aggregate import Aggregator
    from relay.pipeline.enrich import Enricher
    from relay.pipeline.ingest import Ingest
    from relay.telemetry.stats import Stats
    from relay.runtime.loop import LongLivedObjects
except ImportError:
    from relay.aggregate import Aggregator
    from relay.enrich import Enricher
    from relay.ingest import Ingest
    from relay.telemetry import Stats
    try:  # the relay's own collector policy, where the version has one
        from relay.server import LongLivedObjects
    except ImportError:
        LongLivedObjects = None
collector = LongLivedObjects() if LongLivedObjects is not None else None
count = int(sys.argv[1])
lines = [f"bench.new.{i % 1000}:1|c|#env:bench,id:{i}".encode() for i in range(count)]
grams = [b"\\n".join(lines[i : i + 20]) for i in range(0, count, 20)]
config = Config.load(None, {"DD_HOSTNAME": "bench"})
stats = Stats()
ingest = Ingest(config, stats, Enricher(config), Aggregator(config, stats))
started = last_freeze = time.perf_counter()
for gram in grams:
    ingest.datagram(gram, "udp", 1000.0)
    if collector is not None and time.perf_counter() - last_freeze >= 0.5:  # the relay's half-second tick
        collector.freeze()
        last_freeze = time.perf_counter()
print(json.dumps({"per_s": count / (time.perf_counter() - started), "contexts": ingest.aggregator.contexts}))
"""


def first_sight(seconds: float, count: int = 300_000, runs: int = 3) -> Result:
    """In one process on one core, as the relay's ingest does it: `count` counter contexts never seen before, 20
    a datagram, through the ingest path of this relay and of the 'before' one (the best of `runs` each). Without
    --baseline, 'before' is this relay with its first sight learned in Python. `seconds` is not used."""
    import json
    import subprocess
    import sys

    summary: dict[str, Any] = {"contexts": count}
    for label in READERS:
        tree = BASELINE["tree"] if label == "before" else None
        env = {**os.environ, "PYTHONPATH": str(tree or HERE.parent)}
        script = FIRST_SIGHT
        if label == "before" and tree is None:  # this relay, learning first sights in Python
            script = script.replace("started = last_freeze", "ingest.learner = None\nstarted = last_freeze")
        rates = []
        for _ in range(runs):
            out = subprocess.run(
                [sys.executable, "-c", script, str(count)], env=env, capture_output=True, text=True, check=True,
                preexec_fn=pinned(SERVER_CPU), cwd=tree or HERE.parent,
            ).stdout  # fmt: skip
            rates.append(json.loads(out)["per_s"])
        summary[f"{label}_new_contexts_per_s"] = round(max(rates))
    summary["ratio_after_to_before"] = round(
        summary["after_new_contexts_per_s"] / summary["before_new_contexts_per_s"], 2
    )
    return Result("first-sight", summary, [], {"kind": "none"})


HISTOGRAM_FLUSH = """
import gc, json, random, resource, sys, time
from relay.pipeline import buckets as accumulators
from relay.pipeline.aggregate import Aggregator
from relay.config import Config
from relay.pipeline.enrich import Enricher
from relay.pipeline.ingest import Ingest
from relay.telemetry.stats import Stats
packed = sys.argv[1] == "packed"
if not packed:  # as before: Python floats in lists until the flush, sorted there
    accumulators._summary_in_c = accumulators._pack_in_c = None
rng = random.Random(20261201)
lines = [f"bench.h.{i % 333}:{rng.uniform(0, 500):.3f}|{'h' if i % 2 else 'ms'}{'|@0.5' if i % 3 == 0 else ''}"
         f"|#env:bench".encode() for i in range(100_000)]
grams = [b"\\n".join(lines[i : i + 20]) for i in range(0, len(lines), 20)]
config = Config.load(None, {"DD_HOSTNAME": "bench"})
stats = Stats()
aggregator = Aggregator(config, stats)
ingest = Ingest(config, stats, Enricher(config), aggregator)
for _ in range(17):  # 1.7 M samples in one bucket, packed as the relay packs them twice a second
    for gram in grams:
        ingest.datagram(gram, "udp", 1001.0)
    if packed:
        aggregator.fold_samples()
gc.disable()
started = time.perf_counter()
flushed = aggregator.flush(1010)
seconds = time.perf_counter() - started
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"flush_seconds": seconds, "peak_rss_mib": peak, "series": len(flushed.series)}))
"""


def histogram_flush(seconds: float) -> Result:
    """In one process: 1.7 M histogram and timer samples (a third with @0.5) on 333 contexts in one bucket, then
    its flush; as Python floats sorted at flush (before), and packed into doubles and summarised in C (after).
    `seconds` is not used."""
    import json
    import subprocess
    import sys

    summary: dict[str, Any] = {"samples": 1_700_000, "contexts": 333}  # h and ms of one name share a context
    for label, mode in (("before", "lists"), ("after", "packed")):
        out = subprocess.run(
            [sys.executable, "-c", HISTOGRAM_FLUSH, mode], env={**os.environ, "PYTHONPATH": str(HERE.parent)},
            capture_output=True, text=True, check=True, preexec_fn=pinned(SERVER_CPU), cwd=HERE.parent,
        ).stdout  # fmt: skip
        measured = json.loads(out)
        summary[f"{label}_flush_seconds"] = round(measured["flush_seconds"], 3)
        summary[f"{label}_peak_rss_mib"] = round(measured["peak_rss_mib"])
        summary[f"{label}_series"] = measured["series"]
    return Result("histogram-flush", summary, [], {"kind": "none"})


CLIENT_BURSTS = """
import sys
from datadog.dogstatsd.base import DogStatsd
client = DogStatsd(socket_path=sys.argv[1])  # its defaults: no buffering, a non-blocking socket, drops on EAGAIN
tags = [[f"i:{i}"] for i in range(10)]
send = (
    lambda i: client.increment("bench.uds.c", tags=tags[i % 10]),
    lambda i: client.gauge("bench.uds.g", i, tags=tags[i % 10]),
    lambda i: client.histogram("bench.uds.h", i, tags=tags[i % 10]),
    lambda i: client.distribution("bench.uds.d", i, tags=tags[i % 10]),
    lambda i: client.timing("bench.uds.ms", i, tags=tags[i % 10]),
    lambda i: client.set("bench.uds.s", i, tags=tags[i % 10]),
)
for _ in sys.stdin:  # one burst a line
    for i in range(int(sys.argv[2])):
        send[i % 6](i)
    print(client.packets_sent, flush=True)
client._last_flush_time = 0  # at the end, its telemetry now: it rides on the next metric, every 10 s otherwise
client.increment("bench.uds.end")
"""


class _Client:
    """The official Python client in a process of its own, sending a burst of `metrics` (c g h d ms s in turn)
    on each request; unpinned unless `cpus` is given."""

    def __init__(self, path: str, metrics: int, cpus: set[int] | None) -> None:
        import subprocess
        import sys

        self.process = subprocess.Popen(
            [sys.executable, "-c", CLIENT_BURSTS, path, str(metrics)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True, preexec_fn=pinned(cpus) if cpus else None,
        )  # fmt: skip

    def burst(self) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("\n")
        self.process.stdin.flush()
        self.process.stdout.readline()

    def stop(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=30)


def _bursts(path: str, count: Callable[[], int], metrics: int, bursts: int, cpus: set[int] | None) -> list[float]:
    """The share of each burst that arrived, in percent; bursts start 1 s apart."""
    client = _Client(path, metrics, cpus)
    shares = []
    try:
        for _ in range(bursts):
            started = time.monotonic()
            before = count()
            client.burst()
            time.sleep(0.2)
            shares.append(round(100 * (count() - before) / metrics, 1))
            time.sleep(max(0.0, 1 - (time.monotonic() - started)))
    finally:
        client.stop()
    return shares


def _mix_load(port: int, seconds: float, lines_per_s: int = 200_000) -> Any:
    """The 6-type mix at `lines_per_s` over UDP for `seconds`, unpinned (the C generator; None without a
    compiler)."""
    import subprocess

    binary = compiled("loadgen")
    if binary is None:
        return None
    file = write_datagrams(datagrams(20, 1000, True, 5000))
    command = [str(binary), "udp", "127.0.0.1", str(port), str(file), str(lines_per_s / 20), str(seconds)]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def client_uds(seconds: float, metrics: int = 600, idle_bursts: int = 10, load_bursts: int = 5) -> Result:
    """The official Python client at its defaults sends bursts of `metrics` metrics (c g h d ms s) over a Unix
    datagram socket, 1 s apart; its send drops on EAGAIN when the socket's queue (net.unix.max_dgram_qlen) is
    full. Nothing is pinned, as users run it: the share of each burst that arrives at the relay before and after,
    idle and while it takes the 6-type mix at 200 k lines/s over UDP, and at the C reader (idle). Then, as a
    second figure, the relays idle with relay and client pinned to different cores. `seconds` is not used."""
    import tempfile

    everywhere = set(os.sched_getaffinity(0))
    summary: dict[str, Any] = {
        "metrics_per_burst": metrics,
        "cpus": len(everywhere),
        "net.unix.max_dgram_qlen": _sysctl("net/unix/max_dgram_qlen"),
    }
    intake = Intake()
    try:
        for label in READERS:
            for cpus, client_cpus, kind in ((everywhere, None, "unpinned"), (SERVER_CPU, LOAD_CPU, "pinned")):
                path = str(Path(tempfile.mkdtemp(prefix="relay-bench-")) / "dsd.socket")
                relay = labelled_relay(intake.url, label, DD_DOGSTATSD_SOCKET=path, cpus=cpus)
                try:
                    count = lambda relay=relay: _uds_packets(relay)  # noqa: E731
                    idle = _bursts(path, count, metrics, idle_bursts if kind == "unpinned" else 5, client_cpus)
                    _record(summary, f"{label}_{kind}_idle", idle, metrics, _client_drops(relay))
                    if kind == "unpinned":
                        load = _mix_load(relay.port, load_bursts + 3)
                        if load is not None:
                            time.sleep(1)
                            before = _client_drops(relay)
                            shares = _bursts(path, count, metrics, load_bursts, None)
                            _record(
                                summary, f"{label}_unpinned_mix_200k", shares, metrics, _client_drops(relay) - before
                            )
                            load.wait()
                finally:
                    relay.stop()
        path = str(Path(tempfile.mkdtemp(prefix="relay-bench-")) / "dsd.socket")
        reader = CReader(socket_path=path)
        try:
            os.sched_setaffinity(reader.process.pid, everywhere)  # it starts on the server's core
            reader.count()
            received = [0]  # it counts since its last count: a running total here

            def total() -> int:
                received[0] += reader.count()
                return received[0]

            _record(summary, "C reader_unpinned_idle", _bursts(path, total, metrics, idle_bursts, None))
        finally:
            reader.stop()
    finally:
        intake.stop()
    return Result("client-uds", summary, [], {"kind": "none"})


def _record(
    summary: dict[str, Any], key: str, percents: list[float], metrics: int = 0, client_reported: int | None = None
) -> None:
    """The share of each burst that arrived; with the relay, the lines lost against the drops the client itself
    reported in its telemetry (datadog.dogstatsd.client.packets_dropped, read by the relay)."""
    summary[f"{key}_percent"] = percents
    if client_reported is not None:
        summary[f"{key}_lost_lines"] = round(sum(metrics * (100 - share) / 100 for share in percents))
        summary[f"{key}_client_reported_drops"] = client_reported
    summary[f"{key}_min_percent"] = min(percents)


def burst(seconds: float, count: int = 10_000, per_burst: int = 50) -> Result:
    """Hostile sizes: `count` datagrams of up to 65 KB (one valid line, then junk; the default dogstatsd_buffer_size
    keeps the first 8 KB) in bursts of `per_burst` every 10 ms; valid lines counted by the relay before and after,
    datagrams by the C reader. Then an intake outage of 8 s with bursts of 500 small datagrams every 0.5 s: the
    counts that reach the intake once it is back. `seconds` is not used."""
    rng = random.Random(SEED)
    grams = [b"burst.valid:1|c\n" + b"j" * rng.randint(0, 65_000) for _ in range(count)]
    summary: dict[str, Any] = {"datagrams": count, "per_burst": per_burst}

    def send_bursts(port: int, datagrams: list[bytes], size: int, pause: float) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for start in range(0, len(datagrams), size):
                for datagram in datagrams[start : start + size]:
                    sock.sendto(datagram, ("127.0.0.1", port))
                time.sleep(pause)

    intake = Intake()
    try:
        for label in READERS:
            relay = labelled_relay(intake.url, label)
            try:
                before = _metric_lines(relay)
                send_bursts(relay.port, grams, per_burst, 0.01)
                time.sleep(2)
                summary[f"{label}_valid_lines_counted"] = _metric_lines(relay) - before
            finally:
                relay.stop()
        reader = CReader()
        try:
            send_bursts(reader.port, grams, per_burst, 0.01)
            time.sleep(1)
            summary["C reader_datagrams_received"] = reader.count()
        finally:
            reader.stop()
    finally:
        intake.stop()
    small = [b"outage.valid:1|c"] * 8000
    for label in READERS:
        port = free_port(socket.SOCK_STREAM)
        relay = labelled_relay(f"http://127.0.0.1:{port}", label)
        late: Intake | None = None
        try:
            send_bursts(relay.port, small, 500, 0.5)  # 8 s: the intake is down the whole time
            late = Intake(port)
            deadline, delivered = time.monotonic() + 120, 0.0
            while delivered < len(small) and time.monotonic() < deadline:
                time.sleep(1)
                # The most seen: the stand-in keeps its last 1,000 series, and host metrics push old ones out.
                delivered = max(delivered, _intake_total(late, "outage.valid"))
            summary[f"{label}_outage_counts_delivered"] = round(delivered)
        finally:
            relay.stop()
            if late is not None:
                late.stop()
    summary["outage_counts_sent"] = len(small)
    return Result("burst", summary, [], {"kind": "none"})


def _metric_lines(relay: Relay) -> int:
    return int(((relay.status() or {}).get("messages", {}).get("metric") or {}).get("ok", 0))


def _intake_total(intake: Intake, metric: str) -> float:
    series = (intake.received() or {}).get("series", [])
    return sum(value * s["interval"] for s in series if s["metric"] == metric for _, value in s["points"])


def _client_drops(relay: Relay) -> int:
    """The drops the clients reported over the Unix socket, once their last telemetry has arrived and a flush
    has closed its bucket (the relay counts them from closed buckets)."""
    flushes = lambda: ((relay.status() or {}).get("aggregator") or {}).get("flushes", 0)  # noqa: E731
    before, deadline = flushes(), time.monotonic() + 12
    while flushes() == before and time.monotonic() < deadline:
        time.sleep(0.2)
    reported = (relay.status() or {}).get("client_drops", {}).get("uds", {})
    return sum(kinds.get("total", 0) for kinds in reported.values())


def _uds_packets(relay: Relay) -> int:
    return int(((relay.status() or {}).get("listeners", {}).get("uds") or {}).get("packets", 0))


def _sysctl(name: str) -> str:
    try:
        return Path("/proc/sys", name).read_text().strip()
    except OSError:
        return "?"
