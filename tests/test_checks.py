"""Agent checks inside the relay: the loader, the check sampler's semantics, and a custom check end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from relay.accumulators import HistogramSpec
from relay.checks.base import COUNT, GAUGE, HISTORATE, MONOTONIC_COUNT, RATE
from relay.checks.runner import find_configs
from relay.checks.sampler import CheckSampler
from relay.model import SeriesType
from tests.conftest import run_relay, wait_for

SEED_CHECK = """
import random

try:
    from datadog_checks.base import AgentCheck
except ImportError:
    from checks import AgentCheck

__version__ = "1.0.0"


class HelloCheck(AgentCheck):
    def check(self, instance):
        self.gauge("my_metric", random.randint(0, 1000), tags=["check_group:test"])
"""
BROKEN_CHECKS = {
    "raises": "from checks import AgentCheck\nclass Raises(AgentCheck):\n    def check(self, instance):\n        raise RuntimeError('boom')\n",
    "hangs": "import time\nfrom checks import AgentCheck\nclass Hangs(AgentCheck):\n    def check(self, instance):\n        time.sleep(3600)\n",
    "garbage": "from checks import AgentCheck\nclass Garbage(AgentCheck):\n    def check(self, instance):\n        self.gauge('bad', float('nan'))\n        self.gauge('fine', 1)\n",
    "old_style": "from checks import AgentCheck\nclass Old(AgentCheck):\n    def __init__(self, name, init_config, agentConfig, instances=None):\n        AgentCheck.__init__(self, name, init_config, agentConfig, instances)\n    def check(self, instance):\n        self.count('old.style', 2, tags=instance.get('tags'))\n",
}


def agent_layout(root: Path, checks: dict[str, str], configs: dict[str, str]) -> Path:
    (root / "checks.d").mkdir(parents=True)
    (root / "conf.d").mkdir()
    for name, source in checks.items():
        (root / "checks.d" / f"{name}.py").write_text(textwrap.dedent(source))
    for relative, text in configs.items():
        path = root / "conf.d" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "conf.d"


def sampler() -> CheckSampler:
    return CheckSampler("h", HistogramSpec.from_config(("max", "median", "avg", "count"), ("0.95",)))


def values(sampler_: CheckSampler, now: float) -> dict[str, tuple[SeriesType, float]]:
    series, _, _ = sampler_.commit(now, 15)
    return {s.context.name: (s.type, s.points[0][1]) for s in series}


def test_check_sampler_semantics():
    s = sampler()
    s.submit_metric(GAUGE, "g", 1, [], "", False)
    s.submit_metric(GAUGE, "g", 5, [], "", False)
    s.submit_metric(COUNT, "c", 2, [], "", False)
    s.submit_metric(COUNT, "c", 3, [], "", False)
    s.submit_metric(MONOTONIC_COUNT, "m", 100, [], "", False)
    s.submit_metric(RATE, "r", 10, [], "", False)
    assert values(s, 1000) == {"g": (SeriesType.GAUGE, 5), "c": (SeriesType.COUNT, 5)}  # first m and r: nothing
    s.submit_metric(MONOTONIC_COUNT, "m", 130, [], "", False)
    s.submit_metric(RATE, "r", 40, [], "", False)
    assert values(s, 1015) == {"m": (SeriesType.COUNT, 30), "r": (SeriesType.GAUGE, 2.0)}
    s.submit_metric(MONOTONIC_COUNT, "m", 5, [], "", False)  # a reset: nothing counted
    s.submit_metric(RATE, "r", 1, [], "", False)
    assert values(s, 1030) == {"m": (SeriesType.COUNT, 0)}


def test_historate_is_a_histogram_of_the_rates_between_submissions_of_one_run(monkeypatch):
    clock = iter([100.0, 101.0, 103.0, 200.0])
    monkeypatch.setattr("relay.checks.sampler.time.monotonic", lambda: next(clock))
    s = sampler()
    for value in (10, 30, 90):  # at 100, 101 and 103 s: rates 20 and 30 per second
        s.submit_metric(HISTORATE, "hr", value, [], "", False)
    assert values(s, 1000) == {
        "hr.max": (SeriesType.GAUGE, 30.0), "hr.median": (SeriesType.GAUGE, 20.0), "hr.avg": (SeriesType.GAUGE, 25.0),
        "hr.count": (SeriesType.RATE, 2.0), "hr.95percentile": (SeriesType.GAUGE, 30.0),
    }  # fmt: skip
    s.submit_metric(HISTORATE, "hr", 500, [], "", False)  # one value in a run only primes: nothing, as the Agent
    assert values(s, 1015) == {}


def test_config_discovery_rules(tmp_path):
    confd = agent_layout(tmp_path, {}, {
        "one.yaml": "instances: [{}]",
        "two.d/conf.yaml": "instances: [{a: 1}, {a: 2}]",
        "two.d/other.yaml": "instances: [{a: 3}]",
        "three.yaml.default": "instances: [{}]",
        "four.yaml.default": "instances: [{default: true}]",
        "four.yaml": "instances: [{default: false}]",
        "empty.yaml": "",
        "noinstances.yaml": "init_config: {}",
    })  # fmt: skip
    configs = find_configs(confd)
    assert sorted(configs) == ["four", "one", "three", "two"]
    assert [doc["instances"] for _, doc in configs["four"]] == [[{"default": False}]]
    assert sum(len(doc["instances"]) for _, doc in configs["two"]) == 3


@pytest.mark.parametrize("base", ["auto", "builtin"])  # the real datadog-checks-base (test extra), then ours
async def test_the_seed_custom_check_reaches_the_intake_with_its_tags(intake, tmp_path, base):
    stand_in, url = intake
    confd = agent_layout(tmp_path, {"custom_hello": SEED_CHECK, **BROKEN_CHECKS}, {
        "custom_hello.yaml": "init_config:\n\ninstances:\n  - min_collection_interval: 45\n",
        **{f"{name}.yaml": "init_config:\ninstances:\n  - tags: ['origin:test']\n" for name in BROKEN_CHECKS},
        "missing.yaml": "instances: [{}]",
        "broken_yaml.yaml": "instances: [{: :",
    })  # fmt: skip
    async with run_relay(tmp_path, url, DD_CONFD_PATH=str(confd), DD_RELAY_CHECKS_BASE=base) as relay:
        relay.send_udp(b"dogstatsd.still.works:1|c")
        await wait_for(lambda: any(s["metric"] == "my_metric" for s in stand_in.series))
        await wait_for(lambda: any(s["metric"] == "dogstatsd.still.works" for s in stand_in.series))
        await wait_for(lambda: any(s["metric"] == "old.style" for s in stand_in.series))
        status = relay.status()
        text = subprocess.run([sys.executable, "-m", "relay", "status"], env=relay.env, capture_output=True, text=True)
        await relay.stop()
    metric = next(s for s in stand_in.series if s["metric"] == "my_metric")
    assert metric["tags"] == ["check_group:test"] and 0 <= metric["points"][0][1] <= 1000
    assert metric["type"] == "gauge" and metric["host"] == "test-host"
    old = next(s for s in stand_in.series if s["metric"] == "old.style")
    assert old["type"] == "count" and old["points"][0][1] == 2 and old["tags"] == ["origin:test"]
    checks = {c["check"]: c for c in status["checks"]}
    assert checks["custom_hello"]["interval"] == 45 and checks["custom_hello"]["runs"] == 1
    assert checks["raises"]["last_error"] == "boom" and checks["raises"]["errors"] >= 1
    assert checks["hangs"]["runs"] == 0  # still running, and nothing else waited for it
    assert "fine" in {s["metric"] for s in stand_in.series} and "bad" not in {s["metric"] for s in stand_in.series}
    assert "no check module missing.py" in status["check_errors"]["missing"]
    assert "broken_yaml.yaml" in status["check_errors"]["broken_yaml"]
    assert "Checks" in text.stdout and "[ERROR] boom" in text.stdout


def test_check_command_runs_a_check_once_and_prints_it(tmp_path):
    confd = agent_layout(tmp_path, {"custom_hello": SEED_CHECK}, {"custom_hello.yaml": "instances: [{}]"})
    env = {k: v for k, v in os.environ.items() if not k.startswith("DD_")}
    env["DD_CONFD_PATH"] = str(confd)
    result = subprocess.run([sys.executable, "-m", "relay", "check", "custom_hello", "--json"], env=env,
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stderr
    output = json.loads(result.stdout)
    assert output["series"][0]["context"][0] == "my_metric" and output["instances"][0]["runs"] == 1
    text = subprocess.run(
        [sys.executable, "-m", "relay", "check", "custom_hello"], env=env, capture_output=True, text=True
    )
    assert "my_metric (gauge)" in text.stdout and "[OK]" in text.stdout
    missing = subprocess.run([sys.executable, "-m", "relay", "check", "nope"], env=env, capture_output=True, text=True)
    assert missing.returncode == 1 and "nope" in missing.stderr


async def test_a_relay_with_no_check_configured_sends_the_agents_system_metrics(intake, tmp_path):
    stand_in, url = intake
    collectors = "cpu load memory uptime file_handle disk io network"
    async with run_relay(tmp_path, url, DD_RELAY_HOST_COLLECTORS=collectors, DD_RELAY_FLUSH_INTERVAL="1") as relay:
        # cpu percentages and rates need two runs: the collectors run every 15 s, so wait for the first only
        await wait_for(
            lambda: {"system.load.1", "system.mem.total", "system.uptime"} <= {s["metric"] for s in stand_in.series}
        )
        status = relay.status()
        await relay.stop()
    by_name = {s["metric"]: s for s in stand_in.series}
    expected = {
        "system.cpu.num_cores", "system.load.1", "system.load.norm.15", "system.mem.total", "system.mem.used",
        "system.mem.usable", "system.mem.pct_usable", "system.swap.total", "system.swap.pct_free", "system.uptime",
        "system.fs.file_handles.used", "system.fs.file_handles.in_use", "system.disk.total", "system.disk.in_use",
        "system.fs.inodes.total",
    }  # fmt: skip
    assert expected <= set(by_name), expected - set(by_name)
    import psutil

    assert by_name["system.mem.total"]["points"][0][1] == pytest.approx(psutil.virtual_memory().total / 2**20)  # MiB
    assert 0 <= by_name["system.mem.pct_usable"]["points"][0][1] <= 1
    disk = by_name["system.disk.total"]
    # The device: tag becomes the series' device resource, as the Agent's serializer does it.
    assert disk["device"] and any(t.startswith("device_name:") for t in disk["tags"])
    assert all(s["host"] == "test-host" for s in stand_in.series)
    assert {c["check"] for c in status["checks"]} == set(collectors.split())


def test_collectors_compute_rates_and_percentages_on_the_second_run(tmp_path):
    from relay.aggregate import Aggregator
    from relay.checks.runner import CheckRunner
    from relay.telemetry import Stats
    from tests.conftest import config

    cfg = config(hostname="h", relay__host_collectors="cpu network io")
    stats = Stats()
    aggregator = Aggregator(cfg, stats)
    runner = CheckRunner(cfg, aggregator, stats)
    runner.load()
    for run in range(2):
        for instance in runner.instances:
            runner.run_once(instance)
            runner.commit(instance)
        if not run:
            time.sleep(0.2)
    names = {s.context.name: s for s in aggregator.flush(time.time(), force=True).series}
    assert {"system.cpu.user", "system.cpu.idle", "system.net.bytes_rcvd"} <= set(names)
    assert 0 <= names["system.cpu.idle"].points[0][1] <= 100
    assert names["system.net.bytes_rcvd"].type is SeriesType.GAUGE  # a check rate is sent as a gauge
    if Path("/proc/diskstats").exists() and any(name.startswith("system.io.r_s") for name in names):
        assert {"system.io.avg_q_sz", "system.io.block_in", "system.io.block_out", "system.io.svctm"} <= set(names)
        assert names["system.io.block_in"].points[0][1] >= 0 and not names["system.io.block_in"].context.tags


def test_io_sources_psutil_lacks_are_read_from_proc():
    from collectors.disk import pages_in_out, weighted_io_ms

    if not Path("/proc/vmstat").exists():
        pytest.skip("no /proc/vmstat: not Linux")
    pages = pages_in_out()
    assert pages is not None and all(value >= 0 and value % 4096 == 0 for value in pages)
    assert all(isinstance(ms, int) and ms >= 0 for ms in weighted_io_ms().values())
