"""Provision: the relay's dashboards, monitor and downtimes in Datadog, through the official `datadog` package.

Idempotent: objects are found by their title (dashboards, monitors) or by the marker in their message
(downtimes) and updated in place; nothing is created twice. The API host follows `site` (or `dd_url`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from relay.config import Config

MARKER = "[dogstatsd-relay]"
HEALTH_TITLE = "dogstatsd-relay: relay health"
DATA_TITLE = "dogstatsd-relay: my_metric and PostgreSQL"
MONITOR_NAME = "dogstatsd-relay: my_metric is high"
WEEKNIGHTS = ["Mon", "Tue", "Wed", "Thu"]  # Friday night belongs to the weekend window


def _timeseries(title: str, query: str) -> dict[str, Any]:
    return {"definition": {"type": "timeseries", "title": title, "requests": [{"q": query, "display_type": "line"}]}}


def dashboards() -> list[dict[str, Any]]:
    """The relay's own health (from relay.self_metrics) and the data it carries."""
    health = [
        _timeseries("Packets received per second, by transport", "sum:dogstatsd_relay.packets{*} by {transport}"),
        _timeseries("Messages per second, by type and state", "sum:dogstatsd_relay.messages{*} by {type,state}"),
        _timeseries("Parse errors per second", "sum:dogstatsd_relay.messages{state:error} by {type}"),
        _timeseries("Samples dropped per second, by reason", "sum:dogstatsd_relay.samples_dropped{*} by {reason}"),
        _timeseries("Live contexts", "max:dogstatsd_relay.contexts{*} by {host}"),
        _timeseries("Flush duration (s)", "max:dogstatsd_relay.flush.duration{*} by {host}"),
        _timeseries(
            "Payloads per second, by endpoint and result", "sum:dogstatsd_relay.payloads{*} by {endpoint,result}"
        ),
        _timeseries("Retry queue (bytes)", "max:dogstatsd_relay.retry_queue.bytes{*} by {host}"),
    ]
    data = [
        _timeseries("my_metric by host", "avg:my_metric{*} by {host}"),
        _timeseries(
            "PostgreSQL connections in use (%), with anomalies",
            "anomalies(avg:postgresql.percent_usage_connections{*}, 'basic', 2)",
        ),
        _timeseries("my_metric, hourly sum", "sum:my_metric{*}.rollup(sum, 3600)"),
    ]
    return [
        {"title": HEALTH_TITLE, "layout_type": "ordered", "widgets": health,
         "description": f"{MARKER} Ingest, parse errors, drops, contexts, flushes and payloads of the relays."},
        {"title": DATA_TITLE, "layout_type": "ordered", "widgets": data,
         "description": f"{MARKER} What the demo stack sends through the relay."},
    ]  # fmt: skip


def monitor(notify: tuple[str, ...] = ()) -> dict[str, Any]:
    """The average of my_metric over the last 5 minutes: warning at 500, critical at 800, no data after 10 min.
    The message carries the value that triggered it and the host's IP, and notifies the given @handles."""
    message = "\n".join(
        [
            "{{#is_alert}}my_metric is {{value}} on {{host.name}} ({{host.ip}}): above 800 for 5 minutes.{{/is_alert}}",
            "{{#is_warning}}my_metric is {{value}} on {{host.name}} ({{host.ip}}): above 500 for 5 minutes."
            "{{/is_warning}}",
            "{{#is_no_data}}No my_metric from {{host.name}} ({{host.ip}}) for 10 minutes: is the app or its relay "
            "down?{{/is_no_data}}",
            "{{#is_recovery}}my_metric is back to {{value}} on {{host.name}} ({{host.ip}}).{{/is_recovery}}",
            *([f"Notify: {' '.join(notify)}"] if notify else []),
            MARKER,
        ]
    )
    return {
        "type": "metric alert",
        "name": MONITOR_NAME,
        "query": "avg(last_5m):avg:my_metric{*} by {host} > 800",
        "message": message,
        "tags": ["managed-by:dogstatsd-relay"],
        "options": {
            "thresholds": {"critical": 800, "warning": 500},
            "notify_no_data": True,
            "no_data_timeframe": 10,
            "include_tags": True,
        },
    }


