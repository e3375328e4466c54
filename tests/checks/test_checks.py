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

from relay.checks.base import COUNT, GAUGE, HISTORATE, MONOTONIC_COUNT, RATE
from relay.checks.runner import find_configs
from relay.checks.sampler import CheckSampler
from relay.pipeline.buckets import HistogramSpec
from relay.pipeline.model import SeriesType
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


GOOD_CHECK = """
from datadog_checks.base import AgentCheck, ConfigurationError, is_affirmative


class GoodCheck(AgentCheck):
    def check(self, instance):
        if not is_affirmative(instance.get("enabled", True)):
            raise ConfigurationError("disabled")
        self.gauge("good.value", 7, tags=["own:tag"])
        self.service_check("good.can_connect", AgentCheck.OK)
        self.log.info("good check ran")
"""
BAD_CHECKS = {
    "failing": "from datadog_checks.base import AgentCheck\n\ndef connect():\n    raise RuntimeError('db down')\n\n"
    "class Failing(AgentCheck):\n    def check(self, instance):\n        connect()\n",
    "hangs": "import time\nfrom checks import AgentCheck\nclass Hangs(AgentCheck):\n    def check(self, instance):\n"
    "        time.sleep(3600)\n",
    "nan": "from checks import AgentCheck\nclass Nan(AgentCheck):\n    def check(self, instance):\n"
    "        self.gauge('nan.bad', float('nan'))\n        self.gauge('nan.fine', 1)\n",
    "init_raises": "from checks import AgentCheck\nclass InitRaises(AgentCheck):\n    def __init__(self, *a, **k):\n"
    "        super().__init__(*a, **k)\n        raise ValueError('needs a host')\n",
    **{
        name: "from checks import AgentCheck\nclass C(AgentCheck):\n    def check(self, instance):\n        pass\n"
        for name in ("malformed", "init_list", "five", "interval_abc", "negative", "bad_tags")
    },
}
BAD_CONFIGS = {
    "failing.yaml": "instances: [{min_collection_interval: 1}]",
    "hangs.yaml": "instances: [{min_collection_interval: 1}]",
    "nan.yaml": "instances: [{min_collection_interval: 1}]",
    "init_raises.yaml": "instances: [{}]",
    "malformed.yaml": "instances: {host: x}",
    "init_list.yaml": "init_config: [1]\ninstances: [{}]",
    "five.yaml": "instances: 5",
    "interval_abc.yaml": "instances: [{min_collection_interval: abc}]",
    "negative.yaml": "instances: [{min_collection_interval: -5}]",
    "bad_tags.yaml": "instances: [{tags: 'a:b'}, {}]",
    "missing.yaml": "instances: [{}]",
    "broken_yaml.yaml": "instances: [{: :",
}
CONFIG_ERRORS = {
    "malformed": "malformed.yaml: instances: must be a list of mappings, got dict {'host': 'x'}",
    "init_list": "init_list.yaml: init_config: must be a mapping, got list [1]",
    "five": "five.yaml: instances: must be a list of mappings, got int 5",
    "interval_abc": "interval_abc.yaml: instances[0].min_collection_interval: must be a number of seconds, got 'abc'",
    "negative": "negative.yaml: instances[0].min_collection_interval: must be at least 1 s, got -5",
    "bad_tags": "bad_tags.yaml: instances[0].tags: must be a list of strings, got 'a:b'",
}


