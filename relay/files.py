"""Files the relay writes whole or not at all: the spool's payloads, the reload's state, `init`'s configuration,
the health endpoint's token."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

AUTH_TOKEN = "auth_token"  # under run_path: what /status and /debug/* ask of a peer that is not loopback


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
    _sync_directory(path.parent)


def _sync_directory(path: Path) -> None:
    directory = os.open(path, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def write_atomically(path: Path, data: bytes, mode: int = 0o666) -> None:
    with atomic_file(path, mode) as out:
        out.write(data)


def write_once(path: Path, data: bytes, mode: int = 0o666) -> bool:
    """Publish `data` at `path` whole unless a file is there already (then False). link() never replaces: of
    processes racing to create the same file one wins, and all of them then read the same content."""
    temporary = path.with_name(f".{path.name}-{os.getpid()}")
    write_atomically(temporary, data, mode)
    try:
        os.link(temporary, path)
    except FileExistsError:
        return False
    finally:
        temporary.unlink()
    _sync_directory(path.parent)
    return True


def auth_token(directory: Path, *, create: bool = False) -> str | None:
    """The health endpoint's token in `directory` (0600), or None where there is none this user can read.
    `create`: the relay at start makes one from 32 random bytes when there is none (an OSError if it cannot)."""
    path = directory / AUTH_TOKEN
    if create and not path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        write_once(path, secrets.token_hex(32).encode() + b"\n", 0o600)
    try:
        return path.read_text().strip() or None
    except OSError:
        return None
