"""A memory cgroup of our own for one run: the relay starts inside it, so it reads the limit a container would
give it, the kernel OOM-kills at that limit, and the cgroup's own peak says how close it came.

cgroup v2 when its memory controller is enabled for children of this process's cgroup, else cgroup v1's memory
hierarchy. The child is made under this process's own cgroup (so it stays within whatever holds us), or under
the hierarchy's root when that is not writable.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

MOUNTINFO = Path("/proc/self/mountinfo")
OWN_CGROUPS = Path("/proc/self/cgroup")


@dataclass(frozen=True)
class _Files:
    """Where one cgroup version keeps what we read and write."""

    version: int
    limit: str
    swap: str  # v2: swap allowed (0); v1: memory + swap (the same limit)
    usage: str
    peak: str
    events: str  # the file with the `oom_kill N` line


V2 = _Files(2, "memory.max", "memory.swap.max", "memory.current", "memory.peak", "memory.events")
V1 = _Files(1, "memory.limit_in_bytes", "memory.memsw.limit_in_bytes", "memory.usage_in_bytes",
            "memory.max_usage_in_bytes", "memory.oom_control")  # fmt: skip


def _mounts() -> list[tuple[str, Path, str, str]]:
    """(fstype, mount point, root inside the hierarchy, super options) of each cgroup mount."""
    found = []
    for line in MOUNTINFO.read_text().splitlines():
        fields = line.split()
        tail = fields[fields.index("-") + 1 :]
        if tail[0] in ("cgroup", "cgroup2"):
            found.append((tail[0], Path(fields[4]), fields[3], tail[2]))
    return found


def _own_path(controller: str) -> str:
    """This process's cgroup in one hierarchy ("" names cgroup v2's unified one)."""
    for line in OWN_CGROUPS.read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controller in controllers.split(","):
            return path
    return "/"


def _parents() -> list[tuple[_Files, Path]]:
    """Where a child may go, best first: v2 (memory enabled for children), then v1's memory hierarchy."""
    candidates = []
    for fstype, mount, root, options in _mounts():
        if fstype == "cgroup2":
            files, own = V2, _own_path("")
        elif "memory" in options.split(","):
            files, own = V1, _own_path("memory")
        else:
            continue
        inside = mount / os.path.relpath(own, root) if own.startswith(root) else mount
        for parent in dict.fromkeys([inside.resolve(), mount]):
            enabled = parent / "cgroup.subtree_control"
            if files is V1 or (enabled.exists() and "memory" in enabled.read_text().split()):
                candidates.append((files, parent))
    return sorted(candidates, key=lambda candidate: -candidate[0].version)


def _make(files: _Files, parent: Path, name: str = "") -> Path | None:
    """A new child of `parent`, or None where it cannot be made or lacks the files we read (memory.peak came
    with Linux 5.19: without it a v2 peak could only be sampled, so v1 is then preferred)."""
    path = parent / (name or f"dogstatsd-relay-{os.getpid()}-{secrets.token_hex(3)}")
    try:
        path.mkdir()
    except OSError:
        return None
    if not (path / files.peak).exists() or not (path / files.limit).exists():
        path.rmdir()
        return None
    return path


def cgroup_unavailable() -> str | None:
    """Why no memory cgroup can be made here, or None when one can (tests skip with this reason)."""
    if os.geteuid() != 0:
        return "memory cgroups need root"
    try:
        parents = _parents()
    except OSError as error:
        return f"cannot read the cgroup mounts: {error}"
    if not parents:
        return "no cgroup v2 with the memory controller enabled, nor a cgroup v1 memory hierarchy, is mounted"
    for files, parent in parents:
        probe = _make(files, parent)
        if probe is not None:
            probe.rmdir()
            return None
    return "no memory cgroup can be made here (read-only hierarchy, or no memory.peak)"


class MemoryCgroup:
    """A child cgroup limited to `limit_bytes` (swap included; None: no limit, only measured), removed on exit once
    its processes are gone.

    Pass `preexec` to subprocess.Popen(preexec_fn=...): the child joins between fork and exec, so the program
    sees that limit from its first instruction, and all it allocates is charged here."""

    def __init__(self, limit_bytes: int | None, name: str = "") -> None:
        """`name`: the directory's (a container's id, say); by default one of its own."""
        self.limit_bytes = limit_bytes
        self.name = name
        self.path = Path()
        self.files = V1

    def __enter__(self) -> MemoryCgroup:
        for files, parent in _parents():
            path = _make(files, parent, self.name)
            if path is None:
                continue
            self.path, self.files = path, files
            try:
                self._limit()
            except OSError:
                self._remove()
                raise
            return self
        raise RuntimeError(cgroup_unavailable() or "no writable memory cgroup")

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._remove()

    def _limit(self) -> None:
        if self.limit_bytes is None:
            return
        (self.path / self.files.limit).write_text(str(self.limit_bytes))
        swap = self.path / self.files.swap
        if swap.exists():  # else the kernel has no swap accounting, and swap cannot hide an OOM kill
            swap.write_text("0" if self.files is V2 else str(self.limit_bytes))

    @property
    def preexec(self) -> Callable[[], None]:
        """Moves the calling process into this cgroup ("0" names the writer itself in both versions)."""
        procs = str(self.path / "cgroup.procs")

        def join() -> None:
            with open(procs, "w") as file:
                file.write("0")

        return join

    def _read(self, name: str) -> str:
        return (self.path / name).read_text()

    def usage_bytes(self) -> int:
        return int(self._read(self.files.usage))

    def peak_bytes(self) -> int:
        """The most memory charged here since the cgroup was made (page cache included, as the OOM killer sees)."""
        return int(self._read(self.files.peak))

    def oom_kills(self) -> int:
        """Processes the kernel killed here for lack of memory (0 before Linux 4.13, which does not count them)."""
        for line in self._read(self.files.events).splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def pids(self) -> list[int]:
        return [int(pid) for pid in self._read("cgroup.procs").split()]

    def _remove(self, timeout: float = 10.0) -> None:
        """rmdir once empty; a process still inside (a run that failed half-way) is killed by its id first."""
        if not self.path.name:
            return
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(FileNotFoundError):
                for pid in self.pids():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            try:
                self.path.rmdir()
            except FileNotFoundError:
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
            else:
                return
