"""Memory: the limit the relay lives under, and the budget shared out of it, so that it is never OOM-killed.

The limit is `relay.memory_limit`, else the container's (the memory cgroup this process is in: `memory.max` on
cgroup v2, `memory.limit_in_bytes` on v1, the lowest along its ancestors), else the host's memory. The budget is
90 % of the limit less what the relay holds once started (its baseline), shared among what grows with traffic.
Each holder gets a share that it cannot outgrow, and degrades in this order when it reaches it: contexts fold,
the receive queues push back to the kernel, the retry queue spills to the spool, taps pause.

A share only ever lowers a configured bound (`relay.max_contexts`, `relay.receive_queue_bytes`,
`relay.worker_queue_bytes`, `forwarder_retry_queue_payloads_max_size`), never raises it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from relay.config import Config, ConfigError
from relay.config_checks import parse_bytes
from relay.telemetry.stats import Stats

logger = logging.getLogger(__name__)

HEADROOM = 0.9  # the share of the limit the relay plans to use: the rest is the allocator's slack
# A context's bytes at the flush peak: its shape, slot and bucket entries and its share of a flush built in parts
# (about 710, `python -m benchmarks run --scenario contexts`), plus the shapes of the lines folded into it.
CONTEXT_BYTES = 1000
STARTUP_GROWTH = 16 * 2**20  # what the relay adds after planning: threads, the collectors, the HTTP client
FLUSH_BYTES = 16 * 2**20  # one flush chunk being built and encoded, and its compressed payloads
MIN_CONTEXTS = 10_000  # below this the relay cannot do its job: it refuses to start
MIN_QUEUE = 2**20  # the smallest receive, worker or retry queue
UNLIMITED = 2**60  # cgroup v1 writes "no limit" as a number near 2**63


@dataclass(frozen=True, slots=True)
class MemoryLimit:
    bytes: int
    source: str  # where it was read: relay.memory_limit, the cgroup file, or the host's memory


@dataclass(frozen=True, slots=True)
class Budget:
    """The shares, in bytes, of everything that grows with traffic; `contexts` is a count."""

    limit: MemoryLimit
    baseline: int  # the relay's own memory once started, planned
    contexts: int
    contexts_per_metric: int
    receive_queue: int  # per datagram listener
    worker_queue: int  # per worker (relay.workers > 1)
    retry_queue: int  # the forwarder's memory queue (its disk writer's backlog is bounded alike)
    taps: int  # all captures together
    flush: int = FLUSH_BYTES
    listeners: int = 1  # datagram listeners, each with its receive queue
    workers: int = 1  # relay.workers

    def shares(self) -> dict[str, int]:
        """Each holder's share in bytes, as status and /metrics show it."""
        return {
            "baseline": self.baseline,
            "contexts": self.contexts * CONTEXT_BYTES,
            "receive_queues": self.receive_queue * self.listeners,
            "worker_queues": self.worker_queue * self.workers if self.workers > 1 else 0,
            "retry_queue": 2 * self.retry_queue,  # the memory queue and the payloads waiting for the disk
            "flush": self.flush,
            "taps": self.taps,
        }

    def document(self) -> dict[str, Any]:
        """What status shows of the plan (JSON-safe)."""
        return {
            "limit_bytes": self.limit.bytes, "source": self.limit.source,
            "planned_bytes": int(self.limit.bytes * HEADROOM),
            "max_contexts": self.contexts, "max_contexts_per_metric": self.contexts_per_metric,
            "shares": self.shares(),
        }  # fmt: skip

    def apply(self, config: Config) -> Config:
        """The configuration with each bound lowered to its share."""
        return replace(
            config,
            relay_max_contexts=self.contexts,
            relay_max_contexts_per_metric=self.contexts_per_metric,
            relay_receive_queue_bytes=self.receive_queue,
            relay_worker_queue_bytes=self.worker_queue,
            forwarder_retry_queue_payloads_max_size=self.retry_queue,
        )


