"""Relay: builds every stage from Config and runs them. Startup → flush loop → bounded shutdown with a final flush.

Data flows one way: listen → parse → enrich → aggregate → serialize → forward. Ingest runs inside the
listeners' callbacks (no queue hop per datagram); flushes run on a timer, serialization in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import logging
import os
import platform
import signal
import socket
import sys
import time
from collections.abc import Coroutine
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

from relay import __version__
from relay.aggregate import Aggregator, FlushWork
from relay.checks.runner import CheckRunner
from relay.config import Config, redact
from relay.enrich import Enricher
from relay.forward import DryRunSink, FanOutSink, HttpSink, Sink
from relay.health import start_front
from relay.ingest import Ingest
from relay.listen import Listeners
from relay.model import Flushed, Payload
from relay.serialize import Serializer
from relay.spool import Spool
from relay.status import render_flush
from relay.telemetry import Stats, build_registry, self_series, worker_report
from relay.workers import pump

logger = logging.getLogger(__name__)


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run the relay's coroutine on uvloop where it is installed (Linux, macOS), on asyncio's own loop elsewhere."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


def host_metadata(hostname: str, host_tags: tuple[str, ...]) -> dict[str, Any]:
    """The Agent's v5 host metadata document: how Datadog learns the host and its host tags."""
    return {
        "apiKey": "",
        "internalHostname": hostname,
        "os": platform.system().lower(),
        "agent-flavor": "dogstatsd-relay",
        "python": platform.python_version(),
        "systemStats": {
            "cpuCores": os.cpu_count() or 1,
            "machine": platform.machine(),
            "platform": sys.platform,
            "pythonV": platform.python_version(),
            "processor": platform.processor(),
        },
        "meta": {
            "hostname": hostname,
            "socket-hostname": socket.gethostname(),
            "socket-fqdn": socket.getfqdn(),
            "timezones": list(time.tzname),
            "host_aliases": [],
        },
        "host-tags": {"system": list(host_tags)},
    }


class LongLivedObjects:
    """Contexts, shapes and slots live for minutes and hold no reference cycle, yet the cyclic garbage collector
    scans every one of them again and again as they pile up: about 40 % of the cost of a new context (profiled
    under the first-sight benchmark). So what survived half a second is frozen out of its sight (gc.freeze), and every
    FULL_COLLECTION_SECONDS everything is unfrozen and collected once, so that a cycle frozen by mistake (an
    exception's traceback, say) is freed within that time."""

    FULL_COLLECTION_SECONDS = 300

    def __init__(self) -> None:
        self.next_full_collection = time.monotonic() + self.FULL_COLLECTION_SECONDS

    def freeze(self) -> None:
        if time.monotonic() >= self.next_full_collection:
            gc.unfreeze()
            gc.collect()
            self.next_full_collection = time.monotonic() + self.FULL_COLLECTION_SECONDS
        gc.freeze()


