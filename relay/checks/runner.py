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
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from relay.accumulators import HistogramSpec
from relay.aggregate import Aggregator
from relay.checks import agent
from relay.checks.sampler import CheckSampler
from relay.config import Config
from relay.telemetry import Stats

logger = logging.getLogger("relay.checks")
DEFAULT_INTERVAL = 15


@dataclass
class Instance:
    """One scheduled check instance and what status shows of it."""

    name: str
    check_id: str
    check: Any
    interval: float
    sampler: CheckSampler
    runs: int = 0
    errors: int = 0
    metric_samples: int = 0
    events: int = 0
    service_checks: int = 0
    total_seconds: float = 0.0
    last_run: float = 0.0
    last_error: str = ""
    warnings: list[str] = field(default_factory=list)
    running: bool = False

    def status(self) -> dict[str, Any]:
        return {
            "check": self.name, "id": self.check_id, "interval": self.interval, "runs": self.runs,
            "errors": self.errors, "metric_samples": self.metric_samples, "events": self.events,
            "service_checks": self.service_checks, "last_error": self.last_error, "warnings": self.warnings,
            "average_execution_seconds": round(self.total_seconds / self.runs, 4) if self.runs else 0.0,
            "last_run": self.last_run,
        }  # fmt: skip


def find_configs(confd: Path, errors: dict[str, str] | None = None) -> dict[str, list[tuple[Path, dict[str, Any]]]]:
    """Check name → its configuration files, parsed; `.default` files only for checks nothing else configures.
    A file that cannot be read or parsed is reported in `errors`, never raised."""
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
                document = yaml.safe_load(file.read_text()) if file.stat().st_size else None
            except (OSError, yaml.YAMLError) as error:
                errors[name] = f"{file}: {error}"
                logger.error("%s: cannot be read: %s", file, error)
                continue
            if not isinstance(document, dict) or not document.get("instances"):
                logger.error("%s: configuration file contains no valid instances", file)
                continue
            configs.setdefault(name, []).append((file, document))
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
        settings = {"log_level": config.log_level, "hostname": config.hostname}
        builtin = config.relay_checks_base == "builtin"
        self.uses_real_base = agent.install(self.samplers, config.hostname, settings.get, builtin)
        self.spec = HistogramSpec.from_config(config.histogram_aggregates, config.histogram_percentiles)
        self.errors = stats.check_errors
        stats.checks = lambda: [i.status() for i in self.instances]

    def load(self, only: str | None = None) -> None:
        """The host collectors (tuned by conf.d/<name>.yaml when there is one), then the custom checks."""
        from collectors import DEFAULT, INTEGRATIONS

        confd = Path(self.config.confd_path) if self.config.confd_path else None
        configs = find_configs(confd, self.errors) if confd else {}
        for name in self.config.relay_host_collectors:
            files = configs.pop(name, None) or [(Path("<built-in>"), {"init_config": {}, "instances": [{}]})]
            if only is None or name == only:
                self._add_files(name, DEFAULT[name], files)
        checksd = [Path(p) for p in self.config.additional_checksd] + ([confd.parent / "checks.d"] if confd else [])
        for name, files in configs.items():
            if only is not None and name != only:
                continue
            try:
                cls = load_class(name, checksd, self.uses_real_base, INTEGRATIONS.get(name))
            except Exception as error:  # a broken check file must not stop the relay
                self.errors[name] = f"{type(error).__name__}: {error}"
                logger.error("check %s cannot be loaded: %s", name, error)
                continue
            self._add_files(name, cls, files)

    def _add_files(self, name: str, cls: type, files: list[tuple[Path, dict[str, Any]]]) -> None:
        """One instance per entry of `instances` in each of the check's configuration files."""
        for path, document in files:
            init_config = document.get("init_config") or {}
            for instance in document["instances"]:
                self._add(name, cls, init_config, instance or {}, path)

    def _add(self, name: str, cls: type, init_config: dict[str, Any], instance: dict[str, Any], path: Path) -> None:
        digest = hashlib.sha256(json.dumps([str(path), init_config, instance], sort_keys=True, default=str).encode())
        check_id = f"{name}:{digest.hexdigest()[:16]}"
        interval = instance.get("min_collection_interval") or init_config.get("min_collection_interval")
        host_tags = self.config.host_tags if self.config.relay_host_tags_on_metrics else ()
        sampler = self.samplers[check_id] = CheckSampler(self.config.hostname, self.spec, host_tags)
        try:
            check = instantiate(cls, name, init_config, instance)
        except Exception as error:
            self.errors[check_id] = f"{type(error).__name__}: {error}"
            return
        check.check_id = check_id
        self.instances.append(Instance(name, check_id, check, float(interval or DEFAULT_INTERVAL), sampler))

    def run_once(self, instance: Instance) -> None:
        """In a worker thread: one run, its outcome kept on the instance."""
        started = time.monotonic()
        error = instance.check.run()
        instance.total_seconds += time.monotonic() - started
        instance.runs += 1
        instance.last_run = time.time()
        instance.warnings = list(getattr(instance.check, "get_warnings", list)())
        if error:
            instance.errors += 1
            instance.last_error = json.loads(error)[0].get("message", error) if error.startswith("[") else error
            logger.warning("check %s failed: %s", instance.check_id, instance.last_error)
        else:
            instance.last_error = ""

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
                logger.warning("check %s is already running, skip execution", instance.check_id)
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
