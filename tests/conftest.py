"""Shared fixtures: a real intake stand-in in the test's loop, and the relay as a subprocess on free ports."""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from relay.config import Config
from relay.intake.server import Intake

API_KEY = "0123456789abcdef0123456789abcdef"


def c_extension(name: str) -> Any:
    """relay.<name>, a C twin of Python code, built by pip where a C compiler is. The one place that decides: in CI
    (which has a compiler) a missing build is a broken build and fails; elsewhere the test skips, saying why."""
    try:
        return importlib.import_module(f"relay.{name}")
    except ImportError:
        if os.environ.get("CI"):
            pytest.fail(f"relay.{name} was not built: CI has a C compiler, so the build is broken")
        pytest.skip(f"relay.{name} is not built here (no C compiler): only the Python twin is tested")


@pytest.fixture(scope="session")
def speedups() -> Any:
    """relay._speedups: the C ingest fast path, shard, sketch insertion, series encoder and histogram packing."""
    return c_extension("_speedups")


@pytest.fixture(scope="session")
def native_reader_module() -> Any:
    """relay._reader: the sockets' native reader thread (Linux)."""
    return c_extension("_reader")


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def config(**overrides: Any) -> Config:
    """A Config from defaults plus datadog.yaml keys given as keyword arguments (dots as double underscores)."""
    return Config.load(None, {}, {key.replace("__", "."): str(value) for key, value in overrides.items()})


async def wait_for(condition: Callable[[], Any], timeout: float = 15.0, step: float = 0.05) -> Any:
    """Poll until `condition()` is truthy; fail with a clear message otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        await asyncio.sleep(step)
    raise AssertionError(f"condition not met within {timeout} s")


class RunningRelay:
    """A relay subprocess and the addresses it listens on."""

    def __init__(self, process: subprocess.Popen[bytes], env: dict[str, str], tmp: Path) -> None:
        self.process = process
        self.env = env
        self.udp_port = int(env["DD_DOGSTATSD_PORT"])
        self.health = f"http://127.0.0.1:{env['DD_RELAY_HEALTH_PORT']}"
        self.socket_path = env.get("DD_DOGSTATSD_SOCKET", "")
        self.stream_path = env.get("DD_DOGSTATSD_STREAM_SOCKET", "")
        self.tmp = tmp

    def status(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.health + "/status", timeout=5) as response:
            return json.load(response)

    def metrics_text(self) -> str:
        with urllib.request.urlopen(self.health + "/metrics", timeout=5) as response:
            return response.read().decode()

    def send_udp(self, data: bytes) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(data, ("127.0.0.1", self.udp_port))

    async def stop(self, timeout: float = 30) -> tuple[int, str, str]:
        """SIGTERM, then the exit code and what it printed; waits in a thread so the intake keeps serving."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        out, err = await asyncio.to_thread(self.process.communicate, timeout=timeout)
        return self.process.returncode, out.decode(), err.decode()


@asynccontextmanager
async def run_relay(
    tmp_path: Path,
    intake_url: str | None,
    *,
    args: tuple[str, ...] = (),
    preexec: Callable[[], None] | None = None,
    **env: str,
) -> AsyncIterator[RunningRelay]:
    """Start `python -m relay run [args]` and wait until its health endpoint answers; always stop it. `preexec`
    runs in the child before exec (benchmarks.cgroup.MemoryCgroup.preexec: the relay starts in that cgroup)."""
    full_env = {
        # No DD_ setting of the machine's, nor its Kubernetes or Docker: a container tagger only where asked.
        **{
            k: v
            for k, v in os.environ.items()
            if not k.startswith("DD_") and k not in ("KUBERNETES_SERVICE_HOST", "DOCKER_HOST")
        },
        "DD_DOGSTATSD_PORT": str(free_port()),
        "DD_RELAY_HEALTH_PORT": str(free_port(socket.SOCK_STREAM)),
        "DD_RELAY_FLUSH_INTERVAL": "1",
        "DD_HOSTNAME": "test-host",
        "DD_FORWARDER_BACKOFF_BASE": "0.05",
        "DD_FORWARDER_BACKOFF_MAX": "0.4",
        "DD_LOG_LEVEL": "debug",
        "DD_RELAY_SPOOL_DIR": str(tmp_path / "spool"),
        "DD_RELAY_HOST_COLLECTORS": "",  # host metrics only where a test asks for them: exact counts elsewhere
        "DD_ENABLE_METADATA_COLLECTION": "false",  # likewise the host metadata payload
        "XDG_CONFIG_HOME": str(tmp_path / "no-user-config"),  # never the developer's own `init` file
    }
    if intake_url:
        full_env.update(DD_API_KEY=API_KEY, DD_DD_URL=intake_url)
    full_env.update(env)
    process = subprocess.Popen(
        [sys.executable, "-m", "relay", "run", *args],
        env=full_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=preexec,
    )
    relay = RunningRelay(process, full_env, tmp_path)
    try:
        await wait_for(lambda: _answers(relay), timeout=20)
        yield relay
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def _answers(relay: RunningRelay) -> bool:
    if relay.process.poll() is not None:
        _, err = relay.process.communicate()
        raise AssertionError(f"relay exited with {relay.process.returncode}: {err.decode()[-2000:]}")
    try:
        with urllib.request.urlopen(relay.health + "/healthz", timeout=1):
            return True
    except OSError:
        return False


@asynccontextmanager
async def serving(stand_in: Intake) -> AsyncIterator[str]:
    """An intake stand-in served in the test's loop on a free port: its URL, and always cleaned up."""
    runner, port = await stand_in.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def intake() -> AsyncIterator[tuple[Intake, str]]:
    stand_in = Intake(api_key=API_KEY)
    async with serving(stand_in) as url:
        yield stand_in, url


@pytest.fixture
def short_tmp() -> Any:
    """Unix socket paths must stay under ~100 bytes, shorter than pytest's tmp_path can be."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="relay-") as directory:
        yield Path(directory)
