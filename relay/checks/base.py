"""A small AgentCheck compatible with `datadog_checks.base.AgentCheck`, for hosts without the real package.

It talks to the relay through the same two modules the real base uses inside the Agent (`aggregator` and
`datadog_agent`, see relay/checks/agent.py), so custom checks run unmodified under either base.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import sys
import traceback
from typing import Any

GAUGE, RATE, COUNT, MONOTONIC_COUNT, COUNTER, HISTOGRAM, HISTORATE = range(7)  # rtloader's metric_type_t


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

    def check(self, instance: dict[str, Any]) -> None:
        raise NotImplementedError

    def run(self) -> str:
        """'' on success, else the JSON error list the Agent stores as the check's last error; never raises."""
        try:
            self.check(copy.deepcopy(self.instance))  # type: ignore[arg-type]
            return ""
        except Exception as error:
            return json.dumps([{"message": str(error), "traceback": traceback.format_exc()}])

    def _submit(self, mtype: int, name: str, value: float, tags: Any, hostname: str | None, device_name: str | None,
                raw: bool, flush_first_value: bool = False) -> None:  # fmt: skip
        tags = list(tags or [])
        if device_name:
            tags.append(f"device:{device_name}")
        if self.__NAMESPACE__ and not raw:
            name = f"{self.__NAMESPACE__}.{name}"
        sys.modules["aggregator"].submit_metric(
            self, self.check_id, mtype, name, float(value), tags, hostname or "", flush_first_value
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