class Relay:
    def __init__(self, config: Config, out: TextIO = sys.stdout) -> None:
        self.config = config
        self.out = out
        self.stats = Stats()
        self.stats.info.update(
            version=__version__, hostname=config.hostname, flush_interval=config.relay_flush_interval
        )
        self.enricher = Enricher(config)
        self.aggregator = Aggregator(config, self.stats)
        self.stats.gauges["contexts"] = lambda: self.aggregator.contexts
        self.stats.gauges["custom_metrics_estimate"] = self.aggregator.custom_metrics_estimate
        self.serializer = Serializer(config, self.stats)
        self.dry_run = not config.api_key
        self.sink: Sink = DryRunSink(self.stats) if self.dry_run else self._http_sink()
        self.listeners = Listeners(config, self.stats, self.ingest)
        self.registry = build_registry(self.stats)
        self.ingester = Ingest(config, self.stats, self.enricher, self.aggregator)
        self._self_previous: dict[str, dict[object, int]] = {}  # relay.self_metrics: counters at the last flush
        self.checks: CheckRunner | None = None
        if config.confd_path or config.relay_host_collectors:
            self.checks = CheckRunner(config, self.aggregator, self.stats)
            self.checks.load()
        self.should_exit = asyncio.Event()

    def _http_sink(self) -> Sink:
        """The main intake, plus one sink per additional_endpoints pair with counters of its own."""
        config = self.config
        main = HttpSink(config, self.stats, self._spool(config.spool_path, self.stats))
        if not config.additional_endpoints:
            return main
        sinks = [main]
        for index, (url, api_key) in enumerate(config.additional_endpoints):
            stats = self.stats.destinations[f"{urlsplit(url).netloc} {redact(api_key)}"] = Stats()
            spool = self._spool(config.spool_path / f"additional-{index}", stats)
            sinks.append(HttpSink(config, stats, spool, url=url, api_key=api_key))
        return FanOutSink(sinks)

    def _spool(self, path: Path, stats: Stats) -> Spool | None:
        if not self.config.forwarder_storage_max_size_in_bytes:
            return None
        return Spool(
            path, self.config.forwarder_storage_max_size_in_bytes, self.config.forwarder_storage_max_disk_ratio, stats
        )

    def ingest(self, data: bytes, transport: str) -> None:
        """The listeners' callback: nothing in a datagram can stop the relay."""
        try:
            self.ingester.datagram(data, transport, time.time())
        except Exception:  # a bug must cost one datagram, never the relay
            self.stats.internal_error(f"ingest ({transport})")

    # --- flush ----------------------------------------------------------------------------------------------------

    async def flush(self, *, force: bool = False) -> None:
        started = time.perf_counter()
        # A flush makes a million short-lived, acyclic objects: left on, the cyclic collector would rescan every
        # context many times over and double the flush time. Reference counting frees all of them anyway.
        gc.disable()
        try:
            # Only taking the closed buckets out happens on the loop; the arithmetic and the encoding run in a
            # thread, so that ingest keeps draining the sockets during a flush.
            work = self.aggregator.detach(time.time(), force=force)
            try:
                flushed, payloads = await asyncio.to_thread(self._build_and_serialize, work)
            except Exception:  # a bug outside the per-item guards: this flush's items are lost, and counted
                self.stats.internal_error("flush", work.items)
                flushed, payloads = Flushed(), []
            self.aggregator.finish(work)
        finally:
            gc.enable()
        for payload in payloads:
            self.sink.send(payload)
        self.stats.record_flush(
            time.perf_counter() - started,
            {
                "series": len(flushed.series),
                "sketches": len(flushed.sketches),
                "events": len(flushed.events),
                "service_checks": len(flushed.service_checks),
            },
        )
        if self.dry_run and payloads:
            self.out.write(render_flush(flushed, payloads))
            self.out.flush()

    def _build_and_serialize(self, work: FlushWork) -> tuple[Flushed, list[Payload]]:
        flushed = self.aggregator.build(work)
        if self.config.relay_self_metrics:
            interval = self.config.relay_flush_interval
            timestamp = work.cutoff - interval
            flushed.series += self_series(self.stats, self._self_previous, timestamp, interval, self.config.hostname)
        return flushed, self.serializer.payloads(flushed)

    async def _host_metadata_loop(self) -> None:
        """Host metadata at start and every 30 minutes, as the Agent sends it: the host and its host tags.
        Gathered in a thread: the FQDN lookup can wait on DNS."""
        while True:
            document = await asyncio.to_thread(host_metadata, self.config.hostname, self.config.host_tags)
            self.sink.send(self.serializer.host_metadata(document))
            await asyncio.sleep(1800)

    async def _flush_loop(self) -> None:
        """Flush just after each bucket boundary, so a bucket leaves as soon as it is closed. In between, every
        half second, fold the distribution samples that piled up into their sketches (bounded memory under a
        flood; short pauses, so the socket buffer rides them out) and take what survived out of the collector's
        sight. Returns once should_exit is set, never in the middle of a flush: a flush cancelled half way would
        lose the buckets it had taken out."""
        interval = self.config.relay_flush_interval
        collector = LongLivedObjects()
        while not self.should_exit.is_set():
            now = time.time()
            next_flush = now + interval - now % interval + 0.05
            while (left := next_flush - time.time()) > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.should_exit.wait(), min(left, 0.5))
                if self.should_exit.is_set():
                    return  # the final flush takes every bucket
                self.aggregator.fold_samples()
                collector.freeze()
            try:
                await self.flush()
            except Exception:
                logger.exception("flush failed")

    # --- lifecycle ------------------------------------------------------------------------------------------------

    async def run(self) -> None:
        destination = (
            "dry run (no API key): flushes are printed" if self.dry_run else f"sending to {self.config.intake_url}"
        )
        health = await start_front(
            self.config, self.stats, self.registry, self.aggregator.cardinality, self.listeners, self.should_exit,
            destination,
        )  # fmt: skip
        await self.sink.start()
        flusher = asyncio.create_task(self._flush_loop(), name="flusher")
        checks = asyncio.create_task(self.checks.run(), name="checks") if self.checks else None
        sends_metadata = self.config.enable_metadata_collection and not self.dry_run
        metadata = asyncio.create_task(self._host_metadata_loop(), name="host-metadata") if sends_metadata else None
        await self.should_exit.wait()
        logger.info("shutting down: final flush")
        if metadata is not None:
            metadata.cancel()
        await self.listeners.stop()
        if checks is not None and self.checks is not None:
            checks.cancel()
            await asyncio.gather(checks, return_exceptions=True)
            self.checks.close()
        await self.shutdown(flusher)
        await health.cleanup()
        logger.info("stopped")

    async def run_as_worker(self, data: Connection, reports: Connection) -> None:
        """relay.workers > 1: lines come from the main process through `data`; counters go back through
        `reports` every second. An empty message (or the main process going away) means: flush and stop."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, lambda: None)  # the main process decides when to stop
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        await self.sink.start()

        def receive(message: bytes) -> None:
            if message:
                self.ingest(message, "shard")
            else:
                self.should_exit.set()

        pump(data, loop, receive)
        flusher = asyncio.create_task(self._flush_loop(), name="flusher")
        reporter = asyncio.create_task(self._report(reports), name="reporter")
        await self.should_exit.wait()
        await self.shutdown(flusher)
        reporter.cancel()
        await asyncio.gather(reporter, return_exceptions=True)
        self._send_report(reports)  # the last one, after the final flush

    async def _report(self, reports: Connection) -> None:
        while True:
            await asyncio.sleep(1)
            self._send_report(reports)

    def _send_report(self, reports: Connection) -> None:
        with contextlib.suppress(OSError):  # the main process is gone: nobody to report to
            reports.send_bytes(json.dumps(worker_report(self.stats)).encode())

    async def shutdown(self, flusher: asyncio.Task[None]) -> None:
        """Let a flush in progress finish, flush every bucket (open ones too), send within relay.shutdown_timeout
        (what cannot be sent is spooled)."""
        self.should_exit.set()
        await asyncio.gather(flusher, return_exceptions=True)
        try:
            await self.flush(force=True)
        except Exception:
            logger.exception("final flush failed")
        await self.sink.close(self.config.relay_shutdown_timeout)
