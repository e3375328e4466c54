"""What an operator sees of the memory budget in a running relay: status, /metrics, /ready, top and doctor."""

from __future__ import annotations

import socket
import urllib.request

from tests.conftest import run_relay, wait_for
from tests.tools.test_operator_tools import cli, get_json


async def test_a_metric_past_its_share_folds_alone_and_every_tool_says_so(tmp_path):
    env = {"DD_RELAY_MEMORY_LIMIT": "256Mi", "DD_RELAY_MAX_CONTEXTS_PER_METRIC": "20"}
    async with run_relay(tmp_path, None, **env) as relay:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for request in range(200):
                sock.sendto(b"spike.req:1|c|#request_id:%d,env:prod" % request, ("127.0.0.1", relay.udp_port))
            for user in range(10):
                sock.sendto(b"logins:1|c|#user:%d" % user, ("127.0.0.1", relay.udp_port))
        await wait_for(lambda: relay.status()["messages"]["metric"]["ok"] == 210)
        await wait_for(lambda: relay.status()["degraded"])  # the guard looks every half second
        status = relay.status()
        _, ready = get_json(relay.health + "/ready")
        with urllib.request.urlopen(relay.health + "/metrics", timeout=10) as response:
            metrics = response.read().decode()
        top = await cli(relay.env, "top", "--once", "--interval", "0.2")
        shown = await cli(relay.env, "status")
        doctor = await cli(relay.env, "doctor")
        await relay.stop()
    memory = status["memory"]
    assert memory["limit_bytes"] == 256 * 2**20 and memory["source"] == "relay.memory_limit"
    assert memory["max_contexts_per_metric"] == 20
    assert {row["metric"] for row in status["context_overflow"]} == {"spike.req"}  # logins got all its contexts
    assert status["aggregator"]["contexts"] == 21 + 10  # 20, the folded one, and the 10 logins
    assert ready["ready"] and any("contexts folding" in reason for reason in ready["degraded"])
    assert "relay_memory_limit_bytes 2.68435456e+08" in metrics and 'relay_memory_bytes{holder="resident"}' in metrics
    assert top.returncode == 0 and "folding" in top.stdout and "request_id" in top.stdout
    assert "Memory" in shown.stdout and "Limit: 256.0 MiB (relay.memory_limit)" in shown.stdout
    assert "[DEGRADED] contexts folding" in shown.stdout
    assert "[WARN] memory" in doctor.stdout and "metric_tag_filterlist" in doctor.stdout


async def test_a_limit_that_cannot_hold_the_relay_stops_it_at_start_with_one_line(tmp_path):
    async with run_relay(tmp_path, None) as relay:  # for its environment only
        env = relay.env
        await relay.stop()
    started = await cli({**env, "DD_RELAY_MEMORY_LIMIT": "48Mi"}, "run")
    assert started.returncode == 2
    errors = [line for line in started.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and "relay.memory_limit: 48 MiB (relay.memory_limit) cannot hold the relay" in errors[0]


async def test_metric_tag_filterlist_makes_one_context_and_status_and_metrics_count_the_cut_lines(intake, tmp_path):
    stand_in, url = intake
    rule = '[{"metric_name": "spike.req", "action": "exclude", "tags": ["request_id"]}]'
    async with run_relay(tmp_path, url, DD_METRIC_TAG_FILTERLIST=rule) as relay:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            for start in range(0, 2000, 20):
                lines = [b"spike.req:1|c|#request_id:%d,env:prod" % n for n in range(start, start + 20)]
                sock.sendto(b"\n".join(lines), ("127.0.0.1", relay.udp_port))
        await wait_for(lambda: relay.status()["messages"]["metric"]["ok"] == 2000)
        status = relay.status()
        with urllib.request.urlopen(relay.health + "/metrics", timeout=10) as response:
            metrics = response.read().decode()
        shown = await cli(relay.env, "status")
        await relay.stop()
    series = [s for s in stand_in.series if s["metric"] == "spike.req"]
    assert {tuple(s["tags"]) for s in series} == {("env:prod",)}
    assert sum(value * s["interval"] for s in series for _, value in s["points"]) == 2000
    assert status["aggregator"]["contexts"] == 1 and status["tags_filtered"] == {"spike.req": 2000}
    assert 'relay_tags_filtered_total{metric="spike.req"} 2000.0' in metrics
    assert "Tags Cut (metric_tag_filterlist): spike.req: 2,000 lines" in shown.stdout
