"""Provisioning: `dogstatsd-relay provision` against the intake stand-in, which records the Datadog API calls."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

from relay.provision import DATA_TITLE, HEALTH_TITLE, MONITOR_NAME
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
    assert "{{value}}" in monitor["message"] and "{{host.name}}" in monitor["message"]
    downtimes = list(stand_in.objects["downtime"].values())
    assert len(downtimes) == 2 and all(d["monitor_id"] == monitor["id"] for d in downtimes)
    weeknights = next(d for d in downtimes if "weeknights" in d["message"])
    assert weeknights["end"] - weeknights["start"] == 14 * 3600
    assert weeknights["recurrence"]["week_days"] == ["Mon", "Tue", "Wed", "Thu", "Fri"]
    assert ("PUT", "/api/v1/monitor/1") in stand_in.api_calls
    queries = json.dumps([d["widgets"] for d in dashboards.values()])
    assert "anomalies(avg:postgresql." in queries and ".rollup(sum, 3600)" in queries


def test_dry_run_prints_the_json_and_calls_nothing():
    result = provision("http://127.0.0.1:9", "--dry-run", "--downtimes")
    assert result.returncode == 0, result.stderr
    plan = json.loads(result.stdout)
    assert [d["title"] for d in plan["dashboards"]] == [HEALTH_TITLE, DATA_TITLE]
    assert plan["monitor"]["name"] == MONITOR_NAME and len(plan["downtimes"]) == 2


def test_provision_needs_both_keys():
    env = {k: v for k, v in os.environ.items() if not k.startswith("DD_")}
    result = subprocess.run([sys.executable, "-m", "relay", "provision"], env=env, capture_output=True, text=True)
    assert result.returncode == 2 and "DD_APP_KEY" in result.stderr
