"""A small AgentCheck compatible with `datadog_checks.base.AgentCheck`, for hosts without the real package.

It talks to the relay through the same two modules the real base uses inside the Agent (`aggregator` and
`datadog_agent`, see relay/checks/agent.py), so custom checks run unmodified under either base. It offers what
custom checks import from `datadog_checks.base` (`AgentCheck`, `ConfigurationError`, `is_affirmative`, the
string helpers); what only the real package has fails with a message that says to install it.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import sys
import traceback
from collections import deque
from collections.abc import Callable
from typing import Any

import yaml

GAUGE, RATE, COUNT, MONOTONIC_COUNT, COUNTER, HISTOGRAM, HISTORATE = range(7)  # rtloader's metric_type_t
INSTALL_HINT = "pip install 'dogstatsd-relay[checks-base]' (the full datadog_checks.base)"
# What the real AgentCheck has and this one has not: asking for it says how to get it, not just AttributeError.
REAL_BASE_ONLY = frozenset({
    "http", "get_tls_context", "metric_limiter", "metadata_manager", "submit_histogram_bucket",
    "database_monitoring_query_sample", "database_monitoring_query_metrics", "database_monitoring_query_activity",
    "database_monitoring_metadata", "event_platform_event", "load_configuration_models", "load_configuration_model",
    "discover_config", "generate_configs", "get_diagnoses", "diagnosis", "report_issue", "resolve_issue",
    "submit_generic_resource", "profile_memory", "get_log_cursor", "logs_enabled",
})  # fmt: skip


class ConfigurationError(Exception):
    """Raised by a check for a bad instance: the Agent shows it as the check's error."""


def is_affirmative(value: Any) -> bool:
    """YAML and environment truthiness, as datadog_checks.base.is_affirmative: 'yes', 'true', '1', 'y', 'on'."""
    if isinstance(value, str):
        return value.strip().lower() in {"yes", "true", "1", "y", "on"}
    return bool(value)


