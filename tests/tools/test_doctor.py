"""`dogstatsd-relay doctor`: concrete findings from the host, the configuration and a running relay."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.error
import urllib.request

from relay.tools.doctor import diagnose
from tests.conftest import API_KEY, run_relay, wait_for
from tests.conftest import config as make_config


def test_findings_from_a_status_with_drops_and_a_refused_key():
    cfg = make_config(hostname="h", api_key="0" * 32, dogstatsd_so_rcvbuf=1 << 40, dd_url="http://127.0.0.1:1")
    status = {"info": {"version": "x", "uptime_seconds": 1, "api_key": "***00000", "api_key_valid": False,
                       "endpoint": "https://app.datadoghq.com"},
              "listeners": {"udp": {"truncated": 3, "kernel_drops": 7}}}  # fmt: skip
    findings = {what: (state, detail) for state, what, detail in diagnose(cfg, status, lambda url, headers: 403)}
    assert findings["receive buffer"][0] == "FAIL" and "sysctl -w net.core.rmem_max" in findings["receive buffer"][1]
    assert findings["udp datagram size"][0] == "FAIL" and findings["udp kernel drops"][0] == "FAIL"
    assert findings["API key"][0] == "FAIL" and "running relay's key ***00000 is rejected" in findings["API key"][1]
    alone = {what: (state, detail) for state, what, detail in diagnose(cfg, None, lambda url, headers: 403)}
    assert alone["API key"][0] == "FAIL" and "HTTP 403" in alone["API key"][1]  # no relay: this shell's key
    assert "0" * 32 not in str(findings) + str(alone)


async def test_doctor_against_a_running_relay(intake, tmp_path):
    _, url = intake
    async with run_relay(tmp_path, url, DD_DOGSTATSD_SO_RCVBUF="65536") as relay:
        relay.send_udp(b"ok:1|c")
        await wait_for(lambda: relay.status()["listeners"]["udp"]["packets"] == 1)
        env = {**os.environ, **relay.env}
        command = [sys.executable, "-m", "relay", "doctor"]  # in a thread: the intake answers in this loop
        result = await asyncio.to_thread(subprocess.run, command, env=env, capture_output=True, text=True)
        await relay.stop()
    assert "[OK  ] running relay" in result.stdout and "[OK  ] traffic" in result.stdout
    assert "[OK  ] API key: the running relay's key ***" in result.stdout and API_KEY not in result.stdout
    assert result.returncode == 0, result.stdout


async def test_a_rejected_key_makes_the_relay_not_ready_and_doctor_names_the_running_relays_key(intake, tmp_path):
    """Every payload answered 403: /ready turns 503 within a few flushes, with the reason; doctor, run from a shell
    without any key, reports the running relay's key as rejected."""
    stand_in, url = intake
    wrong = "f" * 32
    async with run_relay(tmp_path, url, DD_API_KEY=wrong) as relay:
        for _ in range(3):
            relay.send_udp(b"rejected.metric:1|c")
            await asyncio.sleep(1.1)

        def not_ready() -> dict | None:
            try:
                with urllib.request.urlopen(relay.health + "/ready", timeout=5):
                    return None
            except urllib.error.HTTPError as error:
                return json.load(error) if error.code == 503 else None

        ready = await wait_for(not_ready, 20)
        env = {k: v for k, v in {**os.environ, **relay.env}.items() if k != "DD_API_KEY"}
        command = [sys.executable, "-m", "relay", "doctor"]
        result = await asyncio.to_thread(subprocess.run, command, env=env, capture_output=True, text=True)
        await relay.stop()
    assert any("the intake rejects the API key ***fffff" in reason for reason in ready["reasons"]), ready
    assert "[FAIL] API key: the running relay's key ***fffff is rejected" in result.stdout, result.stdout
    assert result.returncode == 1 and wrong not in result.stdout and not stand_in.series
