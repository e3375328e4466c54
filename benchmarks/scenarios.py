"""Scenarios: what is measured against whom, and the registry `python -m benchmarks run --scenario NAME` reads."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.footprint_scenarios import idle_footprint
from benchmarks.harness import (
    SERVER_CPU,
    EtsyStatsd,
    Intake,
    Relay,
    Server,
    measure,
    process_usage,
    send,
    write_datagrams,
)
from benchmarks.load import (
    BASELINE,
    NEW_CONTEXT_RATE,
    SEED,
    Result,
    compare,
    datagrams,
    labelled_relay,
    sweep_default_relay,
    sweep_each,
)
from benchmarks.memory_scenarios import memory_spike
from benchmarks.reader_scenarios import (
    burst,
    client_uds,
    first_sight,
    histogram_flush,
    mix_at,
    reader_fixed_rates,
    reader_new_contexts,
    reader_throughput,
)

# A DaemonSet's relay: client origins on, the tagger on (its kubelet refuses: the lines' containers stay unknown,
# and take the same path as known ones; a shape holds its tags either way).
ORIGIN_RELAY = {"DD_DOGSTATSD_ORIGIN_DETECTION_CLIENT": "true", "DD_KUBERNETES_KUBELET_HOST": "127.0.0.1",
                "DD_KUBERNETES_HTTPS_KUBELET_PORT": "1", "DD_KUBERNETES_HTTP_KUBELET_PORT": "1"}  # fmt: skip


def with_origins(grams: list[bytes], containers: int = 8) -> list[bytes]:
    """Each line with a `c:ci-<container id>` field, as the official clients add it, from `containers` pods."""
    ids = [b"|c:ci-%064x" % (index + 1) for index in range(containers)]
    return [b"\n".join(line + ids[n % containers] for n, line in enumerate(gram.split(b"\n"))) for gram in grams]


def throughput(name: str, per_datagram: int, mix: bool, peer: bool, seconds: float, origins: bool = False) -> Result:
    """Max sustained rate with < 0.1 % loss for the relay, and for the Etsy statsd daemon fed the same load (and,
    with --baseline REV, for the relay of that revision). `origins`: a `c:` field on every line, to a relay
    configured as a Kubernetes DaemonSet's."""
    grams = datagrams(per_datagram, 1000, mix, 5000)
    file = write_datagrams(with_origins(grams) if origins else grams)
    intake = Intake()
    summary: dict[str, Any] = {"lines_per_datagram": per_datagram, "contexts": 1000, "type_mix": mix,
                               "c_field_on_every_line": origins}  # fmt: skip
    env: dict[str, Any] = dict(ORIGIN_RELAY) if origins else {}
    servers: list[Callable[[], Server]] = [lambda: Relay(intake.url, **env)]
    if BASELINE["tree"] is not None:  # --baseline REV: that revision's relay too, in the same run
        servers.append(lambda: labelled_relay(intake.url, "before", **env))
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
    if summary.get("dogstatsd-relay (before)_max_lines_per_s"):
        summary["ratio_relay_to_before"] = round(
            summary["dogstatsd-relay_max_lines_per_s"] / summary["dogstatsd-relay (before)_max_lines_per_s"], 2
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
                flushes, peak = status["aggregator"]["flushes"], rss
                deadline = time.monotonic() + 60
                while (relay.status() or {})["aggregator"]["flushes"] < flushes + 2 and time.monotonic() < deadline:
                    time.sleep(0.05)  # wait for the flush of the filled bucket, watching its peak
                    peak = max(peak, process_usage(relay.process.pid)[1])
                flush = (relay.status() or {})["aggregator"]
            finally:
                relay.stop()
                file.unlink()
            summary[str(count)] = {
                "live_contexts": live,
                "rss_mib": round(rss / 2**20),
                "rss_empty_mib": round(rss_empty / 2**20),
                "bytes_per_context": round((rss - rss_empty) / max(live, 1)),
                "bytes_per_context_at_flush_peak": round((peak - rss_empty) / max(live, 1)),
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
    from relay.telemetry.stats import Stats

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


SCENARIOS: dict[str, Callable[[float], Result]] = {
    "reader-mix": reader_fixed_rates,
    "mix-3m": lambda seconds: mix_at(max(seconds, 15)),
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
    "udp-20-origin": lambda seconds: throughput("udp-20-origin", 20, False, peer=False, seconds=seconds, origins=True),
    "mix-origin": lambda seconds: throughput("mix-origin", 20, True, peer=False, seconds=seconds, origins=True),
    "uds-8k": unix_datagrams,
    "probe-overhead": probe_overhead,
    "distributions": distributions,
    "flush-encoder": flush_encoder,
    "contexts": contexts,
    "memory-spike": memory_spike,
    "memory-spike-filterlist": lambda seconds: memory_spike(seconds, filterlist=True),
    "idle-footprint": idle_footprint,
    # Issue 26: collectd's statsd plugin beside the relay. Imported on use: it apt-installs collectd when missing.
    "collectd": lambda seconds: __import__("benchmarks.collectd_scenarios", fromlist=["_"]).collectd_beside_relay(
        seconds
    ),
}
