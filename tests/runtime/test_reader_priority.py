"""The reader threads of a running relay, as the kernel sees them (/proc/PID/task/*/stat): above the relay's other
threads (when a Unix datagram socket has two, on two CPUs or more, each kept to its half), asleep when idle.
Why: relay/_reader.c, PLACEMENT; the losses it prevents are measured by the client-uds benchmark, not here."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import run_relay

SCHED_OTHER, SCHED_IDLE = 0, 5


@pytest.fixture(autouse=True)
def _built(native_reader_module: Any) -> None:
    """The native reader is required in CI, skipped with the reason elsewhere."""


def threads(pid: int) -> list[dict[str, Any]]:
    """Each thread's name, state, policy and CPUs."""
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
            name = (task / "comm").read_text().strip()
            cpus = os.sched_getaffinity(int(task.name))
        except OSError:  # the thread ended meanwhile
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": fields 3.. of proc(5)
        found.append({"name": name, "state": fields[0], "policy": int(fields[38]), "cpus": cpus})
    return found


async def test_the_readers_are_above_the_other_threads_and_the_unix_socket_has_one_on_each_half(intake, tmp_path):
    _, url = intake
    path = tmp_path / "dsd.socket"
    async with run_relay(tmp_path, url, DD_DOGSTATSD_SOCKET=str(path), DD_RELAY_PROBE_INTERVAL="0") as relay:
        seen = threads(relay.process.pid)
        await relay.stop()
    readers = [thread for thread in seen if thread["name"] == "relay-reader"]
    others = [thread for thread in seen if thread["name"] != "relay-reader"]
    everywhere = os.sched_getaffinity(0)
    if len(everywhere) < 2:  # one reader a socket, nothing lowered (readers.ReaderPriority)
        assert len(readers) == 2 and {thread["policy"] for thread in seen} == {SCHED_OTHER}
        return
    assert len(readers) == 3  # UDP's, and the Unix socket's two
    halves = [thread["cpus"] for thread in readers if thread["cpus"] != everywhere]
    assert len(halves) == 2 and not halves[0] & halves[1] and halves[0] | halves[1] == everywhere
    assert {thread["policy"] for thread in readers} == {SCHED_OTHER}
    # the one other thread left at the default policy is the one that creates reader threads
    assert [thread["policy"] for thread in others].count(SCHED_OTHER) == 1
    assert {thread["policy"] for thread in others} == {SCHED_OTHER, SCHED_IDLE}


async def test_idle_reader_threads_sleep_instead_of_spinning(intake, tmp_path):
    """A thread that polls instead of sleeping would be seen running ('R') in some of the samples."""
    _, url = intake
    path = tmp_path / "dsd.socket"
    async with run_relay(tmp_path, url, DD_DOGSTATSD_SOCKET=str(path), DD_RELAY_PROBE_INTERVAL="0") as relay:
        states = []
        for _ in range(50):
            states += [thread["state"] for thread in threads(relay.process.pid) if thread["name"] == "relay-reader"]
            await asyncio.sleep(0.01)
        await relay.stop()
    assert states and set(states) == {"S"}
