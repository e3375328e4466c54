"""`python -m benchmarks run --scenario NAME`: run one scenario, print JSON, append to RESULTS.md, draw plots."""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.harness import HERE, EtsyStatsd, baseline_tree, rmem_max
from benchmarks.load import BASELINE, Result
from benchmarks.scenarios import SCENARIOS, from_capture


def machine() -> str:
    model = next(
        (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
         if line.startswith("model name")), platform.processor(),
    )  # fmt: skip
    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip() or "none"
    from relay import __version__

    return (
        f"{os.cpu_count()} cores ({model}), Linux {platform.release()}, Python {platform.python_version()}, "
        f"dogstatsd-relay {__version__}, node {node}, Etsy statsd {EtsyStatsd.version()}, "
        f"net.core.rmem_max {rmem_max()}"
    )


def markdown(result: Result, command: str, seconds: float) -> str:
    lines = [
        f"### {result.scenario} ({time.strftime('%Y-%m-%d')})",
        "",
        f"- Command: `{command}`",
        f"- Machine: {machine()}",
        f"- Window: {seconds:g} s per step; relay pinned to core 0, generator and intake stand-in to core 1",
        "",
    ]
    lines += [f"- **{key}**: {json.dumps(value)}" for key, value in result.summary.items()]
    if result.windows:
        lines += [
            "",
            "| server | offered lines/s | accepted lines/s | loss | relay-counted lines | CPU % | RSS MiB |",
            "|---|---|---|---|---|---|---|",
        ]
        for w in result.windows:
            offered = w.offered_datagrams_per_s * w.lines_per_datagram
            counted = "" if w.server_counted_lines is None else f"{w.server_counted_lines:,}"
            lines.append(
                f"| {w.server} | {offered:,.0f} | {w.accepted_lines_per_s:,.0f} | {w.loss:.3%} | {counted} | "
                f"{w.cpu_percent:.0f} | {w.rss_bytes / 2**20:.0f} |"
            )
    return "\n".join(lines) + "\n\n"


def plot(result: Result, out: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[bench]'): no plot", file=sys.stderr)
        return None
    data = result.series_for_plots
    if data["kind"] == "load":
        figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
        for server in sorted({w["server"] for w in data["windows"]}):
            rows = sorted((w["offered_datagrams_per_s"] * w["lines_per_datagram"], w["accepted_lines_per_s"], w["loss"])
                          for w in data["windows"] if w["server"] == server)  # fmt: skip
            left.plot([r[0] for r in rows], [r[1] for r in rows], "o-", label=server)
            right.plot([r[0] for r in rows], [100 * r[2] for r in rows], "o-", label=server)
        left.set(xlabel="offered lines/s", ylabel="accepted lines/s", title=f"{result.scenario}: accepted vs offered")
        right.set(xlabel="offered lines/s", ylabel="kernel loss %", title="loss vs offered")
        right.axhline(0.1, color="grey", linestyle="--", linewidth=0.8)
        left.legend()
        right.legend()
    elif data["kind"] == "rss":
        figure, axis = plt.subplots(figsize=(6, 4))
        axis.plot([p[0] for p in data["points"]], [p[1] for p in data["points"]], "o-")
        axis.set(xscale="log", xlabel="live contexts", ylabel="RSS MiB", title="relay RSS vs live contexts")
    else:
        return None
    figure.tight_layout()
    path = out / f"{result.scenario}.png"
    figure.savefig(path, dpi=90)
    return path


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run one scenario")
    run.add_argument("--scenario", choices=sorted(SCENARIOS), help="a built-in scenario")
    run.add_argument("--capture", type=Path, help="or real traffic: a file from `dogstatsd-relay capture`")
    run.add_argument("--seconds", type=float, default=10.0, help="length of each measured window")
    run.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    run.add_argument("--baseline", metavar="REV", help="another git revision's relay at its defaults: the 'before' "
                     "relay of the reader-*, first-sight and client-uds scenarios (default: this relay without its "
                     "reader thread), and one more relay in workers-*, udp-1, udp-20 and mix")  # fmt: skip
    commands.add_parser("list", help="list the scenarios")
    args = parser.parse_args()
    if args.command == "list":
        print("\n".join(sorted(SCENARIOS)))
        return 0
    if (args.scenario is None) == (args.capture is None):
        parser.error("run: give --scenario NAME or --capture FILE")
    if args.capture:
        command = f"python -m benchmarks run --capture {args.capture.name} --seconds {args.seconds:g}"
        result = from_capture(args.seconds, args.capture)
    else:
        command = f"python -m benchmarks run --scenario {args.scenario} --seconds {args.seconds:g}"
        if args.baseline:
            command += f" --baseline {args.baseline}"
            BASELINE["tree"] = baseline_tree(args.baseline)
        result = SCENARIOS[args.scenario](args.seconds)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    document = {"scenario": result.scenario, "command": command, "machine": machine(), "date": time.strftime("%F"),
                "summary": result.summary, "windows": [w.as_dict() for w in result.windows]}  # fmt: skip
    (out / f"{result.scenario}.json").write_text(json.dumps(document, indent=2) + "\n")
    print(json.dumps(result.summary, indent=2))
    picture = plot(result, out)
    if not args.no_record:
        text = markdown(result, command, args.seconds)
        if picture:
            text += f"![{result.scenario}](results/{picture.name})\n\n"
        with (HERE / "RESULTS.md").open("a") as results:
            results.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
