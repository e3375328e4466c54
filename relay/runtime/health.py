"""The health endpoint (relay.health_host:relay.health_port, loopback by default).

/metrics      Prometheus text of the relay's own counters
/healthz      liveness: the process answers
/ready        readiness: 503 with the reasons when probe loss, the retry backlog or the flush lag is over its limit,
              or the intake rejects the API key or the payloads; `degraded` says what works with less memory now
/status       the JSON behind `dogstatsd-relay status`
/debug/cardinality   contexts per metric, tag values per key, a custom-metric estimate; `?sample=S` adds lines/s
/debug/capture?seconds=S   raw datagrams with their timing, in the capture format of relay/runtime/capture.py

The probes and /metrics answer anyone. /status and /debug/* hand out what apps send (tag values, datagrams):
they answer a loopback peer, or a request with `Authorization: Bearer <token>`, the token the relay keeps in
run_path's auth_token file (0600, made at the first start), which the CLI reads, as the Agent guards its API.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import ipaddress
import logging
import math
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from relay import __version__
from relay.config import Config
from relay.files import auth_token
from relay.runtime.capture import MAGIC, MAX_BUFFERED, Recorder
from relay.runtime.listen import Listeners
from relay.runtime.readers import unix_dgram_qlen
from relay.runtime.taps import LineCounter, Tap, Taps
from relay.telemetry.stats import Stats
from relay.telemetry.status_document import folding, status_document

logger = logging.getLogger(__name__)

MAX_CAPTURE_SECONDS = 600
MAX_SAMPLE_SECONDS = 10
MAX_OPEN_TAPS = 8  # captures and samplings at once (and the tee): each holds memory and costs every datagram


OPEN_PATHS = frozenset({"/metrics", "/healthz", "/ready"})  # the kubelet's probes and Prometheus: anyone
REFUSED = ("forbidden: from an address that is not loopback, send the header `Authorization: Bearer <token>`, "
           "the token in the file auth_token under run_path (the dogstatsd-relay commands send it)\n")  # fmt: skip

REJECTED_IN_A_ROW = 3  # payloads answered 400, 403 or 413 one after the other: the relay is not doing its job


def readiness(stats: Stats, config: Config, now: float) -> dict[str, Any]:
    """Ready unless a limit is crossed; each crossed limit gives one reason naming its key."""
    reasons = []
    if not stats.info.get("listeners"):
        reasons.append("listeners not started")
    limit, probe_loss = config.relay_ready_max_probe_loss, stats.gauges.probe_loss()
    for listener, ratio in sorted(probe_loss.items()):
        if ratio > limit:
            reasons.append(f"probe loss on {listener} {ratio:.1%} > relay.ready_max_probe_loss {limit:.1%}")
    queued, queue_limit = stats.gauges.by_listener("queue_bytes"), config.relay_receive_queue_bytes
    for listener, size in sorted(queued.items()):
        if size > queue_limit / 2:  # ingest is falling behind: at the limit the reader stops, the kernel drops
            reasons.append(f"receive queue on {listener} {size} bytes > half of relay.receive_queue_bytes")
    backlog, limit_bytes = stats.gauges.retry_queue_bytes(), config.relay_ready_max_retry_queue_bytes
    if backlog > limit_bytes:
        reasons.append(f"retry queue {backlog:.0f} bytes > relay.ready_max_retry_queue_bytes {limit_bytes}")
    if stats.info.get("api_key_valid") is False:
        reasons.append(f"the intake rejects the API key {stats.info.get('api_key', '')}: every payload is dropped; "
                       "fix it (dogstatsd-relay init, or DD_API_KEY) and reload")  # fmt: skip
    elif (streak := stats.info.get("rejected_streak", 0)) >= REJECTED_IN_A_ROW:
        reasons.append(f"the intake rejected the last {streak} payloads (HTTP {stats.info.get('last_rejection')}): "
                       "they are dropped")  # fmt: skip
    lag, limit_lag = now - max(stats.aggregate.last_flush_at, stats.started), config.relay_ready_max_flush_lag
    if lag > limit_lag:
        reasons.append(f"no flush for {lag:.0f} s > relay.ready_max_flush_lag {limit_lag:g} s")
    return {
        "ready": not reasons,
        "reasons": reasons,
        "degraded": stats.info.get("degraded", []),  # working, with less: contexts fold, queues push back...
        "probe_loss": probe_loss,
        "receive_queue_bytes": queued,
        "receive_queue_drops": stats.gauges.by_listener("queue_drops"),
        "retry_queue_bytes": int(backlog),
        "flush_lag_seconds": round(lag, 1),
    }


def allowed(path: str, remote: str | None, authorization: str, token: str | None) -> bool:
    """An open path, a loopback peer, or the token: what may read the relay's traffic."""
    if path in OPEN_PATHS:
        return True
    try:
        peer = ipaddress.ip_address(remote or "")
    except ValueError:  # no peer address: not loopback
        peer = None
    mapped = getattr(peer, "ipv4_mapped", None)  # ::ffff:127.0.0.1, on a dual-stack socket
    if peer is not None and (peer.is_loopback or (mapped is not None and mapped.is_loopback)):
        return True
    return token is not None and hmac.compare_digest(authorization.encode(), f"Bearer {token}".encode())


