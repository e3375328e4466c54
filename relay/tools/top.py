"""`dogstatsd-relay top`: the cardinality report of a running relay (`/debug/cardinality?sample=S`), redrawn
in place: the metrics with the most lines per second, the metrics with the most contexts and their tag keys
with the most values, and an estimate of the custom metrics Datadog would count."""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text


def fetch(url: str, headers: dict[str, str], top: int, sample: float) -> dict[str, Any]:
    request = urllib.request.Request(f"{url}?top={top}&sample={sample:g}", headers=headers)
    with urllib.request.urlopen(request, timeout=sample + 10) as response:
        return json.load(response)


def render(report: dict[str, Any], top: int) -> Group:
    limit = f" of {report['max_contexts']:,} allowed" if report.get("max_contexts") else ""
    header = Text.assemble(
        ("dogstatsd-relay top", "bold"),
        f"  {time.strftime('%H:%M:%S')}\ncontexts {report.get('contexts', 0):,}{limit}, custom metrics ≈ ",
        (f"{report.get('custom_metrics_estimate', 0):,}", "bold"),
    )
    by_lines = Table(title="by lines per second", title_justify="left", expand=False)
    by_lines.add_column("metric")
    by_lines.add_column("lines/s", justify="right")
    for row in report.get("top_by_lines", [])[:top]:
        by_lines.add_row(row["metric"], f"{row['lines_per_s']:,.1f}")
    by_contexts = Table(title="by contexts", title_justify="left", expand=False)
    by_contexts.add_column("metric")
    by_contexts.add_column("contexts", justify="right")
    by_contexts.add_column("tag keys by distinct values")
    for row in report.get("top_metrics", [])[:top]:
        keys = "  ".join(f"{key or '(bare)'}={count:,}" for key, count in list(row["tag_values"].items())[:4])
        by_contexts.add_row(row["metric"], f"{row['contexts']:,}", keys)
    if not report.get("folding"):
        return Group(header, by_lines, by_contexts)
    folding = Table(title="folding: new contexts become `overflow` (relay.max_contexts, or the metric's share)",
                    title_justify="left", expand=False)  # fmt: skip
    folding.add_column("metric")
    folding.add_column("tag key")
    folding.add_column("contexts folded", justify="right")
    for row in report["folding"][:top]:
        folding.add_row(row["metric"], row["tag_key"] or "(bare)", f"{row['contexts']:,}")
    return Group(header, by_lines, by_contexts, folding)


def run(url: str, headers: dict[str, str], top: int, interval: float, once: bool, console: Console) -> None:
    """One frame (`once`), or a frame every `interval` seconds until interrupted. Each frame samples the traffic
    for up to one second, so that lines per second are measured, not guessed."""
    sample = min(interval, 1.0)
    if once:
        console.print(render(fetch(url, headers, top, sample), top))
        return
    with Live(render(fetch(url, headers, top, sample), top), console=console, auto_refresh=False) as live:
        while True:
            time.sleep(max(interval - sample, 0))
            live.update(render(fetch(url, headers, top, sample), top), refresh=True)
