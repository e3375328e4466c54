"""Provisioning: `dogstatsd-relay provision` against the intake stand-in, which records the Datadog API calls."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from relay.tools.provision import DATA_TITLE, HEALTH_TITLE, MONITOR_NAME
from tests.conftest import API_KEY


def provision(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DD_")}
    env.update(DD_API_KEY=API_KEY, DD_APP_KEY="app-key-0123456789", DD_DD_URL=url)
    return subprocess.run([sys.executable, "-m", "relay", "provision", *args], env=env, capture_output=True, text=True)


async def test_provision_creates_then_updates_without_duplicates(intake):
    stand_in, url = intake
    first = await asyncio.to_thread(provision, url, "--downtimes")
    second = await asyncio.to_thread(provision, url, "--downtimes")
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert "dashboard created" in first.stdout and "dashboard updated" in second.stdout
    dashboards = stand_in.objects["dashboard"]
    assert sorted(d["title"] for d in dashboards.values()) == sorted([HEALTH_TITLE, DATA_TITLE])
    [monitor] = stand_in.objects["monitor"].values()
    assert monitor["name"] == MONITOR_NAME and monitor["query"] == "avg(last_5m):avg:my_metric{*} by {host} > 800"
    assert monitor["options"]["thresholds"] == {"critical": 800, "warning": 500}
    assert monitor["options"]["notify_no_data"] is True and monitor["options"]["no_data_timeframe"] == 10
    for section in ("is_alert", "is_warning", "is_no_data"):
        assert "{{#" + section + "}}" in monitor["message"]
    assert "{{value}}" in monitor["message"] and "{{host.ip}}" in monitor["message"]
    downtimes = list(stand_in.objects["downtime"].values())
    assert len(downtimes) == 2 and all(d["monitor_id"] == monitor["id"] for d in downtimes)
    weeknights = next(d for d in downtimes if "weeknights" in d["message"])
    assert weeknights["end"] - weeknights["start"] == 14 * 3600
    assert weeknights["recurrence"]["week_days"] == ["Mon", "Tue", "Wed", "Thu"]
    assert ("PUT", "/api/v1/monitor/1") in stand_in.api_calls
    queries = json.dumps([d["widgets"] for d in dashboards.values()])
    assert "anomalies(avg:postgresql." in queries and ".rollup(sum, 3600)" in queries


def test_dry_run_shows_value_host_ip_the_handle_and_downtimes_with_no_gap_in_the_time_zone():
    """The exercise: the alert names the value and the host's IP and notifies a handle; the downtimes, in the
    user's time zone, silence every hour from 19:00 to 09:00 on weekdays and the whole weekend, and nothing else."""
    result = provision("http://127.0.0.1:9", "--dry-run", "--downtimes", "--notify", "@you@example.com",
                       "--timezone", "Europe/Paris")  # fmt: skip
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert [d["title"] for d in plan["dashboards"]] == [HEALTH_TITLE, DATA_TITLE]
    message = plan["monitor"]["message"]
    assert plan["monitor"]["name"] == MONITOR_NAME and "Notify: @you@example.com" in message
    alert = message.split("{{#is_alert}}")[1].split("{{/is_alert}}")[0]
    assert "{{value}}" in alert and "{{host.ip}}" in alert
    zone = ZoneInfo("Europe/Paris")
    windows = []  # every occurrence over three weeks, as (start, end) instants
    for downtime in plan["downtimes"]:
        assert downtime["timezone"] == "Europe/Paris"
        first = datetime.fromtimestamp(downtime["start"], zone)
        length = datetime.fromtimestamp(downtime["end"], zone) - first
        for day in range(21):
            start = first + timedelta(days=day)
            if start.strftime("%a") in downtime["recurrence"]["week_days"]:
                windows.append((start.timestamp(), (start + length).timestamp()))
    monday = datetime.fromtimestamp(max(d["start"] for d in plan["downtimes"]), zone)
    monday = (monday + timedelta(days=7 - monday.weekday())).replace(hour=0, minute=0)  # a whole week after both
    for minute in range(0, 7 * 24 * 60, 30):
        local = monday + timedelta(minutes=minute)
        working = local.weekday() < 5 and 9 <= local.hour < 19
        silenced = any(start <= local.timestamp() < end for start, end in windows)
        assert silenced != working, f"{local:%a %H:%M}: silenced={silenced}"


async def test_datadog_refusing_the_keys_is_one_clear_line(intake):
    _, url = intake
    env = {k: v for k, v in os.environ.items() if not k.startswith("DD_")}
    env.update(DD_API_KEY="0" * 32, DD_APP_KEY="app-key-0123456789", DD_DD_URL=url)
    command = [sys.executable, "-m", "relay", "provision"]
    result = await asyncio.to_thread(subprocess.run, command, env=env, capture_output=True, text=True)
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("provision: list dashboards: Datadog answered: Forbidden (check DD_API_KEY")
    bad_zone = await asyncio.to_thread(provision, url, "--dry-run", "--downtimes", "--timezone", "Mars/Olympus")
    assert bad_zone.returncode == 2 and "--timezone: unknown time zone 'Mars/Olympus'" in bad_zone.stderr


def test_provision_needs_both_keys():
    env = {k: v for k, v in os.environ.items() if not k.startswith("DD_")}
    result = subprocess.run([sys.executable, "-m", "relay", "provision"], env=env, capture_output=True, text=True)
    assert result.returncode == 2 and "DD_APP_KEY" in result.stderr


def test_a_datadog_that_cannot_be_reached_is_one_readable_line(tmp_path):
    """The datadog package says "could not connect" as one string, not a list of errors."""
    from tests.conftest import free_port

    result = provision(f"http://127.0.0.1:{free_port()}")  # nothing listens there
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("provision: list dashboards: Datadog answered: ") and "; o; " not in line, line
