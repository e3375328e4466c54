"""Scenarios: the load (pre-built datagrams from a fixed seed) and what is measured against whom."""

from __future__ import annotations

import os
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.harness import (
    HERE,
    LOAD_CPU,
    SERVER_CPU,
    CReader,
    EtsyStatsd,
    Intake,
    Relay,
    Server,
    Window,
    free_port,
    measure,
    pinned,
    process_usage,
    send,
    write_datagrams,
)

SEED = 20261123
NEW_CONTEXT_RATE = 1000  # datagrams/s of 20 new contexts each: first sightings take the reference parser
TYPES = ("c", "g", "ms", "h", "s", "d")


def lines(count: int, contexts: int, mix: bool, rng: random.Random) -> list[bytes]:
    """Metric lines over `contexts` distinct contexts; with `mix`, all six types, tags and sample rates."""
    out = []
    for i in range(count):
        context = i % contexts
        name = f"bench.metric.{context % 500}"
        tags = f"#env:bench,service:relay,ctx:{context // 500}"
        if not mix:
            out.append(f"{name}:{rng.randint(0, 1000)}|c|{tags}".encode())
            continue
        kind = TYPES[context % len(TYPES)]
        value = f"user{rng.randint(0, 50)}" if kind == "s" else f"{rng.uniform(0, 500):.3f}"
        rate = "|@0.5" if kind in ("c", "ms", "h") and context % 3 == 0 else ""
        out.append(f"{name}.{kind}:{value}|{kind}{rate}|{tags}".encode())
    return out


def datagrams(per_datagram: int, contexts: int, mix: bool, count: int) -> list[bytes]:
    rng = random.Random(SEED)
    all_lines = lines(per_datagram * count, contexts, mix, rng)
    return [b"\n".join(all_lines[i : i + per_datagram]) for i in range(0, len(all_lines), per_datagram)]


def sweep(
    server: Server, file: Any, per_datagram: float, seconds: float, steps: int = 6, clients: int = 1
) -> tuple[float, list[Window]]:
    """The highest rate (datagrams/s) sent with < 0.1 % loss: a flat-out run, then a bisection. A rate the
    generator could not reach counts for what it sent."""
    flat = measure(server, file, per_datagram, 0, min(seconds, 5), clients)
    windows = [flat]
    best = flat.sent_datagrams / flat.seconds if flat.loss < 0.001 else 0.0  # the generator's ceiling, all taken
    worst: float | None = None
    rate = max(flat.accepted_lines_per_s / per_datagram * 0.9, 100)
    for _ in range(steps):
        window = measure(server, file, per_datagram, rate, seconds, clients)
        windows.append(window)
        if window.loss < 0.001:
            best = max(best, window.sent_datagrams / window.seconds)  # what was sent: the generator may fall short
            rate = rate * 1.2 if worst is None else (rate + worst) / 2
        else:
            worst = rate
            rate = (best + rate) / 2 if best else rate * 0.6
    return best, windows


def sweep_default_relay(grams: list[bytes], per_datagram: float, seconds: float) -> tuple[float, list[Window]]:
    """`sweep` of these datagrams against a relay with the default configuration, sending to an intake stand-in."""
    file = write_datagrams(grams)
    intake = Intake()
    relay = Relay(intake.url)
    try:
        return sweep(relay, file, per_datagram, seconds)
    finally:
        relay.stop()
        intake.stop()
        file.unlink()


def sweep_each(
    servers: list[Callable[[], Server]], file: Path, per_datagram: int, seconds: float, summary: dict[str, Any]
) -> list[Window]:
    """`sweep` each server in turn (started, swept, stopped); its figures go into `summary` under its name."""
    windows: list[Window] = []
    for make in servers:
        server = make()
        try:
            best, measured = sweep(server, file, per_datagram, seconds)
        finally:
            server.stop()
        windows += measured
        summary[f"{server.name}_max_datagrams_per_s"] = round(best)
        summary[f"{server.name}_max_lines_per_s"] = round(best * per_datagram)
        summary[f"{server.name}_flat_out_lines_per_s"] = round(measured[0].accepted_lines_per_s)
    return windows


