"""collectd's statsd plugin beside the relay, in one run (issue 26): the same flat-out load of plain counters sent
to each in turn, and what each says it counted.

The load: the C generator (sendmmsg) sends `bench.cN:1|c` over 1,000 contexts as fast as it can for the window,
20 lines a datagram, then 1 line a datagram. Placement as the issue measured it: the sender on core 0 and the
server on core 1 (pinned), then nothing pinned at all. What counted: the relay's accepted-lines counter (its status
endpoint, as the other scenarios read it); for collectd, the counters its CSV plugin wrote. Each line adds 1, and
with CounterSum the statsd plugin writes every interval a `count-NAME` value that is the change of that counter
since the last interval: their sum over the run is the lines collectd took in. (Its `derive-NAME` values, the
running total of each counter, are read as a cross-check.) A fresh server for each window.

collectd is Debian's `collectd-core` (apt-get installs it when missing), run in the foreground with only the statsd
and CSV plugins, on 127.0.0.1 and a free port, its files in a temporary directory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.harness import (
    Intake,
    Relay,
    Server,
    Window,
    compiled,
    free_port,
    pinned,
    process_usage,
    udp_socket_stats,
    write_datagrams,
)
from benchmarks.load import BASELINE, Result

CONTEXTS = 1000
LOADS = (20, 1)  # lines a datagram
SENDER_CPU, SERVER_CPU = {0}, {1}  # the placement (the other scenarios have it the other way round)
Placement = tuple[str, set[int], set[int]]  # its name, the sender's cores, the server's cores
INTERVAL = 1  # collectd's Interval, seconds: how often the statsd plugin hands its counters to the CSV plugin
CONFIG = """Hostname "bench"
FQDNLookup false
BaseDir "{home}"
PIDFile "{home}/collectd.pid"
Interval {interval}
AutoLoadPlugin false
LoadPlugin statsd
LoadPlugin csv
<Plugin statsd>
  Host "127.0.0.1"
  Port "{port}"
  DeleteCounters true
  CounterSum true
</Plugin>
<Plugin csv>
  DataDir "{home}/csv"
  StoreRates false
</Plugin>
"""


def collectd_binary() -> str:
    """The collectd daemon, installed from Debian's `collectd-core` when missing (each step at most 10 minutes)."""
    path = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    found = shutil.which("collectd", path=path)
    if found:
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "collectd-core"]
    if subprocess.run(install, env=env, capture_output=True, timeout=600).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=600, check=True)
        subprocess.run(install, env=env, capture_output=True, timeout=600, check=True)
    found = shutil.which("collectd", path=path)
    if not found:
        raise SystemExit("collectd is not installed, and apt-get could not install collectd-core")
    return found


def collectd_version(binary: str) -> str:
    """`collectd 5.12.0.git (collectd-core 5.12.0-14)`, or what of it can be found."""
    help_text = subprocess.run([binary, "-h"], capture_output=True, text=True, timeout=30).stdout
    version = next(
        (line.split()[1].rstrip(",") for line in help_text.splitlines() if line.startswith("collectd ")), "?"
    )
    package = subprocess.run(["dpkg-query", "-W", "-f", "${Version}", "collectd-core"], capture_output=True,
                             text=True, timeout=30).stdout.strip()  # fmt: skip
    return f"collectd {version}" + (f" (collectd-core {package})" if package else "")


def _csv_values(path: Path) -> list[float]:
    """The values of one CSV file (`epoch,value` rows), complete rows only: a writer may be mid-row."""
    text = path.read_text()
    values = []
    for row in text[: text.rfind("\n") + 1].splitlines():
        try:
            values.append(float(row.split(",")[1]))
        except (IndexError, ValueError):  # the header
            continue
    return values


