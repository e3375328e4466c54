"""CLI: argv → one Config → run | status | config | intake. Prints and sets the exit code; holds no logic.

Each command imports what it needs in its own function: a sidecar's `run` then pays for neither the operator
tools nor their libraries (rich, protobuf, datadog), and a `health` probe, started every few seconds, for
nothing but urllib."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from relay import __version__
from relay.config import Config, ConfigError, find_config

EXIT_CONFIG = 2
EXIT_START = 3
CHECK_TIMEOUT = 60.0  # `check NAME`: seconds a run may take before it is reported as hanging


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dogstatsd-relay", description="A DogStatsD-compatible metrics relay.")
    parser.add_argument("--version", action="version", version=f"dogstatsd-relay {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("run", "run the relay"),
        ("status", "show the live status of the running relay"),
        ("config", "print the effective configuration (API key redacted)"),
        ("provision", "create or update the relay's dashboards, monitor and downtimes in Datadog"),
        ("check", "run one check once (or --times N) and print what it submitted, like `datadog-agent check`"),
        ("explain", "show how the relay parses, enriches, aggregates and would send a datagram"),
        ("doctor", "check the host, the configuration and the running relay, and print fixes"),
        ("top", "live cardinality of the running relay: lines/s and contexts per metric, custom metrics"),
        ("capture", "record the raw datagrams a running relay receives, with their timing, to a file"),
        ("replay", "play a capture back to a DogStatsD server (by default this relay's UDP port)"),
        ("reload", "re-read the configuration of the running relay without a gap (same as SIGHUP)"),
        ("init", "set up the site and API key, checked against Datadog, in a 0600 configuration file"),
    ):
        command = commands.add_parser(name, help=help_text)
        command.add_argument("-c", "--config", type=Path, help="a datadog.yaml-style file")
        command.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override one datadog.yaml key (highest precedence); repeatable",
        )
        if name == "status":
            command.add_argument("--json", action="store_true", help="print the raw status JSON")
        if name == "init":
            command.add_argument("--site", help="the Datadog site, e.g. datadoghq.eu (asked when not given)")
            command.add_argument("--api-key-file", type=Path, help="a file holding the API key (no questions asked)")
        if name == "check":
            command.add_argument("name", help="the check's name: conf.d/<name>.yaml")
            command.add_argument("--times", type=int, default=1, help="runs, 1 s apart (rates need two)")
            timeout_help = f"seconds a run may take before it counts as hanging (default {CHECK_TIMEOUT:g})"
            command.add_argument("--timeout", type=float, default=CHECK_TIMEOUT, help=timeout_help)
            command.add_argument("--json", action="store_true", help="print JSON")
        if name == "explain":
            command.add_argument("datagram", help="the datagram; \\n separates lines")
            command.add_argument("--json", action="store_true", help="print JSON")
        if name == "top":
            command.add_argument("--top", type=int, default=15, help="rows per table (default 15)")
            command.add_argument("--interval", type=float, default=2.0, help="seconds between frames (default 2)")
            command.add_argument("--once", action="store_true", help="print one frame and exit")
        if name == "capture":
            command.add_argument("--seconds", type=float, default=30.0, help="how long to record (default 30)")
            command.add_argument("-o", "--output", type=Path, required=True, help="the capture file to write")
        if name == "replay":
            command.add_argument("file", type=Path, help="a file written by `dogstatsd-relay capture`")
            command.add_argument("--speed", type=float, default=1.0, help="time factor; 0 = as fast as possible")
            command.add_argument("--target", help="HOST:PORT (UDP) or unix:PATH; default 127.0.0.1:dogstatsd_port")
        if name == "provision":
            command.add_argument("--dry-run", action="store_true", help="print the JSON that would be sent")
            command.add_argument("--downtimes", action="store_true", help="also schedule nights and weekends off")
            command.add_argument("--notify", action="append", default=[], metavar="@HANDLE",
                                 help="who the monitor notifies, e.g. @you@example.com (repeatable)")  # fmt: skip
            command.add_argument("--timezone", default="UTC", help="the downtimes' time zone, e.g. Europe/Paris")
    health = commands.add_parser("health", help="exit 0 when the running relay answers /healthz (for probes)")
    health.add_argument("-c", "--config", type=Path, help="a datadog.yaml-style file")
    health.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override one datadog.yaml key")
    intake = commands.add_parser("intake", help="run a local stand-in for Datadog's intake that shows what arrives")
    intake.add_argument("--host", default="127.0.0.1")
    intake.add_argument("--port", type=int, default=8080)
    intake.add_argument("--keep", type=int, default=100_000, help="decoded items kept per kind (default 100000)")
    intake.add_argument(
        "--api-key", default=os.environ.get("DD_API_KEY", ""),
        help="answer 403 to any other key, as Datadog does (default: $DD_API_KEY; empty: accept any key)",
    )  # fmt: skip
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "intake":
        return _intake(args.host, args.port, args.keep, args.api_key)
    try:
        overrides = dict(item.split("=", 1) for item in args.set if "=" in item)
        if len(overrides) != len(args.set):
            raise ConfigError("--set: expected KEY=VALUE")
        path = find_config(args.config, os.environ)
        config = Config.load(path, os.environ, overrides, warn=lambda message: print(message, file=sys.stderr))
    except ConfigError as error:
        print(f"config: {error}", file=sys.stderr)
        return EXIT_CONFIG
    return COMMANDS[args.command](config, args)


def _init(config: Config, args: argparse.Namespace) -> int:
    from relay.tools.guided_init import run_init

    return run_init(args.config, args.site, args.api_key_file, config.dd_url, os.environ)


def _config(config: Config, args: argparse.Namespace) -> int:
    import yaml

    print(yaml.safe_dump(config.redacted(), sort_keys=False), end="")
    return 0


def _explain(config: Config, args: argparse.Namespace) -> int:
    import json
    import time
    from dataclasses import replace

    from relay.tagger import Tagger
    from relay.tools.explain import explain, rejected, render

    data = args.datagram.encode().replace(b"\\n", b"\n")
    tagger = Tagger.from_config(config)
    if tagger is not None:
        tagger.poll()  # one read of the kubelet's pods (or Docker's containers): what the relay knows
    result = explain(replace(config, relay_host_collectors=()), data, time.time(), tagger=tagger)
    print(
        json.dumps(result, indent=2, default=str) if as_json(args) else render(result),
        end="\n" if as_json(args) else "",
    )
    return 1 if rejected(result) else 0


def _doctor(config: Config, args: argparse.Namespace) -> int:
    from relay.tools.doctor import diagnose, http_probe, status_of
    from relay.tools.doctor import render as render_findings

    findings = diagnose(config, status_of(_health_url(config, "/status"), _auth(config)), http_probe)
    print(render_findings(findings), end="")
    return 1 if any(state == "FAIL" for state, _, _ in findings) else 0


def _check(config: Config, args: argparse.Namespace) -> int:
    from relay.tools.check import run_check

    return run_check(config, args.name, args.times, args.json, args.timeout)


def _run(config: Config) -> int:
    from relay.logs import setup_logging
    from relay.runtime.listen import ListenError
    from relay.runtime.loop import run_loop
    from relay.runtime.server import Relay

    setup_logging(config.log_level, config.api_key)
    try:
        if config.worker_count > 1:
            from relay.runtime.workers import ShardedRelay

            run_loop(ShardedRelay(config, config.worker_count).run())
        else:
            run_loop(Relay(config).run())
    except (ListenError, OSError) as error:
        logging.getLogger("relay").error("cannot start: %s", error)
        return EXIT_START
    except ConfigError as error:  # a key only the running relay can judge (relay.memory_limit against the memory)
        print(f"config: {error}", file=sys.stderr)
        return EXIT_CONFIG
    return 0


def _reload(config: Config, timeout: float = 60.0) -> int:
    """The configuration was checked above (exit 2 when bad); SIGHUP to the relay that answers on the health
    endpoint, then wait until it has reloaded (exit 0) or refused (exit 3, with its reason)."""
    import signal
    import time

    from relay.tools.doctor import status_of

    url, auth = _health_url(config, "/status"), _auth(config)
    status = status_of(url, auth)
    if status is None:
        print(f"reload: no relay answers at {url}; is it running?", file=sys.stderr)
        return 1
    info = status["info"]
    before, pid = (info.get("reloads", 0), info.get("last_reload")), info.get("pid")
    if not pid:
        print(
            "reload: the running relay does not tell its PID (an older version?); restart it instead", file=sys.stderr
        )
        return 1
    os.kill(pid, signal.SIGHUP)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(0.2)
        info = (status_of(url, auth) or {}).get("info", {})
        now = (info.get("reloads", 0), info.get("last_reload"))
        if now[1] and now != before:
            if now[1]["result"] != "ok":
                print(f"reload: {now[1]['result']}", file=sys.stderr)
                return EXIT_START
            print(f"reload: done (pid {pid}, reload #{now[0]})")
            return 0
    print(f"reload: the relay did not report a reload within {timeout:g} s", file=sys.stderr)
    return 1


def _status(config: Config, as_json: bool) -> int:
    import json
    import urllib.request

    from relay.tools.status import render

    url = _health_url(config, "/status")
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=_auth(config)), timeout=5) as response:
            status = json.load(response)
    except OSError as error:  # urllib's URLError too
        return _unreachable("status", url, error)
    print(json.dumps(status, indent=2) if as_json else render(status), end="\n" if as_json else "")
    return 0


def as_json(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "json", False))


def _health_url(config: Config, path: str) -> str:
    """The running relay's health endpoint; a wildcard bind address is reached through loopback."""
    host = "127.0.0.1" if config.relay_health_host in ("0.0.0.0", "::", "") else config.relay_health_host
    return f"http://{host}:{config.relay_health_port}{path}"


