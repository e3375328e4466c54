"""Listen: sockets → whole datagrams handed to one callback. UDP, Unix datagram, Unix stream (4-byte frames).

Listeners never parse; they count packets, bytes, truncations and read errors per transport, strip the loss
self-probe's datagrams (relay/probe.py) and hand copies to the taps (relay/taps.py) that are open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from relay.config import Config
from relay.probe import Probe
from relay.taps import Taps, Tee
from relay.telemetry import Stats

logger = logging.getLogger(__name__)

Handler = Callable[[bytes, str], None]  # (datagram, transport)
UDP, UDS, UDS_STREAM = "udp", "uds", "uds_stream"
_FRAME_HEADER = struct.Struct("<I")
_BATCH = 64  # datagrams read per wakeup, so one busy socket cannot starve the rest of the loop
_TAKE_BYTES = 256 * 1024  # the reader thread's queue is handed to ingest in slices of this size
_TAKES_PER_TURN = 16  # slices per turn of the event loop
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # Linux's number; Python does not name it
_MAX_FRAME = 8 * 1024 * 1024  # a stream frame claiming more is a broken client: the connection is closed


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


class ListenError(Exception):
    """A listener could not start (address in use, path taken by a file, ...)."""


def native_reader() -> type | None:
    """The C reader thread (relay/_reader.c) when it was built: optional, Linux only."""
    try:
        from relay._reader import Reader
    except ImportError:
        return None
    return Reader


class _DatagramReader:
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

    @property
    def wakeup(self) -> socket.socket | int:
        """What the event loop waits on before calling on_readable."""
        return self.sock

    def on_readable(self) -> None:
        self.deliver(self._receive())

    def _receive(self) -> list[bytes]:
        recv, size = self.sock.recv, self.max_size + 1  # one byte more tells a truncated datagram apart
        chunks: list[bytes] = []
        try:
            for _ in range(_BATCH):
                chunks.append(recv(size))
        except BlockingIOError:
            pass
        except OSError as error:
            self.stats.read_errors[self.name] += 1
            logger.warning("%s read error: %s", self.name, error)
        if chunks and max(map(len, chunks)) > self.max_size:
            # The Agent reads into a dogstatsd_buffer_size buffer: the tail of a longer datagram is lost.
            self.stats.truncated[self.name] += sum(len(chunk) > self.max_size for chunk in chunks)
            chunks = [chunk[: self.max_size] for chunk in chunks]
        return chunks

    def deliver(self, chunks: list[bytes]) -> None:
        if self.probe is not None and chunks:
            chunks = self.probe.strip(chunks)
        if not chunks:
            return
        stats = self.stats
        stats.packets[self.name] += len(chunks)
        stats.bytes[self.name] += sum(map(len, chunks))
        if self.taps.open:
            self.taps(chunks, self.name)
        if self.join:
            self.handler(b"\n".join(chunks), self.name)
        else:
            for chunk in chunks:
                self.handler(chunk, self.name)

    def drain(self) -> None:
        """At stop: what the socket still holds, read to the end."""
        while chunks := self._receive():
            self.deliver(chunks)


class _ThreadedReader(_DatagramReader):
    """The same, but a native thread drains the socket into a bounded queue without waiting for the interpreter
    (the Agent's reader goroutine and dogstatsd_queue_size); the event loop wakes once per batch and takes it all.
    A full queue stops the reading until the loop takes it (the kernel's buffer then fills, and drops what
    overflows it, counted); a datagram of the thread's last batch that did not fit is counted in queue_drops."""

    def __init__(self, reader_type: type, queue_bytes: int, *args: Any) -> None:
        super().__init__(*args)
        self.native = reader_type(self.sock.fileno(), self.max_size, queue_bytes)
        self.stats.gauges[f"queue_drops:{self.name}"] = lambda: self.native.dropped
        self.stats.gauges[f"queue_bytes:{self.name}"] = lambda: self.native.queued_bytes

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
        chunks, truncated, errors, more = self.native.take(_TAKE_BYTES)
        if truncated:
            self.stats.truncated[self.name] += truncated
        if errors:
            self.stats.read_errors[self.name] += errors
            logger.warning("%s read error: %s", self.name, self.native.last_error)
        self.deliver(chunks)
        return bool(more)

    def drain(self) -> None:
        self.native.stop()
        while self._take():  # what the thread had queued
            pass
        super().drain()


class Listeners:
    """Owns every socket of the relay; `start` binds them all or raises ListenError."""

    def __init__(self, config: Config, stats: Stats, handler: Handler) -> None:
        self.config = config
        self.stats = stats
        self.handler = handler
        self.addresses: dict[str, str] = {}
        self.taps = Taps()
        self.probe = Probe(stats, config.relay_probe_interval) if config.relay_probe_interval else None
        self._probing: asyncio.Task[None] | None = None
        self._tee: Tee | None = None
        self._readers: list[_DatagramReader] = []
        self._servers: list[asyncio.Server] = []
        self._connections: set[asyncio.Task[None]] = set()
        self._paths: list[Path] = []

    async def start(self) -> None:
        config = self.config
        if config.statsd_forward_host and config.statsd_forward_port:
            try:
                self._tee = Tee(config, self.stats)
            except ValueError as error:
                raise ListenError(str(error)) from None
            self.taps.add(self._tee)
        if config.dogstatsd_port:
            sock = self._udp_socket(config.udp_bind_host, config.dogstatsd_port)
            host, port = sock.getsockname()[:2]
            await self._serve_datagrams(sock, UDP)
            self.addresses[UDP] = f"{host}:{port}"
        if config.dogstatsd_socket:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._bind_unix(sock, Path(config.dogstatsd_socket))
            await self._serve_datagrams(sock, UDS)
            self.addresses[UDS] = config.dogstatsd_socket
        if config.dogstatsd_stream_socket:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._bind_unix(sock, Path(config.dogstatsd_stream_socket))
            server = await asyncio.start_unix_server(self._stream_connection, sock=sock)
            self._servers.append(server)
            self.addresses[UDS_STREAM] = config.dogstatsd_stream_socket
        if self.probe is not None and self.probe.targets:
            self._probing = asyncio.create_task(self.probe.run(), name="probe")

    def _udp_socket(self, host: str, port: int) -> socket.socket:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.bind((host, port))
        except OSError as error:
            sock.close()
            raise ListenError(f"dogstatsd_port: cannot listen on UDP {host}:{port}: {error.strerror}") from None
        return sock

    def _bind_unix(self, sock: socket.socket, path: Path) -> None:
        """Replace a stale socket file, but never a file that is not a socket."""
        if path.exists() or path.is_symlink():
            if not stat.S_ISSOCK(path.lstat().st_mode):
                sock.close()
                raise ListenError(f"{path}: exists and is not a socket; refusing to replace it")
            path.unlink()
        try:
            sock.bind(str(path))
            os.chmod(path, int(self.config.relay_socket_mode, 8))  # relay.socket_mode: who may write metrics
        except OSError as error:
            sock.close()
            raise ListenError(f"{path}: cannot bind: {error.strerror}") from None
        self._paths.append(path)

    async def _serve_datagrams(self, sock: socket.socket, name: str) -> None:
        self._set_receive_buffer(sock, name)
        sock.setblocking(False)
        join = not self.config.eol_required_for(name)
        arguments = (
            sock, name, self.config.dogstatsd_buffer_size, self.handler, self.stats, join, self.probe, self.taps
        )  # fmt: skip
        reader_type, queue_bytes = native_reader(), self.config.relay_receive_queue_bytes
        reader = (
            _ThreadedReader(reader_type, queue_bytes, *arguments)
            if reader_type is not None and queue_bytes
            else _DatagramReader(*arguments)
        )
        address = sock.getsockname()  # a path for a Unix socket
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            address = address[:2]
            inode = os.fstat(sock.fileno()).st_ino
            self.stats.gauges[f"kernel_drops:{name}"] = lambda: kernel_drops(inode)
        if self.probe is not None:
            self.probe.add_target(name, sock.family, address)
        asyncio.get_running_loop().add_reader(reader.wakeup, reader.on_readable)
        self._readers.append(reader)

    def _set_receive_buffer(self, sock: socket.socket, name: str) -> None:
        """dogstatsd_so_rcvbuf, forced past net.core.rmem_max where the relay may (CAP_NET_ADMIN), else asked for
        and warned about when the kernel clamps it."""
        wanted = self.config.dogstatsd_so_rcvbuf
        if not wanted:
            return
        try:
            sock.setsockopt(socket.SOL_SOCKET, _SO_RCVBUFFORCE, wanted)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, wanted)
        granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2  # Linux reports twice the size
        self.stats.info.setdefault("receive_buffers_wanted", {})[name] = wanted
        if granted < wanted:
            logger.warning(
                "%s: dogstatsd_so_rcvbuf %d clamped by the kernel to %d; raise net.core.rmem_max to allow it",
                name,
                wanted,
                granted,
            )
        self.stats.info.setdefault("receive_buffers", {})[name] = granted

    async def _stream_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Frames: a 4-byte little-endian length, then that many bytes (which may hold several lines)."""
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        max_size = self.config.dogstatsd_buffer_size
        try:
            while True:
                (length,) = _FRAME_HEADER.unpack(await reader.readexactly(4))
                if length > _MAX_FRAME:
                    self.stats.read_errors[UDS_STREAM] += 1
                    logger.warning("uds_stream: frame of %d bytes announced; closing the connection", length)
                    return
                frame = await reader.readexactly(length)
                self.stats.packets[UDS_STREAM] += 1
                self.stats.bytes[UDS_STREAM] += length
                if length > max_size:
                    self.stats.truncated[UDS_STREAM] += 1
                    frame = frame[:max_size]
                if self.taps.open:
                    self.taps([frame], UDS_STREAM)
                self.handler(frame, UDS_STREAM)
        except asyncio.IncompleteReadError as error:
            if error.partial:  # a frame cut short by the client closing
                self.stats.read_errors[UDS_STREAM] += 1
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            self._connections.discard(task)

    async def stop(self) -> None:
        """Stop reading: close every socket, end stream connections, remove the socket files."""
        loop = asyncio.get_running_loop()
        if self._probing is not None:
            self._probing.cancel()
            await asyncio.gather(self._probing, return_exceptions=True)
        for reader in self._readers:
            loop.remove_reader(reader.wakeup)
            reader.drain()
            reader.sock.close()
        if self._tee is not None:
            self._tee.close()
        for server in self._servers:
            server.close()
        for task in list(self._connections):
            task.cancel()
        for server in self._servers:
            await server.wait_closed()
        for path in self._paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        self._readers, self._servers, self._paths = [], [], []
