"""Capture: raw datagrams with their timing and transport, recorded from a running relay (relay/tools/replay.py
plays them back to any DogStatsD server).

File format (little-endian): the magic line `dogstatsd-relay capture 1\\n`, then one record per datagram:
seconds since the capture started (float64), transport (uint8: 0 udp, 1 uds, 2 uds_stream), length (uint32),
then the datagram's bytes. A file cut short (the capture was interrupted) is read up to its last whole record.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

MAGIC = b"dogstatsd-relay capture 1\n"
RECORD = struct.Struct("<dBI")
TRANSPORTS = ("udp", "uds", "uds_stream")
MAX_BUFFERED = 64 * 1024 * 1024  # bytes of records waiting for a slow reader; beyond, records are skipped


class Record(NamedTuple):
    seconds: float
    transport: str
    datagram: bytes


def encode(seconds: float, transport: str, datagram: bytes) -> bytes:
    return RECORD.pack(seconds, TRANSPORTS.index(transport), len(datagram)) + datagram


def read_records(path: Path) -> Iterator[Record]:
    """Every whole record of a capture file; raises ValueError when the file is not a capture."""
    with path.open("rb") as file:
        if file.read(len(MAGIC)) != MAGIC:
            raise ValueError(f"{path}: not a dogstatsd-relay capture")
        while len(header := file.read(RECORD.size)) == RECORD.size:
            seconds, transport, length = RECORD.unpack(header)
            datagram = file.read(length)
            if len(datagram) < length or transport >= len(TRANSPORTS):
                return
            yield Record(seconds, TRANSPORTS[transport], datagram)


class Recorder:
    """A tap that encodes datagrams into a buffer; the health endpoint streams the buffer to the client."""

    def __init__(self, limit: int = MAX_BUFFERED, skipped: Counter[str] | None = None) -> None:
        """`limit`: bytes buffered at most (the capture's share of memory); `skipped`: where records skipped past
        it are counted, as `capture`."""
        self.limit = limit
        self.skipped = skipped if skipped is not None else Counter()
        self.started = time.monotonic()
        self.buffer: list[bytes] = []
        self.buffered = 0
        self.records = 0
        self.dropped = 0
        self.ready = asyncio.Event()

    def __call__(self, datagram: bytes, transport: str) -> None:
        if self.buffered > self.limit:
            self.dropped += 1
            self.skipped["capture"] += 1
            return
        record = encode(time.monotonic() - self.started, transport, datagram)
        self.buffer.append(record)
        self.buffered += len(record)
        self.records += 1
        self.ready.set()

    def take(self) -> bytes:
        data, self.buffer, self.buffered = b"".join(self.buffer), [], 0
        self.ready.clear()
        return data