@dataclass
class Result:
    scenario: str
    summary: dict[str, Any]
    windows: list[Window]
    series_for_plots: dict[str, Any]


def throughput(name: str, per_datagram: int, mix: bool, peer: bool, seconds: float) -> Result:
    """Max sustained rate with < 0.1 % loss for the relay, and for the Etsy statsd daemon fed the same load."""
    file = write_datagrams(datagrams(per_datagram, 1000, mix, 5000))
    intake = Intake()
    summary: dict[str, Any] = {"lines_per_datagram": per_datagram, "contexts": 1000, "type_mix": mix}
    servers: list[Callable[[], Server]] = [lambda: Relay(intake.url)]
    if peer:
        servers.append(EtsyStatsd)
    try:
        windows = sweep_each(servers, file, per_datagram, seconds, summary)
    finally:
        intake.stop()
        file.unlink()
    if peer and summary.get("etsy-statsd_max_lines_per_s"):
        summary["ratio_relay_to_etsy"] = round(
            summary["dogstatsd-relay_max_lines_per_s"] / summary["etsy-statsd_max_lines_per_s"], 2
        )
    return Result(name, summary, windows, {"kind": "load", "windows": [w.as_dict() for w in windows]})


def unix_datagrams(seconds: float) -> Result:
    """~8 KB datagrams over a Unix datagram socket: the kernel blocks the sender instead of dropping."""
    import tempfile
    from pathlib import Path

    per_datagram = 110  # ~8 KB of 75-byte lines
    file = write_datagrams(datagrams(per_datagram, 1000, True, 1000))
    path = str(Path(tempfile.mkdtemp(prefix="relay-bench-")) / "dsd.socket")
    intake = Intake()
    relay = Relay(intake.url, socket_path=path)
    try:
        before = relay.accepted_lines() or 0
        cpu_before, _ = process_usage(relay.process.pid)
        result = send(f"unix:{path}", file, 0, seconds)
        time.sleep(0.5)
        accepted = (relay.accepted_lines() or 0) - before
        cpu_after, rss = process_usage(relay.process.pid)
    finally:
        relay.stop()
        intake.stop()
        file.unlink()
    summary = {
        "datagram_bytes": round(file_size_per_datagram(per_datagram)),
        "sent_datagrams": result["sent"],
        "accepted_lines_per_s": round(accepted / result["seconds"]),
        "cpu_percent": round(100 * (cpu_after - cpu_before) / result["seconds"]),
        "rss_mib": round(rss / 2**20),
    }
    return Result("uds-8k", summary, [], {"kind": "none"})


def file_size_per_datagram(per_datagram: int) -> float:
    return sum(len(d) for d in datagrams(per_datagram, 1000, True, 100)) / 100


def contexts(seconds: float, counts: tuple[int, ...] = (1_000, 100_000, 1_000_000)) -> Result:
    """RSS with N live contexts (half counters, half gauges), and the flush of them: duration and kernel drops."""
    summary: dict[str, Any] = {}
    points = []
    intake = Intake()
    try:
        for count in counts:
            per_datagram = 20
            rng = random.Random(SEED)
            names = [
                f"bench.ctx.{i % 1000}:{rng.randint(0, 9)}|{'c' if i % 2 else 'g'}|#env:bench,id:{i}"
                for i in range(count)
            ]
            grams = [("\n".join(names[i : i + per_datagram])).encode() for i in range(0, count, per_datagram)]
            file = write_datagrams(grams)
            relay = Relay(intake.url, DD_RELAY_FLUSH_INTERVAL="10", DD_DOGSTATSD_CONTEXT_EXPIRY_SECONDS="300")
            try:
                _, rss_empty = process_usage(relay.process.pid)
                window = measure(relay, file, per_datagram, NEW_CONTEXT_RATE, max(len(grams) / NEW_CONTEXT_RATE, 1))
                status = relay.status() or {}
                live = status.get("aggregator", {}).get("contexts", 0)
                _, rss = process_usage(relay.process.pid)
                flushes = status["aggregator"]["flushes"]
                deadline = time.monotonic() + 60
                while (relay.status() or {})["aggregator"]["flushes"] < flushes + 2 and time.monotonic() < deadline:
                    time.sleep(0.2)  # wait for the flush of the filled bucket
                flush = (relay.status() or {})["aggregator"]
            finally:
                relay.stop()
                file.unlink()
            summary[str(count)] = {
                "live_contexts": live,
                "rss_mib": round(rss / 2**20),
                "rss_empty_mib": round(rss_empty / 2**20),
                "bytes_per_context": round((rss - rss_empty) / max(live, 1)),
                "ingest_kernel_drops": window.kernel_drops,
                "last_flush_seconds": flush["last_flush_seconds"],
                "series_flushed": flush["flushed"].get("series", 0),
            }
            points.append((count, rss / 2**20))
    finally:
        intake.stop()
    return Result("contexts", summary, [], {"kind": "rss", "points": points})


