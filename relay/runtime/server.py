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
from relay.checks.runner import CheckRunner
from relay.config import Config, redact
from relay.pipeline.aggregate import Aggregator, FlushWork
from relay.pipeline.enrich import Enricher
from relay.pipeline.forward import DryRunSink, FanOutSink, HttpSink, Sink
from relay.pipeline.ingest import Ingest
from relay.pipeline.model import Flushed, Payload
from relay.pipeline.serialize import Serializer
from relay.pipeline.spool import Spool
from relay.runtime.handoff import (
    ENVIRONMENT,
    Bridge,
    Handoff,
    check_configuration,
    command_line,
    load_state,
    save_state,
)
from relay.runtime.health import HANDLED_SIGNALS, refuse_reload, start_front
from relay.runtime.listen import Listeners
from relay.runtime.workers import pump
from relay.telemetry import Stats, build_registry, self_series, worker_report
from relay.tools.status import render_flush

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
        self._reloading: asyncio.Task[None] | None = None
        self._bridge: Bridge | None = None  # set once a reload has passed its check: run() hands over, not stops

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
        handoff = self._take_handoff()
        health = await start_front(
            self.config, self.stats, self.registry, self.aggregator.cardinality, self.listeners, self.should_exit,
            destination, self.request_reload,
        )  # fmt: skip
        if handoff is not None:
            await self._adopt_bridge(handoff)
        await self.sink.start()
        flusher = asyncio.create_task(self._flush_loop(), name="flusher")
        checks = asyncio.create_task(self.checks.run(), name="checks") if self.checks else None
        sends_metadata = self.config.enable_metadata_collection and not self.dry_run
        metadata = asyncio.create_task(self._host_metadata_loop(), name="host-metadata") if sends_metadata else None
        await self.should_exit.wait()
        bridge = self._bridge
        logger.info("reloading: handing over to the new pipeline" if bridge else "shutting down: final flush")
        if metadata is not None:
            metadata.cancel()
        if bridge is None:
            await self.listeners.stop()
        else:
            sockets, connections = await self.listeners.detach()
        if checks is not None and self.checks is not None:
            checks.cancel()
            await asyncio.gather(checks, return_exceptions=True)
            self.checks.close()
        if bridge is None:
            await self.shutdown(flusher)
            await health.cleanup()
            logger.info("stopped")
            return
        await self._hand_over(flusher, health, bridge, sockets, connections)

    # --- reload (relay/runtime/handoff.py) ------------------------------------------------------------------------

    def request_reload(self) -> None:
        """SIGHUP: check the new configuration, and if it is good hand everything over to a new pipeline."""
        if self._bridge is None and (self._reloading is None or self._reloading.done()):
            self._reloading = asyncio.create_task(self._reload(), name="reload")

    async def _reload(self) -> None:
        problem = await check_configuration()
        if problem is None:
            try:
                paths = self._handoff_paths()
                self._bridge = Bridge.start(self.listeners.datagram_fds(), self.config.dogstatsd_buffer_size,
                                            paths["bridge"])  # fmt: skip
            except OSError as error:
                problem = f"cannot start the bridge: {error}"
        if problem is not None:
            refuse_reload(self.stats, problem)
            return
        self.should_exit.set()

    def _handoff_paths(self) -> dict[str, Path]:
        directory = self.config.spool_path
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        return {
            "state": directory / "reload-state.pickle",
            "bridge": directory / "reload-bridge.data",
            "handoff": directory / "reload-handoff.json",
        }

    async def _hand_over(
        self, flusher: asyncio.Task[None], health: Any, bridge: Bridge, sockets: dict[str, int],
        connections: list[tuple[int, bytes]],
    ) -> None:  # fmt: skip
        """The old pipeline's last steps: let a flush in progress finish, move the unflushed buckets to the state
        file, send or spool what the forwarder holds, then exec the same command line (same PID)."""
        await asyncio.gather(flusher, return_exceptions=True)
        paths = self._handoff_paths()
        self.stats.info["reloads"] = self.stats.info.get("reloads", 0) + 1
        self.stats.info["last_reload"] = {"at": time.time(), "result": "ok"}
        state = {"aggregator": self.aggregator.handoff(), "stats": self.stats.handoff()}
        try:
            await asyncio.to_thread(save_state, state, paths["state"])
        except Exception:  # not picklable or no disk: flushed now rather than lost
            self.stats.internal_error("reload (state)")
            await self.flush(force=True)
        await self.sink.close(self.config.relay_shutdown_timeout)
        await health.cleanup()
        Handoff(sockets, connections, str(paths["state"]), bridge.pid, bridge.stop_fd, str(paths["bridge"])).dump(
            paths["handoff"]
        )
        logger.info("reload: exec %s", " ".join(command_line()))
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os.environ[ENVIRONMENT] = str(paths["handoff"])
        signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED_SIGNALS)  # kept pending through exec, not fatal meanwhile
        os.execv(sys.executable, command_line())

    def _take_handoff(self) -> Handoff | None:
        """In the exec'd process: the sockets, connections and state the previous pipeline left; or a state file
        left by a reload whose new process did not start (an upgrade that failed), adopted at the next start."""
        path = os.environ.pop(ENVIRONMENT, "")
        handoff = None
        if path:
            try:
                handoff = Handoff.load(Path(path))
                Path(path).unlink(missing_ok=True)
            except (OSError, ValueError, TypeError) as error:
                logger.error("reload: the handoff document %s cannot be read: %s", path, error)
        state_path = Path(handoff.state_path) if handoff else self._handoff_paths()["state"]
        if state_path.exists():
            state = load_state(state_path)
            if state is not None:
                self.aggregator.adopt(state["aggregator"])
                self.stats.adopt(state["stats"])
                logger.info("reload: adopted %d contexts and %d unflushed buckets",
                            self.aggregator.contexts, len(self.aggregator.buckets))  # fmt: skip
        if handoff is not None:
            self.listeners.inherited = dict(handoff.sockets)
            self.listeners.inherited_connections = list(handoff.connections)
        return handoff

    async def _adopt_bridge(self, handoff: Handoff) -> None:
        """What the bridge read while the pipelines changed places, delivered before anything newer."""
        received = await Bridge.finish(handoff.bridge_pid, handoff.bridge_stop_fd, Path(handoff.bridge_data_path))
        for name, datagrams in received.items():
            self.listeners.deliver(name, datagrams)
        self.listeners.resume()
        logger.info("reload: %d datagrams read by the bridge delivered; listening",
                    sum(map(len, received.values())))  # fmt: skip

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
