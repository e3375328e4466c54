"""Security defaults: the API key never shows, sockets are not world-writable, proxies are honoured."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import stat
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp import ClientSession, web

from relay.intake.server import Intake
from tests.conftest import API_KEY, run_relay, wait_for

HEALTH_SOURCE = (Path(__file__).resolve().parent.parent / "relay" / "runtime" / "health.py").read_text()
RELAY_PATHS = ("/metrics", "/healthz", "/ready", "/status", "/debug/cardinality", "/debug/capture?seconds=0.2")
INTAKE_BODIES = {  # a body each receiving route decodes without error; the others take JSON
    "/api/v2/series": b"", "/api/beta/sketches": b"", "/api/v1/series": b'{"series": []}',
    "/api/v1/check_run": b"[]", "/intake/": b'{"events": {}}',
}  # fmt: skip


async def test_the_api_key_never_appears_in_logs_status_metrics_or_config(intake, tmp_path):
    stand_in, url = intake
    stand_in.api_key = "some-other-key"  # every request is answered 403: the key shows up in error paths
    async with run_relay(tmp_path, url, DD_LOG_LEVEL="debug") as relay:
        relay.send_udp(b"secret.check:1|c")
        await wait_for(lambda: relay.status()["info"]["api_key_valid"] is False)
        await wait_for(lambda: relay.status()["forwarder"]["payloads"].get("/api/v2/series", {}).get("dropped", 0))
        status = str(relay.status())
        metrics = relay.metrics_text()
        env = {**relay.env}
        _, out, err = await relay.stop()
    config = subprocess.run([sys.executable, "-m", "relay", "config"], env=env, capture_output=True, text=True).stdout
    for text in (status, metrics, out, err, config):
        assert API_KEY not in text
    assert API_KEY[-5:] in status and "***" + API_KEY[-5:] in config
    assert "API key" in err and "403" in err


async def _answers(session: ClientSession, method: str, url: str, body: bytes | None = None) -> bytes:
    """The whole answer, headers and body, to one request that carries the key as the relay sends it."""
    async with session.request(method, url, data=body, headers={"DD-API-KEY": API_KEY}) as response:
        assert response.status != 500, (method, url)  # answered, not crashed (/ready may say 503)
        return str(response.headers).encode() + await response.read()


async def _every_answer(session: ClientSession, intake_url: str, health: str) -> dict[str, bytes]:
    """Every route of the intake stand-in (its router, so a new route is covered) and of the relay's health."""
    answers = {}
    for route in Intake().app().router.routes():
        path = route.resource.canonical.replace("{id}", "1") if route.resource else ""
        body = None if route.method == "GET" else INTAKE_BODIES.get(path, b"{}")
        answers[f"intake {route.method} {path}"] = await _answers(session, route.method, intake_url + path, body)
    for path in RELAY_PATHS:
        answers[f"relay {path}"] = await _answers(session, "GET", health + path)
    return answers


async def test_no_answer_of_the_intake_stand_in_or_the_relay_holds_the_api_key(intake, tmp_path):
    """Each endpoint, while the intake takes the key and after it refuses it (the key then shows in error paths)."""
    served = {path.split("?")[0] for path in RELAY_PATHS}
    assert set(re.findall(r'add_get\("([^"]+)"', HEALTH_SOURCE)) == served, "a health endpoint is not checked here"
    stand_in, url = intake
    async with run_relay(tmp_path, url) as relay, ClientSession() as session:
        relay.send_udp(b"leak.check:1|c\nleak.dist:2|d")
        await wait_for(lambda: stand_in.series and stand_in.sketches and stand_in.requests)
        accepted = await _every_answer(session, url, relay.health)
        stand_in.api_key = "some-other-key"
        relay.send_udp(b"leak.check:1|c")
        await wait_for(lambda: relay.status()["info"]["api_key_valid"] is False)
        refused = await _every_answer(session, url, relay.health)
        await relay.stop()
    assert any(r.api_key == API_KEY for r in stand_in.requests)  # it was sent, and kept
    for where, answer in [*accepted.items(), *refused.items()]:
        assert API_KEY.encode() not in answer, where
    assert b"***" + API_KEY[-5:].encode() in accepted["intake GET /_received"]
    assert b"***" + API_KEY[-5:].encode() in refused["relay /ready"]