def plan(config: Config, limit: MemoryLimit, started: int, *, listeners: int = 1, workers: int = 1) -> Budget:
    """Share out the limit; `started`: the resident bytes now. Raises ConfigError naming relay.memory_limit when the
    limit cannot hold the relay's minimum. Of what traffic may use: 15 % for the receive queues (a burst of new
    contexts parses slower than it arrives), 10 % for the retry queue and its disk writer's backlog, 10 % for the
    worker queues, at most 12.5 % for one flush part, 2 % for captures, and the rest for contexts."""
    baseline = (started + STARTUP_GROWTH) * (workers + 1 if workers > 1 else 1)  # each worker is a process
    usable = int(limit.bytes * HEADROOM) - baseline
    minimum = MIN_CONTEXTS * CONTEXT_BYTES + 2 * MIN_QUEUE * (listeners + 2 + workers)
    if usable < minimum:
        need = (baseline + minimum) / HEADROOM
        raise ConfigError(
            f"relay.memory_limit: {_mib(limit.bytes)} ({limit.source}) cannot hold the relay: it needs at least "
            f"{_mib(need)} ({_mib(baseline)} once started, {_mib(minimum)} for traffic, at 90 % of the limit)"
        )
    receive = config.relay_receive_queue_bytes and _bounded(
        config.relay_receive_queue_bytes, usable * 15 // 100 // listeners
    )
    worker = config.relay_worker_queue_bytes
    if workers > 1:
        worker = _bounded(worker, usable // 10 // workers)
    retry = _bounded(config.forwarder_retry_queue_payloads_max_size, usable // 20)
    flush, taps = min(FLUSH_BYTES, usable // 8), max(usable // 50, MIN_QUEUE)
    queues = receive * listeners + (worker * workers if workers > 1 else 0) + 2 * retry
    contexts = max((usable - queues - taps - flush) // CONTEXT_BYTES, MIN_CONTEXTS)
    if config.relay_max_contexts:
        contexts = min(contexts, config.relay_max_contexts)
    per_metric = config.relay_max_contexts_per_metric or contexts // 2
    return Budget(
        limit, baseline, contexts, min(per_metric, contexts), receive, worker, retry, taps, flush, listeners, workers
    )


def budget_for(config: Config, workers: int = 1) -> Budget:
    """The budget of the relay starting now, logged: its limit, its memory so far and its listeners. Raises
    ConfigError naming relay.memory_limit when the limit cannot hold the relay."""
    budget = plan(config, limit_of(config), resident_bytes(), listeners=_datagram_listeners(config), workers=workers)
    _log(budget)
    return budget


def _datagram_listeners(config: Config) -> int:
    """The listeners that have a receive queue each: UDP, the Unix datagram socket, the Unix stream socket."""
    return max(bool(config.dogstatsd_port) + bool(config.dogstatsd_socket) + bool(config.dogstatsd_stream_socket), 1)


def _log(budget: Budget) -> None:
    shares = ", ".join(f"{holder} {_mib(size)}" for holder, size in budget.shares().items() if size)
    logger.info("memory: limit %s (%s); up to %s contexts (%s per metric); shares: %s", _mib(budget.limit.bytes),
                budget.limit.source, f"{budget.contexts:,}", f"{budget.contexts_per_metric:,}", shares)  # fmt: skip


def _bounded(configured: int, share: int) -> int:
    """The configured bound, lowered to its share (never below MIN_QUEUE, which the plan's minimum holds)."""
    return min(configured, max(share, MIN_QUEUE))


def _mib(size: float) -> str:
    return f"{size / 2**20:,.0f} MiB"


def limit_of(config: Config, proc: Path = Path("/proc")) -> MemoryLimit:
    """relay.memory_limit, else the container's limit, else the host's memory."""
    if config.relay_memory_limit:
        return MemoryLimit(parse_bytes(config.relay_memory_limit), "relay.memory_limit")
    found = cgroup_limit(proc)
    if found is not None:
        return found
    return MemoryLimit(host_memory(proc), "the host's memory")


def host_memory(proc: Path = Path("/proc")) -> int:
    for line in (proc / "meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    raise OSError("MemTotal not in meminfo")


def cgroup_limit(proc: Path = Path("/proc")) -> MemoryLimit | None:
    """The lowest memory limit along this process's cgroup and its ancestors (a pod's limit sits on the parent
    of its containers'), on v2 then v1; None when there is none or it cannot be read."""
    try:
        memberships = (proc / "self" / "cgroup").read_text().splitlines()
        mounts = (proc / "self" / "mountinfo").read_text().splitlines()
    except OSError:
        return None
    for version, controller_file in (("2", "memory.max"), ("1", "memory.limit_in_bytes")):
        path = _cgroup_directory(memberships, mounts, version)
        if path is None:
            continue
        found = _lowest_limit(path[0], path[1], controller_file)
        if found is not None:
            return found
    return None


def _cgroup_directory(memberships: list[str], mounts: list[str], version: str) -> tuple[Path, Path] | None:
    """(the mount point, this process's cgroup directory under it) for the memory controller of that version."""
    for membership in memberships:
        _, controllers, cgroup = membership.split(":", 2)
        if (version == "2" and controllers == "") or (version == "1" and "memory" in controllers.split(",")):
            for mount in mounts:
                fields = mount.split()
                separator = fields.index("-")
                kind, options = fields[separator + 1], fields[separator + 3].split(",")
                if (version == "2" and kind == "cgroup2") or (
                    version == "1" and kind == "cgroup" and "memory" in options
                ):
                    root, point = fields[3], Path(fields[4])
                    relative = cgroup[len(root) :] if cgroup.startswith(root) and root != "/" else cgroup
                    return point, point / relative.lstrip("/")
    return None


def _lowest_limit(mount_point: Path, directory: Path, name: str) -> MemoryLimit | None:
    lowest: MemoryLimit | None = None
    while True:
        try:
            text = (directory / name).read_text().strip()
            value = UNLIMITED if text == "max" else int(text)
        except (OSError, ValueError):
            value = UNLIMITED
        if value < UNLIMITED and (lowest is None or value < lowest.bytes):
            lowest = MemoryLimit(value, f"the cgroup's {directory / name}")
        if directory == mount_point or mount_point not in directory.parents:
            return lowest
        directory = directory.parent


def resident_bytes(proc: Path = Path("/proc")) -> int:
    """This process's resident memory (VmRSS)."""
    for line in (proc / "self" / "status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class MemoryGuard:
    """What the plan cannot see (the allocator's fragmentation, a flood of histogram samples, a leak): the resident
    memory, read every half second by the flush loop. Past HOLD_AT of the limit no context is added (new ones fold,
    counted) until it is back under RELEASE_AT; and every degradation of the last minute is written where /ready
    and status read it, so that an operator sees why."""

    HOLD_AT, RELEASE_AT = 0.85, 0.75
    WINDOW = 60.0  # seconds a degradation is reported after it last happened

    def __init__(self, budget: Budget, stats: Stats, hold: Callable[[bool], None]) -> None:
        self.limit = budget.limit.bytes
        self.stats = stats
        self.hold = hold
        self.held = False
        self.peak = 0
        self.seen: dict[str, int] = {}  # what each degradation counter read last
        self.last: dict[str, float] = {}  # when each was last seen growing
        stats.gauges.memory_used = self.usage

    def usage(self) -> dict[str, int]:
        """Each holder's use in bytes now (contexts estimated at CONTEXT_BYTES each), and the process's resident
        memory, its peak as the guard saw it."""
        gauges = self.stats.gauges
        resident = resident_bytes()
        self.peak = max(self.peak, resident)
        return {
            "resident": resident,
            "resident_peak": self.peak,
            "contexts": gauges.contexts() * CONTEXT_BYTES,
            "receive_queues": sum(gauges.by_listener("queue_bytes").values()),
            "worker_queues": sum(read() for read in gauges.worker_queues.values()),
            "retry_queue": gauges.retry_queue_bytes(),
            "taps": gauges.tap_bytes(),
        }

    def check(self, now: float) -> None:
        resident = resident_bytes()
        self.peak = max(self.peak, resident)
        if not self.held and resident > self.limit * self.HOLD_AT:
            self.held = True
            self.stats.aggregate.memory_holds += 1
            self.hold(True)
        elif self.held and resident < self.limit * self.RELEASE_AT:
            self.held = False
            self.hold(False)
        self.stats.info["degraded"] = self._degraded(now, resident)

    def _degraded(self, now: float, resident: int) -> list[str]:
        stats = self.stats
        counters = {
            "contexts folding (relay.max_contexts or the metric's share reached)": sum(
                stats.aggregate.context_overflow.values()
            ),
            "receive queue full: the kernel holds and drops the rest": sum(
                stats.gauges.by_listener("queue_drops").values()
            ),
            "retry queue full: payloads spill to the spool": sum(stats.forward.spooled.values()),
            "captures paused: their share of memory is full": sum(stats.listen.taps_paused.values()),
        }
        for reason, value in counters.items():
            if value > self.seen.get(reason, 0):
                self.last[reason] = now
            self.seen[reason] = value
        reasons = [reason for reason, at in self.last.items() if now - at < self.WINDOW]
        if self.held:
            reasons.append(f"memory: resident {_mib(resident)} is over {self.HOLD_AT:.0%} of the limit "
                           f"{_mib(self.limit)}: new contexts fold until under {self.RELEASE_AT:.0%}")  # fmt: skip
        return reasons
