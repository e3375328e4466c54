"""Handoff: reload the configuration, or upgrade the installed package, without a gap and in the same process.

On SIGHUP (or `dogstatsd-relay reload`) the running pipeline:
  1. checks the new configuration with the installed code, in a child process; a bad one is refused with one line
     and the running pipeline goes on untouched;
  2. forks a bridge: a small child that keeps reading the datagram sockets into memory, so that no datagram waits
     long enough in the kernel to be dropped, and no Unix datagram client finds the queue full;
  3. stops reading, waits for a flush in progress, writes every bucket not yet flushed (open ones included) to
     a state file, and sends or spools what the forwarder holds;
  4. execs the same command line. The PID stays (systemd and container runtimes track it); the listening sockets,
     the stream connections and the bridge are inherited. The new pipeline adopts the state, takes what the bridge
     read (before anything newer, so the order is kept), then reads the sockets itself.

So no count is lost or sent twice: the unflushed buckets move, they are never flushed early. The state file is
a pickle, written and read by the relay's own user in its 0700 spool directory; when it cannot be read (an
upgrade that changed its classes) it is set aside as `.bad` with one ERROR line. A state file that a reload left
behind (the new process failed to start) is adopted at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import pickle
import select
import signal
import socket
import struct
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from relay.files import atomic_file
from relay.runtime.probe import MARK

logger = logging.getLogger(__name__)

ENVIRONMENT = "DOGSTATSD_RELAY_HANDOFF"  # the handoff document's path, for the exec'd process only
_RECORD = struct.Struct("<BI")  # listener index, datagram length
_BRIDGE_MAX_SECONDS = 120.0  # a bridge nobody stops (the new code failed to start) writes what it has and exits
_BRIDGE_MAX_BYTES = 256 * 1024 * 1024  # beyond this the bridge stops reading: the kernel queues, then drops


@dataclass
class Handoff:
    """What the previous pipeline hands to the next one."""

    sockets: dict[str, int]  # inherited listening sockets, by transport
    connections: list[tuple[int, bytes]]  # inherited stream connections and their unfinished frame
    state_path: str  # the aggregator's unflushed buckets (pickle)
    bridge_pid: int
    bridge_stop_fd: int  # write a byte (or close it) to make the bridge stop and write its datagrams
    bridge_data_path: str

    def dump(self, path: Path) -> None:
        document = {**self.__dict__, "connections": [[fd, pending.hex()] for fd, pending in self.connections]}
        path.write_text(json.dumps(document))

    @classmethod
    def load(cls, path: Path) -> Handoff:
        document = json.loads(path.read_text())
        document["connections"] = [(fd, bytes.fromhex(pending)) for fd, pending in document["connections"]]
        return cls(**document)


def command_line() -> list[str]:
    """The command that started this process, to exec it again (with sys.executable: the same interpreter)."""
    return [sys.executable, *sys.orig_argv[1:]]


async def check_configuration() -> str | None:
    """The new configuration, loaded by the installed code in a child process with this process's arguments and
    environment: None when it is good, else the one line that says why not."""
    arguments = command_line()[1:]
    if "run" not in arguments:
        return "cannot tell how this relay was started (no `run` on its command line)"
    index = arguments.index("run")
    check = [sys.executable, *arguments[:index], "config", *arguments[index + 1 :]]
    process = await asyncio.create_subprocess_exec(
        *check, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    _, err = await process.communicate()
    if process.returncode == 0:
        return None
    lines = [line for line in err.decode(errors="replace").splitlines() if line.strip()]
    return lines[-1] if lines else f"the configuration check exited with {process.returncode}"


class Bridge:
    """A forked child that reads the datagram sockets while the pipeline is swapped (see the module's text)."""

    def __init__(self, pid: int, stop_fd: int, data_path: Path) -> None:
        self.pid = pid
        self.stop_fd = stop_fd
        self.data_path = data_path

    @classmethod
    def start(cls, sockets: dict[str, int], max_size: int, data_path: Path) -> Bridge:
        stop_read, stop_write = os.pipe()
        ready_read, ready_write = os.pipe()
        names = list(sockets)
        pid = os.fork()
        if pid == 0:  # the child: no event loop, no threads, only the sockets
            try:
                os.close(stop_write)
                os.close(ready_read)
                signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the new pipeline tells it when to stop
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGHUP, signal.SIG_IGN)
                _bridge([sockets[name] for name in names], stop_read, ready_write, max_size, data_path)
            finally:
                os._exit(0)
        os.close(stop_read)
        os.close(ready_write)
        with os.fdopen(ready_read, "rb") as ready:
            ready.read(1)  # the child polls the sockets from now on
        os.set_inheritable(stop_write, True)
        data_path.with_suffix(".names").write_text(json.dumps(names))
        return cls(pid, stop_write, data_path)

    @staticmethod
    async def finish(pid: int, stop_fd: int, data_path: Path) -> dict[str, list[bytes]]:
        """Stop the bridge, wait for it and return what it read, by transport."""
        with contextlib.suppress(OSError):
            os.write(stop_fd, b"x")
        with contextlib.suppress(OSError):
            os.close(stop_fd)
        with contextlib.suppress(ChildProcessError):
            await asyncio.to_thread(os.waitpid, pid, 0)
        names_path = data_path.with_suffix(".names")
        try:
            names = json.loads(names_path.read_text())
            data = data_path.read_bytes()
        except (OSError, ValueError) as error:
            logger.error("reload: what the bridge read is lost: %s", error)
            return {}
        finally:
            for path in (names_path, data_path):
                path.unlink(missing_ok=True)
        datagrams: dict[str, list[bytes]] = {name: [] for name in names}
        offset = 0
        while offset + _RECORD.size <= len(data):
            index, length = _RECORD.unpack_from(data, offset)
            offset += _RECORD.size
            datagrams[names[index]].append(data[offset : offset + length])
            offset += length
        return datagrams