def _auth(config: Config) -> dict[str, str]:
    """The header /status and /debug/* ask of a peer that is not loopback: the token the running relay keeps under
    run_path (none where this user cannot read it; from loopback none is needed)."""
    from relay.files import auth_token

    token = auth_token(config.run_directory)
    return {"Authorization": f"Bearer {token}"} if token else {}


def _unreachable(command: str, url: str, error: Exception) -> int:
    import urllib.error

    if isinstance(error, urllib.error.HTTPError):  # it answers, and refuses: say why, in its words
        print(f"{command}: {url} answered {error.code}: {error.read().decode(errors='replace').strip()}",
              file=sys.stderr)  # fmt: skip
        return 1
    print(f"{command}: no relay answers at {url} ({getattr(error, 'reason', error)}); is it running?", file=sys.stderr)
    return 1


def _top(config: Config, top: int, interval: float, once: bool) -> int:
    from rich.console import Console

    from relay.tools.top import run

    url = _health_url(config, "/debug/cardinality")
    try:
        run(url, _auth(config), top, interval, once, Console())
    except OSError as error:
        return _unreachable("top", url, error)
    except KeyboardInterrupt:
        pass
    return 0


def _capture(config: Config, seconds: float, output: Path) -> int:
    import urllib.request
    from collections import Counter

    from relay.runtime.capture import read_records

    url = _health_url(config, f"/debug/capture?seconds={seconds:g}")
    print(f"capture: recording {seconds:g} s from {url.split('/debug')[0]} to {output}", file=sys.stderr)
    try:
        request = urllib.request.Request(url, headers=_auth(config))
        with urllib.request.urlopen(request, timeout=seconds + 30) as response, output.open("wb") as file:
            while chunk := response.read1(65536):  # as it comes: the file grows while recording
                file.write(chunk)
                file.flush()
    except OSError as error:
        return _unreachable("capture", url, error)
    records = list(read_records(output))
    lines = sum(len(list(filter(None, record.datagram.split(b"\n")))) for record in records)
    by_transport = ", ".join(f"{t} {n:,}" for t, n in sorted(Counter(r.transport for r in records).items()))
    print(f"capture: {len(records):,} datagrams ({lines:,} lines; {by_transport or 'none'}) written to {output}")
    from relay.tools.doctor import status_of

    info = (status_of(_health_url(config, "/status"), _auth(config)) or {}).get("info", {})
    dropped = (info.get("last_capture") or {}).get("dropped")
    if dropped:
        print(f"capture: {dropped:,} datagrams not recorded: this reader was too slow", file=sys.stderr)
        return 1
    return 0