@pytest.mark.parametrize("base", ["auto", "builtin"])  # the real datadog-checks-base (test extra), then ours
async def test_bad_checks_and_configurations_harm_only_themselves(intake, tmp_path, base):
    """Next to one good check: malformed files, bad intervals, a hanging, a NaN-submitting, a failing check and
    one whose __init__ raises. The relay starts, DogStatsD and the good check work (with the instance's tags and
    service on its metrics and service checks), and status shows each bad one, not OK, with the reason."""
    stand_in, url = intake
    confd = agent_layout(tmp_path, {"good": GOOD_CHECK, "custom_hello": SEED_CHECK, **BAD_CHECKS}, {
        "good.yaml": "init_config:\n  service: web\ninstances:\n  - tags: ['team:relay']\n    min_collection_interval: 1\n",
        "custom_hello.yaml": "init_config:\n\ninstances:\n  - min_collection_interval: 45\n",
        **BAD_CONFIGS,
    })  # fmt: skip
    async with run_relay(tmp_path, url, DD_CONFD_PATH=str(confd), DD_RELAY_CHECKS_BASE=base) as relay:
        relay.send_udp(b"dogstatsd.still.works:1|c")
        names = lambda: {s["metric"] for s in stand_in.series}  # noqa: E731
        await wait_for(lambda: {"good.value", "my_metric", "dogstatsd.still.works", "nan.fine"} <= names())
        await wait_for(lambda: any(c["check"] == "good.can_connect" for c in stand_in.service_checks))

        def hanging_overdue() -> dict | None:
            checks = {c["check"]: c for c in relay.status()["checks"]}
            return checks if checks["hangs"]["running_seconds"] > 1 and checks["nan"]["runs"] else None

        checks = await wait_for(hanging_overdue)
        status = relay.status()
        text = subprocess.run([sys.executable, "-m", "relay", "status"], env=relay.env, capture_output=True, text=True)
        code, _, err = await relay.stop()
    good = next(s for s in stand_in.series if s["metric"] == "good.value")
    assert sorted(good["tags"]) == ["own:tag", "service:web", "team:relay"] and good["points"][0][1] == 7
    service_check = next(c for c in stand_in.service_checks if c["check"] == "good.can_connect")
    assert sorted(service_check["tags"]) == ["service:web", "team:relay"]
    seed = next(s for s in stand_in.series if s["metric"] == "my_metric")
    assert seed["tags"] == ["check_group:test"] and seed["host"] == "test-host"
    assert "nan.bad" not in names()
    assert checks["good"]["state"] == "OK" and checks["good"]["runs"] >= 1
    assert checks["custom_hello"]["interval"] == 45
    assert checks["failing"]["state"] == "ERROR" and checks["failing"]["last_error"] == "db down"
    assert "in connect" in checks["failing"]["traceback"]
    assert checks["hangs"]["state"] == "WARNING" and checks["hangs"]["runs"] == 0
    assert checks["nan"]["state"] == "WARNING" and checks["nan"]["nonfinite_dropped"] >= 1
    assert "NaN or Inf value(s) dropped" in checks["nan"]["warnings"][0] and "nan.bad" in checks["nan"]["warnings"][0]
    assert status["dropped"]["nan_or_inf"] >= 1
    config_errors = {name: errors[0] for name, errors in status["check_config_errors"].items()}
    for name, expected in CONFIG_ERRORS.items():
        assert config_errors[name].endswith(expected), (name, config_errors[name])
    assert "cannot be read" in config_errors["broken_yaml"]
    assert sum(c["check"] == "bad_tags" for c in status["checks"]) == 1  # its good instance runs
    assert "no check module missing.py" in status["check_errors"]["missing"][0]
    assert "ValueError: needs a host" in status["check_errors"]["init_raises"][0]
    for line in ("[ERROR]", "Error: db down", "in connect", "[WARNING]", "Still running after", "Config Errors:",
                 "Loading Errors:", CONFIG_ERRORS["negative"]):  # fmt: skip
        assert line in text.stdout, (line, text.stdout)
    assert code == 0, err


def test_check_command_prints_the_traceback_warnings_and_logs_and_fails_like_the_agent(tmp_path):
    """`check NAME`: a failing check exits 1 with its traceback (naming the failing function); a check that
    imports ConfigurationError works with the built-in base, and its log lines are printed; a bad file exits 1 with
    one line naming the file and the key; a hanging check stops at --timeout."""
    confd = agent_layout(tmp_path, {"good": GOOD_CHECK, **BAD_CHECKS}, {
        "good.yaml": "instances: [{tags: ['team:relay']}]", **BAD_CONFIGS,
    })  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("DD_")}
    env.update(DD_CONFD_PATH=str(confd), DD_RELAY_CHECKS_BASE="builtin")

    def check(*args: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "relay", "check", *args]
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)

    good = check("good")
    assert good.returncode == 0, good.stderr
    assert "good.value (gauge)" in good.stdout and "[OK]" in good.stdout
    assert "INFO | (relay.checks.good) | good check ran" in good.stdout
    failing = check("failing")
    assert failing.returncode == 1 and "Error: db down" in failing.stdout
    assert "in connect\n" in failing.stdout and "RuntimeError: db down" in failing.stdout
    nan = check("nan")
    assert nan.returncode == 0 and "Warning: 1 NaN or Inf value(s) dropped" in nan.stdout and "[WARNING]" in nan.stdout
    negative = check("negative")
    assert negative.returncode == 1
    assert negative.stderr.strip().endswith(CONFIG_ERRORS["negative"]) and len(negative.stderr.splitlines()) == 1
    init = check("init_raises")
    assert init.returncode == 1 and "ValueError: needs a host" in init.stderr
    started = time.monotonic()
    hangs = check("hangs", "--timeout", "1")
    assert hangs.returncode == 1 and "still running after 1 s (--timeout)" in hangs.stderr
    assert time.monotonic() - started < 30


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
    from relay.checks.runner import CheckRunner
    from relay.pipeline.aggregate import Aggregator
    from relay.telemetry.stats import Stats
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
    from relay.collectors.disk import pages_in_out, weighted_io_ms

    if not Path("/proc/vmstat").exists():
        pytest.skip("no /proc/vmstat: not Linux")
    pages = pages_in_out()
    assert pages is not None and all(value >= 0 and value % 4096 == 0 for value in pages)
    assert all(isinstance(ms, int) and ms >= 0 for ms in weighted_io_ms().values())


