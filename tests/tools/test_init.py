"""`dogstatsd-relay init` in a real terminal, and the configuration search path it writes into."""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
from pathlib import Path

import pexpect
import yaml

from tests.conftest import API_KEY, run_relay, wait_for

WRONG_KEY = "wrong0key0that0the0intake0rejects"


def _env(home: Path, url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DD_")}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), DD_DD_URL=url, TERM="dumb")
    return env


def _guided(env: dict[str, str]) -> tuple[int, str]:
    """The user's side of the dialogue: site 4, a wrong key, then the right one."""
    child = pexpect.spawn(sys.executable, ["-m", "relay", "init"], env=env, encoding="utf-8", timeout=30)
    transcript: list[str] = []
    child.logfile_read = _Collect(transcript)
    child.expect(r"Site \[1-7")
    child.sendline("4")
    child.expect("API key \\(input hidden\\): ")
    child.sendline(WRONG_KEY)
    child.expect("is not valid")
    child.expect("API key \\(input hidden\\): ")
    child.sendline(API_KEY)
    child.expect(pexpect.EOF)
    child.close()
    return child.exitstatus or 0, "".join(transcript)


class _Collect:
    def __init__(self, into: list[str]) -> None:
        self.into = into

    def write(self, text: str) -> None:
        self.into.append(text)

    def flush(self) -> None:
        return None


async def test_init_in_a_terminal_refuses_a_rejected_key_then_writes_0600_and_a_bare_run_ships(intake, tmp_path):
    stand_in, url = intake
    env = _env(tmp_path / "home", url)
    code, transcript = await asyncio.to_thread(_guided, env)
    path = tmp_path / "home" / ".config" / "dogstatsd-relay" / "datadog.yaml"
    assert code == 0, transcript
    assert "rejected the key (HTTP 403)" in transcript and f"***{WRONG_KEY[-5:]}" in transcript
    assert API_KEY not in transcript and WRONG_KEY not in transcript  # the terminal never shows a key
    assert f"wrote {path} (mode 0600)" in transcript and "dogstatsd-relay run\r\n" in transcript
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    written = yaml.safe_load(path.read_text())
    assert written["api_key"] == API_KEY and written["site"] == "datadoghq.eu" and written["dd_url"] == url
    # A bare `run` (no flag, no DD_API_KEY) finds the file and ships with that key.
    async with run_relay(tmp_path, None, HOME=env["HOME"], XDG_CONFIG_HOME=env["XDG_CONFIG_HOME"]) as relay:
        relay.send_udp(b"after.init:1|c")
        await wait_for(lambda: any(s["metric"] == "after.init" for s in stand_in.series))
        status = relay.status()
        code, out, err = await relay.stop()
    assert status["info"]["api_key_valid"] is True and API_KEY not in out + err


async def test_init_for_scripts_takes_the_site_and_a_key_file_and_fails_on_a_rejected_key(intake, tmp_path):
    _, url = intake
    env = _env(tmp_path / "home", url)
    target = tmp_path / "relay.yaml"
    target.write_text("dogstatsd_port: 9125\n")  # kept: init changes only the site and the key
    key_file = tmp_path / "key"

    def init() -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "relay", "init", "--config", str(target), "--site", "datadoghq.com",
                   "--api-key-file", str(key_file)]  # fmt: skip
        return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)

    key_file.write_text(WRONG_KEY + "\n")
    rejected = await asyncio.to_thread(init)
    key_file.write_text(API_KEY + "\n")
    accepted = await asyncio.to_thread(init)
    assert rejected.returncode == 1 and "rejected the key (HTTP 403)" in rejected.stdout
    assert accepted.returncode == 0 and f"dogstatsd-relay run --config {target}" in accepted.stdout
    assert WRONG_KEY not in rejected.stdout + rejected.stderr and API_KEY not in accepted.stdout + accepted.stderr
    written = yaml.safe_load(target.read_text())
    assert written["dogstatsd_port"] == 9125 and written["api_key"] == API_KEY
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    no_terminal = subprocess.run([sys.executable, "-m", "relay", "init"], env=env, capture_output=True, text=True,
                                 stdin=subprocess.DEVNULL, timeout=60)  # fmt: skip
    assert no_terminal.returncode == 1 and "--api-key-file" in no_terminal.stdout


def test_a_redacted_key_fed_back_is_refused_and_config_shows_the_effective_paths(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("DD_")}
    env.update(HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path / "xdg"), DD_API_KEY=API_KEY)
    shown = subprocess.run([sys.executable, "-m", "relay", "config"], env=env, capture_output=True, text=True)
    printed = yaml.safe_load(shown.stdout)
    assert printed["api_key"] == "***" + API_KEY[-5:] and API_KEY not in shown.stdout
    assert printed["run_path"] == str(tmp_path / ".local" / "state" / "dogstatsd-relay")
    assert printed["relay.spool_dir"] == printed["run_path"] + "/transactions_to_retry"
    (tmp_path / "fed-back.yaml").write_text(shown.stdout)
    del env["DD_API_KEY"]
    fed = subprocess.run([sys.executable, "-m", "relay", "config", "-c", str(tmp_path / "fed-back.yaml")], env=env,
                         capture_output=True, text=True)  # fmt: skip
    assert fed.returncode == 2
    assert (
        fed.stderr.strip()
        == "config: api_key: is a redacted key, as `dogstatsd-relay config` prints it: put the whole key there"
    )
