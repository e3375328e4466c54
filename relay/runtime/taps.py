"""Taps: copies of the raw datagrams, taken by the listeners before parsing.

Three kinds: the tee to another StatsD server (`statsd_forward_host`/`statsd_forward_port`, as the Agent has
it), a capture for `replay` (relay/runtime/capture.py), and the line counter behind `dogstatsd-relay top`. With no tap
open, a listener pays one truth test per batch.
"""

from __future__ import annotations

import logging
import socket
import time
from collections import Counter
from collections.abc import Callable

from relay.config import Config
from relay.logs import RateLimitedLog
from relay.telemetry.stats import Stats

logger = logging.getLogger(__name__)

Tap = Callable[[bytes, str], None]  # (datagram, transport)


class Taps:
    """The taps open now; listeners call each of them with every datagram they read."""

    def __init__(self) -> None:
        self.open: list[Tap] = []
        self.memory_share: int | None = None  # bytes all captures may buffer together: the budget's, where planned

    def add(self, tap: Tap) -> None:
        self.open.append(tap)

    def buffered(self) -> int:
        """Bytes the open captures hold for their readers."""
        return sum(getattr(tap, "buffered", 0) for tap in self.open)

    def remove(self, tap: Tap) -> None:
        if tap in self.open:
            self.open.remove(tap)

    def __call__(self, chunks: list[bytes], transport: str) -> None:
        for tap in self.open:
            for chunk in chunks:
                tap(chunk, transport)


class Tee:
    """Every datagram, as received, to another StatsD server over UDP; a send that fails is counted."""

    def __init__(self, config: Config, stats: Stats) -> None:
        self.stats = stats
        self.log = RateLimitedLog(logger)
        host, port = config.statsd_forward_host, config.statsd_forward_port
        try:
            family, kind, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        except OSError as error:
            raise ValueError(f"statsd_forward_host: cannot resolve {host!r}: {error}") from None
        self.sock = socket.socket(family, kind)
        self.sock.setblocking(False)
        self.sock.connect(address)
        self.target = f"{host}:{port}"

    def __call__(self, datagram: bytes, transport: str) -> None:
        try:
            self.sock.send(datagram)
            self.stats.listen.forwarded["sent"] += 1
        except OSError as error:  # buffer full, nobody listening (ICMP refused), too long for UDP
            self.stats.listen.forwarded["error"] += 1
            self.log.log(logging.WARNING, "tee", "statsd_forward %s: %s", self.target, error.strerror or error)

    def close(self) -> None:
        self.sock.close()


class LineCounter:
    """Lines per metric name while open: what `top` shows as lines per second.

    Bounded in time and memory: past `BUDGET` datagrams a second it looks at every n-th datagram only and counts
    its lines n times, and past `MAX_NAMES` distinct names (a flood of random names) it counts the rest as one row.
    """

    BUDGET = 20_000  # datagrams looked at per second
    MAX_NAMES = 100_000
    OTHERS = b"(other names)"

    def __init__(self) -> None:
        self.lines: Counter[bytes] = Counter()
        self.started = self.checked_at = time.monotonic()
        self.seen = self.seen_at_check = self.looked_at = 0
        self.stride = 1

    def __call__(self, datagram: bytes, transport: str) -> None:
        self.seen += 1
        if self.seen % self.stride:
            return
        self.looked_at += 1
        if self.looked_at % 256 == 0:
            now = time.monotonic()
            rate = (self.seen - self.seen_at_check) / max(now - self.checked_at, 1e-6)
            self.stride = max(1, int(rate / self.BUDGET))
            self.checked_at, self.seen_at_check = now, self.seen
        lines = self.lines
        for line in datagram.split(b"\n"):
            if line:
                name = line.partition(b":")[0]
                if name not in lines and len(lines) >= self.MAX_NAMES:
                    name = self.OTHERS
                lines[name] += self.stride

    def rates(self, top: int) -> list[dict[str, object]]:
        seconds = max(time.monotonic() - self.started, 1e-3)
        return [
            {"metric": name.decode(errors="replace"), "lines_per_s": round(count / seconds, 1)}
            for name, count in self.lines.most_common(top)
            if not name.startswith((b"_e{", b"_sc|"))
        ]
