"""The parts of a benchmark run: servers under test, the load generator, and one measured window.

Servers are started as a user would start them and pinned to core 0; the generator and the intake stand-in
run on core 1. Loss is read from the kernel (the `drops` column of /proc/net/udp for the server's port), and
the relay's own counters are read from its status endpoint, so both views can be compared.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BUILD = HERE / ".build"
SERVER_CPU, LOAD_CPU = {0}, {1}


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pinned(cpus: set[int]) -> Any:
    available = os.sched_getaffinity(0)
    chosen = cpus & available or available
    return lambda: os.sched_setaffinity(0, chosen)


def rmem_max() -> int:
    try:
        return int(Path("/proc/sys/net/core/rmem_max").read_text())
    except OSError:
        return 0


def udp_socket_stats(port: int) -> tuple[int, int]:
    """(receive queue bytes, drops) of the UDP socket bound to `port`, from /proc/net/udp and /proc/net/udp6."""
    for table in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                return int(fields[4].split(":")[1], 16), int(fields[-1])
    return 0, 0


def process_usage(pid: int) -> tuple[float, int]:
    """(CPU seconds used so far, resident bytes) of a process."""
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(stat[11]) + int(stat[12])) / ticks
    rss = int(stat[21]) * os.sysconf("SC_PAGE_SIZE")
    return cpu, rss


def write_datagrams(datagrams: list[bytes]) -> Path:
    """The generator's input: each datagram as a 4-byte little-endian length, then its bytes."""
    BUILD.mkdir(exist_ok=True)
    path = Path(tempfile.mkstemp(prefix="datagrams-", suffix=".bin", dir=BUILD)[1])
    with path.open("wb") as out:
        for datagram in datagrams:
            out.write(struct.pack("<I", len(datagram)) + datagram)
    return path


def compiled(program: str) -> Path | None:
    """benchmarks/PROGRAM.c, compiled once; None when no C compiler is installed."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return None
    BUILD.mkdir(exist_ok=True)
    binary = BUILD / program
    source = HERE / f"{program}.c"
    if not binary.exists() or binary.stat().st_mtime < source.stat().st_mtime:
        subprocess.run([compiler, "-O2", "-o", str(binary), str(source)], check=True)
    return binary


def baseline_tree(revision: str) -> Path:
    """A checkout of the project at `revision` (a git worktree under benchmarks/.build), with its C extensions
    compiled in place, so that a relay of that revision can run beside this one in the same benchmark run."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", revision], cwd=HERE.parent, capture_output=True, text=True, check=True
    ).stdout.strip()
    tree = BUILD / f"baseline-{commit}"
    if not tree.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), commit], cwd=HERE.parent, check=True,
                       capture_output=True)  # fmt: skip
    compiler = shutil.which("cc") or shutil.which("gcc")
    include, suffix = sysconfig.get_paths()["include"], sysconfig.get_config_var("EXT_SUFFIX")
    for source in (tree / "relay").glob("*.c"):
        binary = source.with_name(source.stem + suffix)
        if compiler and not binary.exists():
            subprocess.run([compiler, "-O2", "-fPIC", "-shared", f"-I{include}", "-o", str(binary), str(source)],
                           check=True)  # fmt: skip
    return tree


def send(
    target: str, datagrams_file: Path, rate: float, seconds: float, clients: int = 1,
    load_cpus: set[int] | None = LOAD_CPU,
) -> dict[str, float]:  # fmt: skip
    """Run the generator on the load core (`load_cpus`, None: unpinned); `target` is "udp:PORT" or "unix:PATH";
    rate in datagrams/s, 0 = max. With several clients, that many generators (each its own socket) share the
    rate."""
    if clients > 1:
        with ThreadPoolExecutor(clients) as pool:
            results = list(pool.map(lambda _: send(target, datagrams_file, rate / clients, seconds, 1, load_cpus),
                                    range(clients)))  # fmt: skip
        return {"sent": sum(r["sent"] for r in results), "seconds": max(r["seconds"] for r in results)}
    kind, _, where = target.partition(":")
    binary = compiled("loadgen")  # without a compiler, the Python generator
    if binary is not None:
        address = ["udp", "127.0.0.1", where] if kind == "udp" else ["unix", where]
        command = [str(binary), *address, str(datagrams_file), str(rate), str(seconds)]
    else:
        command = [sys.executable, str(HERE / "pygen.py"), kind, where, str(datagrams_file), str(rate), str(seconds)]
    pin = pinned(load_cpus) if load_cpus else None
    result = subprocess.run(command, capture_output=True, text=True, check=True, preexec_fn=pin)
    return json.loads(result.stdout)


