"""The Unix stream listener read by the native thread (relay/_reader.c, STREAM): its clients' frames are cut off
the event loop, a full queue holds the clients back instead of dropping, and every broken frame is counted.

As in test_reader.py, a test blocks its own event loop with time.sleep, as a long flush or a check would block
the relay's, while real clients write to a real socket.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from relay.runtime.listen import UDS_STREAM, Listeners
from relay.runtime.readers import ThreadedReader
from relay.telemetry.stats import Stats
from tests.conftest import wait_for
from tests.runtime.test_reader import lines
from tests.runtime.test_reader import start as start_listeners


@pytest.fixture(autouse=True)
def _built(native_reader_module: Any) -> None:
    """Every test here needs the native reader: required in CI, skipped with the reason elsewhere."""


def frame(payload: bytes) -> bytes:
    return struct.pack("<I", len(payload)) + payload


async def start(path: Path, received: list[bytes], **overrides: object) -> tuple[Listeners, Stats]:
    """The listeners of the reader's tests, with a stream socket and no UDP one."""
    return await start_listeners(received, dogstatsd_port=0, dogstatsd_stream_socket=str(path), **overrides)


def connect(path: Path) -> socket.socket:
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    client.connect(str(path))
    return client


async def test_the_stream_is_read_by_the_native_thread_while_the_loop_is_busy(short_tmp):
    """2 MB of frames, far more than a Unix stream socket buffers: the client's writes complete while the event
    loop sleeps, so nothing waits for the interpreter (through asyncio streams the client blocked until it woke)."""
    received: list[bytes] = []
    listeners, stats = await start(short_tmp / "s.sock", received)
    assert any(isinstance(r, ThreadedReader) and r.stream for r in listeners._readers)
    payloads = [b"busy.stream:%d|c" % i for i in range(100_000)]
    written = threading.Event()

    def write() -> None:
        with connect(short_tmp / "s.sock") as client:
            client.sendall(b"".join(frame(p) for p in payloads))
            written.set()

    writer = threading.Thread(target=write)
    writer.start()
    time.sleep(2)  # the loop is blocked the whole time
    sent_while_blocked = written.is_set()
    writer.join()
    await wait_for(lambda: stats.listen.packets[UDS_STREAM] == len(payloads), timeout=10)
    await listeners.stop()
    assert sent_while_blocked
    assert sorted(lines(received)) == sorted(payloads)


async def test_a_full_queue_holds_the_clients_back_and_drops_nothing(short_tmp):
    """Past relay.receive_queue_bytes the thread stops reading: the client waits in its socket's buffer (a stream
    has nowhere to drop) and every frame arrives once the loop takes the queue."""
    received: list[bytes] = []
    listeners, stats = await start(short_tmp / "s.sock", received, relay__receive_queue_bytes=10_000)
    payload = b"q:1|c|#" + b"x" * 93

    def write() -> None:
        with connect(short_tmp / "s.sock") as client:
            client.sendall(frame(payload) * 20_000)

    writer = threading.Thread(target=write)
    writer.start()
    time.sleep(0.3)  # the queue fills, then the client's socket
    await wait_for(lambda: stats.listen.packets[UDS_STREAM] == 20_000, timeout=20)
    writer.join()
    await listeners.stop()
    assert len(lines(received)) == 20_000
    assert stats.gauges.by_listener("queue_drops")[UDS_STREAM] == 0


async def test_broken_frames_cost_only_their_client_and_are_counted(short_tmp):
    """Split frames are joined; a frame past dogstatsd_buffer_size is cut and counted; a client announcing a
    frame over 8 MiB is closed and counted; one closing mid-frame is counted. The other clients go on."""
    received: list[bytes] = []
    listeners, stats = await start(short_tmp / "s.sock", received, dogstatsd_buffer_size=100)
    good, liar, quitter = (connect(short_tmp / "s.sock") for _ in range(3))
    data = frame(b"split:1|c\nthis is garbage\nsplit:2|c")
    for part in (data[:3], data[3:10], data[10:]):
        good.sendall(part)
        time.sleep(0.05)
    good.sendall(frame(b"long:1|c|#" + b"t" * 200))
    liar.sendall(struct.pack("<I", 9 * 1024 * 1024) + b"never")
    quitter.sendall(frame(b"whole:1|c") + frame(b"cut:1|c")[:6])
    quitter.close()
    await wait_for(lambda: stats.listen.read_errors[UDS_STREAM] == 2, timeout=10)
    good.sendall(frame(b"after:1|c"))
    await wait_for(lambda: stats.listen.packets[UDS_STREAM] == 4, timeout=10)
    with pytest.raises(OSError):  # the relay closed the liar's connection
        for _ in range(100):
            liar.sendall(b"x" * 65536)
    await listeners.stop()
    good.close()
    liar.close()
    assert stats.listen.truncated[UDS_STREAM] == 1
    assert sorted(line for line in lines(received) if not line.startswith(b"long")) == [
        b"after:1|c", b"split:1|c", b"split:2|c", b"this is garbage", b"whole:1|c"
    ]  # fmt: skip
    assert [len(line) for line in lines(received) if line.startswith(b"long")] == [100]


async def test_stop_delivers_every_whole_frame_and_counts_a_cut_one(short_tmp):
    received: list[bytes] = []
    listeners, stats = await start(short_tmp / "s.sock", received)
    client = connect(short_tmp / "s.sock")
    client.sendall(b"".join(frame(b"late:%d|c" % i) for i in range(5000)) + frame(b"cut:1|c")[:5])
    await listeners.stop()  # no loop turn in between: the clients are quiet, their frames queued
    client.close()
    assert len(lines(received)) == 5000
    assert stats.listen.read_errors[UDS_STREAM] == 1
