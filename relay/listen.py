"""Listen: sockets → whole datagrams handed to one callback. UDP, Unix datagram, Unix stream (4-byte frames).

Listeners never parse; they count packets, bytes, truncations and read errors per transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
import struct
from collections.abc import Callable
from pathlib import Path

from relay.config import Config
from relay.telemetry import Stats

logger = logging.getLogger(__name__)

Handler = Callable[[bytes, str], None]  # (datagram, transport)
UDP, UDS, UDS_STREAM = "udp", "uds", "uds_stream"
_FRAME_HEADER = struct.Struct("<I")
_MAX_FRAME = 8 * 1024 * 1024  # a stream frame claiming more is a broken client: the connection is closed


class ListenError(Exception):
    """A listener could not start (address in use, path taken by a file, ...)."""


class _DatagramProtocol(asyncio.DatagramProtocol):
    def __init__(self, transport_name: str, max_size: int, handler: Handler, stats: Stats) -> None:
        self.name = transport_name
        self.max_size = max_size
        self.handler = handler
        self.stats = stats

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.stats.packets[self.name] += 1
        self.stats.bytes[self.name] += len(data)
        if len(data) > self.max_size:
            # The Agent reads into a dogstatsd_buffer_size buffer: the tail of a longer datagram is lost.
            self.stats.truncated[self.name] += 1
            data = data[: self.max_size]
        self.handler(data, self.name)

    def error_received(self, exc: Exception) -> None:
        self.stats.read_errors[self.name] += 1
        logger.warning("%s read error: %s", self.name, exc)


class Listeners:
    """Owns every socket of the relay; `start` binds them all or raises ListenError."""

    def __init__(self, config: Config, stats: Stats, handler: Handler) -> None:
        self.config = config
        self.stats = stats
        self.handler = handler
        self.addresses: dict[str, str] = {}
        self._transports: list[asyncio.BaseTransport] = []
        self._servers: list[asyncio.Server] = []
        self._connections: set[asyncio.Task[None]] = set()
        self._paths: list[Path] = []

    async def start(self) -> None:
        config = self.config
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
        except OSError as error:
            sock.close()
            raise ListenError(f"{path}: cannot bind: {error.strerror}") from None
        self._paths.append(path)

    async def _serve_datagrams(self, sock: socket.socket, name: str) -> None:
        self._set_receive_buffer(sock, name)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        size = self.config.dogstatsd_buffer_size
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _DatagramProtocol(name, size, self.handler, self.stats), sock=sock
        )
        self._transports.append(transport)

    def _set_receive_buffer(self, sock: socket.socket, name: str) -> None:
        wanted = self.config.dogstatsd_so_rcvbuf
        if not wanted:
            return
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, wanted)
        granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2  # Linux reports twice the size
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
        for transport in self._transports:
            transport.close()
        for server in self._servers:
            server.close()
        for task in list(self._connections):
            task.cancel()
        for server in self._servers:
            await server.wait_closed()
        for path in self._paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        self._transports, self._servers, self._paths = [], [], []