class Collectd(Server):
    """collectd in the foreground (`collectd -f -C CONF`), only its statsd and CSV plugins, in a temporary dir."""

    name = "collectd"

    def __init__(self, binary: str, cpus: set[int]) -> None:
        self.port = free_port()
        self.home = Path(tempfile.mkdtemp(prefix="relay-bench-collectd-"))
        config = self.home / "collectd.conf"
        config.write_text(CONFIG.format(home=self.home, interval=INTERVAL, port=self.port))
        self.log = self.home / "collectd.log"
        with self.log.open("w") as log:
            self.process = subprocess.Popen(
                [binary, "-f", "-C", str(config)], stdout=log, stderr=subprocess.STDOUT, preexec_fn=pinned(cpus),
                cwd=self.home,
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while "entering read-loop" not in self.log.read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"collectd did not start:\n{self.log.read_text()[-2000:]}")
            time.sleep(0.1)

    def counted(self) -> tuple[int, int]:
        """(the sum of every `count-` value written, the sum of the last `derive-` value of each counter)."""
        counts = derives = 0.0
        for path in (self.home / "csv").rglob("*"):
            if path.name.startswith("count-"):
                counts += sum(_csv_values(path))
            elif path.name.startswith("derive-"):
                derives += (_csv_values(path) or [0.0])[-1]
        return round(counts), round(derives)

    def accepted_lines(self) -> int:
        """The `count-` sum once it has not changed for two intervals (at most 30 s of waiting)."""
        gap = INTERVAL + 0.5
        last, steady, deadline = self.counted()[0], 0, time.monotonic() + 30
        while steady < 2 and time.monotonic() < deadline:
            time.sleep(gap)
            now = self.counted()[0]
            steady = steady + 1 if now == last else 0
            last = now
        return last

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self.home, ignore_errors=True)


def counter_datagrams(per_datagram: int) -> list[bytes]:
    """`bench.cN:1|c` over CONTEXTS contexts, in turn, `per_datagram` lines a datagram; every context as often."""
    lines = [f"bench.c{i % CONTEXTS}:1|c".encode() for i in range(CONTEXTS * per_datagram)]
    return [b"\n".join(lines[i : i + per_datagram]) for i in range(0, len(lines), per_datagram)]


def blast(port: int, file: Path, seconds: float, cpus: set[int]) -> dict[str, float]:
    """The C generator, flat out to 127.0.0.1:`port` for `seconds`, on `cpus`."""
    binary = compiled("loadgen")
    if binary is None:
        raise SystemExit("the collectd scenario needs a C compiler for its sender (benchmarks/loadgen.c)")
    command = [str(binary), "udp", "127.0.0.1", str(port), str(file), "0", str(seconds)]
    result = subprocess.run(command, capture_output=True, text=True, check=True, preexec_fn=pinned(cpus),
                            timeout=seconds + 60)  # fmt: skip
    return json.loads(result.stdout)


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds used so far by each kind of thread of a process, by thread name; its first thread is "main"
    (collectd's statsd thread is the other one named "collectd", the relay's reader "relay-reader")."""
    ticks, used = os.sysconf("SC_CLK_TCK"), dict[str, float]()
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{task}/stat").read_text()
        except OSError:  # a thread that has ended
            continue
        name = "main" if int(task) == pid else stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        used[name] = used.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / ticks
    return used


def flat_out(
    server: Server, file: Path, per_datagram: int, seconds: float, sender: set[int]
) -> tuple[Window, dict[str, int]]:
    """One window: send flat out, let the server empty its socket (at most 30 s), read what it counted; with
    the CPU % of each kind of the server's threads over the sending."""
    _, drops_before = udp_socket_stats(server.port)
    own_before, dropped_before, before = server.own_drops(), server.dropped_lines(), server.accepted_lines() or 0
    cpu_before, threads_before = process_usage(server.process.pid)[0], thread_cpu(server.process.pid)
    sent = blast(server.port, file, seconds, sender)
    threads = thread_cpu(server.process.pid)
    deadline = time.monotonic() + 30
    while (udp_socket_stats(server.port)[0] or server.backlog()) and time.monotonic() < deadline:
        time.sleep(0.05)
    cpu_after, rss = process_usage(server.process.pid)
    _, drops_after = udp_socket_stats(server.port)
    window = Window(
        server=server.name,
        offered_datagrams_per_s=sent["sent"] / sent["seconds"],
        sent_datagrams=int(sent["sent"]),
        lines_per_datagram=per_datagram,
        seconds=sent["seconds"],
        kernel_drops=drops_after - drops_before,
        queue_drops=server.own_drops() - own_before,
        dropped_lines=server.dropped_lines() - dropped_before,
        server_counted_lines=(server.accepted_lines() or 0) - before,
        cpu_percent=100 * (cpu_after - cpu_before) / sent["seconds"],
        rss_bytes=rss,
    )
    busy = {
        name: round(100 * (used - threads_before.get(name, 0.0)) / sent["seconds"]) for name, used in threads.items()
    }
    return window, {name: percent for name, percent in sorted(busy.items()) if percent}


def _repin(pid: int, cpus: set[int]) -> None:
    """Every thread of a running process onto `cpus` (threads made later inherit it)."""
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(task), cpus)
        except OSError:  # a thread that has ended
            continue


