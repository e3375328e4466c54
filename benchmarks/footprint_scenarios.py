"""Idle footprint: the resident memory of a relay at its defaults that receives nothing, as a sidecar spends most of
its life. Read from /proc for the relay and every process it started (the loss self-probe's sender), since a pod
pays for them all, and from a memory cgroup of its own where one can be made. With --baseline REV, that revision's
relays run beside these, in the same run."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

from benchmarks.cgroup import MemoryCgroup, cgroup_unavailable
from benchmarks.harness import Intake, Relay
from benchmarks.load import BASELINE, Result

# (state, relay environment, seconds after start): a dry run and a relay sending to an intake stand-in, each read
# after its first flush (10 s), and the one with a key once more after three flushes.
STATES: tuple[tuple[str, dict[str, Any], float], ...] = (
    ("dry_run", {"DD_API_KEY": ""}, 15.0),
    ("api_key", {}, 15.0),
    ("api_key", {}, 35.0),
)


def _kib(pid: int, path: str, field: str) -> int:
    """One `Field:  N kB` line of /proc/PID/status or smaps_rollup; 0 where the kernel does not tell."""
    try:
        lines = Path(f"/proc/{pid}/{path}").read_text().splitlines()
    except OSError:
        return 0
    return next((int(line.split()[1]) for line in lines if line.startswith(field + ":")), 0)


def _family(pid: int) -> list[int]:
    """The process and its descendants, from each process's parent in /proc/*/stat."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    family, index = [pid], 0
    while index < len(family):
        family += parents.get(family[index], [])
        index += 1
    return family


def footprint(pid: int) -> dict[str, Any]:
    """VmRSS of the relay itself; VmRSS and PSS summed over it and its children (PSS splits the pages they share,
    such as the interpreter's, so its sum is nearer what the container's memory is charged)."""
    family = _family(pid)
    mib = lambda kib: round(kib / 1024, 1)  # noqa: E731
    return {
        "rss_mib": mib(_kib(pid, "status", "VmRSS")),
        "anon_mib": mib(_kib(pid, "status", "RssAnon")),
        "processes": len(family),
        "with_children_rss_mib": mib(sum(_kib(member, "status", "VmRSS") for member in family)),
        "with_children_pss_mib": mib(sum(_kib(member, "smaps_rollup", "Pss") for member in family)),
    }


def idle_footprint(seconds: float) -> Result:
    """`seconds` is not used: the states are read at fixed times after the start, past the first flush.

    `cgroup_mib` is what the relay's cgroup is charged: its anonymous memory and the page cache it was first to
    read (files other processes had read before are charged to them), so about what a container is charged beyond
    its image's files."""
    intake = Intake()
    trees: dict[str, Path | None] = {"after": None}
    if BASELINE["tree"] is not None:
        trees["before"] = BASELINE["tree"]
    relays: dict[tuple[str, str], tuple[float, Relay, MemoryCgroup | None]] = {}  # (label, state): started when
    summary: dict[str, Any] = {}
    with contextlib.ExitStack() as cgroups:
        try:
            for label, tree in trees.items():
                for state, env in {state: env for state, env, _ in STATES}.items():
                    cgroup = None if cgroup_unavailable() else cgroups.enter_context(MemoryCgroup(None))
                    started = time.monotonic()
                    relay = Relay(intake.url, tree=tree, preexec=cgroup.preexec if cgroup else None, **env)
                    relays[label, state] = (started, relay, cgroup)
            for state, _, at in STATES:
                for label in trees:
                    read = _read(*relays[label, state], at)
                    summary.setdefault(f"dogstatsd-relay ({label})", {})[f"{state}_{at:g}s"] = read
        finally:
            for _, relay, _ in relays.values():
                relay.stop()
            intake.stop()
    return Result("idle-footprint", summary, [], {"kind": "none"})


def _read(started: float, relay: Relay, cgroup: MemoryCgroup | None, at: float) -> dict[str, Any]:
    """The relay's footprint `at` seconds after it was started, and how many flushes it had done by then."""
    time.sleep(max(0.0, started + at - time.monotonic()))
    measured = footprint(relay.process.pid)  # before asking for the status, which takes memory
    if cgroup is not None:
        measured["cgroup_mib"] = round(cgroup.usage_bytes() / 2**20, 1)
    flushes = ((relay.status() or {}).get("aggregator") or {}).get("flushes", 0)
    return {**measured, "flushes": flushes}
