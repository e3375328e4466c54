"""Files the relay writes whole or not at all: the spool's payloads, the reload's state, `init`'s configuration."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


@contextmanager
def atomic_file(path: Path, mode: int = 0o666) -> Iterator[BinaryIO]:
    """Write into a temporary file beside `path` (`.tmp`, created afresh with `mode`, the umask applying), then
    fsync it, rename it over `path` and fsync the directory: a crash leaves the old file or the new, never half."""
    temporary = path.with_suffix(".tmp")
    temporary.unlink(missing_ok=True)  # left by a crash: created afresh, so that `mode` holds
    try:
        with open(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode), "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    temporary.replace(path)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def write_atomically(path: Path, data: bytes, mode: int = 0o666) -> None:
    with atomic_file(path, mode) as out:
        out.write(data)
