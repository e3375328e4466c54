"""The documentation stays true: the configuration reference, the drop reasons, the sample outputs and the figures.

Sample outputs. A fenced block right after `<!-- sample: NAME -->` in README.md or docs/*.md is checked against what
its commands print when run for real (SAMPLES[NAME] runs them, against a real relay where they need one):

- a line starting with `$ ` is a command shown to the reader, not checked;
- a line that is `...` or `…` stands for printed lines left out (abridged);
- a line ending in `…` is checked up to the `…` (the rest of that printed line is left out);
- every other line must be one of the printed lines, after `normalize`: numbers (times, durations, counts, sizes,
  ports, timestamps) become N, runs of spaces and of `-` shrink (a table's column widths follow its numbers), and
  the test's home directory is shown as `~`.

Every block in README.md and docs/OPERATIONS.md whose first line is a `$ ` command must be marked as a sample.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from relay.config import ENV_NAMES, FIELD_BY_KEY, KEY_BY_FIELD, Config
from tests.conftest import free_port

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
CONFIGURATION = DOCS / "CONFIGURATION.md"
OPERATIONS = DOCS / "OPERATIONS.md"
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
SAMPLE_MARK = re.compile(r"<!-- sample: ([\w-]+) -->\n```\w*\n(.*?)\n```", re.S)


# --- the configuration reference -------------------------------------------------------------------------------

# Defaults computed at start, as the table writes them.
COMPUTED_DEFAULTS = {
    "hostname": "detected",
    "run_path": "`~/.local/state/dogstatsd-relay`",
    "relay_spool_dir": "`<run_path>/transactions_to_retry`",
}


def rendered_default(field: dataclasses.Field[object]) -> str:
    """A field's default as the table shows it: `empty` for "" and (), lists space-separated, booleans lowercase."""
    if field.name in COMPUTED_DEFAULTS:
        return COMPUTED_DEFAULTS[field.name]
    value = field.default
    if value in ("", ()):
        return "empty"
    if isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, tuple):
        text = " ".join(map(str, value))
    elif isinstance(value, float):
        text = f"{value:g}"
    else:
        text = str(value)
    return f"`{text}`"


def configuration_rows() -> dict[str, list[str]]:
    """The table's rows by key: [environment, default, meaning]."""
    rows = {}
    for line in CONFIGURATION.read_text().splitlines():
        if match := re.match(r"\| `([\w.]+)` \| (.*?) \| (.*?) \| (.*) \|$", line):
            key, *cells = match.groups()
            assert key not in rows, f"{key} has two rows"
            rows[key] = cells
    return rows


def test_the_configuration_table_has_every_key_with_its_variables_and_default():
    rows = configuration_rows()
    for field in dataclasses.fields(Config):
        key = KEY_BY_FIELD[field.name]
        assert key in rows, f"docs/CONFIGURATION.md has no row for {key}"
        environment, default, _ = rows[key]
        assert environment == ", ".join(f"`{name}`" for name in ENV_NAMES[field.name]), key
        assert default == rendered_default(field), f"{key}: the table says {default}"


def test_the_configuration_table_names_no_key_that_does_not_exist():
    unknown = set(configuration_rows()) - set(FIELD_BY_KEY)
    assert not unknown, f"docs/CONFIGURATION.md documents keys the relay does not have: {sorted(unknown)}"


# --- the drop reasons --------------------------------------------------------------------------------------------

DROP_SITES = (
    re.compile(r'dropped\["(\w+)"\]'),  # stats.dropped["reason"] += n
    re.compile(r'_refuse\(\w+, "(\w+)"\)'),  # the spool's refusals
    re.compile(r'_spool_or_drop\([\w.]+, "(\w+)"\)'),  # the forwarder's evictions
)


