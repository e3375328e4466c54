"""Readers: how a datagram socket is drained, on the event loop or by the native reader thread, and the kernel's
drop counter for it, and the Unix datagram queue's length. Each batch is handed to the listener's handler; the
listeners (relay/runtime/listen.py) own the sockets."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from relay.runtime.probe import MARK as PROBE_MARK
from relay.runtime.probe import Probe, is_probe
from relay.runtime.taps import Taps
from relay.telemetry.stats import Stats

logger = logging.getLogger(__name__)

# (datagram, transport), or (datagram, transport, sender pid) with dogstatsd_origin_detection on a Unix socket
Handler = Callable[..., None]
_CREDENTIALS = struct.Struct("3i")  # struct ucred: pid, uid, gid
_BATCH = 64  # datagrams read per wakeup, so one busy socket cannot starve the rest of the loop
_TAKE_BYTES = 256 * 1024  # the reader thread's queue is handed to ingest in slices of this size
_TAKES_PER_TURN = 16  # slices per turn of the event loop


def udp_socket_rows() -> Iterator[list[str]]:
    """Each UDP socket's row of /proc/net/udp and /proc/net/udp6, split into its fields; none where /proc does
    not tell."""
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(table) as rows:
                next(rows, None)  # the header
                yield from (row.split() for row in rows)
        except OSError:
            continue


def kernel_drops(inode: int) -> int:
    """Datagrams the kernel dropped on one UDP socket (its receive buffer was full): the `drops` column of its
    row, found by the socket's inode. 0 where /proc does not tell."""
    wanted = str(inode)
    for fields in udp_socket_rows():
        if len(fields) > 12 and fields[9] == wanted:
            return int(fields[-1]) if fields[-1].isdigit() else 0
    return 0


def native_reader() -> type | None:
    """The C reader thread (relay/_reader.c) when it was built: optional, Linux only."""
    try:
        from relay._reader import Reader
    except ImportError:
        return None
    return Reader


def reader_threads(sock: socket.socket) -> int:
    """Two reader threads for a Unix datagram socket on two CPUs or more, one otherwise: its queue holds only
    net.unix.max_dgram_qlen datagrams and a send wakes the reader on the sender's own CPU, behind the sender; the
    second thread, kept to the other CPUs, reads in time (relay/_reader.c, PLACEMENT). UDP queues bytes, plenty."""
    several = len(os.sched_getaffinity(0)) > 1 if hasattr(os, "sched_getaffinity") else False
    return 2 if sock.family == socket.AF_UNIX and sock.type == socket.SOCK_DGRAM and several else 1


class ReaderPriority:
    """The reader threads above every other thread of the relay, with no privilege: the others (event loop,
    flush, checks, forwarder) are moved to SCHED_IDLE, so that a reader woken on their CPU runs at once instead of
    after their time slice, while the Unix socket's few slots fill. Within the relay's cgroup (its container or
    service) they still get every cycle the readers leave; they yield only to the readers and to what shares
    that cgroup. Only for a Unix datagram socket's two readers: a UDP reader has a buffer of bytes to wait in,
    and preempting the loop at each datagram would cost it its batches (udp-1 0.70, udp-20 0.65 of before).

    An unprivileged thread cannot leave SCHED_IDLE, and a thread is born with its creator's policy: reader
    threads are therefore created by a thread of their own, `spawner`, that is never moved."""

    def __init__(self) -> None:
        self._spawner = ThreadPoolExecutor(1, thread_name_prefix="relay-reader-spawner")
        self._spawner_id = self._spawner.submit(threading.get_native_id).result()  # born before any lowering

    def create(self, reader_type: type, *arguments: Any) -> Any:
        """A native Reader whose threads have the default policy, whatever the caller's."""
        return self._spawner.submit(reader_type, *arguments).result()

    def lower_the_rest(self) -> None:
        """Every thread but the readers and the spawner to SCHED_IDLE; those created later inherit it."""
        if not hasattr(os, "SCHED_IDLE"):
            return
        for task in os.scandir("/proc/self/task"):
            tid = int(task.name)
            if tid == self._spawner_id or _thread_name(tid) == "relay-reader":
                continue
            try:
                os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
            except OSError:  # the thread ended meanwhile
                continue


def _thread_name(tid: int) -> str:
    try:
        with open(f"/proc/self/task/{tid}/comm") as comm:
            return comm.read().strip()
    except OSError:
        return ""