class Server:
    """A DogStatsD server under test, listening on UDP `port`."""

    name = "server"
    process: subprocess.Popen[Any]
    port: int

    def accepted_lines(self) -> int | None:
        """Lines the server says it accepted, where it says so."""
        return None

    def own_drops(self) -> int:
        """Datagrams the server itself dropped after the kernel handed them over (the relay's reader queue)."""
        return 0

    def dropped_lines(self) -> int:
        """Lines the server itself dropped after reading them (a sharded relay's full worker queue)."""
        return 0

    def backlog(self) -> int:
        """Bytes read from the socket and not yet processed, where the server says so."""
        return 0

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class Relay(Server):
    """dogstatsd-relay, sending to an intake stand-in."""

    name = "dogstatsd-relay"

    def __init__(
        self, intake_url: str, socket_path: str = "", cpus: set[int] = SERVER_CPU, tree: Path | None = None,
        preexec: Callable[[], None] | None = None, **env: str,
    ) -> None:  # fmt: skip
        """`tree`: run the relay of another checkout (baseline_tree), not this one. `preexec`: run in the child
        before exec, after the pinning (MemoryCgroup.preexec: the relay starts inside that cgroup)."""
        self.port = free_port()
        self.health = free_port(socket.SOCK_STREAM)
        full_env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("DD_")},
            "DD_API_KEY": "benchmark0000000000000000000000",
            "DD_DD_URL": intake_url,
            "DD_DOGSTATSD_PORT": str(self.port),
            "DD_RELAY_HEALTH_PORT": str(self.health),
            "DD_DOGSTATSD_SOCKET": socket_path,
            "DD_RELAY_SPOOL_DIR": tempfile.mkdtemp(prefix="relay-bench-spool-"),  # no payload of another run
            "DD_LOG_LEVEL": "warn",
            **env,
        }
        if tree is not None:
            full_env["PYTHONPATH"] = str(tree)  # `-m relay` then finds that checkout's package first
        pin = pinned(cpus)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "relay", "run"],
            env=full_env,
            preexec_fn=pin if preexec is None else lambda: (pin(), preexec()),
            stdout=subprocess.DEVNULL,
            cwd=tree,
        )
        if "DD_RELAY_WORKERS" in env:
            self.name = f"dogstatsd-relay (workers {env['DD_RELAY_WORKERS']})"
        _wait(lambda: self.status() is not None, f"relay on port {self.port}")

    def status(self) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.health}/status", timeout=5) as response:
                return json.load(response)
        except OSError:
            return None

    def accepted_lines(self) -> int | None:
        status = self.status() or {}
        messages = status.get("messages", {})
        return sum(kind.get("ok", 0) + kind.get("error", 0) for kind in messages.values())

    def own_drops(self) -> int:
        listeners = (self.status() or {}).get("listeners", {})
        return sum(listener.get("queue_drops", 0) for listener in listeners.values())

    def dropped_lines(self) -> int:
        return int((self.status() or {}).get("dropped", {}).get("worker_queue_full", 0))

    def backlog(self) -> int:
        status = self.status() or {}
        listeners = status.get("listeners", {})
        waiting = sum(listener.get("queued_bytes", 0) for listener in listeners.values())
        return waiting + sum(status.get("worker_queue_bytes", {}).values())