def distributions(seconds: float) -> Result:
    """A flood of distribution samples on 10 contexts, 20 per datagram: the samples are folded into sketches
    as they pile up (as the Agent does), so memory follows the bins, not the sample rate."""
    rng = random.Random(SEED)
    samples = [f"flood.dist.{i % 10}:{rng.uniform(0, 1000):.3f}|d|#env:bench".encode() for i in range(100_000)]
    grams = [b"\n".join(samples[i : i + 20]) for i in range(0, len(samples), 20)]
    best, windows = sweep_default_relay(grams, 20, seconds)
    summary = {
        "lines_per_datagram": 20,
        "contexts": 10,
        "max_lines_per_s": round(best * 20),
        "flat_out_lines_per_s": round(windows[0].accepted_lines_per_s),
        "peak_rss_mib_at_window_ends": round(max(w.rss_bytes for w in windows) / 2**20),
    }
    return Result("distributions", summary, windows, {"kind": "load", "windows": [w.as_dict() for w in windows]})


def flush_encoder(seconds: float, count: int = 1_000_000) -> Result:
    """In-process, as in a flush (the collector paused): build and encode `count` contexts with the C series
    encoder, then with the Python one, the second flush of each (warm caches). `seconds` is not used."""
    import gc

    from relay.config import Config
    from relay.pipeline import serialize
    from relay.pipeline.aggregate import Aggregator
    from relay.pipeline.model import Context, MetricType
    from relay.telemetry import Stats

    config = Config.load(None, {"DD_HOSTNAME": "bench"})
    aggregator = Aggregator(config, Stats())
    contexts = [Context(f"bench.ctx.{i % 1000}", "bench", ("env:bench", f"id:{i}")) for i in range(count)]
    in_c = serialize._series_item_in_c
    summary: dict[str, Any] = {"contexts": count}
    gc.disable()
    try:
        for label, encoder in (("c", in_c), ("python", None)):
            serialize._series_item_in_c = encoder
            serializer = serialize.Serializer(config, Stats())
            for start in (1000.0, 1010.0):
                for i, context in enumerate(contexts):
                    kind = MetricType.COUNTER if i % 2 else MetricType.GAUGE
                    aggregator.add(context, kind, (1.0,), "", 1.0, 0, start)
                began = time.perf_counter()
                work = aggregator.detach(start + 14)
                flushed = aggregator.build(work)
                built = time.perf_counter()
                payloads = list(serializer.series(flushed.series))
                done = time.perf_counter()
                aggregator.finish(work)
            summary[f"{label}_build_seconds"] = round(built - began, 2)
            summary[f"{label}_serialize_seconds"] = round(done - built, 2)
            summary[f"{label}_payloads"] = len(payloads)
    finally:
        serialize._series_item_in_c = in_c
        gc.enable()
    summary["serialize_speedup"] = round(summary["python_serialize_seconds"] / summary["c_serialize_seconds"], 1)
    return Result("flush-encoder", summary, [], {"kind": "none"})


