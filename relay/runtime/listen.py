"""Listen: sockets → whole datagrams handed to one callback. UDP, Unix datagram, Unix stream (4-byte frames).

Listeners never parse; they count packets, bytes, truncations and read errors per transport, strip the loss
self-probe's datagrams (relay/runtime/probe.py) and hand copies to the taps (relay/runtime/taps.py) that are open.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import socket
import stat
import struct
import time
from pathlib import Path

from relay.config import Config
from relay.runtime.probe import Probe
from relay.runtime.readers import (
    DatagramReader,
    Handler,
    ThreadedReader,
    kernel_drops,
    native_reader,
    reader_priority,
)
from relay.runtime.taps import Taps, Tee
from relay.telemetry.stats import Stats

logger = logging.getLogger(__name__)

UDP, UDS, UDS_STREAM = "udp", "uds", "uds_stream"
HEALTH = "health"  # the health endpoint's socket, handed over at a reload with the others
_FRAME_HEADER = struct.Struct("<I")
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)  # Linux's number; Python does not name it
_STREAM_BACKLOG = 128  # clients waiting to be accepted
_MAX_FRAME = 8 * 1024 * 1024  # a stream frame claiming more is a broken client: the connection is closed


class ListenError(Exception):
    """A listener could not start (address in use, path taken by a file, ...)."""


class Listeners:
    """Owns every socket of the relay; `start` binds them all or raises ListenError."""

    def __init__(self, config: Config, stats: Stats, handler: Handler, lower_others: bool = False) -> None:
        """`lower_others`: the relay's own listeners, which put every thread but the readers below them
        (readers.ReaderPriority); not a test's, which would lower the test runner's threads for good."""
        self.config = config
        self.lower_others = lower_others
        self.stats = stats
        self.handler = handler
        self.addresses: dict[str, str] = {}
        self.taps = Taps()
        self.probe = Probe(stats, config.relay_probe_interval) if config.relay_probe_interval else None
        self._probing: asyncio.Task[None] | None = None
        self._tee: Tee | None = None
        self._readers: list[DatagramReader] = []
        self._servers: list[asyncio.Server] = []
        self._stream_socket: socket.socket | None = None
        self._health_socket: socket.socket | None = None
        self._connections: set[_StreamConnection] = set()
        self._paths: list[Path] = []
        # A reload: sockets (by transport) and stream connections the previous pipeline handed over; reading waits
        # for resume() until what the bridge kept in between has been delivered, so that the order is kept.
        self.inherited: dict[str, int] = {}
        self.inherited_connections: list[tuple[int, bytes]] = []
        self._held = False

    async def start(self) -> None:
        config = self.config
        if config.statsd_forward_host and config.statsd_forward_port:
            try:
                self._tee = Tee(config, self.stats)
            except ValueError as error:
                raise ListenError(str(error)) from None
            self.taps.add(self._tee)
        self._held = bool(self.inherited)
        if config.dogstatsd_port:
            sock = self._adopt(UDP, (config.udp_bind_host, config.dogstatsd_port)) or self._udp_socket(
                config.udp_bind_host, config.dogstatsd_port
            )
            host, port = sock.getsockname()[:2]
            await self._serve_datagrams(sock, UDP)
            self.addresses[UDP] = f"{host}:{port}"
        if config.dogstatsd_socket:
            path = config.dogstatsd_socket
            sock = self._adopt(UDS, path) or self._new_unix(socket.SOCK_DGRAM, path)
            # dogstatsd_origin_detection: the kernel attaches each sender's pid (its container: the pipeline's)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, int(config.dogstatsd_origin_detection))
            await self._serve_datagrams(sock, UDS)
            self.addresses[UDS] = config.dogstatsd_socket
        if config.dogstatsd_stream_socket:
            path = config.dogstatsd_stream_socket
            sock = self._adopt(UDS_STREAM, path) or self._new_unix(socket.SOCK_STREAM, path)
            if native_reader() is not None and config.relay_receive_queue_bytes:
                await self._serve_datagrams(sock, UDS_STREAM, self.inherited_connections)
            else:
                await self._serve_stream_on_loop(sock)
            self.inherited_connections = []
            self.addresses[UDS_STREAM] = path
        for fd in self.inherited.values():  # the new configuration has no such listener, or another address
            _forget_socket(socket.socket(fileno=fd))
        for fd, _ in self.inherited_connections:
            os.close(fd)
        self.inherited, self.inherited_connections = {}, []
        if self.probe is not None and self.probe.targets:
            self._probing = asyncio.create_task(self.probe.run(), name="probe")

    def health_socket(self) -> socket.socket | None:
        """The health endpoint's listening socket a reload handed over, when the address is unchanged: its
        clients (probes, `status`) wait in its backlog during the swap instead of being refused."""
        host, port = self.config.relay_health_host, self.config.relay_health_port
        if not port:
            return None
        sock = self._adopt(HEALTH, (host, port), socket.SOCK_STREAM)
        if sock is None:
            family, _, _, _, address = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM)[0]
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(address)
            except OSError as error:
                sock.close()
                raise ListenError(f"relay.health_port: cannot listen on {host}:{port}: {error.strerror}") from None
            sock.listen(128)
        self._health_socket = sock
        return sock

    def _adopt(self, name: str, address: str | tuple[str, int], kind: int = socket.SOCK_DGRAM) -> socket.socket | None:
        """The socket handed over by the previous pipeline, when it listens where the configuration says."""
        fd = self.inherited.get(name)
        if fd is None:
            return None
        sock = socket.socket(fileno=fd)
        bound = sock.getsockname()
        if isinstance(address, tuple):
            wanted = socket.getaddrinfo(address[0] or None, address[1], sock.family, kind)[0][4][:2]
            matches = tuple(bound[:2]) == tuple(wanted)
        else:
            matches = bound == address
        if not matches:
            sock.detach()  # left to the loop at the end of start(), which closes it
            return None
        del self.inherited[name]
        if not isinstance(address, tuple):
            os.chmod(address, int(self.config.relay_socket_mode, 8))
            self._paths.append(Path(address))
        return sock

    def _new_unix(self, kind: int, path: str) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, kind)
        key = "dogstatsd_socket" if kind == socket.SOCK_DGRAM else "dogstatsd_stream_socket"
        self._bind_unix(sock, Path(path), key)
        return sock

    def _udp_socket(self, host: str, port: int) -> socket.socket:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.bind((host, port))
        except OSError as error:
            sock.close()
            raise ListenError(f"dogstatsd_port: cannot listen on UDP {host}:{port}: {error.strerror}") from None
        return sock

    def _bind_unix(self, sock: socket.socket, path: Path, key: str) -> None:
        """Replace a stale socket file (nobody listening), but never a live socket or a file that is not one."""
        if path.exists() or path.is_symlink():
            problem = None
            if not stat.S_ISSOCK(path.lstat().st_mode):
                problem = f"{path} exists and is not a socket; refusing to replace it"
            elif user := _listener_on(path, sock.type):
                problem = f"{path} is {user}; refusing to take it over (stop it, or choose another path)"
            if problem:
                sock.close()
                raise ListenError(f"{key}: {problem}")
            path.unlink()
        try:
            sock.bind(str(path))
            os.chmod(path, int(self.config.relay_socket_mode, 8))  # relay.socket_mode: who may write metrics
        except OSError as error:
            sock.close()
            raise ListenError(f"{key}: {path}: cannot bind: {error.strerror}") from None
        self._paths.append(path)

    async def _serve_datagrams(
        self, sock: socket.socket, name: str, connections: list[tuple[int, bytes]] | None = None
    ) -> None:
        """A datagram socket, or a listening stream socket whose clients' frames the native thread cuts into
        datagrams (`connections`: the clients a reload handed over)."""
        stream = sock.type == socket.SOCK_STREAM
        if stream:
            sock.listen(_STREAM_BACKLOG)  # a second listen() on an inherited socket only sets the backlog again
        else:
            self._set_receive_buffer(sock, name)
        sock.setblocking(False)
        join = not self.config.eol_required_for(name)
        probe = None if stream else self.probe
        arguments = (sock, name, self.config.dogstatsd_buffer_size, self.handler, self.stats, join, probe, self.taps)
        reader_type, queue_bytes = native_reader(), self.config.relay_receive_queue_bytes
        priority = reader_priority() if self.lower_others else None
        reader = (
            ThreadedReader(reader_type, queue_bytes, priority, *arguments, connections=connections)
            if reader_type is not None and queue_bytes
            else DatagramReader(*arguments)
        )
        address = sock.getsockname()  # a path for a Unix socket
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            address = address[:2]
            inode = os.fstat(sock.fileno()).st_ino
            self.stats.gauges.listener(name).kernel_drops = lambda: kernel_drops(inode)
        if probe is not None:
            probe.add_target(name, sock.family, address)
        if not self._held:
            asyncio.get_running_loop().add_reader(reader.wakeup, reader.on_readable)
        self._readers.append(reader)

    async def _serve_stream_on_loop(self, sock: socket.socket) -> None:
        """Without the native reader: the event loop serves the stream socket's clients."""
        self._stream_socket = sock
        loop = asyncio.get_running_loop()
        self._servers.append(await loop.create_unix_server(lambda: _StreamConnection(self), sock=sock))
        for fd, pending in self.inherited_connections:
            await loop.connect_accepted_socket(
                functools.partial(_StreamConnection, self, pending), socket.socket(fileno=fd)
            )

    def datagram_fds(self) -> dict[str, int]:
        """The datagram sockets' descriptors, by transport: what a reload's bridge reads (a stream's clients wait
        in their sockets)."""
        return {reader.name: reader.sock.fileno() for reader in self._readers if reader.sock.type == socket.SOCK_DGRAM}

    def deliver(self, name: str, datagrams: list[bytes]) -> None:
        """Datagrams read for this listener elsewhere (by the bridge during a reload), through its usual path."""
        for reader in self._readers:
            if reader.name == name:
                reader.deliver(datagrams)
                return
        self.stats.dropped["reload_listener_gone"] += len(datagrams)

    def resume(self) -> None:
        """After a reload: start delivering what the sockets receive (the reader threads queued it meanwhile)."""
        if self._held:
            self._held = False
            loop = asyncio.get_running_loop()
            for reader in self._readers:
                loop.add_reader(reader.wakeup, reader.on_readable)

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

    async def stop(self) -> None:
        """Stop reading: what the sockets and queues hold is delivered first; close every socket, end stream
        connections once they are quiet, remove the socket files."""
        for server in self._servers:
            server.close()
        await self._quiet_connections()
        await self._stop_reading(drain_sockets=True)
        for reader in self._readers:
            reader.sock.close()
        for connection in list(self._connections):
            connection.transport.close()
        for server in self._servers:
            await server.wait_closed()
        for path in self._paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        self._readers, self._servers, self._paths = [], [], []

    async def detach(self) -> tuple[dict[str, int], list[tuple[int, bytes]]]:
        """A reload: stop reading but keep every socket open for the next pipeline. Returns inheritable copies of
        the listening sockets (by transport) and of the stream connections, with the bytes of a frame not yet
        whole. The socket files stay; the bridge reads the datagram sockets meanwhile."""
        await self._stop_reading(drain_sockets=False)
        sockets = {reader.name: _inheritable(reader.sock) for reader in self._readers}
        if self._stream_socket is not None:
            sockets[UDS_STREAM] = _inheritable(self._stream_socket)
        if self._health_socket is not None:
            sockets[HEALTH] = _inheritable(self._health_socket)
        for server in self._servers:
            server.close()
        connections = [connection.hand_over() for connection in list(self._connections)]
        for reader in self._readers:
            if isinstance(reader, ThreadedReader) and reader.stream:
                connections += reader.hand_over()
            reader.sock.close()
        self._readers, self._servers, self._paths = [], [], []
        return sockets, connections

    async def _stop_reading(self, drain_sockets: bool) -> None:
        loop = asyncio.get_running_loop()
        if self._probing is not None:
            self._probing.cancel()
            await asyncio.gather(self._probing, return_exceptions=True)
        for reader in self._readers:
            if not self._held:
                loop.remove_reader(reader.wakeup)
            reader.drain() if drain_sockets else reader.take_queued()
        if self._tee is not None:
            self._tee.close()

    async def _quiet_connections(self, quiet: float = 0.05, at_most: float = 1.0) -> None:
        """Stream clients may still have frames in flight: wait until each has been silent for `quiet`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + at_most
        streams = [reader for reader in self._readers if isinstance(reader, ThreadedReader) and reader.stream]
        while loop.time() < deadline and (
            any(loop.time() - c.last_data < quiet for c in self._connections)
            or any(time.monotonic() - reader.last_data < quiet for reader in streams)
        ):
            await asyncio.sleep(quiet / 2)


class _StreamConnection(asyncio.Protocol):
    """One Unix stream client. Frames: a 4-byte little-endian length, then that many bytes (which may hold
    several lines). The bytes of a frame not yet whole stay in `buffer`, so that a reload can hand them over."""

    def __init__(self, listeners: Listeners, pending: bytes = b"") -> None:
        self.listeners = listeners
        self.buffer = bytearray(pending)
        self.transport: asyncio.Transport
        self.last_data = 0.0
        self.handed_over = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's are not asyncio.Transport subclasses
        self.listeners._connections.add(self)
        self.last_data = asyncio.get_running_loop().time()
        if self.buffer:
            self._frames()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self.last_data = asyncio.get_running_loop().time()
        self._frames()

    def _frames(self) -> None:
        listeners, buffer, offset = self.listeners, self.buffer, 0
        stats, max_size = listeners.stats, listeners.config.dogstatsd_buffer_size
        while len(buffer) - offset >= 4:
            (length,) = _FRAME_HEADER.unpack_from(buffer, offset)
            if length > _MAX_FRAME:
                stats.listen.read_errors[UDS_STREAM] += 1
                logger.warning("uds_stream: frame of %d bytes announced; closing the connection", length)
                buffer.clear()
                self.transport.close()
                return
            if len(buffer) - offset - 4 < length:
                break
            frame = bytes(buffer[offset + 4 : offset + 4 + min(length, max_size)])
            offset += 4 + length
            stats.listen.packets[UDS_STREAM] += 1
            stats.listen.bytes[UDS_STREAM] += length
            if length > max_size:
                stats.listen.truncated[UDS_STREAM] += 1
            if listeners.taps.open:
                listeners.taps([frame], UDS_STREAM)
            listeners.handler(frame, UDS_STREAM)
        del buffer[:offset]

    def connection_lost(self, exc: Exception | None) -> None:
        self.listeners._connections.discard(self)
        if self.buffer and not self.handed_over:  # a frame cut short by the client closing
            self.listeners.stats.listen.read_errors[UDS_STREAM] += 1

    def hand_over(self) -> tuple[int, bytes]:
        """An inheritable copy of the connection and its unfinished frame; this side lets go of it."""
        self.transport.pause_reading()
        fd = _inheritable(self.transport.get_extra_info("socket"))
        pending = bytes(self.buffer)
        self.handed_over = True
        self.transport.abort()
        return fd, pending


def _inheritable(sock: socket.socket) -> int:
    fd = os.dup(sock.fileno())
    os.set_inheritable(fd, True)
    return fd


def _listener_on(path: Path, kind: int) -> str:
    """Whether a process listens on the socket file: '' when it is stale (connecting is refused), else why it
    must not be replaced."""
    with socket.socket(socket.AF_UNIX, kind) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except (ConnectionRefusedError, FileNotFoundError):
            return ""
        except TimeoutError:
            return "served by a running process (its queue is full)"
        except OSError as error:
            return f"not ours to check ({error.strerror})"
    return "served by a running process (a relay or an Agent)"


def _forget_socket(sock: socket.socket) -> None:
    """A handed-over socket the new configuration does not use: closed, and its file removed."""
    with sock:
        address = sock.getsockname()
        if sock.family == socket.AF_UNIX and isinstance(address, str) and address:
            with contextlib.suppress(OSError):
                os.unlink(address)
