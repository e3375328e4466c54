"""The pipeline of one relay process, built in one place from Config: ingest → aggregate → serialize → sink.

The standalone relay, each worker, `explain`, `check` and the process a reload execs all build it here, so they
run the same stages with the same settings. Data flows one way: the listeners (or a worker's pipe) call
`datagram`, the runtime's timer calls `flush`, and what expires in the aggregator is handed back to ingest here.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TextIO
from urllib.parse import urlsplit

from relay.checks.runner import CheckRunner
from relay.config import Config, redact
from relay.pipeline.aggregate import Aggregator
from relay.pipeline.buckets import FlushWork
from relay.pipeline.dry_run import DryRunSink, render_flush
from relay.pipeline.enrich import Enricher
from relay.pipeline.forward import FanOutSink, HttpSink, Sink
from relay.pipeline.ingest import Ingest
from relay.pipeline.model import Flushed, Payload
from relay.pipeline.origin import ContainerTagger, Origins
from relay.pipeline.serialize import Serializer
from relay.pipeline.spool import Spool
from relay.telemetry.self_metrics import SelfMetrics
from relay.telemetry.stats import Stats

FLUSH_PART = 20_000  # contexts built and encoded at a time in a flush (relay/memory.py plans for one part)


class Pipeline:
    def __init__(
        self, config: Config, *, sink: Sink | None = None, accelerate: bool = True, out: TextIO = sys.stdout,
        tagger: ContainerTagger | None = None,
    ) -> None:  # fmt: skip
        """`sink`: where payloads go; by default the intake (and additional_endpoints), or a dry run without an
        API key. `accelerate`: the C fast path where it was built. `tagger`: the container tagger (relay/tagger,
        started by the runtime) whose tags each line's origin adds."""
        self.config = config
        self.out = out
        self.stats = Stats()
        self.stats.describe(config)
        self.enricher = Enricher(config, Origins(config, tagger) if tagger is not None else None)
        if tagger is not None:
            self.stats.gauges.tagger = lambda: {
                **tagger.state(),
                "origins_unresolved": len(self.enricher.unresolved),
                "untagged": self.enricher.untagged,
            }
        self.aggregator = Aggregator(config, self.stats)
        self.stats.gauges.contexts = lambda: self.aggregator.contexts
        self.stats.gauges.custom_metrics_estimate = self.aggregator.custom_metrics_estimate
        self.ingest = Ingest(config, self.stats, self.enricher, self.aggregator, accelerate=accelerate)
        self.serializer = Serializer(config, self.stats)
        self.dry_run = sink is None and not config.api_key
        if sink is None:
            sink = DryRunSink(self.stats) if self.dry_run else http_sink(config, self.stats)
        self.sink = sink
        self.self_metrics = SelfMetrics(self.stats, config.hostname) if config.relay_self_metrics else None
        self.checks: CheckRunner | None = None

    def load_checks(self, only: str | None = None) -> CheckRunner:
        """Custom checks (conf.d, checks.d) and the built-in host collectors, submitting to this aggregator."""
        self.checks = CheckRunner(self.config, self.aggregator, self.stats)
        self.checks.load(only=only)
        return self.checks

    def hold_memory(self, held: bool) -> None:
        """The memory guard (relay/memory.py): while held, new contexts fold, and the caches in front of the
        contexts are emptied once (they refill with what is live; what was there served lines no longer sent)."""
        self.aggregator.hold(held)
        if held:
            self.ingest.forget_shapes()

    def _container_of(self, pid: int) -> str:
        origins = self.enricher.origins
        return origins.container_of_pid(pid) if origins is not None else ""

    def datagram(self, data: bytes, transport: str, sender_pid: int = 0) -> None:
        """The listeners' callback: nothing in a datagram can stop the relay. `sender_pid`: the process that sent
        it over a Unix socket (dogstatsd_origin_detection), whose container's tags its lines get."""
        try:
            sender = self._container_of(sender_pid) if sender_pid else ""
            self.ingest.datagram(data, transport, time.time(), sender)
        except Exception:  # a bug must cost one datagram, never the relay
            self.stats.internal_error(f"ingest ({transport})")

    def take(self, now: float, *, force: bool = False) -> Flushed:
        """What a flush at `now` would send, taken out at once (explain, check, tests): no serializing."""
        work = self.aggregator.detach(now, force=force)
        flushed = self.aggregator.build(work)
        self._finish(work)
        return flushed

    async def flush(self, *, force: bool = False) -> None:
        """One flush: the closed buckets (every bucket with `force`) built, serialized and handed to the sink, in
        parts of FLUSH_PART contexts, so that its memory is one part's and not every series' at once."""
        started = time.perf_counter()
        # A flush makes a million short-lived, acyclic objects: left on, the cyclic collector would rescan every
        # context many times over and double the flush time. Reference counting frees all of them anyway.
        gc.disable()
        shown: list[tuple[Flushed, list[Payload]]] = []  # a dry run prints the whole flush
        totals: Counter[str] = Counter()
        try:
            # Only taking the closed buckets out happens on the loop; the arithmetic and the encoding run in a
            # thread, so that ingest keeps draining the sockets during a flush.
            work = self.aggregator.detach(time.time(), force=force)
            parts = work.parts(len(self.aggregator.context_of), FLUSH_PART)
            first = True
            while (done := await asyncio.to_thread(self._next_part, parts, work.cutoff, first)) is not None:
                first = False
                flushed, payloads = done
                for payload in payloads:
                    self.sink.send(payload)
                totals.update(flushed.counts())
                if self.dry_run and payloads:
                    shown.append(done)
            self._finish(work)
        finally:
            gc.enable()
        self.stats.record_flush(time.perf_counter() - started, totals)
        if shown:
            self.out.write(render_flush(_joined(item[0] for item in shown), [p for item in shown for p in item[1]]))
            self.out.flush()

    def _next_part(self, parts: Iterator[FlushWork], cutoff: int, first: bool) -> tuple[Flushed, list[Payload]] | None:
        """The next part built and serialized (in a thread); None when there is none left. A bug outside the
        per-item guards costs this part's items, counted, never the rest of the flush."""
        part = next(parts, None)
        if part is None:
            return None
        try:
            return self._build_and_serialize(part, cutoff if first else 0)
        except Exception:
            self.stats.internal_error("flush", part.items)
            return Flushed(), []

    def _build_and_serialize(self, work: FlushWork, self_metrics_at: int) -> tuple[Flushed, list[Payload]]:
        """`self_metrics_at`: the cutoff of the flush whose first part carries the relay's own series, or 0."""
        flushed = self.aggregator.build(work)
        if self.self_metrics is not None and self_metrics_at:
            interval = self.config.relay_flush_interval
            flushed.series += self.self_metrics.series(self_metrics_at - interval, interval)
        return flushed, self.serializer.payloads(flushed)

    def _finish(self, work: FlushWork) -> None:
        """Contexts the aggregator forgot lose their slots, so ingest forgets the shapes that point at them."""
        expired = self.aggregator.finish(work)
        if expired:
            self.ingest.forget(expired)


def _joined(parts: Iterable[Flushed]) -> Flushed:
    whole = Flushed()
    for part in parts:
        whole.series += part.series
        whole.sketches += part.sketches
        whole.events += part.events
        whole.service_checks += part.service_checks
    return whole


def http_sink(config: Config, stats: Stats) -> Sink:
    """The main intake, plus one sink per additional_endpoints pair with counters of its own."""
    main = HttpSink(config, stats, _spool(config, config.spool_path, stats))
    if not config.additional_endpoints:
        return main
    sinks: list[Sink] = [main]
    for index, (url, api_key) in enumerate(config.additional_endpoints):
        destination = stats.destinations[f"{urlsplit(url).netloc} {redact(api_key)}"] = Stats()
        spool = _spool(config, config.spool_path / f"additional-{index}", destination)
        sinks.append(HttpSink(config, destination, spool, url=url, api_key=api_key))
    return FanOutSink(sinks)


def _spool(config: Config, path: Path, stats: Stats) -> Spool | None:
    if not config.forwarder_storage_max_size_in_bytes:
        return None
    return Spool(path, config.forwarder_storage_max_size_in_bytes, config.forwarder_storage_max_disk_ratio, stats)