def compare(
    name: str, seconds: float, mix: bool, variants: dict[str, tuple[set[int], dict[str, str]]], clients: int = 1,
    trees: dict[str, Path] | None = None,
) -> Result:  # fmt: skip
    """One 20-line load swept against relays that differ only by their cores and environment, in turn; `trees`
    runs a variant from another checkout (baseline_tree)."""
    file = write_datagrams(datagrams(20, 1000, mix, 5000))
    intake = Intake()
    summary: dict[str, Any] = {"lines_per_datagram": 20, "type_mix": mix, "client_sockets": clients}
    windows: list[Window] = []
    try:
        for label, (cpus, env) in variants.items():
            options: dict[str, Any] = env
            relay = Relay(intake.url, cpus=cpus, tree=(trees or {}).get(label), **options)
            relay.name = f"dogstatsd-relay ({label.replace('_', ' ')})"
            try:
                best, measured = sweep(relay, file, 20, seconds, clients=clients)
            finally:
                relay.stop()
            windows += measured
            summary[f"{label}_max_lines_per_s"] = round(best * 20)
    finally:
        intake.stop()
        file.unlink()
    return Result(name, summary, windows, {"kind": "load", "windows": [w.as_dict() for w in windows]})


def workers(seconds: float, clients: int) -> Result:
    """relay.workers 2 against 1, with one client socket (a sidecar's app) or several (SO_REUSEPORT territory).
    With workers, the relay is not pinned: on a 2-core machine it shares the generator's core."""
    variants = {"workers_1": ({0}, {"DD_RELAY_WORKERS": "1"}), "workers_2": ({0, 1}, {"DD_RELAY_WORKERS": "2"})}
    trees = {}
    if BASELINE["tree"] is not None:  # --baseline REV: that revision's workers too, in the same run
        variants["workers_2_baseline"] = ({0, 1}, {"DD_RELAY_WORKERS": "2"})
        trees["workers_2_baseline"] = BASELINE["tree"]
    return compare(f"workers-{clients}-clients", seconds, True, variants, clients, trees)


def probe_overhead(seconds: float) -> Result:
    """The loss self-probe off against on (every 0.1 s, ten times the default), on the udp-20 load."""
    variants = {
        "probe_off": (SERVER_CPU, {"DD_RELAY_PROBE_INTERVAL": "0"}),
        "probe_on": (SERVER_CPU, {"DD_RELAY_PROBE_INTERVAL": "0.1"}),
    }
    result = compare("probe-overhead", seconds, False, variants)
    on, off = result.summary["probe_on_max_lines_per_s"], result.summary["probe_off_max_lines_per_s"]
    result.summary["ratio_on_to_off"] = round(on / max(off, 1), 3)
    return result


def from_capture(seconds: float, path: Path) -> Result:
    """Real traffic: the datagrams of a `dogstatsd-relay capture` file (whatever their transport), replayed in a
    loop through the same max-rate-with-under-0.1 %-loss sweep. The recorded timing is not kept: the sweep finds
    how much faster than recorded this traffic can come."""
    from relay.runtime.capture import read_records

    grams = [record.datagram for record in read_records(path) if 0 < len(record.datagram) <= 65507]
    if not grams:
        raise SystemExit(f"{path}: no datagram to replay")
    per_datagram = sum(len(list(filter(None, g.split(b"\n")))) for g in grams) / len(grams)
    best, windows = sweep_default_relay(grams, per_datagram, seconds)
    summary = {
        "capture": path.name,
        "datagrams": len(grams),
        "lines_per_datagram": round(per_datagram, 2),
        "dogstatsd-relay_max_datagrams_per_s": round(best),
        "dogstatsd-relay_max_lines_per_s": round(best * per_datagram),
        "dogstatsd-relay_flat_out_lines_per_s": round(windows[0].accepted_lines_per_s),
    }
    return Result("capture", summary, windows, {"kind": "load", "windows": [w.as_dict() for w in windows]})


# "before": the relay of another revision at its defaults (`--baseline REV`, see baseline_tree); without one,
# this relay as it reads without its reader thread (the event loop reads the sockets, with the OS buffer).
BASELINE: dict[str, Path | None] = {"tree": None}
EVENT_LOOP_READER = {"DD_RELAY_RECEIVE_QUEUE_BYTES": "0", "DD_DOGSTATSD_SO_RCVBUF": "0"}
READERS = ("before", "after")