EVERYTHING_CHECK = """
from datadog_checks.base import AgentCheck, ConfigurationError, ensure_unicode, is_affirmative, to_native_string


class Everything(AgentCheck):
    __NAMESPACE__ = "every"

    def check(self, instance):
        if not is_affirmative(instance.get("enabled", "yes")):
            raise ConfigurationError("disabled")
        tags = ["unit:" + to_native_string(b"ms"), ensure_unicode("base:any")]
        self.gauge("gauge", 1.5, tags=tags)
        self.gauge("skipped.by_pattern", 1)
        self.gauge("raw.gauge", 2, raw=True, hostname="elsewhere")
        self.count("count", 2, tags=tags, device_name="sda")
        self.count("count", 3, tags=tags, device_name="sda")
        self.monotonic_count("mono", 10, flush_first_value=True)
        self.rate("rate", 100)
        self.increment("incr")
        self.histogram("hist", 1)
        self.histogram("hist", 3)
        self.gauge("none", None)
        self.gauge("not_a_number", "abc")
        self.gauge("nan", float("nan"))
        self.service_check("can_connect", AgentCheck.WARNING, tags=tags, message="slow")
        self.event({"msg_title": "hello", "msg_text": "world", "alert_type": "warning", "tags": tags})
        self.warning("watch %s", "out")
"""


def test_one_check_gives_the_same_output_on_the_real_and_the_built_in_base(tmp_path):
    """The same check, run by `check NAME` on datadog_checks_base and on the relay's own base: the same series,
    service checks, events, warnings and status."""
    confd = agent_layout(tmp_path, {"everything": EVERYTHING_CHECK}, {
        "everything.yaml": "init_config:\n  service: shop\ninstances:\n  - tags: ['team:relay']\n"
        "    metric_patterns: {exclude: ['skipped']}\n",
    })  # fmt: skip
    outputs = {}
    for base in ("auto", "builtin"):
        env = {k: v for k, v in os.environ.items() if not k.startswith("DD_")}
        env.update(DD_CONFD_PATH=str(confd), DD_RELAY_CHECKS_BASE=base, DD_HOSTNAME="h")
        command = [sys.executable, "-m", "relay", "check", "everything", "--json", "--times", "2"]
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        output = json.loads(result.stdout)
        instance = output["instances"][0]
        outputs[base] = {
            "series": sorted(
                (s["context"][0], s["type"], s["context"][1], tuple(s["context"][2]), [v for _, v in s["points"]])
                for s in output["series"]
            ),
            "service_checks": [
                (c["name"], c["status"], c["message"], c["tags"], c["host"]) for c in output["service_checks"]
            ],
            "events": [(e["title"], e["text"], e["alert_type"], e["tags"], e["host"]) for e in output["events"]],
            "instance": {key: instance[key] for key in ("state", "runs", "errors", "warnings", "nonfinite_dropped")},
        }
    assert outputs["auto"] == outputs["builtin"]
    names = {row[0] for row in outputs["builtin"]["series"]}
    assert "every.skipped.by_pattern" not in names and {"every.gauge", "raw.gauge", "every.hist.max"} <= names
    assert outputs["builtin"]["instance"]["state"] == "WARNING"


def test_empty_default_hostname_and_the_interval_fallback_of_init_config(tmp_path):
    from relay.checks.runner import CheckRunner
    from relay.pipeline.aggregate import Aggregator
    from relay.telemetry.stats import Stats
    from tests.conftest import config

    confd = agent_layout(tmp_path, {"good": GOOD_CHECK}, {
        "good.yaml": "init_config: {min_collection_interval: 30}\n"
        "instances: [{empty_default_hostname: true}, {min_collection_interval: 5, empty_default_hostname: 'no'}]",
    })  # fmt: skip
    cfg = config(hostname="h", confd_path=str(confd), relay__host_collectors="")
    stats = Stats()
    aggregator = Aggregator(cfg, stats)
    runner = CheckRunner(cfg, aggregator, stats)
    runner.load()
    for instance in runner.instances:
        runner.run_once(instance)
        runner.commit(instance)
    hosts = sorted(s.context.host for s in aggregator.flush(time.time(), force=True).series)
    assert hosts == ["", "h"] and [i.interval for i in runner.instances] == [30.0, 5.0]