def _figures(label: str, window: Window, extra: dict[str, Any]) -> dict[str, Any]:
    sent_lines = window.sent_datagrams * window.lines_per_datagram
    counted = window.server_counted_lines or 0
    return {
        f"{label}_sent_lines_per_s": round(sent_lines / window.seconds),
        f"{label}_lines_per_s": round(counted / window.seconds),
        f"{label}_percent_of_sent": round(100 * counted / max(sent_lines, 1), 2),
        f"{label}_kernel_drops_percent": round(100 * window.kernel_drops / max(window.sent_datagrams, 1), 2),
        f"{label}_own_drops_percent": round(100 * window.queue_drops / max(window.sent_datagrams, 1), 2),
        f"{label}_cpu_percent": round(window.cpu_percent),
        **extra,
    }


def _servers(binary: str, intake_url: str, cpus: set[int]) -> list[tuple[str, Callable[[], Server]]]:
    servers: list[tuple[str, Callable[[], Server]]] = [
        ("collectd", lambda: Collectd(binary, cpus)),
        ("relay", lambda: Relay(intake_url, cpus=cpus)),
    ]
    if BASELINE["tree"] is not None:  # --baseline REV: that revision's relay too, in the same run
        servers.append(("before", lambda: Relay(intake_url, cpus=cpus, tree=BASELINE["tree"])))
    return servers


def _one_load(
    binary: str, intake: Intake, file: Path, per_datagram: int, seconds: float, placement: Placement
) -> tuple[dict[str, Any], list[Window]]:
    """collectd, the relay (and the relay before), each fresh, on one load and placement."""
    name, sender, server_cpus = placement
    row: dict[str, Any] = {}
    windows = []
    for label, start in _servers(binary, intake.url, server_cpus):
        server = start()
        try:
            window, threads = flat_out(server, file, per_datagram, seconds, sender)
            extra: dict[str, Any] = {f"{label}_cpu_percent_by_thread": threads}
            if isinstance(server, Collectd):
                extra["collectd_derive_total_lines"] = server.counted()[1]
        finally:
            server.stop()
        window.server = f"{label} ({name}, {per_datagram} a datagram)"
        windows.append(window)
        row.update(_figures(label, window, extra))
    row["ratio_relay_to_collectd"] = round(row["relay_lines_per_s"] / max(row["collectd_lines_per_s"], 1), 2)
    if "before_lines_per_s" in row:
        row["ratio_relay_to_before"] = round(row["relay_lines_per_s"] / max(row["before_lines_per_s"], 1), 2)
        row["ratio_before_to_collectd"] = round(row["before_lines_per_s"] / max(row["collectd_lines_per_s"], 1), 2)
    return row, windows


def collectd_beside_relay(seconds: float) -> Result:
    """collectd's statsd plugin and the relay (and, with --baseline REV, the relay of REV) on the same flat-out
    counters, 20 and 1 lines a datagram, pinned (sender core 0, server core 1) and unpinned, in one run. Target:
    the relay counts at least as many lines per second as collectd everywhere."""
    binary = collectd_binary()
    everywhere = set(os.sched_getaffinity(0))
    placements: tuple[Placement, ...] = (("pinned", SENDER_CPU, SERVER_CPU), ("unpinned", everywhere, everywhere))
    summary: dict[str, Any] = {
        "collectd": collectd_version(binary),
        "collectd_config": f"statsd (DeleteCounters, CounterSum) and csv plugins, Interval {INTERVAL} s",
        "contexts": CONTEXTS,
        "placements": "pinned: sender core 0, server core 1; unpinned: nothing pinned",
    }
    if BASELINE["tree"] is not None:
        summary["baseline"] = BASELINE["tree"].name.removeprefix("baseline-")
    files = {per: write_datagrams(counter_datagrams(per)) for per in LOADS}
    intake = Intake()
    windows: list[Window] = []
    try:
        for placement in placements:
            _repin(intake.process.pid, placement[1])  # the intake stand-in beside the sender, off the server's core
            for per in LOADS:
                row, measured = _one_load(binary, intake, files[per], per, seconds, placement)
                summary[f"{placement[0]}_{per}_a_datagram"] = row
                windows += measured
    finally:
        intake.stop()
        for file in files.values():
            file.unlink()
    ratios = [row["ratio_relay_to_collectd"] for key, row in summary.items() if key.endswith("_a_datagram")]
    summary["target_relay_to_collectd_at_least_1"] = all(ratio >= 1.0 for ratio in ratios)
    return Result("collectd", summary, windows, {"kind": "none"})