def _guard(config: Config) -> Callable[..., Awaitable[web.StreamResponse]]:
    """The middleware that refuses /status and /debug/* to a peer that is neither loopback nor holds the token."""
    try:
        token = auth_token(config.run_directory, create=True)
    except OSError as error:
        token = None
        logger.warning("no auth token under run_path (%s): /status and /debug/* answer loopback only", error)

    @web.middleware
    async def guard(request: web.Request, handler: Callable[..., Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        if not allowed(request.path, request.remote, request.headers.get("Authorization", ""), token):
            raise web.HTTPForbidden(text=REFUSED)
        return await handler(request)

    return guard


def _open(taps: Taps, tap: Tap) -> None:
    if len(taps.open) >= MAX_OPEN_TAPS:
        raise web.HTTPTooManyRequests(text=f"{len(taps.open)} captures or samplings already open; try later\n")
    taps.add(tap)


def _seconds(request: web.Request, name: str, default: float, maximum: float) -> float:
    try:
        seconds = float(request.query.get(name, default))
    except ValueError:
        seconds = math.nan
    if math.isnan(seconds):
        raise web.HTTPBadRequest(text=f"{name} must be a number of seconds\n")
    return min(max(seconds, 0.0), maximum)


async def serve_health(
    config: Config, stats: Stats, registry: CollectorRegistry, cardinality: Callable[..., dict[str, Any]], taps: Taps,
    sock: socket.socket | None = None,
) -> web.AppRunner:  # fmt: skip
    """`sock`: the listening socket to serve on (one a reload handed over), instead of binding relay.health_port."""

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def healthz(request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def ready(request: web.Request) -> web.Response:
        state = readiness(stats, config, time.time())
        return web.json_response(state, status=200 if state["ready"] else 503)

    async def status(request: web.Request) -> web.Response:
        return web.json_response({**status_document(stats), "cardinality": cardinality(top=10, scan=20_000)})

    async def debug_cardinality(request: web.Request) -> web.Response:
        top = request.query.get("top", "20")
        top_n = min(int(top), 1000) if top.isdigit() else 20
        seconds = _seconds(request, "sample", 0, MAX_SAMPLE_SECONDS)
        report = {**cardinality(top=top_n), "folding": folding(stats, top_n)}
        if seconds:
            counter = LineCounter()
            _open(taps, counter)
            try:
                await asyncio.sleep(seconds)
            finally:
                taps.remove(counter)
            report["top_by_lines"] = counter.rates(top_n)
        return web.json_response(report)

    async def debug_capture(request: web.Request) -> web.StreamResponse:
        seconds = _seconds(request, "seconds", 30, MAX_CAPTURE_SECONDS)
        share = MAX_BUFFERED if taps.memory_share is None else min(MAX_BUFFERED, taps.memory_share // MAX_OPEN_TAPS)
        recorder = Recorder(share, stats.listen.taps_paused)
        _open(taps, recorder)
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        deadline = time.monotonic() + seconds
        try:
            await response.prepare(request)
            await response.write(MAGIC)
            while (left := deadline - time.monotonic()) > 0:
                try:
                    await asyncio.wait_for(recorder.ready.wait(), min(left, 0.2))
                except TimeoutError:
                    continue
                await response.write(recorder.take())
        finally:
            taps.remove(recorder)
        await response.write(recorder.take())
        stats.info["last_capture"] = {"records": recorder.records, "dropped": recorder.dropped}
        await response.write_eof()
        return response

    app = web.Application(middlewares=[_guard(config)])
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/ready", ready)
    app.router.add_get("/status", status)
    app.router.add_get("/debug/cardinality", debug_cardinality)
    app.router.add_get("/debug/capture", debug_capture)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site: web.BaseSite = (
        web.SockSite(runner, sock) if sock else web.TCPSite(runner, config.relay_health_host, config.relay_health_port)
    )
    await site.start()
    bound = site._server.sockets[0].getsockname()[:2]  # type: ignore[union-attr]
    stats.info["health"] = f"{bound[0]}:{bound[1]}"
    return runner


HANDLED_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


RELOAD_UNSUPPORTED = "reload is not supported with relay.workers > 1; restart the relay to apply a change"


def refuse_reload(stats: Stats, problem: str) -> None:
    """A reload that will not happen: said in the log and in status (where `dogstatsd-relay reload` reads it);
    the running pipeline goes on as it was."""
    logger.error("reload refused: %s; the running configuration stays", problem)
    stats.info["last_reload"] = {"at": time.time(), "result": f"refused: {problem}"}


async def start_front(
    config: Config,
    stats: Stats,
    registry: CollectorRegistry,
    cardinality: Callable[..., dict[str, Any]],
    listeners: Listeners,
    should_exit: asyncio.Event,
    destination: str,
    reload: Callable[[], None] | None = None,
) -> web.AppRunner:
    """What every relay opens first, in this order: the health endpoint, the listeners, the signal handlers.
    SIGHUP reloads where the relay can (`reload`), and is otherwise refused (refuse_reload): never a silent exit."""
    stats.info["pid"] = os.getpid()
    health = await serve_health(config, stats, registry, cardinality, listeners.taps, listeners.health_socket())
    await listeners.start()
    stats.info["listeners"] = dict(listeners.addresses)
    if "uds" in listeners.addresses:  # the queue of the relay's own network namespace, where its socket is
        stats.info["unix_dgram_qlen"] = unix_dgram_qlen()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, should_exit.set)
    loop.add_signal_handler(signal.SIGHUP, reload or functools.partial(refuse_reload, stats, RELOAD_UNSUPPORTED))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, HANDLED_SIGNALS)  # held since a reload's exec: delivered now
    logger.info(
        "dogstatsd-relay %s listening on %s; health on http://%s; %s",
        __version__,
        ", ".join(f"{k} {v}" for k, v in listeners.addresses.items()) or "nothing",
        stats.info["health"],
        destination,
    )
    return health