def _replay(path: Path, target: str, speed: float) -> int:
    from relay.runtime.capture import read_records
    from relay.tools.replay import replay

    try:
        result = replay(read_records(path), target, speed)
    except (OSError, ValueError) as error:
        print(f"replay: {error}", file=sys.stderr)
        return 1
    print(
        f"replay: {result.datagrams:,} datagrams ({result.bytes:,} bytes) sent to {target} in {result.seconds:.2f} s"
        f" at speed {speed:g}; {result.errors:,} refused by the socket"
    )
    return 1 if result.errors else 0


def _health(config: Config) -> int:
    import urllib.request

    try:
        with urllib.request.urlopen(_health_url(config, "/healthz"), timeout=4):
            return 0
    except OSError as error:
        print(f"health: {getattr(error, 'reason', error)}", file=sys.stderr)
        return 1


def _provision(config: Config, dry_run: bool, with_downtimes: bool, notify: tuple[str, ...], timezone: str) -> int:
    import zoneinfo

    from relay.tools.provision import ProvisionError, provision

    if bad := [handle for handle in notify if not handle.startswith("@")]:
        print(f"provision: --notify: a handle starts with @ (as in @you@example.com), got {bad[0]!r}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        zoneinfo.ZoneInfo(timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        problem = f"unknown time zone {timezone!r} (an IANA name, e.g. Europe/Paris)"
        print(f"provision: --timezone: {problem}", file=sys.stderr)
        return EXIT_CONFIG
    if not dry_run and not (config.api_key and config.app_key):
        print("provision: needs DD_API_KEY and DD_APP_KEY (or --dry-run)", file=sys.stderr)
        return EXIT_CONFIG
    try:
        return provision(config, config.app_key, with_downtimes=with_downtimes, dry_run=dry_run, out=print,
                         notify=notify, timezone=timezone)  # fmt: skip
    except ImportError:
        print("provision: needs the datadog package: pip install 'dogstatsd-relay[provision]'", file=sys.stderr)
        return EXIT_CONFIG
    except ProvisionError as error:
        print(f"provision: {error}", file=sys.stderr)
        return 1


def _intake(host: str, port: int, keep: int, api_key: str) -> int:
    import asyncio
    import contextlib

    from relay.config import redact

    try:
        import google.protobuf  # noqa: F401  (the stand-in decodes payloads with Google's runtime)

        from relay.intake.server import Intake
    except ImportError:
        print(
            "intake: the stand-in decodes payloads with protobuf: pip install 'dogstatsd-relay[intake]'",
            file=sys.stderr,
        )
        return EXIT_CONFIG

    async def serve() -> None:
        await Intake(keep=keep, api_key=api_key).start(host, port)
        checked = f", accepting only the API key {redact(api_key)}" if api_key else ", accepting any API key"
        print(f"intake stand-in on http://{host}:{port} (decoded payloads at /_received){checked}", file=sys.stderr)
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
    return 0


# Each command, given the configuration (read once, above) and its arguments, returns the exit code.
COMMANDS: dict[str, Callable[[Config, argparse.Namespace], int]] = {
    "run": lambda config, args: _run(config),
    "init": _init,
    "config": _config,
    "status": lambda config, args: _status(config, args.json),
    "health": lambda config, args: _health(config),
    "explain": _explain,
    "doctor": _doctor,
    "check": _check,
    "top": lambda config, args: _top(config, args.top, args.interval, args.once),
    "capture": lambda config, args: _capture(config, args.seconds, args.output),
    "replay": lambda config, args: _replay(args.file, args.target or f"127.0.0.1:{config.dogstatsd_port}", args.speed),
    "provision": lambda config, args: _provision(
        config, args.dry_run, args.downtimes, tuple(args.notify), args.timezone
    ),
    "reload": lambda config, args: _reload(config),
}