def downtimes(monitor_id: int | None, now: float, timezone: str = "UTC") -> list[dict[str, Any]]:
    """Weeknights (Monday to Thursday, 19:00 to 09:00) and the whole weekend (Friday 19:00 to Monday 09:00), as
    weekly recurrences in `timezone`: together every hour outside 09:00-19:00 on weekdays, with no gap."""
    zone = ZoneInfo(timezone)
    local = datetime.fromtimestamp(now, zone)
    monday = (local - timedelta(days=local.weekday())).replace(hour=0, minute=0, second=0, microsecond=0)

    def at(days: int, hour: int) -> int:  # wall-clock time in the zone, daylight saving included
        return int((monday + timedelta(days=days)).replace(hour=hour).timestamp())

    night = next(day for day in (*range(4), 7) if at(day + 1, 9) > now)  # this week's next weeknight, or Monday's
    common = {"scope": ["*"], "monitor_id": monitor_id, "timezone": timezone}
    return [
        {**common, "message": f"{MARKER} weeknights 19:00-09:00", "start": at(night, 19),
         "end": at(night + 1, 9), "recurrence": {"type": "weeks", "period": 1, "week_days": WEEKNIGHTS}},
        {**common, "message": f"{MARKER} weekends, Friday 19:00 to Monday 09:00", "start": at(4, 19),
         "end": at(7, 9), "recurrence": {"type": "weeks", "period": 1, "week_days": ["Fri"]}},
    ]  # fmt: skip


class ProvisionError(Exception):
    """Datadog refused a call: one line says which and why."""


def _checked(response: Any, call: str) -> Any:
    """The datadog package returns Datadog's errors as {'errors': [...]} rather than raising, and its own (Datadog
    could not be reached) as {'errors': 'Could not ...'}: a string, not a list of them."""
    if isinstance(response, dict) and response.get("errors"):
        found = response["errors"]
        errors = found if isinstance(found, str) else "; ".join(map(str, found))
        hint = " (check DD_API_KEY, DD_APP_KEY and site)" if "Forbidden" in errors or "403" in errors else ""
        raise ProvisionError(f"{call}: Datadog answered: {errors}{hint}")
    return response


def _upsert(
    resource: Any, existing: dict[str, Any], key: str, body: dict[str, Any], kind: str, out: Callable[[str], None]
) -> Any:
    """Update the object already there under `key`, or create it: provisioning twice changes nothing."""
    if key in existing:
        _checked(resource.update(existing[key], **body), f"update {kind} {key!r}")
        out(f"{kind} updated: {key}")
        return existing[key]
    created = _checked(resource.create(**body), f"create {kind} {key!r}")
    out(f"{kind} created: {key}")
    return created["id"]


def provision(
    config: Config, app_key: str, *, with_downtimes: bool, dry_run: bool, out: Callable[[str], None],
    notify: tuple[str, ...] = (), timezone: str = "UTC",
) -> int:  # fmt: skip
    """Create or update every object; in a dry run, print the JSON that would be sent instead. Raises
    ProvisionError when Datadog refuses a call."""
    if dry_run:
        plan = {"dashboards": dashboards(), "monitor": monitor(notify)}
        if with_downtimes:
            plan["downtimes"] = downtimes(None, time.time(), timezone)
        out(json.dumps(plan, indent=2))
        return 0
    from datadog import api, initialize  # optional dependency: pip install 'dogstatsd-relay[provision]'
    from datadog.api.exceptions import DatadogException

    initialize(api_key=config.api_key, app_key=app_key, api_host=config.api_url)
    try:
        _provision(api, notify, timezone, with_downtimes, out)
    except DatadogException as error:  # timeouts, connection errors, 5xx: the package's own one-line message
        raise ProvisionError(f"{config.api_url}: {error}") from None
    return 0


def _provision(
    api: Any, notify: tuple[str, ...], timezone: str, with_downtimes: bool, out: Callable[[str], None]
) -> None:
    listed = _checked(api.Dashboard.get_all(), "list dashboards")
    dashboards_by_title = {d["title"]: d["id"] for d in listed.get("dashboards", [])}
    for body in dashboards():
        _upsert(api.Dashboard, dashboards_by_title, body["title"], body, "dashboard", out)
    body = monitor(notify)
    found = _checked(api.Monitor.get_all(name=body["name"]), "list monitors")
    monitors = {m["name"]: m["id"] for m in found if m.get("name") == body["name"]}
    monitor_id = _upsert(api.Monitor, monitors, body["name"], body, "monitor", out)
    if with_downtimes:
        existing = _checked(api.Downtime.get_all(), "list downtimes")
        ours = {d.get("message"): d["id"] for d in existing if MARKER in (d.get("message") or "")}
        for downtime in downtimes(monitor_id, time.time(), timezone):
            _upsert(api.Downtime, ours, downtime["message"], downtime, "downtime", out)
