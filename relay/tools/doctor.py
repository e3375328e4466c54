"""Doctor: checks of the host, the configuration and the running relay, each with a concrete fix."""

from __future__ import annotations

import json
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from relay.config import Config, redact
from relay.runtime.readers import udp_socket_rows, unix_dgram_qlen
from relay.tools.status import mib

Finding = tuple[str, str, str]  # (OK | WARN | FAIL, what was checked, the fix or the figure)


def diagnose(
    config: Config, status: dict[str, Any] | None, probe: Callable[[str, dict[str, str]], int]
) -> list[Finding]:
    """`status` is the running relay's status JSON (None when none answers); `probe` GETs a URL and returns its
    HTTP status (0 when unreachable): both are arguments, so that this stays testable without sockets."""
    return [
        _receive_buffer(config),
        _running(status),
        *_traffic(config, status),
        _workers(config, status, os.cpu_count() or 1, local_udp_clients(config.dogstatsd_port)),
        _api_key(config, status, probe),
        _spool_disk(config),
        _memory(status),
        *_unix_clients(config, status),
        *_tagger(status),
    ]


def _tagger(status: dict[str, Any] | None) -> list[Finding]:
    """The container tagger: a source it cannot read (no origin tags at all), or origins it does not know."""
    tagger = (status or {}).get("tagger")
    if not tagger:
        return []
    if tagger["last_error"] and not tagger["pods"] and not tagger["containers"]:
        return [("FAIL", "tagger", f"{tagger['source']}: {tagger['last_error']}: no line gets its pod's tags. Check "
                 "the node's IP in DD_KUBERNETES_KUBELET_HOST, the ClusterRole for nodes/pods and the service "
                 "account token (or docker_host)")]  # fmt: skip
    known = f"{tagger['pods']} pods, {tagger['containers']} containers known from {tagger['source']}"
    if tagger["origins_unresolved"]:
        return [("WARN", "tagger", f"{known}; {tagger['origins_unresolved']} origins the lines named are not among "
                 "them (not on this node, or not started yet): their lines go without those tags")]  # fmt: skip
    return [("OK", "tagger", known)]


def _receive_buffer(config: Config) -> Finding:
    try:
        rmem_max = int(Path("/proc/sys/net/core/rmem_max").read_text())
    except (OSError, ValueError):
        return ("OK", "receive buffer", "net.core.rmem_max is not readable here; nothing to check")
    wanted = config.dogstatsd_so_rcvbuf
    if not wanted:
        return ("WARN", "receive buffer", f"dogstatsd_so_rcvbuf is unset (OS default); under bursts set it, e.g. "
                f"dogstatsd_so_rcvbuf: {max(rmem_max, 8 << 20)} (and net.core.rmem_max at least as large)")  # fmt: skip
    if wanted > rmem_max:
        return ("FAIL", "receive buffer", f"dogstatsd_so_rcvbuf {wanted} is above net.core.rmem_max {rmem_max}: the "
                f"kernel clamps it. Fix: sysctl -w net.core.rmem_max={wanted}")  # fmt: skip
    return ("OK", "receive buffer", f"dogstatsd_so_rcvbuf {wanted} fits under net.core.rmem_max {rmem_max}")


def _running(status: dict[str, Any] | None) -> Finding:
    if status is None:
        return ("WARN", "running relay", "no relay answers on the health endpoint: start it to check live traffic")
    return (
        "OK",
        "running relay",
        f"version {status['info'].get('version')}, up {status['info'].get('uptime_seconds')} s",
    )