def test_the_drop_reasons_table_names_every_reason_the_code_counts():
    counted = {
        reason
        for path in (ROOT / "relay").rglob("*.py")
        for pattern in DROP_SITES
        for reason in pattern.findall(path.read_text())
    }
    assert len(counted) > 15, "the patterns no longer find the drop sites"
    section = OPERATIONS.read_text().split("## Drop reasons", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `(\w+)` \|", section, re.M))
    assert counted - documented == set(), "counted in relay/ but not in docs/OPERATIONS.md"
    assert documented - counted == set(), "in docs/OPERATIONS.md but counted nowhere"


# --- the figures ------------------------------------------------------------------------------------------------


def figure_rows() -> list[list[str]]:
    section = README.read_text().split("## Figures", 1)[1].split("\n## ", 1)[0]
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in section.splitlines()]
    return [row for row in rows if len(row) == 4 and row[0] not in ("measure", "---")]


def prose(text: str) -> str:
    """The text outside fenced code blocks."""
    return re.sub(r"```.*?```", "", text, flags=re.S)


def test_every_figure_names_a_scenario_and_a_dated_run_in_the_results():
    headings = [line for line in RESULTS.read_text().splitlines() if line.startswith("#")]
    rows = figure_rows()
    assert len(rows) >= 5
    for measure, _, scenario, date in rows:
        name = scenario.strip("`")
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", date), f"{measure}: no date"
        assert any(name in heading and date in heading for heading in headings), (
            f"{measure}: benchmarks/RESULTS.md has no section for {name} on {date}"
        )


def test_every_figure_appears_once_in_the_readme():
    text = prose(README.read_text())
    for measure, result, _, _ in figure_rows():
        for figure in re.findall(r"\d[\d,.]*\d|\d", result):
            found = re.findall(rf"(?<![\d,.]){re.escape(figure)}(?![\d,]|\.\d)", text)
            assert len(found) == 1, f"{figure} ({measure}) appears {len(found)} times in the README"


def test_the_readme_stays_short_and_its_links_resolve():
    assert len(README.read_text().splitlines()) < 300
    for page in (README, *DOCS.glob("*.md")):
        for target in re.findall(r"\]\((?!https?:|#)([^)#]+)", page.read_text()):
            assert (page.parent / target).exists(), f"{page.name} links to {target}, which does not exist"


# --- the sample outputs -----------------------------------------------------------------------------------------


def normalize(line: str, home: str = "") -> str:
    if home:
        line = line.replace(home, "~")
    line = re.sub(r"\d+(?:[.,]\d+)*", "N", line)
    line = re.sub(r"-{2,}", "--", line)
    return re.sub(r"\s+", " ", line).strip()


def samples() -> dict[str, tuple[Path, list[str]]]:
    found = {}
    for page in (README, *sorted(DOCS.glob("*.md"))):
        for name, block in SAMPLE_MARK.findall(page.read_text()):
            assert name not in found, f"two samples named {name}"
            found[name] = (page, block.splitlines())
    return found


def assert_shown_lines_were_printed(name: str, printed: str, home: str = "") -> None:
    page, shown = samples()[name]
    lines = {normalize(line, home) for line in printed.splitlines()}
    for line in shown:
        if line.startswith("$ ") or line.strip() in ("...", "…"):
            continue
        if line.endswith("…"):
            start = normalize(line[:-1], home)
            assert any(printed_line.startswith(start) for printed_line in lines), f"{page.name} {name}: {line}"
        else:
            assert normalize(line, home) in lines, f"{page.name} {name}: {line!r} is not printed\n{printed}"


def test_every_shown_command_output_is_a_checked_sample():
    for page in (README, OPERATIONS):
        text = page.read_text()
        for match in re.finditer(r"(<!-- sample: [\w-]+ -->\n)?```\w*\n(\$ [^\n]*)", text):
            assert match.group(1), f"{page.name}: the output of `{match.group(2)}` is shown but not checked"
    assert set(samples()) == set(SAMPLES), "a sample without its producer, or a producer without its sample"