async def test_unix_sockets_are_created_0660_unless_configured(intake, short_tmp):
    _, url = intake
    path = short_tmp / "dsd.socket"
    async with run_relay(short_tmp, url, DD_DOGSTATSD_SOCKET=str(path)) as relay:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
        await relay.stop()
    async with run_relay(short_tmp, url, DD_DOGSTATSD_SOCKET=str(path), DD_RELAY_SOCKET_MODE="0666") as relay:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o666
        await relay.stop()


async def test_a_path_that_is_not_a_socket_is_never_replaced(short_tmp):
    path = short_tmp / "precious.txt"
    path.write_text("keep me")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DD_")}
    env.update(DD_DOGSTATSD_SOCKET=str(path), DD_DOGSTATSD_PORT="0", DD_RELAY_HEALTH_PORT="0")
    result = subprocess.run([sys.executable, "-m", "relay", "run"], env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode == 3 and "exists and is not a socket" in result.stderr
    assert path.read_text() == "keep me"


@pytest.mark.parametrize("key", ["DD_DOGSTATSD_SOCKET", "DD_DOGSTATSD_STREAM_SOCKET"])
async def test_a_live_relays_socket_is_never_taken_over_but_a_stale_one_is_replaced(intake, short_tmp, key):
    """A second relay pointed at the socket of a running one fails with one line naming the key; the first keeps
    its socket and keeps receiving. A socket file nobody listens on (a relay killed with SIGKILL) is replaced."""
    stand_in, url = intake
    path = short_tmp / "dsd.socket"
    name = key.removeprefix("DD_").lower()
    kind = socket.SOCK_DGRAM if name == "dogstatsd_socket" else socket.SOCK_STREAM
    async with run_relay(short_tmp, url, **{key: str(path)}) as first:
        env = {k: v for k, v in first.env.items()}
        env.update(DD_DOGSTATSD_PORT="0", DD_RELAY_HEALTH_PORT="0")
        second = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "relay", "run"], env=env, capture_output=True, text=True, timeout=30
        )
        with socket.socket(socket.AF_UNIX, kind) as client:
            client.connect(str(path))
            line = b"first.keeps.receiving:1|c"
            client.sendall(line if kind == socket.SOCK_DGRAM else struct.pack("<I", len(line)) + line)
        await wait_for(lambda: any(s["metric"] == "first.keeps.receiving" for s in stand_in.series))
        first.process.kill()  # no cleanup: the file stays, stale
        await asyncio.to_thread(first.process.communicate)
    assert second.returncode == 3
    errors = [line for line in second.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and f"{name}: {path} is served by a running process" in errors[0], second.stderr
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    async with run_relay(short_tmp, url, **{key: str(path)}) as third:
        assert third.status()["info"]["listeners"]
        code, _, err = await third.stop()
    assert code == 0, err


async def test_payloads_go_through_the_configured_proxy(intake, tmp_path):
    stand_in, intake_url = intake
    seen: list[str] = []

    async def forward(request: web.Request) -> web.Response:  # a plain HTTP forward proxy
        seen.append(str(request.url))
        async with (
            ClientSession(auto_decompress=False) as session,
            session.request(
                request.method, str(request.url), data=await request.read(), headers=request.headers
            ) as answer,
        ):
            return web.Response(body=await answer.read(), status=answer.status)

    proxy = web.Application()
    proxy.router.add_route("*", "/{tail:.*}", forward)
    runner = web.AppRunner(proxy, auto_decompress=False)  # pass bodies through untouched
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        async with run_relay(tmp_path, intake_url, DD_PROXY_HTTP=f"http://127.0.0.1:{port}") as relay:
            relay.send_udp(b"via.proxy:1|c")
            await wait_for(lambda: any(s["metric"] == "via.proxy" for s in stand_in.series))
            await relay.stop()
    finally:
        await runner.cleanup()
    assert any(url.endswith("/api/v2/series") for url in seen) and any("/api/v1/validate" in url for url in seen)


def test_health_endpoint_listens_on_loopback_by_default():
    from relay.config import Config

    config = Config.load(None, {})
    assert config.relay_health_host == "127.0.0.1" and config.udp_bind_host == "127.0.0.1"
    assert Config.load(None, {"DD_DOGSTATSD_NON_LOCAL_TRAFFIC": "true"}).udp_bind_host == "0.0.0.0"