def _traffic(config: Config, status: dict[str, Any] | None) -> list[Finding]:
    if status is None:
        return []
    findings: list[Finding] = []
    for name, listener in status.get("listeners", {}).items():
        if listener.get("truncated"):
            findings.append(("FAIL", f"{name} datagram size", f"{listener['truncated']} datagrams were longer than "
                             f"dogstatsd_buffer_size {config.dogstatsd_buffer_size}: raise it, or shrink the "
                             "clients' buffers (1432 bytes over UDP)"))  # fmt: skip
        if listener.get("kernel_drops"):
            findings.append(("FAIL", f"{name} kernel drops", f"{listener['kernel_drops']} datagrams dropped by the "
                             "kernel: raise dogstatsd_so_rcvbuf (and net.core.rmem_max)"))  # fmt: skip
        if listener.get("queue_drops"):
            findings.append(("FAIL", f"{name} receive queue drops", f"{listener['queue_drops']} datagrams dropped "
                             f"because relay.receive_queue_bytes {config.relay_receive_queue_bytes} was full: ingest "
                             "falls behind; raise it, or add workers"))  # fmt: skip
    for name, probe in status.get("probe", {}).items():
        if probe.get("loss_ratio"):
            findings.append(("FAIL", f"{name} probe loss", f"{probe['loss_ratio']:.1%} of the last 60 self-probes were "
                             "lost in the socket's queue: raise dogstatsd_so_rcvbuf, or add workers"))  # fmt: skip
    if not findings:
        findings.append(("OK", "traffic", "no truncated datagram, no kernel or queue drop, no probe lost"))
    return findings


def local_udp_clients(port: int) -> int:
    """Sockets on this host connected to the UDP port (the official clients connect theirs); a client that uses
    sendto without connecting does not show."""
    suffix = f":{port:04X}"  # the remote address column
    return sum(1 for fields in udp_socket_rows() if len(fields) > 2 and fields[2].endswith(suffix))


def _workers(config: Config, status: dict[str, Any] | None, cores: int, clients: int) -> Finding:
    """One client socket is no reason against workers here: the reader shards lines by metric name, where
    SO_REUSEPORT would pin each client socket to one process."""
    workers = config.worker_count
    seen = f"relay.workers {workers} on {cores} cores, {clients} local client sockets connected to UDP"
    losing = status is not None and (
        any(
            listener.get("kernel_drops") or listener.get("queue_drops")
            for listener in status.get("listeners", {}).values()
        )
        or any(probe.get("loss_ratio") for probe in status.get("probe", {}).values())
    )
    if workers > cores:
        return ("WARN", "workers", f"{seen}: more workers than cores compete for them; set relay.workers: auto")
    if workers > 1 and cores <= 2:
        return ("WARN", "workers", f"{seen}: on 2 cores the reader and the workers share them and one process is "
                "faster (benchmarks/RESULTS.md); set relay.workers: 1")  # fmt: skip
    if workers == 1 and losing and cores > 2:
        return ("WARN", "workers", f"{seen}, and the relay is losing datagrams: set relay.workers: auto; lines are "
                "sharded by metric name, so even a single client socket is spread over the workers")  # fmt: skip
    return ("OK", "workers", seen)


def _api_key(config: Config, status: dict[str, Any] | None, probe: Callable[[str, dict[str, str]], int]) -> Finding:
    """The running relay's key when one answers (its state, as it found it); else this configuration's key."""
    if status is not None:
        info = status["info"]
        key, valid, endpoint = info.get("api_key") or "", info.get("api_key_valid"), info.get("endpoint", "")
        if not key:
            return ("WARN", "API key", "the running relay has no API key: it runs dry and sends nothing "
                    "(dogstatsd-relay init, or DD_API_KEY, then restart it)")  # fmt: skip
        if valid is False:
            return ("FAIL", "API key", f"the running relay's key {key} is rejected by {endpoint}: every payload is "
                    "dropped. Fix: dogstatsd-relay init (or DD_API_KEY), then dogstatsd-relay reload")  # fmt: skip
        if valid is None:
            return ("WARN", "API key", f"the running relay's key {key} has not been checked yet ({endpoint})")
        return ("OK", "API key", f"the running relay's key {key} is valid at {endpoint}")
    if not config.api_key:
        return ("WARN", "API key", "no API key: the relay runs dry and sends nothing (dogstatsd-relay init)")
    code = probe(config.api_url + "/api/v1/validate", {"DD-API-KEY": config.api_key})
    if code == 200:
        return ("OK", "API key", f"{redact(config.api_key)} is valid at {config.api_url}")
    if code == 0:
        return ("FAIL", "intake reachability", f"{config.api_url} cannot be reached: check DNS, firewall, "
                "proxy.https / HTTPS_PROXY")  # fmt: skip
    return ("FAIL", "API key", f"{redact(config.api_key)} was refused (HTTP {code}) by {config.api_url}: check the "
            f"key, and that site ({config.site}) is your organisation's")  # fmt: skip


