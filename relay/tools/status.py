"""Status: the status JSON → text like `datadog-agent status`, and a check's run → what `check NAME` prints. Pure."""

from __future__ import annotations

import time
from typing import Any


def _title(text: str) -> list[str]:
    return ["", text, "=" * len(text)]


def _number(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


def render(status: dict[str, Any]) -> str:
    """The text of `dogstatsd-relay status`, section by section as `datadog-agent status` prints them."""
    lines = []
    for section in (_header, _listeners, _dogstatsd, _tagger, _aggregator, _memory, _checks, _forwarder):
        lines += section(status)
    return "\n".join(lines) + "\n"


def _header(status: dict[str, Any]) -> list[str]:
    info = status["info"]
    lines = [f"dogstatsd-relay ({info.get('version', '?')})"]
    lines.append("=" * len(lines[0]))
    lines += [
        f"  Hostname: {info.get('hostname', '')}",
        f"  Uptime: {_duration(info.get('uptime_seconds', 0))}",
        f"  Health endpoint: http://{info.get('health', '?')}",
        f"  Flush interval: {info.get('flush_interval', '?')} s",
    ]
    return lines


def _listeners(status: dict[str, Any]) -> list[str]:
    info, lines = status["info"], _title("Listeners")
    addresses = info.get("listeners", {})
    wanted, granted = info.get("receive_buffers_wanted", {}), info.get("receive_buffers", {})
    for transport, counts in status["listeners"].items():
        lines.append(f"  {transport} ({addresses.get(transport, 'closed')})")
        lines += [f"    {key.replace('_', ' ').title()}: {_number(value)}" for key, value in counts.items()]
        probe = status.get("probe", {}).get(transport)
        if probe:
            lines.append(
                f"    Probe Loss: {probe['loss_ratio']:.1%} of the last 60 probes "
                f"({_number(probe['lost'])} lost of {_number(probe['sent'])} sent)"
            )
        if transport in wanted and granted.get(transport, 0) < wanted[transport]:
            lines.append(
                f"    [WARNING] receive buffer {_number(granted[transport])} bytes, clamped from "
                f"dogstatsd_so_rcvbuf {_number(wanted[transport])}: raise net.core.rmem_max"
            )
    for transport, clients in status.get("client_drops", {}).items():
        for client, kinds in clients.items():
            detail = ", ".join(f"{kind} {_number(count)}" for kind, count in kinds.items() if kind != "total")
            lines.append(f"  Client-side drops over {transport} ({client} client's telemetry): "
                         f"{_number(kinds.get('total', 0))}" + (f" ({detail})" if detail else ""))  # fmt: skip
    if status.get("statsd_forward"):
        sent, failed = (_number(status["statsd_forward"].get(result, 0)) for result in ("sent", "error"))
        lines.append(f"  statsd_forward: {sent} packets teed, {failed} failed")
    return lines


def _tagger(status: dict[str, Any]) -> list[str]:
    """The container tagger (on Kubernetes or with docker_host): what it knows, and what it did not."""
    tagger = status.get("tagger")
    if not tagger:
        return []
    lines = _title("Tagger")
    lines.append(f"  Source: {tagger['source']}")
    lines.append(f"  Pods: {_number(tagger['pods'])}  Containers: {_number(tagger['containers'])}")
    last = tagger.get("last_success_at")
    lines.append(f"  Last read: {_duration(time.time() - last) + ' ago' if last else 'never'}")
    lines.append(f"  Origins not known: {_number(tagger['origins_unresolved'])} (contexts made without their "
                 f"origin's tags: {_number(tagger['untagged'])})")  # fmt: skip
    if tagger.get("last_error"):
        lines.append(f"  [WARNING] last error ({_number(tagger['errors'])} in all): {tagger['last_error']}")
    return lines


def _dogstatsd(status: dict[str, Any]) -> list[str]:
    lines = _title("DogStatsD")
    for kind, counts in status["messages"].items():
        name = kind.replace("_", " ").title()
        lines.append(f"  {name} Packets: {_number(counts['ok'])}")
        lines.append(f"  {name} Parse Errors: {_number(counts['error'])}")
    for reason, count in sorted(status["parse_errors"].items()):
        lines.append(f"    {reason}: {_number(count)}")
    for metric, count in status.get("tags_filtered", {}).items():
        lines.append(f"  Tags Cut (metric_tag_filterlist): {metric}: {_number(count)} lines")
    if status["dropped"]:
        lines.append("  Samples dropped after parsing:")
        lines += [f"    {reason}: {_number(count)}" for reason, count in sorted(status["dropped"].items())]
    return lines


def _aggregator(status: dict[str, Any]) -> list[str]:
    aggregator, lines = status["aggregator"], _title("Aggregator")
    lines.append(f"  Contexts: {_number(aggregator['contexts'])}")
    cardinality = status.get("cardinality", {})
    if cardinality.get("max_contexts"):
        lines.append(f"  Context Limit (relay.max_contexts): {_number(cardinality['max_contexts'])}")
    for row in cardinality.get("top_metrics", [])[:5]:
        keys = ", ".join(f"{key or '(bare)'}={count}" for key, count in row["tag_values"].items())
        lines.append(f"    {row['metric']}: {_number(row['contexts'])} contexts ({keys})")
    for row in status.get("context_overflow", []):
        lines.append(f"  Overflow: {row['metric']} tag {row['tag_key'] or '(bare)'}: {_number(row['contexts'])} folded")
    lines.append(f"  Number Of Flushes: {_number(aggregator['flushes'])}")
    lines.append(f"  Last Flush Duration: {aggregator['last_flush_seconds'] * 1000:.1f} ms")
    for kind in ("series", "sketches", "events", "service_checks"):
        label = kind.replace("_", " ").title()
        lines.append(f"  {label} Flushed: {_number(aggregator['flushed'].get(kind, 0))}")
    return lines


def _memory(status: dict[str, Any]) -> list[str]:
    """The limit, each holder's use against its share, and what degraded (status['memory'], relay/memory.py)."""
    memory = status.get("memory", {})
    if "limit_bytes" not in memory:
        return []
    lines = _title("Memory")
    used = memory.get("used", {})
    lines.append(f"  Limit: {mib(memory['limit_bytes'])} ({memory['source']}); planned to use "
                 f"{mib(memory['planned_bytes'])}")  # fmt: skip
    lines.append(f"  Resident: {mib(used.get('resident', 0))}, peak {mib(used.get('resident_peak', 0))}")
    lines.append(f"  Context Limit: {_number(memory['max_contexts'])}, {_number(memory['max_contexts_per_metric'])} "
                 "per metric")  # fmt: skip
    for holder, share in memory["shares"].items():
        if share:
            use = f"{mib(used[holder])} of " if holder in used else ""
            lines.append(f"    {holder.replace('_', ' ').title()}: {use}{mib(share)}")
    if memory.get("holds"):
        lines.append(f"  Memory Guard Holds: {_number(memory['holds'])}")
    lines += [f"  [DEGRADED] {reason}" for reason in status.get("degraded", [])]
    return lines


def mib(size: float) -> str:
    return f"{size / 2**20:,.1f} MiB"


def _checks(status: dict[str, Any]) -> list[str]:
    if not (status.get("checks") or status.get("check_errors") or status.get("check_config_errors")):
        return []
    lines = _title("Checks")
    for check in status.get("checks", []):
        lines += instance_lines(check, TRACEBACK_FRAMES)
    return lines + check_error_lines(status, TRACEBACK_FRAMES)


def _forwarder(status: dict[str, Any]) -> list[str]:
    info, forwarder, lines = status["info"], status["forwarder"], _title("Forwarder")
    lines.append(f"  Endpoint: {info.get('endpoint', '')}")
    lines.append(f"  API Key: {info.get('api_key') or 'none'} ({_key_state(info.get('api_key_valid'))})")
    lines += _payload_lines(forwarder["payloads"], "  ")
    lines.append(
        f"  Retry Queue: {_number(forwarder['retry_queue_payloads'])} payloads, "
        f"{_number(forwarder['retry_queue_bytes'])} bytes"
    )
    lines.append(
        f"  Disk Spool: {_number(forwarder.get('spool_payloads', 0))} payloads, "
        f"{_number(forwarder.get('spool_bytes', 0))} bytes"
    )
    for code, count in sorted(forwarder["http_errors"].items()):
        lines.append(f"  HTTP errors {code}: {_number(count)}")
    for label, destination in forwarder.get("additional_endpoints", {}).items():
        lines.append(f"  Additional Endpoint {label} ({_key_state(destination['api_key_valid'])})")
        lines += _payload_lines(destination["payloads"], "    ")
        lines.append(
            f"    Retry Queue: {_number(destination['retry_queue_payloads'])} payloads, "
            f"{_number(destination['retry_queue_bytes'])} bytes; Disk Spool: "
            f"{_number(destination['spool_payloads'])} payloads"
        )
    return lines


def _payload_lines(payloads: dict[str, dict[str, int]], indent: str) -> list[str]:
    """One line per endpoint: its payloads sent, dropped and retried."""
    return [
        f"{indent}{endpoint}: " + ", ".join(f"{result} {_number(count)}" for result, count in results.items())
        for endpoint, results in payloads.items()
    ]


def _key_state(valid: bool | None) -> str:
    return {True: "valid", False: "INVALID"}.get(valid, "not checked")  # type: ignore[arg-type]


def _ago(when: float) -> str:
    return f"{time.time() - when:.0f} s ago" if when else "never"


def _duration(seconds: float) -> str:
    minutes, second = divmod(int(seconds), 60)
    hours, minute = divmod(minutes, 60)
    return f"{hours}h {minute}m {second}s"


def render_check(result: dict[str, Any]) -> str:
    """What `dogstatsd-relay check NAME` prints: the submissions, then each instance's status."""
    lines = ["=== Series ==="]
    for series in result["series"]:
        name, host, tags = series["context"]
        points = " ".join(f"{timestamp}={value:g}" for timestamp, value in series["points"])
        lines.append(f"  {name} ({series['type']}) {points} host={host} tags={','.join(tags)}")
    lines.append("=== Service Checks ===")
    lines += [
        f"  {c['name']} status={c['status']} {c['message']!r} tags={','.join(c['tags'])}"
        for c in result["service_checks"]
    ]
    lines.append("=== Events ===")
    lines += [f"  {e['title']!r} [{e['alert_type']}] tags={','.join(e['tags'])}" for e in result["events"]]
    lines.append("=== Instances ===")
    for instance in result["instances"]:
        lines += instance_lines(instance, None)
    lines += check_error_lines(result, None)
    if result.get("logs"):
        lines.append("=== Logs ===")
        lines += [f"  {line}" for line in result["logs"]]
    return "\n".join(lines) + "\n"


TRACEBACK_FRAMES = 6  # the last lines of a check's traceback that status shows (`check NAME` prints all of it)


def instance_lines(check: dict[str, Any], frames: int | None) -> list[str]:
    """One check instance as the Agent's status shows it; `frames`: the traceback's last lines (None: all)."""
    lines = [
        f"  {check['id']} [{check['state']}]",
        f"    Configuration Source: file:{check['source']}",
        f"    Total Runs: {_number(check['runs'])}, Errors: {_number(check['errors'])}, "
        f"Warnings: {_number(check['warnings_total'])}, Metric Samples: {_number(check['metric_samples'])}, "
        f"Events: {_number(check['events'])}, Service Checks: {_number(check['service_checks'])}",
        f"    Average Execution Time: {check['average_execution_seconds'] * 1000:.0f} ms, "
        f"Interval: {check['interval']:g} s, Last Run: {_ago(check['last_run'])}",
    ]
    if check["running_seconds"] > check["interval"]:
        lines.append(
            f"    Still running after {check['running_seconds']:.0f} s (interval {check['interval']:g} s); "
            f"{_number(check['skipped_runs'])} runs skipped"
        )
    if check["last_error"]:
        lines.append(f"    Error: {check['last_error']}")
        lines += [f"      {line}" for line in _last_frames(check["traceback"], frames)]
    lines += [f"    Warning: {warning}" for warning in check["warnings"]]
    return lines


def check_error_lines(status: dict[str, Any], frames: int | None) -> list[str]:
    """The Agent's "Config Errors" and "Loading Errors": checks or instances that never ran."""
    lines = []
    for label, key in (("Config Errors", "check_config_errors"), ("Loading Errors", "check_errors")):
        if status.get(key):
            lines.append(f"  {label}:")
        for name, errors in status.get(key, {}).items():
            for error in errors:
                first, *rest = error.rstrip().splitlines()
                lines.append(f"    {name} [ERROR] {first}")
                lines += [f"      {line}" for line in _last_frames("\n".join(rest), frames)]
    return lines


def _last_frames(traceback: str, lines: int | None) -> list[str]:
    """The last `lines` lines of a traceback (None: all), starting at a frame's `File` line."""
    kept = traceback.rstrip().splitlines()
    if lines is not None and len(kept) > lines:
        kept = kept[-lines:]
        while len(kept) > 1 and not kept[0].lstrip().startswith("File "):
            kept = kept[1:]
    return kept