_PRIORITY: list[ReaderPriority] = []  # one per process, made on first use


def reader_priority() -> ReaderPriority:
    """The process's ReaderPriority (its spawner thread is started once)."""
    if not _PRIORITY:
        _PRIORITY.append(ReaderPriority())
    return _PRIORITY[0]


class DatagramReader:
    """Hands each batch of a datagram socket to the handler at once; the event loop reads the socket itself.

    Datagrams are joined with "\n" (what the Agent's packet assembler does), which costs one copy and saves a
    callback, a clock read and a bucket lookup per datagram. A transport with dogstatsd_eol_required keeps its
    datagrams apart, so that an unterminated last line is still seen as one.
    """

    def __init__(
        self, sock: socket.socket, name: str, max_size: int, handler: Handler, stats: Stats, join: bool,
        probe: Probe | None, taps: Taps,
    ) -> None:  # fmt: skip
        self.sock = sock
        self.name = name
        self.max_size = max_size
        self.handler = handler
        self.stats = stats
        self.join = join
        self.probe = probe
        self.taps = taps
        # dogstatsd_origin_detection: the socket has SO_PASSCRED, each datagram comes with its sender's pid
        self.credentials = sock.family == socket.AF_UNIX and bool(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED)
        )

    @property
    def wakeup(self) -> socket.socket | int:
        """What the event loop waits on before calling on_readable."""
        return self.sock

    def on_readable(self) -> None:
        self.deliver(*self._receive())

    def _receive(self) -> tuple[list[bytes], list[int] | None]:
        """A batch of datagrams, and their senders' pids with credentials."""
        size = self.max_size + 1  # one byte more tells a truncated datagram apart
        chunks: list[bytes] = []
        pids: list[int] | None = [] if self.credentials else None
        try:
            for _ in range(_BATCH):
                if pids is None:
                    chunks.append(self.sock.recv(size))
                    continue
                data, control, _, _ = self.sock.recvmsg(size, socket.CMSG_SPACE(_CREDENTIALS.size))
                chunks.append(data)
                pids.append(next((_CREDENTIALS.unpack(body[: _CREDENTIALS.size])[0] for level, kind, body in control
                                  if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS), 0))  # fmt: skip
        except BlockingIOError:
            pass
        except OSError as error:
            self.stats.listen.read_errors[self.name] += 1
            logger.warning("%s read error: %s", self.name, error)
        if chunks and max(map(len, chunks)) > self.max_size:
            # The Agent reads into a dogstatsd_buffer_size buffer: the tail of a longer datagram is lost.
            self.stats.listen.truncated[self.name] += sum(len(chunk) > self.max_size for chunk in chunks)
            chunks = [chunk[: self.max_size] for chunk in chunks]
        return chunks, pids

    def deliver(self, chunks: list[bytes], pids: list[int] | None = None) -> None:
        """A batch to the handler; `pids`: each datagram's sender (0: not known), with credentials."""
        if self.probe is not None and chunks:
            stripped = self.probe.strip(chunks)
            if pids is not None and len(stripped) < len(chunks):
                pids = [pid for chunk, pid in zip(chunks, pids, strict=True) if not is_probe(chunk)]
            chunks = stripped
        if not chunks:
            return
        stats = self.stats
        stats.listen.packets[self.name] += len(chunks)
        stats.listen.bytes[self.name] += sum(map(len, chunks))
        if self.taps.open:
            self.taps(chunks, self.name)
        if pids is None or not any(pids):
            self._hand(chunks, 0)
            return
        start = 0
        for end in range(1, len(chunks) + 1):  # runs of datagrams from one sender, each run with its pid
            if end == len(chunks) or pids[end] != pids[start]:
                self._hand(chunks[start:end], pids[start])
                start = end

    def _hand(self, chunks: list[bytes], pid: int) -> None:
        sender = (pid,) if pid else ()
        if self.join:
            self.handler(b"\n".join(chunks), self.name, *sender)
        else:
            for chunk in chunks:
                self.handler(chunk, self.name, *sender)

    def drain(self) -> None:
        """At stop: what the socket still holds, read to the end."""
        self.take_queued()
        while (batch := self._receive())[0]:
            self.deliver(*batch)

    def take_queued(self) -> None:
        """At a reload: what was read but not yet delivered (the socket itself is left to the bridge)."""