def _spool_disk(config: Config) -> Finding:
    path = config.spool_path
    while not path.exists() and path != path.parent:
        path = path.parent
    usage = shutil.disk_usage(path)
    ratio = usage.used / usage.total if usage.total else 1.0
    if ratio > config.forwarder_storage_max_disk_ratio:
        return ("FAIL", "spool disk", f"{path} is {ratio:.0%} full: above forwarder_storage_max_disk_ratio "
                f"{config.forwarder_storage_max_disk_ratio:.0%}, nothing will be spooled during an outage")  # fmt: skip
    return ("OK", "spool disk", f"{usage.free // 2**20:,} MiB free for the spool at {config.spool_path}")


UNIX_QUEUE_WANTED = 512  # datagrams: what the compose file and deploy/kubernetes/unix-queue set


def _unix_clients(config: Config, status: dict[str, Any] | None) -> list[Finding]:
    """A Unix datagram socket whose kernel queue is short, and the drops only the clients saw (their telemetry)."""
    findings: list[Finding] = []
    # The running relay's own namespace; with none running, this one's (likely the same: the relay's container)
    qlen = status.get("info", {}).get("unix_dgram_qlen") if status else unix_dgram_qlen()
    if config.dogstatsd_socket and qlen is not None and qlen < UNIX_QUEUE_WANTED:
        findings.append(("WARN", "unix socket queue", f"net.unix.max_dgram_qlen is {qlen}: a client that sends a "
                         "datagram per metric (the official Python client's default) drops metrics whenever the "
                         f"relay is not scheduled at once. Fix: sysctl -w net.unix.max_dgram_qlen={UNIX_QUEUE_WANTED} "
                         "in the relay's network namespace (compose: sysctls; Kubernetes: the unix-queue component "
                         "and the kubelet's --allowed-unsafe-sysctls)"))  # fmt: skip
    for transport, clients in (status or {}).get("client_drops", {}).items():
        for client, kinds in clients.items():
            if kinds.get("total"):
                findings.append(("FAIL", f"{transport} client drops", f"the {client} client reported "
                                 f"{kinds['total']} datagrams it could not send over {transport} ({kinds}): "
                                 + ("raise net.unix.max_dgram_qlen, or turn on the client's buffering"
                                    if transport == "uds" else "its own queue or socket was full")))  # fmt: skip
    return findings


def _memory(status: dict[str, Any] | None) -> Finding:
    """The running relay's memory against its limit, and each holder over its share."""
    if status is None or "limit_bytes" not in status.get("memory", {}):
        return ("OK", "memory", "no running relay to look at")
    memory, degraded = status["memory"], status.get("degraded", [])
    used, limit = memory["used"], memory["limit_bytes"]
    full = [holder for holder, share in memory["shares"].items() if holder in used and share and used[holder] >= share]
    figure = (f"resident {mib(used['resident'])} (peak {mib(used['resident_peak'])}) of {mib(limit)} "
              f"({memory['source']})")  # fmt: skip
    if used["resident_peak"] > 0.9 * limit or degraded or full:
        reasons = "; ".join([*degraded, *(f"{holder} at its share" for holder in full)])
        return ("WARN", "memory", f"{figure}: {reasons or 'over 90 % of the limit'}. Fix: raise the container's "
                "limit (or relay.memory_limit), or cut cardinality with metric_tag_filterlist")  # fmt: skip
    return ("OK", "memory", figure)


def http_probe(url: str, headers: dict[str, str]) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0


def render(findings: list[Finding]) -> str:
    return "".join(f"[{state:4}] {what}: {detail}\n" for state, what, detail in findings)


def status_of(url: str, headers: dict[str, str] | None = None) -> dict[str, Any] | None:
    """The running relay's status; `headers` carry its token (relay/files.py auth_token) where one is needed."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=5) as response:
            return json.load(response)
    except OSError:
        return None
