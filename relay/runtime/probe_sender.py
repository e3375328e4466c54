"""The loss self-probe's sender process (relay/runtime/probe.py), started as `python -I -S probe_sender.py`: it
imports the standard library only, so it costs a bare interpreter, not a second relay."""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import signal
import socket
import sys
import time
from typing import Any

MARK = b"\0dogstatsd-relay-probe "

Address = str | tuple[str, int]


def send_probes(targets: list[tuple[int, Address]], interval: float, sent: Any, parent: int) -> None:
    """One probe per target every `interval`, for as long as the relay lives."""
    sockets = [socket.socket(family, socket.SOCK_DGRAM) for family, _ in targets]
    for sock in sockets:
        sock.setblocking(False)
    while os.getppid() == parent:
        for index, ((_, address), sock) in enumerate(zip(targets, sockets, strict=True)):
            sent[index] += 1
            with contextlib.suppress(OSError):  # a full Unix datagram queue refuses: a gap, counted as lost
                sock.sendto(MARK + b"%d %d" % (index, sent[index]), address)
        time.sleep(interval)


def main(argv: list[str]) -> None:
    """argv: the counters' file descriptor (one int64 a target, shared with the relay), the targets as JSON
    [[family, address]], the interval and the relay's PID."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the relay decides when the probe stops
    targets = [(family, a if isinstance(a, str) else (a[0], a[1])) for family, a in json.loads(argv[2])]
    sent = memoryview(mmap.mmap(int(argv[1]), 8 * len(targets))).cast("q")
    send_probes(targets, float(argv[3]), sent, int(argv[4]))


if __name__ == "__main__":
    main(sys.argv)