class ThreadedReader(DatagramReader):
    """The same, but a native thread drains the socket into a bounded queue without waiting for the interpreter
    (the Agent's reader goroutine and dogstatsd_queue_size); the event loop wakes once per batch and takes it all.
    A full queue stops the reading until the loop takes it (the kernel's buffer then fills, and drops what
    overflows it, counted); a datagram of the thread's last batch that did not fit is counted in queue_drops."""

    def __init__(
        self, reader_type: type, queue_bytes: int, priority: ReaderPriority | None, *args: Any,
        connections: list[tuple[int, bytes]] | None = None,
    ) -> None:  # fmt: skip
        """`priority`: create the threads through it, and lower the relay's other threads when this socket has
        two readers (the relay's own listeners); None leaves every thread as it is (a test's, a tool's).
        A listening stream socket's thread accepts its clients and cuts their frames into datagrams;
        `connections` are the clients a reload handed over, each with the start of a frame."""
        super().__init__(*args)
        threads = reader_threads(self.sock)
        self.stream = self.sock.type == socket.SOCK_STREAM
        arguments = (
            self.sock.fileno(), self.max_size, queue_bytes, threads, self.stream, connections or [], self.credentials
        )  # fmt: skip
        self.native = reader_type(*arguments) if priority is None else priority.create(reader_type, *arguments)
        self.probe_mark = PROBE_MARK if self.probe is not None else b""  # the thread leaves a slice with one apart
        if priority is not None and threads > 1:
            priority.lower_the_rest()
        gauges = self.stats.gauges.listener(self.name)
        gauges.queue_drops = lambda: self.native.dropped
        gauges.queue_bytes = lambda: self.native.queued_bytes

    @property
    def wakeup(self) -> socket.socket | int:
        return int(self.native.wakeup_fd)

    def on_readable(self) -> None:
        """Slices of _TAKE_BYTES, a few at a time: the datagrams stay in the CPU's caches from the copy to the
        parse, and other callbacks (the health endpoint, the other sockets) get their turn between."""
        for _ in range(_TAKES_PER_TURN):
            if not self._take():
                return
        asyncio.get_running_loop().call_soon(self.on_readable)

    def _take(self) -> bool:
        """Deliver one slice; whether more is waiting."""
        join = self.join and not self.taps.open  # a capture sees each datagram
        chunks, truncated, errors, more, pids, count = self.native.take(_TAKE_BYTES, join, self.probe_mark)
        if truncated:
            self.stats.listen.truncated[self.name] += truncated
        if errors:
            self.stats.listen.read_errors[self.name] += errors
            logger.warning("%s read error: %s", self.name, self.native.last_error)
        if type(chunks) is bytes:
            self._deliver_joined(chunks, count)
        else:
            self.deliver(chunks, pids)
        return bool(more)

    def _deliver_joined(self, data: bytes, count: int) -> None:
        """`count` datagrams the thread joined with "\n" (no probe among them, no capture open)."""
        if not count:
            return
        self.stats.listen.packets[self.name] += count
        self.stats.listen.bytes[self.name] += len(data) - (count - 1)
        self.handler(data, self.name)

    def take_queued(self) -> None:
        self.native.stop()
        while self._take():  # what the thread had queued
            pass

    def drain(self) -> None:
        """At stop: a stream's clients have been quiet (Listeners.stop waits for it); what they sent is queued."""
        if not self.stream:
            return super().drain()
        self.native.stop()
        self.native.read_clients()  # what the thread had not read yet, and the clients not yet accepted
        self.native.close_connections()  # a frame they cut short is counted as a read error
        while self._take():
            pass

    @property
    def last_data(self) -> float:
        """When a stream client last wrote (the event loop's clock)."""
        return float(self.native.last_data)

    def hand_over(self) -> list[tuple[int, bytes]]:
        """At a reload, after take_queued: each stream client's socket and the start of a frame it had sent."""
        connections: list[tuple[int, bytes]] = self.native.hand_over()
        for fd, _ in connections:
            os.set_inheritable(fd, True)
        return connections


def unix_dgram_qlen() -> int | None:
    """net.unix.max_dgram_qlen: how many datagrams a Unix datagram socket holds before its senders fail."""
    try:
        return int(Path("/proc/sys/net/unix/max_dgram_qlen").read_text())
    except (OSError, ValueError):
        return None
