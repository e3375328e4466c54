"""Loss self-probe: a small sender process sends one datagram every `relay.probe_interval` seconds to each
datagram listener, and the relay counts how many arrive.

A probe waits in the same kernel queue as the clients' datagrams, so its loss is the loss of the real queue
under the real load, with no client help. The sender is a process of its own because a thread of the relay
would only get to send when the reader lets go of the GIL, that is right after it has made room in the queue,
and would never see the queue full. Probes carry a sequence number per listener and a listener's queue is
FIFO: a gap is a loss. A probe not back `TIMEOUT` seconds after it was sent is lost too (the sender's counters
are a memory file both map; the sender is a bare interpreter running probe_sender.py, with the standard library
only, so it costs no second relay). Listeners strip probes before counting, capture or parsing: a probe starts
with a NUL byte, which no DogStatsD line does. `relay_probe_loss_ratio` is the share lost among the last `WINDOW`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import mmap
import os
import subprocess
import sys
import tempfile
from collections import deque
from operator import methodcaller
from pathlib import Path
from typing import IO, Any

from relay.runtime.probe_sender import MARK, Address
from relay.telemetry.stats import Stats

logger = logging.getLogger(__name__)

SENDER = Path(__file__).with_name("probe_sender.py")
TIMEOUT = 5.0
WINDOW = 60
is_probe = methodcaller("startswith", MARK)  # a datagram of the probe, not a client


def _shared_file() -> IO[bytes]:
    """A file in memory only where Linux offers one (memfd_create), else an unlinked temporary file."""
    if hasattr(os, "memfd_create"):
        return os.fdopen(os.memfd_create("dogstatsd-relay-probe", 0), "w+b")
    return tempfile.TemporaryFile()


class Probe:
    def __init__(self, stats: Stats, interval: float) -> None:
        self.stats = stats
        self.interval = interval
        self.targets: list[tuple[str, int, Address]] = []  # (listener, address family, address)
        self.resolved: list[int] = []  # per target: the highest sequence known received or lost
        self.outcomes: dict[str, deque[bool]] = {}  # per listener, True for a probe lost
        self.sent: Any = None  # shared with the sender: probes sent per target
        self.process: subprocess.Popen[bytes] | None = None
        stats.gauges.probe_loss = self.loss_ratios

    def add_target(self, listener: str, family: int, address: Address) -> None:
        """A bound datagram listener; a wildcard address is probed through loopback."""
        if isinstance(address, tuple):
            address = ({"0.0.0.0": "127.0.0.1", "::": "::1"}.get(address[0], address[0]), address[1])
        self.targets.append((listener, family, address))
        self.resolved.append(0)
        self.outcomes[listener] = deque(maxlen=WINDOW)
        self.stats.listen.probes_lost[listener] += 0  # exported as 0 from the start

    def strip(self, chunks: list[bytes]) -> list[bytes]:
        """The batch without its probes; each probe found settles every sequence up to its own."""
        if not any(map(is_probe, chunks)):
            return chunks
        kept = []
        for chunk in chunks:
            if not chunk.startswith(MARK):
                kept.append(chunk)
                continue
            with contextlib.suppress(ValueError, IndexError):
                index, sequence = map(int, chunk[len(MARK) :].split())
                self._settle(index, sequence, arrived=True)
        return kept

    def _settle(self, index: int, sequence: int, arrived: bool) -> None:
        """Sequences after the last settled one and before `sequence` are lost; `sequence` itself arrived or not.
        A probe arriving after it was given up is ignored: it was counted lost already."""
        if sequence <= self.resolved[index]:
            return
        listener = self.targets[index][0]
        lost = sequence - self.resolved[index] - (1 if arrived else 0)
        self.outcomes[listener].extend([True] * lost + ([False] if arrived else []))
        self.stats.listen.probes_lost[listener] += lost
        self.resolved[index] = sequence

    def expire(self) -> None:
        """Probes out for longer than TIMEOUT are lost."""
        overdue = int(TIMEOUT / self.interval) + 1
        for index, (listener, _, _) in enumerate(self.targets):
            sent = self.sent[index]
            self.stats.listen.probes[listener] = sent
            if sent - overdue > self.resolved[index]:
                self._settle(index, sent - overdue, arrived=False)

    def loss_ratios(self) -> dict[str, float]:
        return {listener: sum(lost) / len(lost) if lost else 0.0 for listener, lost in self.outcomes.items()}

    async def run(self) -> None:
        """The sender is a bare interpreter (python -I -S) running probe_sender.py; the counters it shares are
        one page of a memory file (memfd), mapped by both: no filesystem needed, so a read-only root is fine."""
        try:
            with _shared_file() as counters:
                counters.truncate(8 * len(self.targets))
                self.sent = memoryview(mmap.mmap(counters.fileno(), 8 * len(self.targets))).cast("q")
                targets = json.dumps([(family, address) for _, family, address in self.targets])
                command = [sys.executable, "-I", "-S", str(SENDER), str(counters.fileno()), targets,
                           str(self.interval), str(os.getpid())]  # fmt: skip
                self.process = subprocess.Popen(command, pass_fds=(counters.fileno(),), stdin=subprocess.DEVNULL)
        except OSError as error:
            logger.error("loss self-probe off: cannot start its sender (%s); set relay.probe_interval: 0", error)
            self.stats.gauges.probe_loss = lambda: {}
            return
        try:
            while True:
                await asyncio.sleep(self.interval)
                self.expire()
        finally:
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                await asyncio.to_thread(self.process.wait, 5)
