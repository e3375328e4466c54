"""`dogstatsd-relay replay FILE`: the datagrams of a capture sent again, at their recorded pace or faster, to any
DogStatsD server."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

from relay.runtime.capture import Record


@dataclass
class ReplayResult:
    datagrams: int = 0
    bytes: int = 0
    errors: int = 0
    seconds: float = 0.0


def replay(records: Iterator[Record], target: str, speed: float) -> ReplayResult:
    """Send each datagram at its recorded time divided by `speed` (0: as fast as possible) to `target`:
    `HOST:PORT` for UDP or `unix:PATH` for a Unix datagram socket. A datagram the socket refuses is counted."""
    if target.startswith("unix:"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        address: str | tuple[str, int] = target[5:]
    else:
        host, _, port = target.rpartition(":")
        family, kind, _, _, resolved = socket.getaddrinfo(host or "127.0.0.1", int(port), type=socket.SOCK_DGRAM)[0]
        address = (str(resolved[0]), int(resolved[1]))
        sock = socket.socket(family, kind)
    result = ReplayResult()
    started = time.monotonic()
    with sock, contextlib.suppress(KeyboardInterrupt):
        sock.connect(address)
        for record in records:
            if speed:
                delay = record.seconds / speed - (time.monotonic() - started)
                if delay > 0:
                    time.sleep(delay)
            try:
                sock.send(record.datagram)
                result.datagrams += 1
                result.bytes += len(record.datagram)
            except OSError:
                result.errors += 1
    result.seconds = time.monotonic() - started
    return result
