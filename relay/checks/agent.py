"""The Agent side of the check contract: the `aggregator` and `datadog_agent` modules a check imports.

Installed into sys.modules before any check (or the real `datadog_checks.base`) is imported; submissions are
routed by check id to that instance's CheckSampler. When the real package is absent, our base is registered
as `datadog_checks.base`, `datadog_checks.checks` and `checks` so that every import line of the docs works.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import logging
import sys
import types
from collections.abc import Callable
from typing import Any

from relay import __version__
from relay.checks import base
from relay.checks.sampler import CheckSampler

logger = logging.getLogger("relay.checks")


def install(
    samplers: dict[str, CheckSampler], hostname: str, config_value: Callable[[str], Any], builtin: bool = False
) -> bool:
    """Install the modules; returns True when the real datadog_checks.base is used (installed, and not
    `builtin`, which is relay.checks_base: builtin)."""
    aggregator = _module("aggregator")
    for name in ("GAUGE", "RATE", "COUNT", "MONOTONIC_COUNT", "COUNTER", "HISTOGRAM", "HISTORATE"):
        setattr(aggregator, name, getattr(base, name))  # rtloader's metric_type_t, as the base submits them

    def submit_metric(check: Any, check_id: str, mtype: int, name: str, value: float, tags: Any, hostname: str,
                      flush_first_value: bool = False) -> None:  # fmt: skip
        samplers[check_id].submit_metric(mtype, name, value, tags, hostname, flush_first_value)

    def submit_service_check(check: Any, check_id: str, name: str, status: int, tags: Any, hostname: str,
                             message: str) -> None:  # fmt: skip
        samplers[check_id].submit_service_check(name, status, tags, hostname, message)

    def submit_event(check: Any, check_id: str, event: dict[str, Any]) -> None:
        samplers[check_id].submit_event(event)

    def ignored(*args: Any, **kwargs: Any) -> None:
        return None

    aggregator.submit_metric = submit_metric  # type: ignore[attr-defined]
    aggregator.submit_service_check = submit_service_check  # type: ignore[attr-defined]
    aggregator.submit_event = submit_event  # type: ignore[attr-defined]
    aggregator.submit_histogram_bucket = ignored  # type: ignore[attr-defined]
    aggregator.submit_event_platform_event = ignored  # type: ignore[attr-defined]

    agent = _module("datadog_agent")
    cache: dict[str, str] = {}
    functions: dict[str, Callable[..., Any]] = {
        "get_config": config_value,
        "get_hostname": lambda: hostname,
        "get_version": lambda: f"dogstatsd-relay-{__version__}",
        "get_host_tags": lambda: "{}",
        "get_clustername": lambda: "",
        # The real base hangs a handler on the root logger that sends every record here; those records have
        # already reached the relay's own handler, so writing them again would print each line twice.
        "log": ignored,
        "set_check_metadata": ignored,
        "set_external_tags": ignored,
        "read_persistent_cache": lambda key: cache.get(key, ""),
        "write_persistent_cache": cache.__setitem__,
        "tracemalloc_enabled": lambda: False,
        "get_process_start_time": lambda: 0,
        "headers": lambda *args, **kwargs: {"User-Agent": f"dogstatsd-relay/{__version__}"},
        "send_log": ignored,
        "emit_agent_telemetry": ignored,
    }
    for name, function in functions.items():
        setattr(agent, name, function)
    sys.modules["aggregator"], sys.modules["datadog_agent"] = aggregator, agent
    if not builtin and importlib.util.find_spec("datadog_checks") and importlib.util.find_spec("datadog_checks.base"):
        # The Agent ships a `checks` package for Agent 5's `from checks import AgentCheck`; so do we.
        alias = types.ModuleType("checks")
        alias.__getattr__ = _from_real_base  # type: ignore[method-assign]
        sys.modules["checks"] = alias
        return True
    package = types.ModuleType("datadog_checks")
    package.__path__ = []
    surface = {
        "AgentCheck": base.AgentCheck, "ConfigurationError": base.ConfigurationError,
        "is_affirmative": base.is_affirmative, "ensure_bytes": base.ensure_bytes, "ensure_unicode": base.ensure_unicode,
        "to_native_string": base.to_native_string, "to_string": base.to_string, "datadog_agent": agent,
        "__getattr__": _not_in_builtin_base,
    }  # fmt: skip
    for name in ("datadog_checks.base", "datadog_checks.checks", "checks"):
        module = types.ModuleType(name)
        module.__dict__.update(surface)
        sys.modules[name] = module
    package.base, package.checks = sys.modules["datadog_checks.base"], sys.modules["datadog_checks.checks"]  # type: ignore[attr-defined]
    sys.modules["datadog_checks"] = package
    if not any(isinstance(finder, _BuiltinBaseFinder) for finder in sys.meta_path):
        sys.meta_path.append(_BuiltinBaseFinder())
    return False


def _module(name: str) -> types.ModuleType:
    """The module installed before, when there is one: a base imported then holds it, so a second install (a
    second runner in one process) must change that module, not replace it."""
    existing = sys.modules.get(name)
    if isinstance(existing, types.ModuleType) and getattr(existing, "__relay__", False):
        return existing
    module = types.ModuleType(name)
    module.__relay__ = True  # type: ignore[attr-defined]
    return module


def _from_real_base(name: str) -> Any:
    """`from checks import AgentCheck` with the real base: imported when a check first asks, since the host
    collectors run without it, and its 40 modules cost the relay over 1 MiB of resident memory."""
    if name.startswith("__"):
        raise AttributeError(name)
    return getattr(importlib.import_module("datadog_checks.checks"), name)


def _not_in_builtin_base(name: str) -> Any:
    """`from datadog_checks.base import X` for an X only the real package has: say how to get it."""
    if name.startswith("__"):
        raise AttributeError(name)
    raise ImportError(f"datadog_checks.base.{name} is not in the relay's built-in base: {base.INSTALL_HINT}")


class _BuiltinBaseFinder(importlib.abc.MetaPathFinder):
    """`import datadog_checks.base.utils...` (or any other datadog_checks module) with the built-in base: the
    same message instead of "No module named ..."."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> None:
        ours = getattr(sys.modules.get("datadog_checks"), "__path__", None) == []
        if ours and fullname.startswith("datadog_checks."):
            raise ModuleNotFoundError(f"{fullname} is not in the relay's built-in base: {base.INSTALL_HINT}")
        return None
