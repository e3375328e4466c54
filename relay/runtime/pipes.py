"""Pipes between the processes of a sharded relay: reading whole messages off one, and feeding one without
ever blocking the event loop."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection


def pump(connection: Connection, loop: asyncio.AbstractEventLoop, handle: Callable[[bytes], None]) -> None:
    """Read whole messages from a pipe in a thread and hand each to `handle` on the loop, one at a time.

    Not loop.add_reader: libuv makes the descriptor non-blocking, and multiprocessing's recv_bytes() then fails
    half-way through a message that is still being written. One message in flight keeps back-pressure: the
    writer blocks until the loop has used what it sent. An empty message means the other side is gone.
    """
    done = threading.Event()

    def deliver(message: bytes) -> None:
        try:
            handle(message)
        finally:
            done.set()

    def read() -> None:
        while True:
            try:
                message = connection.recv_bytes()
            except (EOFError, OSError):
                message = b""
            done.clear()
            loop.call_soon_threadsafe(deliver, message)
            if not message:
                return
            done.wait()

    threading.Thread(target=read, name="pipe-reader", daemon=True).start()


class WorkerFeed:
    """One worker's lines, queued in memory up to `limit` bytes and written to its pipe by a thread of their own.

    A worker that lags (or is stopped) fills its queue, never the event loop: the health endpoint, the signals and
    the other workers go on. What does not fit is refused, and the caller counts it. A pipe that breaks (the worker
    died) turns the feed `lost`; `take_lost()` then tells how many lines it had taken that never arrived.
    """

    def __init__(self, pipe: Connection, limit: int, name: str) -> None:
        self.pipe = pipe
        self.limit = limit
        self.queued_bytes = 0  # including the message being written
        self.lost = False
        self._lost_lines = 0
        self._queue: deque[bytes] = deque()
        self._closing = False
        self._ready = threading.Condition()
        self._thread = threading.Thread(target=self._write, name=f"{name}-feed", daemon=True)
        self._thread.start()

    def put(self, lines: bytes) -> bool:
        """Queue one message; False when the queue is full or the worker is gone (the caller counts the lines)."""
        with self._ready:
            if self.lost or self._closing or self.queued_bytes + len(lines) > self.limit:
                return False
            self._queue.append(lines)
            self.queued_bytes += len(lines)
            self._ready.notify()
        return True

    def take_lost(self) -> int:
        with self._ready:
            lost, self._lost_lines = self._lost_lines, 0
        return lost

    def close(self) -> None:
        """After what is queued, the empty message that tells the worker to flush and stop."""
        with self._ready:
            self._closing = True
            self._ready.notify()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def _write(self) -> None:
        while True:
            with self._ready:
                while not self._queue and not self._closing:
                    self._ready.wait()
                if not self._queue:
                    break
                lines = self._queue[0]
            try:
                self.pipe.send_bytes(lines)  # blocks while the worker lags: only this thread waits
            except OSError:
                with self._ready:
                    self.lost = True
                    self._lost_lines += sum(message.count(b"\n") for message in self._queue)
                    self._queue.clear()
                    self.queued_bytes = 0
                return
            with self._ready:
                self._queue.popleft()
                self.queued_bytes -= len(lines)
        with contextlib.suppress(OSError):
            self.pipe.send_bytes(b"")
