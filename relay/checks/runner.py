"""Runner: conf.d + checks.d → check instances, run every min_collection_interval in worker threads.

Each run has a thread of its own (the Agent uses a pool of 4 runners; an instance runs at most once at a time
either way). Loader rules are the Agent's (comp/core/autodiscovery/providers/config_reader.go, pkg/collector/python):
`conf.d/<name>.yaml` and `conf.d/<name>.d/*.yaml`, a `.default` file only when nothing else configures the
check; the module is `datadog_checks.<name>` when installed, else `checks.d/<name>.py`; the class is the first
leaf subclass of AgentCheck in `dir()` order. An instance still running when due again is skipped; a check that
raises or hangs shows in status and harms nothing else.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import importlib.util
import json
import logging
import math
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from relay.checks import agent
from relay.checks.base import is_affirmative
from relay.checks.sampler import CheckSampler
from relay.config import Config
from relay.pipeline.aggregate import Aggregator
from relay.pipeline.buckets import HistogramSpec
from relay.telemetry.stats import Stats

logger = logging.getLogger("relay.checks")
_RELAY_SOURCE = str(Path(__file__).resolve().parent.parent)  # frames of the relay's own code, left out of errors
DEFAULT_INTERVAL = 15.0  # the Agent's defaults.DefaultCheckInterval
MIN_INTERVAL = 1.0  # below this a check would run in a busy loop: refused


class CheckConfigError(ValueError):
    """A bad check configuration, said in one line that names the file and the key."""


@dataclass(frozen=True)
class InstanceConfig:
    """One entry of a check's `instances`, validated, with the Agent's common instance options read out."""

    name: str
    source: Path
    init_config: dict[str, Any]
    instance: dict[str, Any]
    interval: float
    tags: tuple[str, ...]  # the instance's `tags`, and `service:<service>`: added to all it submits
    empty_default_hostname: bool


def read_instances(name: str, source: Path, document: dict[str, Any]) -> tuple[list[InstanceConfig], list[str]]:
    """The valid instances of one configuration file, and one line for each thing wrong with it: a bad
    `init_config` spoils the file, a bad instance only itself."""
    init_config = document.get("init_config")
    if init_config is None:
        init_config = {}
    if not isinstance(init_config, dict):
        return [], [f"{source}: init_config: must be a mapping, got {_kind(init_config)}"]
    instances = document.get("instances")
    if not isinstance(instances, list):
        return [], [f"{source}: instances: must be a list of mappings, got {_kind(instances)}"]
    configs, errors = [], []
    for index, instance in enumerate(instances):
        try:
            configs.append(_instance(name, source, init_config, instance, f"instances[{index}]"))
        except CheckConfigError as error:
            errors.append(f"{source}: {error}")
    return configs, errors


def _instance(name: str, source: Path, init_config: dict[str, Any], instance: Any, where: str) -> InstanceConfig:
    if instance is None:
        instance = {}
    if not isinstance(instance, dict):
        raise CheckConfigError(f"{where}: must be a mapping, got {_kind(instance)}")
    interval = instance.get("min_collection_interval")
    key = f"{where}.min_collection_interval"
    if interval is None and init_config.get("min_collection_interval") is not None:
        interval, key = init_config["min_collection_interval"], "init_config.min_collection_interval"  # Agent 5
    tags = instance.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
        raise CheckConfigError(f"{where}.tags: must be a list of strings, got {tags!r}")
    service = instance.get("service", init_config.get("service"))
    if service is not None and not isinstance(service, str):
        raise CheckConfigError(f"{where}.service: must be a string, got {service!r}")
    return InstanceConfig(
        name, source, init_config, instance, _interval(interval, key),
        tuple(dict.fromkeys([*tags, *([f"service:{service}"] if service else [])])),
        is_affirmative(instance.get("empty_default_hostname", init_config.get("empty_default_hostname", False))),
    )  # fmt: skip


def _interval(value: Any, key: str) -> float:
    if value is None:
        return DEFAULT_INTERVAL
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise CheckConfigError(f"{key}: must be a number of seconds, got {value!r}")
    if value < MIN_INTERVAL:
        raise CheckConfigError(f"{key}: must be at least {MIN_INTERVAL:g} s, got {value!r}")
    return float(value)


def _kind(value: Any) -> str:
    return "nothing" if value is None else f"{type(value).__name__} {value!r}"[:80]


@dataclass
class Instance:
    """One scheduled check instance and what status shows of it."""

    config: InstanceConfig
    check_id: str
    check: Any
    sampler: CheckSampler
    runs: int = 0
    errors: int = 0
    total_warnings: int = 0
    metric_samples: int = 0
    events: int = 0
    service_checks: int = 0
    nonfinite_dropped: int = 0
    skipped: int = 0  # runs skipped because the previous one had not returned
    total_seconds: float = 0.0
    last_run: float = 0.0
    last_error: str = ""
    last_traceback: str = ""
    warnings: list[str] = field(default_factory=list)
    running: bool = False  # scheduled and not returned yet (set and cleared on the loop)
    running_since: float = 0.0  # wall clock, while the check's run() is on the stack

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def interval(self) -> float:
        return self.config.interval

    def state(self, now: float) -> str:
        """The Agent's [OK] / [WARNING] / [ERROR]; a run that outlives its interval is a warning."""
        if self.last_error:
            return "ERROR"
        overdue = self.running_since and now - self.running_since > self.interval
        return "WARNING" if self.warnings or overdue else "OK"

    def status(self) -> dict[str, Any]:
        now = time.time()
        return {
            "check": self.name, "id": self.check_id, "source": str(self.config.source), "state": self.state(now),
            "interval": self.interval, "runs": self.runs, "errors": self.errors, "warnings_total": self.total_warnings,
            "metric_samples": self.metric_samples, "events": self.events, "service_checks": self.service_checks,
            "nonfinite_dropped": self.nonfinite_dropped, "skipped_runs": self.skipped,
            "last_error": self.last_error, "traceback": self.last_traceback, "warnings": self.warnings,
            "average_execution_seconds": round(self.total_seconds / self.runs, 4) if self.runs else 0.0,
            "last_run": self.last_run,
            "running_seconds": round(now - self.running_since, 1) if self.running_since else 0.0,
        }  # fmt: skip


