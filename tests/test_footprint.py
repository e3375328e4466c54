"""What `run` imports: a sidecar runs in every pod, so each module it loads is paid once a pod. The operator tools'
libraries stay in their own commands. The relay runs in a subprocess of its own, so that what the other tests
imported does not count; its resident memory is measured by the `idle-footprint` benchmark, not asserted here."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import API_KEY, free_port

# `top` (rich), `intake` (the stand-in, protobuf), `provision` (the datadog client) and `init`.
OTHER_COMMANDS = (
    "rich",
    "relay.intake",
    "google.protobuf",
    "datadog",
    "relay.tools.provision",
    "relay.tools.guided_init",
)
REAL_CHECKS_BASE = "datadog_checks.base."  # its modules: the host collectors run without it

# `run` from the CLI's own table; once its first flush is done, the modules it has loaded go to a file.
RUN_UNTIL_FIRST_FLUSH = """
import json, os, signal, sys, threading, time, urllib.request
import relay.cli

run, health, out = relay.cli.COMMANDS["run"], sys.argv[1], sys.argv[2]

def after_first_flush():
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{health}/status", timeout=5) as response:
                if json.load(response)["aggregator"]["flushes"] >= 1:
                    break
        except OSError:
            pass
        time.sleep(0.1)
    with open(out, "w") as file:
        json.dump(sorted(sys.modules), file)
    os.kill(os.getpid(), signal.SIGTERM)

threading.Thread(target=after_first_flush, daemon=True).start()
sys.exit(relay.cli.main(sys.argv[3:]))
"""


@pytest.mark.parametrize("api_key", ["", API_KEY], ids=["dry-run", "with-api-key"])
def test_run_loads_no_module_of_the_other_commands(api_key: str, tmp_path: Path) -> None:
    health, modules = free_port(socket.SOCK_STREAM), tmp_path / "modules.json"
    settings = {"dogstatsd_port": free_port(), "relay.health_port": health, "relay.flush_interval": 1,
                "relay.spool_dir": tmp_path / "spool", "run_path": tmp_path}  # fmt: skip
    environment = {key: value for key, value in os.environ.items() if not key.startswith("DD_")}
    environment |= {"DD_API_KEY": api_key, "DD_DD_URL": f"http://127.0.0.1:{free_port(socket.SOCK_STREAM)}"}
    command = [sys.executable, "-c", RUN_UNTIL_FIRST_FLUSH, str(health), str(modules), "run"]
    command += [argument for key, value in settings.items() for argument in ("--set", f"{key}={value}")]
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    loaded = json.loads(modules.read_text())
    assert "relay.runtime.server" in loaded and "relay.collectors" in loaded  # it did run, with its collectors
    unwanted = [
        name for name in loaded
        if name.startswith(REAL_CHECKS_BASE) or any(name == m or name.startswith(m + ".") for m in OTHER_COMMANDS)
    ]  # fmt: skip
    assert not unwanted, unwanted
