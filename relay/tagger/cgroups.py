"""A process id, or a cgroup's inode, → the id of the container it runs in, as the Agent resolves them.

The Agent (pkg/util/cgroups) reads the container id from the last segment of a cgroup path: 64 hex digits
(docker, containerd, cri-o, in `/docker/<id>`, `/kubepods/.../<id>` or a systemd scope `docker-<id>.scope`,
`cri-containerd-<id>.scope`, `crio-<id>.scope`), an ECS task's `<32 hex>-<n>`, or a Garden id; a systemd `.mount`
unit and cri-o's `crio-conmon-<id>` (the monitor, not the container) are not containers. Of /proc/<pid>/cgroup it
reads the memory controller's line on cgroup v1 and the unified (`0::`) line on v2.

A client in its own cgroup namespace cannot see that path and sends `c:in-<inode>` instead, the inode of its
cgroup directory: the Agent walks the host's cgroup tree for the directory with that inode.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable

CONTAINER_ID = re.compile(r"([0-9a-f]{64})|([0-9a-f]{32}-\d+)|([0-9a-f]{8}(-[0-9a-f]{4}){4}$)")
PID_TTL = 10.0  # a pid's answer is kept this long: pids are reused, but rarely within seconds
PID_CACHE_MAX = 16384
RESCAN_INTERVAL = 2.0  # an unknown inode walks the cgroup tree again at most this often


def container_in(name: str) -> str | None:
    """The container id in one cgroup directory's name, or None."""
    match = CONTAINER_ID.search(name)
    if match is None or name.endswith(".mount") or name.startswith("crio-conmon-"):
        return None
    return match.group(0)


def container_of_cgroup_file(text: str) -> str | None:
    """/proc/<pid>/cgroup's text → the container id, or None (a host process, or no such line)."""
    unified = memory = None
    for line in text.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[1] == "memory":
            memory = parts[2]
        elif parts[1] == "" and parts[0] == "0":
            unified = parts[2]
    path = memory if memory is not None else unified
    if path is None:
        return None
    return container_in(os.path.basename(path.strip("/")))


class CgroupResolver:
    """Answers pid and inode look-ups from a /proc and a cgroup tree (a fake one in tests); thread-safe."""

    def __init__(
        self,
        proc_root: str = "/proc",
        cgroup_root: str = "/sys/fs/cgroup",
        pid_ttl: float = PID_TTL,
        rescan_interval: float = RESCAN_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.proc_root, self.cgroup_root = proc_root, cgroup_root
        self.pid_ttl, self.rescan_interval, self.clock = pid_ttl, rescan_interval, clock
        self._pids: dict[int, tuple[str | None, float]] = {}
        self._inodes: dict[int, str] = {}
        self._scanned_at: float | None = None
        self._scan_lock = threading.Lock()

    def container_of_pid(self, pid: int) -> str | None:
        now = self.clock()
        cached = self._pids.get(pid)
        if cached is not None and cached[1] > now:
            return cached[0]
        try:
            with open(os.path.join(self.proc_root, str(pid), "cgroup"), encoding="utf-8", errors="replace") as file:
                container = container_of_cgroup_file(file.read())
        except OSError:
            container = None  # the process is gone (or never was): nothing to tag it with
        if len(self._pids) >= PID_CACHE_MAX:
            self._pids = {}
        self._pids[pid] = (container, now + self.pid_ttl)
        return container

    def container_of_inode(self, inode: int) -> str | None:
        """A miss walks the tree again, at most every rescan_interval seconds (a new container's directory)."""
        found = self._inodes.get(inode)
        if found is not None:
            return found
        with self._scan_lock:
            now = self.clock()
            if self._scanned_at is None or now - self._scanned_at >= self.rescan_interval:
                self._inodes = self._scan()
                self._scanned_at = now
        return self._inodes.get(inode)

    def _scan(self) -> dict[int, str]:
        """Every directory of the tree whose name holds a container id: {its inode: the id}. On cgroup v1 the
        memory controller's tree is the one walked, as the Agent does."""
        root = self.cgroup_root
        memory = os.path.join(root, "memory")
        if os.path.isdir(memory) and not os.path.exists(os.path.join(root, "cgroup.controllers")):
            root = memory
        found: dict[int, str] = {}
        stack = [root]
        while stack:
            try:
                entries = list(os.scandir(stack.pop()))
            except OSError:
                continue  # removed while walking, or not readable
            for entry in entries:
                try:
                    if not entry.is_dir(follow_symlinks=False):
                        continue
                    if (container := container_in(entry.name)) is not None:
                        found[entry.stat(follow_symlinks=False).st_ino] = container  # as the Agent
                except OSError:
                    continue
                stack.append(entry.path)
        return found