def find_configs(
    confd: Path, errors: dict[str, list[str]] | None = None
) -> dict[str, list[tuple[Path, dict[str, Any]]]]:
    """Check name → its configuration files, parsed; `.default` files only for checks nothing else configures.
    A file that cannot be read or parsed, or holds no instances, is reported in `errors`, never raised; an empty
    file is skipped, as the Agent does."""
    errors = {} if errors is None else errors
    found: dict[str, list[Path]] = {}
    defaults: dict[str, list[Path]] = {}
    if not confd.is_dir():
        return {}
    for path in sorted(confd.iterdir()):
        files = sorted(path.iterdir()) if path.is_dir() and path.name.endswith(".d") else [path]
        name = path.name.removesuffix(".d").split(".")[0]
        for file in files:
            if file.name.endswith((".yaml", ".yml")):
                found.setdefault(name, []).append(file)
            elif file.name.endswith((".yaml.default", ".yml.default")):
                defaults.setdefault(name, []).append(file)
    for name, files in defaults.items():
        found.setdefault(name, files)
    configs: dict[str, list[tuple[Path, dict[str, Any]]]] = {}
    for name, files in found.items():
        for file in files:
            try:
                if not file.stat().st_size:
                    continue
                document = yaml.safe_load(file.read_text())
            except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
                problem = f"{file}: cannot be read: {' '.join(str(error).split())}"
            else:
                if isinstance(document, dict) and document.get("instances"):
                    configs.setdefault(name, []).append((file, document))
                    continue
                problem = f"{file}: contains no valid instances (a mapping with a list of `instances`)"
            errors.setdefault(name, []).append(problem)
            logger.error("check %s: %s", name, problem)
    return configs


