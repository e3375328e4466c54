"""Workers: relay.workers > 1 spreads parsing and aggregation over processes, sharded by metric name.

The main process keeps the sockets and the health endpoint; it splits each batch of datagrams by metric name
(so every context lives in exactly one worker, and the intake gets what one process would have sent) and hands
each worker its lines through a pipe. SO_REUSEPORT alone would not do: the kernel spreads sockets by their
4-tuple, so one busy client (a sidecar's app) would still land on one process, and a context seen by two
processes would be sent twice. Each worker runs the usual pipeline (ingest, aggregate, flush, forward, spool)
and reports its counters every second; /status and /metrics show the sum.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import multiprocessing
import zlib
from collections import Counter
from dataclasses import replace
from typing import Any

from relay.config import Config
from relay.memory import budget_for
from relay.runtime.health import start_front
from relay.runtime.listen import Listeners
from relay.runtime.pipes import WorkerFeed, pump
from relay.runtime.worker_process import worker_main
from relay.telemetry.prometheus import build_registry
from relay.telemetry.stats import Stats
from relay.telemetry.worker_reports import absorb_reports

logger = logging.getLogger(__name__)


def shard_lines(data: bytes, count: int) -> list[bytes]:
    """The lines of a batch for each worker, by metric name (the bytes before the first ':')."""
    shards: list[list[bytes]] = [[] for _ in range(count)]
    for line in data.split(b"\n"):
        if line:
            shards[zlib.crc32(line.partition(b":")[0]) % count].append(line)
    return [b"\n".join(lines) + b"\n" if lines else b"" for lines in shards]


def _shard_function() -> Any:
    try:
        from relay._speedups import shard
    except ImportError:
        return shard_lines
    return shard


class ShardedRelay:
    """The main process of a relay with several workers."""

    def __init__(self, config: Config, workers: int) -> None:
        """Raises ConfigError (naming relay.memory_limit) when the memory limit cannot hold the relay."""
        budget = budget_for(config, workers)
        # Each worker holds its share of the contexts; a metric lives in one worker (lines are sharded by name), so
        # its share is the configured one, else half of that worker's.
        per_worker = max(budget.contexts // workers, 1)
        self.worker_contexts = (per_worker, min(config.relay_max_contexts_per_metric or per_worker // 2, per_worker))
        config = self.config = budget.apply(config)
        self.count = workers
        self.stats = Stats()
        self.stats.describe(config)
        self.stats.info["memory"] = budget.document()
        self.stats.info["workers"] = workers
        self.local_dropped: Counter[str] = Counter()  # what the main process itself drops
        self.reports: list[dict[str, Any]] = []
        self.registry = build_registry(self.stats)
        self.listeners = Listeners(config, self.stats, self.dispatch, lower_others=True)
        self.listeners.taps.memory_share = budget.taps
        self.shard = _shard_function()
        self._lost: set[int] = set()
        self.feeds: list[WorkerFeed] = []
        self.processes: list[multiprocessing.process.BaseProcess] = []
        self.should_exit = asyncio.Event()

    def dispatch(self, data: bytes, transport: str, sender_pid: int = 0) -> None:
        """The listeners' callback: split the batch between the workers' feeds; never waits for a worker. A Unix
        socket sender's pid is not passed on: a sharded relay's origins come from the clients (c:, entity id)."""
        if data[-1:] != b"\n" and self.config.eol_required_for(transport):
            data, _, _ = data.rpartition(b"\n")  # the unterminated last line is dropped, as in one process
            self.local_dropped["unterminated"] += 1
        for index, lines in enumerate(self.shard(data, self.count)):
            feed = self.feeds[index]
            if lines and not feed.put(lines):
                if feed.lost:
                    self._worker_lost(index, lines.count(b"\n"))
                else:
                    self.local_dropped["worker_queue_full"] += lines.count(b"\n")

    def _worker_lost(self, index: int, lines: int) -> None:
        """A worker died: its lines from now on are dropped and counted; the others go on."""
        self.local_dropped["worker_down"] += lines + self.feeds[index].take_lost()
        if index not in self._lost:
            self._lost.add(index)
            logger.error("worker-%d is gone (exit code %s): its share of the lines is dropped and counted",
                         index, self.processes[index].exitcode)  # fmt: skip

    def cardinality(self, **_: Any) -> dict[str, Any]:
        """The sums the workers report; contexts per metric and tag values stay inside each worker."""
        return {
            "contexts": self.stats.gauges.contexts(),
            "custom_metrics_estimate": self.stats.gauges.custom_metrics_estimate(),
            "max_contexts": self.config.relay_max_contexts,
            "workers": self.count,
            "top_metrics": [],
        }

    def _receive_report(self, index: int, message: bytes) -> None:
        if message:
            self.reports[index] = json.loads(message)
        absorb_reports(self.stats, self.local_dropped, [r for r in self.reports if r])

    async def run(self) -> None:
        context = multiprocessing.get_context("spawn")  # a clean interpreter: no loop or sockets inherited
        loop = asyncio.get_running_loop()
        self.reports = [{} for _ in range(self.count)]
        for index in range(self.count):
            data_main, data_worker = context.Pipe(duplex=False)[::-1]
            reports_main, reports_worker = context.Pipe(duplex=False)
            spool = self.config.spool_path / f"worker-{index}"
            per_worker, per_metric = self.worker_contexts
            worker_config = replace(self.config, relay_spool_dir=str(spool), relay_max_contexts=per_worker,
                                    relay_max_contexts_per_metric=per_metric)  # fmt: skip
            if index:  # checks and host collectors run in worker 0 only: one run, one series each
                worker_config = replace(worker_config, confd_path="", relay_host_collectors=())
            process = context.Process(
                target=worker_main, args=(worker_config, index, data_worker, reports_worker), name=f"worker-{index}"
            )
            process.start()
            self.stats.info.setdefault("worker_pids", []).append(process.pid or 0)
            data_worker.close()
            reports_worker.close()
            self.feeds.append(WorkerFeed(data_main, self.config.relay_worker_queue_bytes, f"worker-{index}"))
            self.processes.append(process)
            self.stats.gauges.worker_queues[f"worker-{index}"] = functools.partial(
                lambda feed: feed.queued_bytes, self.feeds[-1]
            )
            pump(reports_main, loop, functools.partial(self._receive_report, index))
        health = await start_front(
            self.config, self.stats, self.registry,
            self.cardinality,
            self.listeners, self.should_exit, f"{self.count} workers",
        )  # fmt: skip
        await self.should_exit.wait()
        await self.shutdown(health)

    async def shutdown(self, health: Any) -> None:
        """Stop reading, tell every worker to flush and send, and wait for them."""
        logger.info("shutting down: %d workers flush", self.count)
        await self.listeners.stop()
        for feed in self.feeds:
            feed.close()
        deadline = self.config.relay_shutdown_timeout + 10
        for index, (feed, process) in enumerate(zip(self.feeds, self.processes, strict=True)):
            await asyncio.to_thread(feed.join, deadline)
            if feed.lost:
                self._worker_lost(index, 0)
            await asyncio.to_thread(process.join, deadline)
            if process.is_alive():
                logger.error("%s did not stop in time; terminating it", process.name)
                process.terminate()
        await asyncio.sleep(0.1)  # the last reports
        await health.cleanup()
        logger.info("stopped")
