"""`dogstatsd-relay doctor`: concrete findings from the host, the configuration and a running relay."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

from relay.doctor import diagnose
from tests.conftest import API_KEY, run_relay, wait_for
from tests.conftest import config as make_config


def test_findings_from_a_status_with_drops_and_a_refused_key():
    cfg = make_config(hostname="h", api_key="0" * 32, dogstatsd_so_rcvbuf=1 << 40, dd_url="http://127.0.0.1:1")
    status = {"info": {"version": "x", "uptime_seconds": 1},
              "listeners": {"udp": {"truncated": 3, "kernel_drops": 7}}}  # fmt: skip
    findings = {what: (state, detail) for state, what, detail in diagnose(cfg, status, lambda url, headers: 403)}
    assert findings["receive buffer"][0] == "FAIL" and "sysctl -w net.core.rmem_max" in findings["receive buffer"][1]
    assert findings["udp datagram size"][0] == "FAIL" and findings["udp kernel drops"][0] == "FAIL"
    assert findings["API key"][0] == "FAIL" and "HTTP 403" in findings["API key"][1]
    assert "0" * 32 not in str(findings)


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
    assert "[OK  ] API key: ***" in result.stdout and API_KEY not in result.stdout
    assert result.returncode == 0, result.stdout