def load_class(name: str, checksd: list[Path], uses_real_base: bool, builtin: type | None = None) -> type:
    """The module `datadog_checks.<name>` if installed, else `<name>.py` from a checks.d directory, else the
    relay's built-in integration of that name."""
    module = None
    if uses_real_base and importlib.util.find_spec(f"datadog_checks.{name}") is not None:
        module = importlib.import_module(f"datadog_checks.{name}")
    for directory in checksd:
        path = directory / f"{name}.py"
        if module is None and path.is_file():
            spec = importlib.util.spec_from_file_location(f"relay_check_{name}", path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
    if module is None and builtin is not None:
        return builtin
    if module is None:
        raise LookupError(f"no check module {name}.py in {', '.join(map(str, checksd)) or 'no checks.d'}")
    base = importlib.import_module("datadog_checks.checks").AgentCheck
    for attribute in sorted(dir(module)):
        candidate = getattr(module, attribute)
        leaf = isinstance(candidate, type) and issubclass(candidate, base) and not candidate.__subclasses__()
        if leaf and candidate is not base:
            return candidate
    raise LookupError(f"{name}: no AgentCheck subclass in its module")


def instantiate(cls: type, name: str, init_config: dict[str, Any], instance: dict[str, Any]) -> Any:
    """The keyword call of Agent 6/7, then Agent 5's positional form with agentConfig."""
    try:
        return cls(name=name, init_config=init_config, instances=(instance,))
    except TypeError:
        return cls(name, init_config, {}, [instance])


class CheckRunner:
    def __init__(self, config: Config, aggregator: Aggregator, stats: Stats) -> None:
        self.config = config
        self.aggregator = aggregator
        self.stats = stats
        self.instances: list[Instance] = []
        self.samplers: dict[str, CheckSampler] = {}
        settings = {"log_level": config.log_level, "hostname": config.hostname,
                    "enable_metadata_collection": config.enable_metadata_collection}  # fmt: skip
        builtin = config.relay_checks_base == "builtin"
        self.uses_real_base = agent.install(self.samplers, config.hostname, settings.get, builtin)
        self.spec = HistogramSpec.from_config(config.histogram_aggregates, config.histogram_percentiles)
        self.errors = stats.check_errors
        self.config_errors = stats.check_config_errors
        stats.gauges.checks = lambda: [i.status() for i in self.instances]

    def load(self, only: str | None = None) -> None:
        """The host collectors (tuned by conf.d/<name>.yaml when there is one), then the custom checks. Nothing
        a check's files or code hold can stop this: each problem is kept for status and harms only its check."""
        from relay.collectors import DEFAULT, INTEGRATIONS

        confd = Path(self.config.confd_path) if self.config.confd_path else None
        configs = find_configs(confd, self.config_errors) if confd else {}
        if only is not None:
            configs = {name: files for name, files in configs.items() if name == only}
            for name in [name for name in self.config_errors if name != only]:
                del self.config_errors[name]
        for name in self.config.relay_host_collectors:
            files = configs.pop(name, None) or [(Path("<built-in>"), {"init_config": {}, "instances": [{}]})]
            if only is None or name == only:
                self._add_files(name, DEFAULT[name], files)
        checksd = [Path(p) for p in self.config.additional_checksd] + ([confd.parent / "checks.d"] if confd else [])
        for name, files in configs.items():
            instance_configs = self._instance_configs(name, files)
            if not instance_configs:
                continue
            try:
                cls = load_class(name, checksd, self.uses_real_base, INTEGRATIONS.get(name))
            except Exception as error:  # a broken check file must not stop the relay
                self._error(name, "cannot be loaded", error)
                continue
            for instance_config in instance_configs:
                self._add(cls, instance_config)

    def _error(self, name: str, what: str, error: BaseException) -> None:
        """A check that cannot be loaded or instantiated: its message, and the frames of the check's own code
        (none when the relay found no module or class: the message says all)."""
        summary = traceback.TracebackException.from_exception(error)
        summary.stack = traceback.StackSummary.from_list(
            [frame for frame in summary.stack if not frame.filename.startswith(_RELAY_SOURCE)]
        )
        frames = "" if isinstance(error, LookupError) else "".join(summary.format())
        self.errors.setdefault(name, []).append(f"{what}: {type(error).__name__}: {error}\n{frames}".rstrip())
        logger.error("check %s %s: %s: %s", name, what, type(error).__name__, error)

    def _add_files(self, name: str, cls: type, files: list[tuple[Path, dict[str, Any]]]) -> None:
        for instance_config in self._instance_configs(name, files):
            self._add(cls, instance_config)

    def _instance_configs(self, name: str, files: list[tuple[Path, dict[str, Any]]]) -> list[InstanceConfig]:
        """The valid entries of `instances` in each of the check's files; what is wrong is kept for status."""
        valid = []
        for path, document in files:
            configs, errors = read_instances(name, path, document)
            for error in errors:
                self.config_errors.setdefault(name, []).append(error)
                logger.error("check %s: %s", name, error)
            valid += configs
        return valid

    def _add(self, cls: type, config: InstanceConfig) -> None:
        name = config.name
        identity = [str(config.source), config.init_config, config.instance]
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]
        check_id = f"{name}:{config.instance['name']}:{digest}" if config.instance.get("name") else f"{name}:{digest}"
        host_tags = self.config.host_tags if self.config.relay_host_tags_on_metrics else ()
        hostname = "" if config.empty_default_hostname else self.config.hostname
        sampler = CheckSampler(hostname, self.spec, host_tags, config.tags)
        self.samplers[check_id] = sampler
        try:
            check = instantiate(cls, name, config.init_config, config.instance)
        except Exception as error:  # its __init__ raised: this instance only
            self._error(name, f"instance from {config.source} cannot be created", error)
            return
        check.check_id = check_id
        self.instances.append(Instance(config, check_id, check, sampler))

    def run_once(self, instance: Instance) -> None:
        """In a worker thread: one run, its outcome kept on the instance."""
        started = time.monotonic()
        instance.running_since = time.time()
        try:
            error = instance.check.run()
        finally:
            instance.running_since = 0.0
        instance.total_seconds += time.monotonic() - started
        instance.runs += 1
        instance.last_run = time.time()
        warnings = [str(w) for w in getattr(instance.check, "get_warnings", list)()]
        dropped = instance.sampler.take_nonfinite()
        if dropped:
            count = sum(dropped.values())
            instance.nonfinite_dropped += count
            self.stats.dropped["nan_or_inf"] += count
            names = ", ".join(sorted(dropped))
            warnings.append(f"{count} NaN or Inf value(s) dropped (Datadog cannot store them): {names}")
        instance.warnings = warnings
        instance.total_warnings += len(warnings)
        instance.last_error, instance.last_traceback = _run_error(error) if error else ("", "")
        if error:
            instance.errors += 1
            last_frame = instance.last_traceback.strip().splitlines()[-3:-1]
            logger.warning("check %s failed: %s (%s)", instance.check_id, instance.last_error,
                           " ".join(line.strip() for line in last_frame))  # fmt: skip
        for warning in warnings:
            logger.warning("check %s: %s", instance.check_id, warning)

    def commit(self, instance: Instance) -> None:
        """On the loop: the run's submissions into the aggregator."""
        now = time.time()
        series, checks, events = instance.sampler.commit(now, int(instance.interval))
        instance.metric_samples += len(series)
        instance.service_checks += len(checks)
        instance.events += len(events)
        self.aggregator.add_series(series)
        for check in checks:
            self.aggregator.add_service_check(check, now)
        for event in events:
            self.aggregator.add_event(event, now)

    async def run(self) -> None:
        """Every instance on its own interval; one that is still running when due is skipped."""
        await asyncio.gather(*(self._schedule(instance) for instance in self.instances))

    async def _schedule(self, instance: Instance) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if instance.running:
                instance.skipped += 1
                since = time.time() - (instance.running_since or time.time())
                logger.warning("check %s is already running, skip execution (running for %.0f s)",
                               instance.check_id, since)  # fmt: skip
            else:
                instance.running = True
                threading.Thread(target=self._run_in_thread, args=(instance, loop), daemon=True).start()
            await asyncio.sleep(instance.interval)

    def _run_in_thread(self, instance: Instance, loop: asyncio.AbstractEventLoop) -> None:
        """A daemon thread per run: a check that never returns holds one thread, never the relay's exit."""
        try:
            self.run_once(instance)
        except Exception:  # the check's own errors are caught by AgentCheck.run; this is a bug of the runner
            self.stats.internal_error(f"check {instance.check_id}")
        finally:
            loop.call_soon_threadsafe(self._done, instance)

    def _done(self, instance: Instance) -> None:
        instance.running = False
        try:
            self.commit(instance)
        except Exception:
            self.stats.internal_error(f"check {instance.check_id} (submit)")

    def close(self) -> None:
        for instance in self.instances:
            instance.check.cancel()


def _run_error(error: str) -> tuple[str, str]:
    """AgentCheck.run()'s JSON error list → (message, traceback); a plain string is its own message."""
    try:
        first = json.loads(error)[0]
        return str(first.get("message") or "(no message)"), str(first.get("traceback", ""))
    except (ValueError, LookupError, TypeError, AttributeError):
        return error, ""
