"""A broken intake: the relay retries or sends as the Agent would, counts it, and never stops ingesting."""

from __future__ import annotations

import asyncio

import pytest

from tests.conftest import free_port, run_relay, wait_for
from tests.test_e2e import total


@pytest.mark.parametrize(
    ("behaviour", "expected"),
    [("hang", "retried"), ("reset", "retried"), ("refused", "retried"), ("slow", "sent"), ("garbage", "sent")],
)
async def test_broken_intake(intake, tmp_path, behaviour, expected):
    stand_in, url = intake
    if behaviour == "refused":
        url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    else:
        stand_in.behaviour = behaviour
    async with run_relay(tmp_path, url, DD_FORWARDER_TIMEOUT="1") as relay:
        for index in range(1, 11):  # ingest goes on while the intake misbehaves
            relay.send_udp(b"fault.count:%d|c" % index)
            await asyncio.sleep(0.25)
        await wait_for(lambda: relay.status()["messages"]["metric"]["ok"] == 10)
        await wait_for(lambda: relay.status()["forwarder"]["payloads"].get("/api/v2/series", {}).get(expected, 0) > 0)
        if expected == "retried" and behaviour != "refused":
            stand_in.behaviour = "normal"  # the intake heals: everything still arrives, once
            await wait_for(lambda: total(stand_in.series, "fault.count") == 55, timeout=30)
        status = relay.status()
        code, _, err = await relay.stop(timeout=60)
    assert code == 0, err
    assert status["dropped"].get("internal_error", 0) == 0
    series = status["forwarder"]["payloads"].get("/api/v2/series", {})
    print(
        f"reliability: intake that is {behaviour}: 10 samples ingested meanwhile, payloads sent {series.get('sent', 0)}, "
        f"retried {series.get('retried', 0)}, at the intake {total(stand_in.series, 'fault.count'):g} of 55"
    )
    if expected == "sent":
        assert total(stand_in.series, "fault.count") == 55
    if behaviour == "refused":
        assert "ClientConnectorError" in status["forwarder"]["http_errors"]
