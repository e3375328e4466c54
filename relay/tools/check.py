"""`dogstatsd-relay check NAME`: one check's instances run like `datadog-agent check` does it.

What they submitted, their status with the full traceback and warnings, and the check's own log lines. The exit
code is 1 when any instance failed, could not be configured or loaded, or ran past `timeout`.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import sys
import threading
import time
from dataclasses import replace
from typing import Any

from relay.checks.runner import CheckRunner
from relay.config import Config
from relay.logs import RedactApiKey, level_of
from relay.pipeline.assemble import Pipeline
from relay.telemetry.stats import Stats
from relay.tools.status import render_check


class CheckLogs(logging.Handler):
    """The log lines of the check under `check NAME`, kept to be printed after its output (the relay's own
    loggers are left out, but for the check's)."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(levelname)s | (%(name)s) | %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("relay.") and not record.name.startswith("relay.checks."):
            return
        self.lines.append(self.format(record))


def run_check(config: Config, name: str, times: int, as_json: bool, timeout: float) -> int:
    logs = CheckLogs()
    logs.addFilter(RedactApiKey(config.api_key))
    logging.getLogger().addHandler(logs)
    logging.getLogger().setLevel(level_of(config.log_level))
    pipeline = Pipeline(replace(config, api_key=""), out=io.StringIO())  # submissions are printed, not sent
    runner = pipeline.load_checks(only=name)
    stats = pipeline.stats
    if not runner.instances and not stats.check_errors and not stats.check_config_errors:
        print(f"check: {name}: no instance configured in {config.confd_path or '(confd_path unset)'}", file=sys.stderr)
        return 1
    timed_out = _run(runner, times, timeout)
    result = _result(pipeline, logs.lines)
    print(json.dumps(result, indent=2, default=str) if as_json else render_check(result), end="\n" if as_json else "")
    for line in timed_out:
        print(line, file=sys.stderr)
    for check, errors in [*stats.check_config_errors.items(), *stats.check_errors.items()]:
        for error in errors:
            print(f"check: {check}: {error.splitlines()[0]}", file=sys.stderr)
    return 1 if _failed(result, stats) or timed_out else 0


def _run(runner: CheckRunner, times: int, timeout: float) -> list[str]:
    """Every instance, `times` times 1 s apart, each in a thread given `timeout` seconds; returns the timeouts."""
    timed_out: list[str] = []
    for run in range(max(times, 1) if runner.instances else 0):
        if run:
            time.sleep(1)
        for instance in runner.instances:
            thread = threading.Thread(target=runner.run_once, args=(instance,), daemon=True)
            thread.start()
            thread.join(timeout)
            if thread.is_alive():
                timed_out.append(f"check: {instance.check_id}: still running after {timeout:g} s (--timeout)")
                continue
            runner.commit(instance)
        if timed_out:
            break
    return timed_out


def _result(pipeline: Pipeline, logs: list[str]) -> dict[str, Any]:
    flushed, stats = pipeline.take(time.time(), force=True), pipeline.stats
    return {
        "series": [{**dataclasses.asdict(s), "type": s.type.name.lower()} for s in flushed.series],
        "service_checks": [dataclasses.asdict(c) for c in flushed.service_checks],
        "events": [dataclasses.asdict(e) for e in flushed.events],
        "instances": stats.gauges.checks(),
        "check_config_errors": stats.check_config_errors,
        "check_errors": stats.check_errors,
        "logs": logs,
    }


def _failed(result: dict[str, Any], stats: Stats) -> bool:
    return any(i["last_error"] for i in result["instances"]) or bool(stats.check_errors or stats.check_config_errors)
