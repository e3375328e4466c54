"""The drops only a client sees: the official Python client at its defaults over a Unix socket whose kernel queue is
full drops sends on EAGAIN, and says so in its own telemetry, which the relay reads as it passes through."""

from __future__ import annotations

import asyncio
import os
import signal

from datadog import DogStatsd

from relay.runtime.readers import unix_dgram_qlen
from tests.conftest import run_relay, wait_for
from tests.tools.test_operator_tools import cli

SENT = 200


async def test_what_the_client_could_not_send_is_counted_from_its_own_telemetry(intake, tmp_path, short_tmp):
    stand_in, url = intake
    socket_path = str(short_tmp / "dsd.socket")
    async with run_relay(tmp_path, url, DD_DOGSTATSD_SOCKET=socket_path, DD_RELAY_PROBE_INTERVAL="0") as relay:
        client = DogStatsd(socket_path=socket_path)  # the defaults: no buffering, telemetry every 10 s
        os.kill(relay.process.pid, signal.SIGSTOP)  # nobody reads: the socket's queue fills and sends fail
        try:
            for _ in range(SENT):
                client.increment("app.requests")
        finally:
            os.kill(relay.process.pid, signal.SIGCONT)
        # The client sends its telemetry with the first metric 10 s after the last telemetry it sent: a metric
        # every half second from 10 s on, until the relay has counted what the telemetry reported.
        await asyncio.sleep(10)

        def reported() -> dict:
            client.increment("app.after")
            return relay.status()["client_drops"].get("uds", {}).get("py", {})

        drops = await wait_for(reported, timeout=25, step=0.5)
        arrived = await wait_for(lambda: relay.status()["messages"]["metric"]["ok"] > 1 and relay.status())
        shown = await cli(relay.env, "status")
        doctor = await cli(relay.env, "doctor")
        client.close_socket()
        await relay.stop()
    counted = sum(value * s["interval"] for s in stand_in.series if s["metric"] == "app.requests"
                  for _, value in s["points"])  # fmt: skip
    # Every increment either reached the relay or is in the client's own count of what it could not send.
    assert drops["writer"] > 0 and drops["total"] == drops["writer"] + drops.get("queue", 0)
    assert counted + drops["writer"] == SENT, (counted, drops, arrived["listeners"])
    assert f"Client-side drops over uds (py client's telemetry): {drops['total']}" in shown.stdout
    assert "[FAIL] uds client drops" in doctor.stdout
    qlen = unix_dgram_qlen()
    assert ("[WARN] unix socket queue" in doctor.stdout) == (qlen is not None and qlen < 512)
