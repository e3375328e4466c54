"""Spool: Payloads ↔ files on disk, so that an intake outage or a restart loses nothing.

Each payload is one file, written atomically (temporary file, fsync, rename, fsync of the directory). A file is a
one-line JSON header (endpoint, encoding, items, sizes, CRC-32 of the body) followed by the compressed body:
nothing in it is ever evaluated or unpickled. File names sort by creation time, so replay keeps the order.
The spool is capped in bytes (oldest files evicted first) and is not written when the disk is over
`forwarder_storage_max_disk_ratio` full. A file that does not check out is moved to `corrupt/` and counted.
"""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
import zlib
from pathlib import Path

from relay.files import write_atomically
from relay.pipeline.model import Endpoint, Payload
from relay.telemetry.stats import Stats

logger = logging.getLogger(__name__)

SUFFIX = ".payload"


class Spool:
    def __init__(self, directory: Path, max_bytes: int, max_disk_ratio: float, stats: Stats) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self.max_disk_ratio = max_disk_ratio
        self.stats = stats
        self._sequence = 0
        self._lock = threading.Lock()  # put() may run in a thread while the loop reads and removes files
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        for leftover in directory.glob("*.tmp"):  # a write cut short by a crash: never renamed, never valid
            leftover.unlink(missing_ok=True)
        self.files: dict[Endpoint, list[Path]] = {endpoint: [] for endpoint in Endpoint}
        self.bytes = 0
        for path in sorted(directory.glob(f"*{SUFFIX}")):
            endpoint = _endpoint_of(path)
            if endpoint is None:
                self._set_aside(path, "unknown endpoint")
                continue
            self.files[endpoint].append(path)
            self.bytes += path.stat().st_size
        stats.gauges.spool_bytes = lambda: self.bytes
        stats.gauges.spool_payloads = self.__len__

    def __len__(self) -> int:
        return sum(len(paths) for paths in self.files.values())

    def put(self, payload: Payload) -> bool:
        """Write one payload; False (and counted) when it cannot be kept. Safe to call from a thread: the write and
        its fsyncs happen outside the lock."""
        header = {
            "endpoint": payload.endpoint.value,
            "encoding": payload.encoding,
            "items": payload.items,
            "raw_size": payload.raw_size,
            "size": len(payload.body),
            "crc32": zlib.crc32(payload.body),
        }
        data = json.dumps(header).encode() + b"\n" + payload.body
        if len(data) > self.max_bytes:
            return self._refuse(payload, "spool_payload_too_large")
        if self._disk_ratio() > self.max_disk_ratio:
            return self._refuse(payload, "spool_disk_full")
        with self._lock:
            while self.bytes + len(data) > self.max_bytes and self._evict_oldest():
                pass
            self._sequence += 1
            path = self.directory / f"{time.time_ns():020d}-{self._sequence:08d}-{_slug(payload.endpoint)}{SUFFIX}"
            self.bytes += len(data)  # reserved while it is written
        try:
            write_atomically(path, data)
        except OSError as error:
            logger.error("spool: cannot write %s: %s", path, error)
            with self._lock:
                self.bytes -= len(data)
            return self._refuse(payload, "spool_write_error")
        with self._lock:
            self.files[payload.endpoint].append(path)
        self.stats.forward.spooled[payload.endpoint.value] += 1
        return True

    def oldest(self, endpoint: Endpoint) -> tuple[Path, Payload] | None:
        """The oldest readable payload of an endpoint; unreadable files are set aside on the way."""
        paths = self.files[endpoint]
        while True:
            with self._lock:
                if not paths:
                    return None
                path = paths[0]
            payload = self._read(path)
            if payload is not None:
                return path, payload
            with self._lock:
                if path in paths:
                    paths.remove(path)
                self._forget(path, set_aside=True)

    def remove(self, path: Path) -> None:
        """The payload in `path` was delivered (or rejected for good)."""
        with self._lock:
            paths = self.files[_endpoint_of(path) or Endpoint.SERIES_V2]
            if path in paths:
                paths.remove(path)
            self._forget(path, set_aside=False)

    def _read(self, path: Path) -> Payload | None:
        try:
            data = path.read_bytes()
            header_line, _, body = data.partition(b"\n")
            header = json.loads(header_line)
            if len(body) != header["size"] or zlib.crc32(body) != header["crc32"]:
                raise ValueError("size or checksum does not match")
            return Payload(Endpoint(header["endpoint"]), body, header["encoding"], header["items"], header["raw_size"])
        except (OSError, ValueError, KeyError, TypeError) as error:
            logger.warning("spool: %s is unreadable (%s); moved to corrupt/", path.name, error)
            self.stats.dropped["spool_corrupt"] += 1
            return None

    def _forget(self, path: Path, set_aside: bool) -> None:
        try:
            size = path.stat().st_size
        except OSError:
            return
        self.bytes -= size
        if set_aside:
            self._set_aside(path, "unreadable")
        else:
            path.unlink(missing_ok=True)

    def _set_aside(self, path: Path, reason: str) -> None:
        corrupt = self.directory / "corrupt"
        corrupt.mkdir(exist_ok=True)
        try:
            path.replace(corrupt / path.name)
        except OSError as error:
            logger.error("spool: cannot set %s aside (%s): %s", path.name, reason, error)

    def _evict_oldest(self) -> bool:
        candidates = [paths[0] for paths in self.files.values() if paths]
        if not candidates:
            return False
        oldest = min(candidates, key=lambda path: path.name)
        self.files[_endpoint_of(oldest) or Endpoint.SERIES_V2].remove(oldest)
        self._forget(oldest, set_aside=False)
        self.stats.dropped["spool_evicted"] += 1
        logger.warning("spool full (%d bytes): evicted %s", self.max_bytes, oldest.name)
        return True

    def _disk_ratio(self) -> float:
        usage = shutil.disk_usage(self.directory)
        return usage.used / usage.total if usage.total else 1.0

    def _refuse(self, payload: Payload, reason: str) -> bool:
        self.stats.dropped[reason] += payload.items
        self.stats.forward.payloads[payload.endpoint.value, "dropped"] += 1
        return False


def _slug(endpoint: Endpoint) -> str:
    return endpoint.name.lower()


def _endpoint_of(path: Path) -> Endpoint | None:
    slug = path.name.removesuffix(SUFFIX).rsplit("-", 1)[-1]
    return next((endpoint for endpoint in Endpoint if _slug(endpoint) == slug), None)