class Relay:
    """`dogstatsd-relay run` as a newcomer starts it (defaults, a dry run), with its home in a temporary directory."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.stdout = home / "stdout"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith(("DD_", "XDG_"))}
        self.env.update(
            HOME=str(home),
            DD_HOSTNAME="vm",
            DD_DOGSTATSD_PORT=str(free_port()),
            DD_RELAY_HEALTH_PORT=str(free_port(socket.SOCK_STREAM)),
            DD_RELAY_FLUSH_INTERVAL="1",  # the samples' times and values are normalized: a flush a second is enough
        )
        rmem_max = _rmem_max()
        if rmem_max is not None and rmem_max < Config().dogstatsd_so_rcvbuf:
            # The doctor's first line keeps its shape where net.core.rmem_max is below the default (numbers vary).
            self.env["DD_DOGSTATSD_SO_RCVBUF"] = str(rmem_max)
        self.health = f"http://127.0.0.1:{self.env['DD_RELAY_HEALTH_PORT']}"

    def command(self, *args: str, check: bool = False) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [sys.executable, "-m", "relay", *args], env=self.env, capture_output=True, text=True, timeout=60
        )
        assert not check or result.returncode == 0, result.stderr
        return result

    def get(self, path: str) -> str:
        with urllib.request.urlopen(self.health + path, timeout=5) as response:
            return response.read().decode()

    def printed(self) -> str:
        return self.stdout.read_text()


def _rmem_max() -> int | None:
    try:
        return int(Path("/proc/sys/net/core/rmem_max").read_text())
    except (OSError, ValueError):
        return None


def _until(condition: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Relay]:
    """One dry-run relay for the README's samples, fed the README's first metrics once it answers."""
    relay = Relay(tmp_path_factory.mktemp("home"))
    with relay.stdout.open("w") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "relay", "run"], env=relay.env, stdout=out, stderr=subprocess.DEVNULL
        )
    try:
        _until(lambda: _answers(relay, process))
        lines = b"page.views:1|c|#env:dev\nmy_metric:42|g|#check_group:test\nresp.size:5|d\ncheckout.duration:350|ms"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.sendto(lines, ("127.0.0.1", int(relay.env["DD_DOGSTATSD_PORT"])))
        _until(lambda: "resp.size" in relay.printed() and "host series" in relay.printed())
        yield relay
    finally:
        process.terminate()
        process.wait(timeout=30)


def _answers(relay: Relay, process: subprocess.Popen[bytes]) -> bool:
    assert process.poll() is None, f"the relay exited with {process.returncode}"
    try:
        relay.get("/healthz")
        return True
    except OSError:
        return False


def dry_run(relay: Relay) -> str:
    return relay.printed()


def status(relay: Relay) -> str:
    return relay.command("status", check=True).stdout + relay.get("/ready") + "\n"


def doctor(relay: Relay) -> str:
    return relay.command("doctor").stdout


def explain(relay: Relay) -> str:
    # It exits 1: one of the two lines is rejected.
    return relay.command("explain", "page.views:1|c|@0.5|#env:prod,host:web-1\\nbad line").stdout


def memory_limit(relay: Relay) -> str:
    result = relay.command("run", "--set", "relay.memory_limit=48Mi")
    assert result.returncode == 2
    return result.stderr


def provision(relay: Relay) -> str:
    args = ("provision", "--dry-run", "--downtimes", "--notify", "@you@example.com", "--timezone", "Europe/Paris")
    printed = relay.command(*args, check=True).stdout
    assert json.loads(printed)["downtimes"][0]["monitor_id"] is None
    return printed


SAMPLES: dict[str, Callable[[Relay], str]] = {
    "dry-run": dry_run,
    "status": status,
    "doctor": doctor,
    "explain": explain,
    "memory-limit": memory_limit,
    "provision": provision,
}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_each_sample_is_what_its_command_prints(name: str, relay: Relay) -> None:
    assert_shown_lines_were_printed(name, SAMPLES[name](relay), str(relay.home))
