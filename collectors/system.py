"""cpu, load, memory (with swap), uptime and file_handle: the Agent's Go core checks, with psutil and /proc."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import psutil

from relay.checks.base import AgentCheck

MIB = 1024 * 1024


class CpuCheck(AgentCheck):
    """system.cpu.* percentages of the time since the previous run (none on the first run)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.previous: Any = None

    def check(self, instance: dict[str, Any]) -> None:
        times = psutil.cpu_times()
        self.gauge("system.cpu.num_cores", psutil.cpu_count() or 1)
        self.monotonic_count("system.cpu.context_switches", psutil.cpu_stats().ctx_switches)
        previous, self.previous = self.previous, times
        if previous is None:
            return
        field = lambda name: getattr(times, name, 0.0) - getattr(previous, name, 0.0)  # noqa: E731
        total = sum(field(n) for n in ("user", "system", "idle", "nice", "iowait", "irq", "softirq", "steal"))
        if total <= 0:
            return
        percent = lambda value: 100 * value / total  # noqa: E731
        self.gauge("system.cpu.user", percent(field("user") + field("nice")))
        self.gauge("system.cpu.system", percent(field("system") + field("irq") + field("softirq")))
        self.gauge("system.cpu.interrupt", percent(field("irq") + field("softirq")))
        self.gauge("system.cpu.iowait", percent(field("iowait")))
        self.gauge("system.cpu.idle", percent(field("idle")))
        self.gauge("system.cpu.stolen", percent(field("steal")))
        self.gauge("system.cpu.guest", percent(field("guest")))


class LoadCheck(AgentCheck):
    def check(self, instance: dict[str, Any]) -> None:
        cores = psutil.cpu_count() or 1
        for window, value in zip((1, 5, 15), os.getloadavg(), strict=True):
            self.gauge(f"system.load.{window}", value)
            self.gauge(f"system.load.norm.{window}", value / cores)


class MemoryCheck(AgentCheck):
    """system.mem.* and system.swap.* in MiB, as the Agent's Go check (used = total - free, not psutil's used)."""

    def check(self, instance: dict[str, Any]) -> None:
        memory = psutil.virtual_memory()
        values = {
            "total": memory.total, "free": memory.free, "used": memory.total - memory.free,
            "usable": memory.available, "cached": memory.cached, "buffered": memory.buffers,
            "shared": memory.shared, "slab": getattr(memory, "slab", 0),
        }  # fmt: skip
        meminfo = _meminfo()
        for name, key in (("slab_reclaimable", "SReclaimable"), ("page_tables", "PageTables"),
                          ("commit_limit", "CommitLimit"), ("committed_as", "Committed_AS")):  # fmt: skip
            if key in meminfo:
                values[name] = meminfo[key]
        for name, value in values.items():
            self.gauge(f"system.mem.{name}", value / MIB)
        self.gauge("system.mem.pct_usable", memory.available / memory.total if memory.total else 0)
        swap = psutil.swap_memory()
        self.gauge("system.swap.total", swap.total / MIB)
        self.gauge("system.swap.free", swap.free / MIB)
        self.gauge("system.swap.used", swap.used / MIB)
        if "SwapCached" in meminfo:
            self.gauge("system.swap.cached", meminfo["SwapCached"] / MIB)
        self.gauge("system.swap.pct_free", (100 - swap.percent) / 100)
        self.rate("system.swap.swap_in", swap.sin / MIB)
        self.rate("system.swap.swap_out", swap.sout / MIB)


def _meminfo() -> dict[str, int]:
    """The /proc/meminfo fields psutil lacks, in bytes; empty where there is no /proc."""
    values = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            parts = rest.split()
            if parts:
                values[key] = int(parts[0]) * (1024 if len(parts) > 1 else 1)
    except OSError:
        pass
    return values


class UptimeCheck(AgentCheck):
    def check(self, instance: dict[str, Any]) -> None:
        self.gauge("system.uptime", time.time() - psutil.boot_time())


class FileHandleCheck(AgentCheck):
    def check(self, instance: dict[str, Any]) -> None:
        try:
            allocated, unused, maximum = (int(v) for v in Path("/proc/sys/fs/file-nr").read_text().split()[:3])
        except (OSError, ValueError):
            return
        self.gauge("system.fs.file_handles.allocated", allocated)
        self.gauge("system.fs.file_handles.allocated_unused", unused)
        self.gauge("system.fs.file_handles.used", allocated - unused)
        self.gauge("system.fs.file_handles.max", maximum)
        self.gauge("system.fs.file_handles.in_use", (allocated - unused) / maximum if maximum else 0)