def labelled_relay(intake_url: str, label: str, **env: Any) -> Relay:
    tree = BASELINE["tree"] if label == "before" else None
    before: dict[str, Any] = EVENT_LOOP_READER if label == "before" and tree is None else {}
    relay = Relay(intake_url, tree=tree, **before, **env)
    relay.name = f"dogstatsd-relay ({label})"
    return relay


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
from relay.pipeline.aggregate import Aggregator
from relay.config import Config
from relay.pipeline.enrich import Enricher
from relay.pipeline.ingest import Ingest
from relay.telemetry import Stats
try:  # the relay's own collector policy, where the version has one
    from relay.runtime.server import LongLivedObjects
    collector = LongLivedObjects()
except ImportError:
    collector = None
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
from relay.telemetry import Stats
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


def client_uds(seconds: float, tries: int = 11, metrics: int = 600) -> Result:
    """The official Python client at its defaults sends `metrics` increments in a loop over a Unix datagram socket
    (its send drops on EAGAIN when the socket's queue, net.unix.max_dgram_qlen, is full): the share that arrives,
    per try, at the relay before and after and at the C reader. `seconds` is not used."""
    import subprocess
    import sys
    import tempfile

    sender = (
        "import sys\nfrom datadog.dogstatsd.base import DogStatsd\n"
        "client = DogStatsd(socket_path=sys.argv[1])\n"
        f"for i in range({metrics}):\n    client.increment('bench.uds', tags=['i:%d' % (i % 10)])\n"
    )

    def burst(path: str) -> None:
        subprocess.run([sys.executable, "-c", sender, path], check=True, preexec_fn=pinned(LOAD_CPU))

    summary: dict[str, Any] = {
        "metrics_per_try": metrics,
        "net.unix.max_dgram_qlen": _sysctl("net/unix/max_dgram_qlen"),
    }
    intake = Intake()
    try:
        for label in [*READERS, "C reader"]:
            path = str(Path(tempfile.mkdtemp(prefix="relay-bench-")) / "dsd.socket")
            arrived = []
            if label == "C reader":
                reader = CReader(socket_path=path)
                try:
                    for _ in range(tries):
                        burst(path)
                        time.sleep(0.2)
                        arrived.append(reader.count())
                finally:
                    reader.stop()
            else:
                relay = labelled_relay(intake.url, label, DD_DOGSTATSD_SOCKET=path, DD_DOGSTATSD_PORT="0")
                try:
                    for _ in range(tries):
                        before = _uds_packets(relay)
                        burst(path)
                        time.sleep(0.2)
                        arrived.append(_uds_packets(relay) - before)
                finally:
                    relay.stop()
            percents = sorted(round(100 * count / metrics, 1) for count in arrived)
            summary[f"{label}_arrived_percent"] = percents
            summary[f"{label}_median_percent"] = percents[len(percents) // 2]
    finally:
        intake.stop()
    return Result("client-uds", summary, [], {"kind": "none"})


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


def _uds_packets(relay: Relay) -> int:
    return int(((relay.status() or {}).get("listeners", {}).get("uds") or {}).get("packets", 0))


def _sysctl(name: str) -> str:
    try:
        return Path("/proc/sys", name).read_text().strip()
    except OSError:
        return "?"


SCENARIOS: dict[str, Callable[[float], Result]] = {
    "reader-mix": reader_fixed_rates,
    "reader-new-contexts": reader_new_contexts,
    "reader-udp-1": lambda seconds: reader_throughput(seconds, 1),
    "reader-udp-20": lambda seconds: reader_throughput(seconds, 20),
    "client-uds": client_uds,
    "burst": burst,
    "first-sight": first_sight,
    "histogram-flush": histogram_flush,
    "workers-1-client": lambda seconds: workers(seconds, clients=1),
    "workers-4-clients": lambda seconds: workers(seconds, clients=4),
    "udp-1": lambda seconds: throughput("udp-1", 1, False, peer=False, seconds=seconds),
    "udp-20": lambda seconds: throughput("udp-20", 20, False, peer=True, seconds=seconds),
    "mix": lambda seconds: throughput("mix", 20, True, peer=True, seconds=seconds),
    "uds-8k": unix_datagrams,
    "probe-overhead": probe_overhead,
    "distributions": distributions,
    "flush-encoder": flush_encoder,
    "contexts": contexts,
}