class CReader(Server):
    """benchmarks/creader.c: a blocking recvmmsg loop that only counts, the reference of what this machine's
    kernel and scheduler let any server receive."""

    name = "C reader"

    def __init__(self, socket_path: str = "") -> None:
        binary = compiled("creader")
        if binary is None:
            raise RuntimeError("the C reader needs a C compiler")
        self.port = free_port()
        self.socket_path = socket_path
        where = ["unix", socket_path] if socket_path else ["udp", str(self.port)]
        self.process = subprocess.Popen(
            [str(binary), *where], preexec_fn=pinned(SERVER_CPU), stdout=subprocess.PIPE, text=True
        )
        _wait(lambda: Path(socket_path).exists() if socket_path else _bound(self.port), "C reader")

    def count(self) -> int:
        """Datagrams received since the last count."""
        with socket.socket(socket.AF_UNIX if self.socket_path else socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(b"!count", self.socket_path or ("127.0.0.1", self.port))
        assert self.process.stdout is not None
        return int(self.process.stdout.readline())


class EtsyStatsd(Server):
    """The Etsy statsd daemon (npm package `statsd`) with no backend: the baseline peer."""

    name = "etsy-statsd"

    def __init__(self) -> None:
        home = BUILD / "etsy-statsd"
        entry = home / "node_modules" / "statsd" / "stats.js"
        if not entry.exists():
            home.mkdir(parents=True, exist_ok=True)
            subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--prefix", str(home), "statsd@0.9.0"],
                           check=True, capture_output=True)  # fmt: skip
        self.port = free_port()
        config = home / f"config-{self.port}.js"
        management = free_port(socket.SOCK_STREAM)
        settings = f"port: {self.port}, mgmt_port: {management}, backends: [], flushInterval: 10000"
        config.write_text("{ " + settings + ", deleteIdleStats: true }\n")
        self.process = subprocess.Popen(
            ["node", str(entry), str(config)], preexec_fn=pinned(SERVER_CPU), stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        _wait(lambda: udp_socket_stats(self.port) != (0, 0) or _bound(self.port), f"etsy statsd on {self.port}")

    @staticmethod
    def version() -> str:
        package = BUILD / "etsy-statsd" / "node_modules" / "statsd" / "package.json"
        return json.loads(package.read_text())["version"] if package.exists() else "?"


def _bound(port: int) -> bool:
    return any(
        int(row.split()[1].rsplit(":", 1)[1], 16) == port
        for table in ("/proc/net/udp", "/proc/net/udp6")
        for row in Path(table).read_text().splitlines()[1:]
    )


def _wait(condition: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not start within {timeout} s")


@dataclass
class Window:
    """One measured window of load against one server."""

    server: str
    offered_datagrams_per_s: float
    sent_datagrams: int
    lines_per_datagram: float
    seconds: float
    kernel_drops: int
    queue_drops: int  # dropped by the server after the kernel (the relay's reader queue)
    dropped_lines: int  # lines dropped by the server after reading them (a sharded relay's worker queues)
    server_counted_lines: int | None
    cpu_percent: float
    rss_bytes: int

    @property
    def loss(self) -> float:
        lost = self.kernel_drops + self.queue_drops + self.dropped_lines / max(self.lines_per_datagram, 1)
        return lost / self.sent_datagrams if self.sent_datagrams else 0.0

    @property
    def accepted_lines_per_s(self) -> float:
        lost = self.kernel_drops + self.queue_drops
        return ((self.sent_datagrams - lost) * self.lines_per_datagram - self.dropped_lines) / self.seconds

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "loss": self.loss, "accepted_lines_per_s": self.accepted_lines_per_s}


def measure(
    server: Server, datagrams_file: Path, lines_per_datagram: float, rate: float, seconds: float, clients: int = 1,
    load_cpus: set[int] | None = LOAD_CPU,
) -> Window:  # fmt: skip
    """Send for `seconds`, wait for the server's queue to drain, and read the counters."""
    _, drops_before = udp_socket_stats(server.port)
    own_before, dropped_before = server.own_drops(), server.dropped_lines()
    lines_before = server.accepted_lines()
    cpu_before, _ = process_usage(server.process.pid)
    result = send(f"udp:{server.port}", datagrams_file, rate, seconds, clients, load_cpus)
    deadline = time.monotonic() + 30
    while (udp_socket_stats(server.port)[0] or server.backlog()) and time.monotonic() < deadline:
        time.sleep(0.05)
    cpu_after, rss = process_usage(server.process.pid)
    _, drops_after = udp_socket_stats(server.port)
    lines_after = server.accepted_lines()
    counted = None if lines_before is None or lines_after is None else lines_after - lines_before
    return Window(
        server=server.name,
        offered_datagrams_per_s=rate or result["sent"] / result["seconds"],
        sent_datagrams=int(result["sent"]),
        lines_per_datagram=lines_per_datagram,
        seconds=result["seconds"],
        kernel_drops=drops_after - drops_before,
        queue_drops=server.own_drops() - own_before,
        dropped_lines=server.dropped_lines() - dropped_before,
        server_counted_lines=counted,
        cpu_percent=100 * (cpu_after - cpu_before) / result["seconds"],
        rss_bytes=rss,
    )


class Intake:
    """The intake stand-in as its own process (`dogstatsd-relay intake`), keeping little so it stays small."""

    def __init__(self, port: int = 0) -> None:
        """`port`: a port chosen beforehand (a relay may be sending to it already, as to an intake that is down)."""
        self.port = port or free_port(socket.SOCK_STREAM)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "relay", "intake", "--port", str(self.port), "--keep", "1000"],
            preexec_fn=pinned(LOAD_CPU), stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.url = f"http://127.0.0.1:{self.port}"
        _wait(lambda: self.received() is not None, "intake stand-in")

    def received(self) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(self.url + "/_received", timeout=10) as response:
                return json.load(response)
        except OSError:
            return None

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait()
