"""Relay: builds every stage from Config and runs them. Startup → flush loop → bounded shutdown with a final flush.

Data flows one way: listen → parse → enrich → aggregate → serialize → forward. Ingest runs inside the
listeners' callbacks (no queue hop per datagram); flushes run on a timer, serialization in a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import os
import platform
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from relay.config import Config
from relay.memory import MemoryGuard, budget_for
from relay.pipeline.assemble import Pipeline
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
from relay.runtime.loop import final_flush, flush_loop
from relay.tagger import Tagger
from relay.telemetry.prometheus import build_registry

logger = logging.getLogger(__name__)


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


class Relay:
    """The standalone relay: the health endpoint and the listeners in front of one pipeline, the checks beside it,
    and a reload that hands it all to a new process without a gap."""

    def __init__(self, config: Config, out: TextIO = sys.stdout) -> None:
        """Raises ConfigError (naming relay.memory_limit) when the memory limit cannot hold the relay."""
        self.budget = budget_for(config)
        config = self.config = self.budget.apply(config)
        self.tagger = Tagger.from_config(config)  # on Kubernetes (the kubelet) or with docker_host: origin tags
        self.pipeline = Pipeline(config, out=out, tagger=self.tagger)
        self.stats = self.pipeline.stats
        self.guard = MemoryGuard(self.budget, self.stats, self.pipeline.hold_memory)
        self.stats.info["memory"] = self.budget.document()
        self.listeners = Listeners(config, self.stats, self.pipeline.datagram, lower_others=True)
        self.listeners.taps.memory_share = self.budget.taps
        self.stats.gauges.tap_bytes = self.listeners.taps.buffered
        self.registry = build_registry(self.stats)
        if config.confd_path or config.relay_host_collectors:
            self.pipeline.load_checks()
        self.should_exit = asyncio.Event()
        self._reloading: asyncio.Task[None] | None = None
        self._bridge: Bridge | None = None  # set once a reload has passed its check: run() hands over, not stops

    async def _host_metadata_loop(self) -> None:
        """Host metadata at start and every 30 minutes, as the Agent sends it: the host and its host tags.
        Gathered in a thread: the FQDN lookup can wait on DNS."""
        pipeline = self.pipeline
        while True:
            document = await asyncio.to_thread(host_metadata, self.config.hostname, self.config.host_tags)
            pipeline.sink.send(pipeline.serializer.host_metadata(document))
            await asyncio.sleep(1800)

    # --- lifecycle ------------------------------------------------------------------------------------------------

    async def run(self) -> None:
        pipeline = self.pipeline
        destination = (
            "dry run (no API key): flushes are printed" if pipeline.dry_run else f"sending to {self.config.intake_url}"
        )
        handoff = self._take_handoff()
        health = await start_front(
            self.config, self.stats, self.registry, pipeline.aggregator.cardinality, self.listeners, self.should_exit,
            destination, self.request_reload,
        )  # fmt: skip
        if handoff is not None:
            await self._adopt_bridge(handoff)
        await self.pipeline.sink.start()
        if self.tagger is not None:
            self.tagger.start()
        flusher = asyncio.create_task(flush_loop(self.pipeline, self.should_exit, self.guard), name="flusher")
        runner = self.pipeline.checks
        checks = asyncio.create_task(runner.run(), name="checks") if runner else None
        sends_metadata = self.config.enable_metadata_collection and not self.pipeline.dry_run
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
        if checks is not None and runner is not None:
            checks.cancel()
            await asyncio.gather(checks, return_exceptions=True)
            runner.close()
        if self.tagger is not None:
            await asyncio.to_thread(self.tagger.stop)
        if bridge is None:
            await final_flush(self.pipeline, flusher, self.should_exit)
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
        state = {"aggregator": self.pipeline.aggregator.handoff(), "stats": self.stats.handoff()}
        try:
            await asyncio.to_thread(save_state, state, paths["state"])
        except Exception:  # not picklable or no disk: flushed now rather than lost
            self.stats.internal_error("reload (state)")
            await self.pipeline.flush(force=True)
        await self.pipeline.sink.close(self.config.relay_shutdown_timeout)
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
                self.pipeline.aggregator.adopt(state["aggregator"])
                self.stats.adopt(state["stats"])
                logger.info("reload: adopted %d contexts and %d unflushed buckets",
                            self.pipeline.aggregator.contexts, len(self.pipeline.aggregator.buckets))  # fmt: skip
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