def _bridge(fds: list[int], stop_fd: int, ready_fd: int, max_size: int, data_path: Path) -> None:
    """The bridge's whole life: poll, read, keep; on a byte from (or the closing of) stop_fd, write and exit."""
    _close_all_but({0, 1, 2, stop_fd, ready_fd, *fds})  # the health port, the intake's connections: not its own
    sockets = [socket.socket(fileno=os.dup(fd)) for fd in fds]
    poller = select.poll()
    for sock in sockets:
        poller.register(sock.fileno(), select.POLLIN)
    poller.register(stop_fd, select.POLLIN)
    os.write(ready_fd, b"r")
    os.close(ready_fd)
    records: list[bytes] = []
    kept, deadline = 0, time.monotonic() + _BRIDGE_MAX_SECONDS
    by_fd = {sock.fileno(): (index, sock) for index, sock in enumerate(sockets)}
    while time.monotonic() < deadline:
        events = poller.poll(200)
        if any(fd == stop_fd for fd, _ in events):
            break
        for fd, _ in events:
            index, sock = by_fd[fd]
            for _ in range(256):
                try:
                    datagram = sock.recv(max_size, socket.MSG_DONTWAIT)
                except OSError:
                    break
                if datagram.startswith(MARK):  # the old pipeline's loss probe: meaningless to the new one
                    continue
                records.append(_RECORD.pack(index, len(datagram)) + datagram)
                kept += len(datagram)
            if kept > _BRIDGE_MAX_BYTES:
                poller.unregister(fd)
    temporary = data_path.with_suffix(".tmp")
    temporary.write_bytes(b"".join(records))
    temporary.replace(data_path)


def _close_all_but(keep: set[int]) -> None:
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)


def save_state(state: dict[str, Any], path: Path) -> None:
    with atomic_file(path, 0o600) as out:
        pickle.dump(state, out, protocol=pickle.HIGHEST_PROTOCOL)


def load_state(path: Path) -> dict[str, Any] | None:
    """The state written by the previous pipeline; None (the file set aside) when it cannot be read."""
    try:
        with open(path, "rb") as state_file:
            state: dict[str, Any] = pickle.load(state_file)
    except Exception as error:  # an upgrade may have changed the classes it holds
        logger.error("reload: the previous pipeline's buckets cannot be read (%s); set aside as %s.bad", error, path)
        with contextlib.suppress(OSError):
            path.replace(path.with_suffix(".bad"))
        return None
    path.unlink(missing_ok=True)
    return state