def ensure_bytes(value: Any) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def ensure_unicode(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


to_native_string = to_string = ensure_unicode


class AgentCheck:
    OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
    __NAMESPACE__ = ""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """`(name, init_config, instances)`, by keyword or position, or Agent 5's
        `(name, init_config, agentConfig, instances)`."""
        self.name: str = kwargs.get("name", args[0] if args else "")
        self.init_config: dict[str, Any] = kwargs.get("init_config", args[1] if len(args) > 1 else {}) or {}
        instances = kwargs.get("instances", args[3] if len(args) > 3 else args[2] if len(args) > 2 else None)
        self.agentConfig: dict[str, Any] = kwargs.get("agentConfig", args[2] if len(args) > 3 else {}) or {}
        self.instances: list[dict[str, Any]] = list(instances or [])
        self.instance: dict[str, Any] | None = self.instances[0] if self.instances else None
        self.check_id = ""
        self.warnings: list[str] = []
        self.log = logging.LoggerAdapter(logging.getLogger(f"relay.checks.{self.name}"), {})
        self.hostname: str = sys.modules["datadog_agent"].get_hostname()
        self.check_initializations: deque[Callable[[], None]] = deque()
        patterns = (self.instance or {}).get("metric_patterns") or {}
        if not isinstance(patterns, dict):
            raise ConfigurationError("Setting `metric_patterns` must be a mapping")
        self.include_metrics_pattern = _patterns(patterns, "include")
        self.exclude_metrics_pattern = _patterns(patterns, "exclude")

    def __getattr__(self, name: str) -> Any:
        if name in REAL_BASE_ONLY:
            raise AttributeError(f"AgentCheck.{name} is not in the relay's built-in base: {INSTALL_HINT}")
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def check(self, instance: dict[str, Any]) -> None:
        raise NotImplementedError

    def run(self) -> str:
        """'' on success, else the JSON error list the Agent stores as the check's last error; never raises."""
        try:
            self.run_check_initializations()
            self.check(copy.deepcopy(self.instance))  # type: ignore[arg-type]
            return ""
        except Exception as error:
            return json.dumps([{"message": str(error), "traceback": traceback.format_exc()}])

    def run_check_initializations(self) -> None:
        """Before the first run; one that raises is tried again at the next run, as in the real base."""
        while self.check_initializations:
            initialization = self.check_initializations.popleft()
            try:
                initialization()
            except Exception:
                self.check_initializations.appendleft(initialization)
                raise

    def should_send_metric(self, name: str) -> bool:
        excluded = self.exclude_metrics_pattern is not None and self.exclude_metrics_pattern.search(name)
        included = self.include_metrics_pattern is None or self.include_metrics_pattern.search(name)
        return bool(included) and not excluded

    def _submit(self, mtype: int, name: str, value: Any, tags: Any, hostname: str | None, device_name: str | None,
                raw: bool, flush_first_value: bool = False) -> None:  # fmt: skip
        if value is None:
            return
        if self.__NAMESPACE__ and not raw:
            name = f"{self.__NAMESPACE__}.{name}"
        if not self.should_send_metric(name):
            return
        tags = list(tags or [])
        if device_name:
            tags.append(f"device:{device_name}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.warning("Metric: %r has non float value: %r. Only float values can be submitted as metrics.",
                         name, value)  # fmt: skip
            return
        sys.modules["aggregator"].submit_metric(
            self, self.check_id, mtype, name, number, tags, hostname or "", flush_first_value
        )

    def gauge(self, name: str, value: float, tags: Any = None, hostname: str | None = None,
              device_name: str | None = None, raw: bool = False) -> None:  # fmt: skip
        self._submit(GAUGE, name, value, tags, hostname, device_name, raw)

    def count(self, name: str, value: float, tags: Any = None, hostname: str | None = None,
              device_name: str | None = None, raw: bool = False) -> None:  # fmt: skip
        self._submit(COUNT, name, value, tags, hostname, device_name, raw)

    def monotonic_count(
        self, name: str, value: float, tags: Any = None, hostname: str | None = None, device_name: str | None = None,
        raw: bool = False, flush_first_value: bool = False,
    ) -> None:  # fmt: skip
        self._submit(MONOTONIC_COUNT, name, value, tags, hostname, device_name, raw, flush_first_value)

    def rate(self, name: str, value: float, tags: Any = None, hostname: str | None = None,
             device_name: str | None = None, raw: bool = False) -> None:  # fmt: skip
        self._submit(RATE, name, value, tags, hostname, device_name, raw)

    def histogram(self, name: str, value: float, tags: Any = None, hostname: str | None = None,
                  device_name: str | None = None, raw: bool = False) -> None:  # fmt: skip
        self._submit(HISTOGRAM, name, value, tags, hostname, device_name, raw)

    def historate(self, name: str, value: float, tags: Any = None, hostname: str | None = None,
                  device_name: str | None = None, raw: bool = False) -> None:  # fmt: skip
        self._submit(HISTORATE, name, value, tags, hostname, device_name, raw)

    def increment(self, name: str, value: float = 1, tags: Any = None, hostname: str | None = None,
                  device_name: str | None = None, raw: bool = False) -> None:  # fmt: skip
        self._submit(COUNTER, name, value, tags, hostname, device_name, raw)

    def decrement(self, name: str, value: float = -1, tags: Any = None, hostname: str | None = None,
                  device_name: str | None = None, raw: bool = False) -> None:  # fmt: skip
        self._submit(COUNTER, name, value, tags, hostname, device_name, raw)

    def service_check(self, name: str, status: int, tags: Any = None, hostname: str | None = None,
                      message: str | None = None, raw: bool = False) -> None:  # fmt: skip
        if self.__NAMESPACE__ and not raw:
            name = f"{self.__NAMESPACE__}.{name}"
        sys.modules["aggregator"].submit_service_check(
            self, self.check_id, name, status, list(tags or []), hostname or "", message or ""
        )

    def event(self, event: dict[str, Any]) -> None:
        sys.modules["aggregator"].submit_event(self, self.check_id, event)

    def warning(self, message: str, *args: Any) -> None:
        self.warnings.append(message % args if args else message)

    def get_warnings(self) -> list[str]:
        warnings, self.warnings = self.warnings, []
        return warnings

    @staticmethod
    def is_metadata_collection_enabled() -> bool:
        return is_affirmative(sys.modules["datadog_agent"].get_config("enable_metadata_collection"))

    @staticmethod
    def load_config(yaml_text: str) -> Any:
        return yaml.safe_load(yaml_text)

    def normalize_tag(self, tag: str) -> str:
        return re.sub(r"[,+*\-/()\[\]{}\s]", "_", ensure_unicode(tag))

    def send_log(self, data: dict[str, Any], cursor: Any = None, stream: str = "default") -> None:
        return None  # the relay ships no logs

    def set_external_tags(self, external_tags: Any) -> None:
        return None

    def normalize(self, metric: str, prefix: str | None = None, fix_case: bool = False) -> str:
        name = re.sub(r"[,+*\-/()\[\]{}\s]", "_", metric)
        name = re.sub(r"__+", "_", name).strip("_")
        return f"{prefix}.{name}" if prefix else name

    def read_persistent_cache(self, key: str) -> str:
        return sys.modules["datadog_agent"].read_persistent_cache(f"{self.check_id}_{key}")

    def write_persistent_cache(self, key: str, value: str) -> None:
        sys.modules["datadog_agent"].write_persistent_cache(f"{self.check_id}_{key}", value)

    def set_metadata(self, name: str, value: Any, **options: Any) -> None:
        sys.modules["datadog_agent"].set_check_metadata(self.check_id, name, str(value))

    def cancel(self) -> None:
        return None


def _patterns(metric_patterns: dict[str, Any], option: str) -> re.Pattern[str] | None:
    entries = metric_patterns.get(option) or []
    if not isinstance(entries, list) or not all(isinstance(entry, str) for entry in entries):
        raise ConfigurationError(f"Setting `{option}` of `metric_patterns` must be an array of strings")
    entries = [entry for entry in entries if entry]
    return re.compile("|".join(entries)) if entries else None
