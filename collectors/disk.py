"""disk (space and inodes, per partition) and io (per block device): the Agent's checks, with psutil and /proc."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import Any

import psutil

from relay.checks.base import AgentCheck

# The Agent's file_system_global_exclude and mount point exclusions; pseudo filesystems drop out by size 0.
EXCLUDED_FILESYSTEMS = re.compile(r"(iso9660|tracefs)$", re.I)
EXCLUDED_MOUNTS = re.compile(r"(/host)?/proc/sys/fs/binfmt_misc$")


class DiskCheck(AgentCheck):
    """system.disk.* in KiB ("for legacy reasons", like the Agent) and system.fs.inodes.*, tagged by device.
    Instance keys: file_system_exclude, device_exclude, mount_point_exclude (regexes, anchored at the start)."""

    def check(self, instance: dict[str, Any]) -> None:
        excluded = [(key, re.compile(instance[key], re.I)) for key in
                    ("file_system_exclude", "device_exclude", "mount_point_exclude") if instance.get(key)]  # fmt: skip
        for partition in psutil.disk_partitions(all=True):
            if not partition.device or partition.device == "none":
                continue
            if EXCLUDED_FILESYSTEMS.search(partition.fstype) or EXCLUDED_MOUNTS.match(partition.mountpoint):
                continue
            fields = {"file_system_exclude": partition.fstype, "device_exclude": partition.device,
                      "mount_point_exclude": partition.mountpoint}  # fmt: skip
            if any(pattern.match(fields[key]) for key, pattern in excluded):
                continue
            try:
                usage = psutil.disk_usage(partition.mountpoint)
                inodes = os.statvfs(partition.mountpoint)
            except OSError:
                continue
            if usage.total <= 0:
                continue
            tags = [f"device:{partition.device}", f"device_name:{os.path.basename(partition.device)}"]
            self.gauge("system.disk.total", usage.total / 1024, tags=tags)
            self.gauge("system.disk.used", usage.used / 1024, tags=tags)
            self.gauge("system.disk.free", usage.free / 1024, tags=tags)
            self.gauge("system.disk.utilized", usage.percent, tags=tags)
            self.gauge("system.disk.in_use", usage.percent / 100, tags=tags)
            if inodes.f_files:
                used = inodes.f_files - inodes.f_ffree
                self.gauge("system.fs.inodes.total", inodes.f_files, tags=tags)
                self.gauge("system.fs.inodes.free", inodes.f_ffree, tags=tags)
                self.gauge("system.fs.inodes.used", used, tags=tags)
                self.gauge("system.fs.inodes.utilized", 100 * used / inodes.f_files, tags=tags)
                self.gauge("system.fs.inodes.in_use", used / inodes.f_files, tags=tags)


def weighted_io_ms() -> dict[str, int]:
    """Per block device, the weighted milliseconds spent doing I/O (the 11th statistic of /proc/diskstats,
    which psutil does not expose): what the queue size is computed from."""
    try:
        rows = Path("/proc/diskstats").read_text().splitlines()
    except OSError:
        return {}
    return {fields[2]: int(fields[13]) for row in rows if len(fields := row.split()) > 13 and fields[13].isdigit()}


def pages_in_out() -> tuple[int, int] | None:
    """pgpgin and pgpgout of /proc/vmstat, times 4096 as the Agent's gopsutil reports them."""
    try:
        counters = dict(line.split()[:2] for line in Path("/proc/vmstat").read_text().splitlines())
        return int(counters["pgpgin"]) * 4096, int(counters["pgpgout"]) * 4096
    except (OSError, KeyError, ValueError):
        return None


class IoCheck(AgentCheck):
    """system.io.* per block device, from the change since the previous run (nothing on the first run), rounded
    to two decimals as the Agent does; system.io.block_in/out for the host."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.previous: tuple[float, dict[str, Any], dict[str, int]] | None = None

    def check(self, instance: dict[str, Any]) -> None:
        now, counters, weighted = time.monotonic(), psutil.disk_io_counters(perdisk=True) or {}, weighted_io_ms()
        previous, self.previous = self.previous, (now, counters, weighted)
        for device, current in counters.items():
            tags = [f"device:{device}", f"device_name:{device}"]
            self.rate("system.io.r_s", current.read_count, tags=tags)
            self.rate("system.io.w_s", current.write_count, tags=tags)
            self.rate("system.io.rrqm_s", getattr(current, "read_merged_count", 0), tags=tags)
            self.rate("system.io.wrqm_s", getattr(current, "write_merged_count", 0), tags=tags)
            self.monotonic_count("system.disk.read_time", current.read_time, tags=tags)
            self.monotonic_count("system.disk.write_time", current.write_time, tags=tags)
            if previous is None or device not in previous[1]:
                continue
            seconds, before = now - previous[0], previous[1][device]
            if seconds <= 0:
                continue
            reads, writes = current.read_count - before.read_count, current.write_count - before.write_count
            operations = reads + writes
            read_ms, write_ms = current.read_time - before.read_time, current.write_time - before.write_time
            moved = (current.read_bytes - before.read_bytes) + (current.write_bytes - before.write_bytes)
            busy = getattr(current, "busy_time", 0) - getattr(before, "busy_time", 0)
            gauges = {
                "rkb_s": (current.read_bytes - before.read_bytes) / 1024 / seconds,
                "wkb_s": (current.write_bytes - before.write_bytes) / 1024 / seconds,
                "util": min(100.0, 100 * busy / (seconds * 1000)),
                "avg_rq_sz": moved / 512 / operations if operations else 0.0,
                "await": (read_ms + write_ms) / operations if operations else 0.0,
                "r_await": read_ms / reads if reads else 0.0,
                "w_await": write_ms / writes if writes else 0.0,
                "svctm": busy / operations if operations else 0.0,
            }
            if device in weighted and device in previous[2]:  # /1024, not /1000: the Agent's own quirk, kept
                gauges["avg_q_sz"] = (weighted[device] - previous[2][device]) / 1024 / seconds
            for name, value in gauges.items():
                self.gauge(f"system.io.{name}", round(value, 2), tags=tags)
        pages = pages_in_out()
        if pages is not None:
            self.rate("system.io.block_in", pages[0])
            self.rate("system.io.block_out", pages[1])
