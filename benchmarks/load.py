"""The load (pre-built datagrams from a fixed seed), the rate sweep and the relays compared: what every
scenario shares."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.harness import (
    Intake,
    Relay,
    Server,
    Window,
    measure,
    write_datagrams,
)

SEED = 20261123
NEW_CONTEXT_RATE = 1000  # datagrams/s of 20 new contexts each: first sightings take the reference parser
TYPES = ("c", "g", "ms", "h", "s", "d")


def lines(count: int, contexts: int, mix: bool, rng: random.Random) -> list[bytes]:
    """Metric lines over `contexts` distinct contexts; with `mix`, all six types, tags and sample rates."""
    out = []
    for i in range(count):
        context = i % contexts
        name = f"bench.metric.{context % 500}"
        tags = f"#env:bench,service:relay,ctx:{context // 500}"
        if not mix:
            out.append(f"{name}:{rng.randint(0, 1000)}|c|{tags}".encode())
            continue
        kind = TYPES[context % len(TYPES)]
        value = f"user{rng.randint(0, 50)}" if kind == "s" else f"{rng.uniform(0, 500):.3f}"
        rate = "|@0.5" if kind in ("c", "ms", "h") and context % 3 == 0 else ""
        out.append(f"{name}.{kind}:{value}|{kind}{rate}|{tags}".encode())
    return out


def datagrams(per_datagram: int, contexts: int, mix: bool, count: int) -> list[bytes]:
    rng = random.Random(SEED)
    all_lines = lines(per_datagram * count, contexts, mix, rng)
    return [b"\n".join(all_lines[i : i + per_datagram]) for i in range(0, len(all_lines), per_datagram)]


def sweep(
    server: Server, file: Any, per_datagram: float, seconds: float, steps: int = 6, clients: int = 1
) -> tuple[float, list[Window]]:
    """The highest rate (datagrams/s) sent with < 0.1 % loss: a flat-out run, then a bisection. A rate the
    generator could not reach counts for what it sent."""
    flat = measure(server, file, per_datagram, 0, min(seconds, 5), clients)
    windows = [flat]
    best = flat.sent_datagrams / flat.seconds if flat.loss < 0.001 else 0.0  # the generator's ceiling, all taken
    worst: float | None = None
    rate = max(flat.accepted_lines_per_s / per_datagram * 0.9, 100)
    for _ in range(steps):
        window = measure(server, file, per_datagram, rate, seconds, clients)
        windows.append(window)
        if window.loss < 0.001:
            best = max(best, window.sent_datagrams / window.seconds)  # what was sent: the generator may fall short
            rate = rate * 1.2 if worst is None else (rate + worst) / 2
        else:
            worst = rate
            rate = (best + rate) / 2 if best else rate * 0.6
    return best, windows


def sweep_default_relay(grams: list[bytes], per_datagram: float, seconds: float) -> tuple[float, list[Window]]:
    """`sweep` of these datagrams against a relay with the default configuration, sending to an intake stand-in."""
    file = write_datagrams(grams)
    intake = Intake()
    relay = Relay(intake.url)
    try:
        return sweep(relay, file, per_datagram, seconds)
    finally:
        relay.stop()
        intake.stop()
        file.unlink()


def sweep_each(
    servers: list[Callable[[], Server]], file: Path, per_datagram: int, seconds: float, summary: dict[str, Any]
) -> list[Window]:
    """`sweep` each server in turn (started, swept, stopped); its figures go into `summary` under its name."""
    windows: list[Window] = []
    for make in servers:
        server = make()
        try:
            best, measured = sweep(server, file, per_datagram, seconds)
        finally:
            server.stop()
        windows += measured
        summary[f"{server.name}_max_datagrams_per_s"] = round(best)
        summary[f"{server.name}_max_lines_per_s"] = round(best * per_datagram)
        summary[f"{server.name}_flat_out_lines_per_s"] = round(measured[0].accepted_lines_per_s)
    return windows


@dataclass
class Result:
    scenario: str
    summary: dict[str, Any]
    windows: list[Window]
    series_for_plots: dict[str, Any]


def compare(
    name: str, seconds: float, mix: bool, variants: dict[str, tuple[set[int], dict[str, str]]], clients: int = 1,
    trees: dict[str, Path] | None = None,
) -> Result:  # fmt: skip
    """One 20-line load swept against relays that differ only by their cores and environment, in turn; `trees`
    runs a variant from another checkout (baseline_tree)."""
    file = write_datagrams(datagrams(20, 1000, mix, 5000))
    intake = Intake()
    summary: dict[str, Any] = {"lines_per_datagram": 20, "type_mix": mix, "client_sockets": clients}
    windows: list[Window] = []
    try:
        for label, (cpus, env) in variants.items():
            options: dict[str, Any] = env
            relay = Relay(intake.url, cpus=cpus, tree=(trees or {}).get(label), **options)
            relay.name = f"dogstatsd-relay ({label.replace('_', ' ')})"
            try:
                best, measured = sweep(relay, file, 20, seconds, clients=clients)
            finally:
                relay.stop()
            windows += measured
            summary[f"{label}_max_lines_per_s"] = round(best * 20)
    finally:
        intake.stop()
        file.unlink()
    return Result(name, summary, windows, {"kind": "load", "windows": [w.as_dict() for w in windows]})


# "before": the relay of another revision at its defaults (`--baseline REV`, see baseline_tree); without one,
# this relay as it reads without its reader thread (the event loop reads the sockets, with the OS buffer).
BASELINE: dict[str, Path | None] = {"tree": None}
EVENT_LOOP_READER = {"DD_RELAY_RECEIVE_QUEUE_BYTES": "0", "DD_DOGSTATSD_SO_RCVBUF": "0"}
READERS = ("before", "after")


def labelled_relay(intake_url: str, label: str, **env: Any) -> Relay:
    tree = BASELINE["tree"] if label == "before" else None
    before: dict[str, Any] = EVENT_LOOP_READER if label == "before" and tree is None else {}
    relay = Relay(intake_url, tree=tree, **before, **env)
    relay.name = f"dogstatsd-relay ({label})"
    return relay
