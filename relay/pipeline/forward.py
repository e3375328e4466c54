"""Forward: Payloads → Datadog's intake over HTTPS, with the Agent's retry rules (comp/forwarder/defaultforwarder).

400, 403 and 413 are dropped (retrying cannot help); network errors, 404, 429 and 5xx are retried with
jittered exponential backoff. Payloads wait in a queue bounded in bytes; when it is full the oldest is dropped.
Every outcome is counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import ssl
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Literal, Protocol

import aiohttp

from relay import __version__
from relay.config import Config, redact
from relay.logs import RateLimitedLog
from relay.pipeline.model import Endpoint, Payload
from relay.pipeline.spool import Spool
from relay.telemetry.stats import Stats

logger = logging.getLogger(__name__)

Outcome = Literal["sent", "dropped", "retried"]
_SPOOL_BACKLOG_MIN = 8 * 1024 * 1024
_DROPPED_STATUSES = {400: "bad request", 403: "API key invalid", 413: "payload too large"}


class Sink(Protocol):
    async def start(self) -> None: ...
    def send(self, payload: Payload) -> None: ...
    async def close(self, timeout: float) -> None: ...


def outcome(status: int | None) -> Outcome:
    """What to do with a payload after an attempt; None is a network error or a timeout."""
    if status is None:
        return "retried"
    if status < 400:
        return "sent"
    return "dropped" if status in _DROPPED_STATUSES else "retried"


def _retry_after(value: str | None) -> float:
    """Retry-After in seconds (the HTTP-date form is rare from an intake and read as no hint)."""
    try:
        return min(max(float(value), 0.0), 3600.0) if value else 0.0
    except ValueError:
        return 0.0


def backoff_seconds(errors: int, base: float, factor: float, maximum: float) -> float:
    """The Agent's ExpBackoffPolicy: base * 2^n, jittered down to 1/factor of it, capped at `maximum`."""
    max_errors = math.floor(math.log2(maximum / base)) + 1
    delay = base * 2 ** min(errors, max_errors)
    if delay > maximum:
        return maximum
    return random.uniform(delay / factor, delay)


@dataclass
class _Endpoint:
    """One endpoint's queue and circuit breaker: after an error it is blocked until `blocked_until`."""

    queue: deque[tuple[int, Payload]] = field(default_factory=deque)  # (arrival order, payload)
    errors: int = 0
    blocked_until: float = 0.0


class HttpSink:
    """Sends payloads in order per endpoint; an endpoint that fails backs off without holding up the others.

    Payloads wait in memory, bounded by forwarder_retry_queue_payloads_max_size; beyond it the oldest go to the
    disk spool (or are dropped and counted when there is none). At shutdown whatever is unsent is spooled, and
    spooled payloads are sent first at the next start.
    """

    def __init__(
        self, config: Config, stats: Stats, spool: Spool | None = None, url: str = "", api_key: str = ""
    ) -> None:
        """The main intake (dd_url or site, api_key), or with `url` and `api_key` one of additional_endpoints."""
        self.config = config
        self.stats = stats
        self.spool = spool
        self.url = url or config.intake_url
        self.api_url = url or config.api_url
        self.api_key = api_key or config.api_key
        self.endpoints = {endpoint: _Endpoint() for endpoint in Endpoint}
        self.queue_bytes = 0
        self._arrivals = 0
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._session: aiohttp.ClientSession | None = None
        self._worker: asyncio.Task[None] | None = None
        self._validation: asyncio.Task[None] | None = None
        self._to_spool: deque[Payload] = deque()  # waiting for the spool's writer thread
        self._to_spool_bytes = 0
        self._spooling: asyncio.Task[None] | None = None
        self._headers = {"DD-API-KEY": self.api_key, "User-Agent": f"dogstatsd-relay/{__version__}"}
        self.log = RateLimitedLog(logger)
        stats.gauges.retry_queue_bytes = lambda: self.queue_bytes
        stats.gauges.retry_queue_payloads = lambda: sum(len(e.queue) for e in self.endpoints.values())
        stats.info["endpoint"] = self.url
        stats.info["api_key"] = redact(self.api_key)
        stats.info["api_key_valid"] = None

    async def start(self) -> None:
        ssl_context: ssl.SSLContext | bool = False if self.config.skip_ssl_validation else ssl.create_default_context()
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.config.forwarder_timeout),
            connector=aiohttp.TCPConnector(ssl=ssl_context),
            trust_env=True,  # HTTPS_PROXY / NO_PROXY, as users of the Agent expect
        )
        if self.spool is not None and len(self.spool):
            logger.info("spool: %d payloads from a previous run will be sent first", len(self.spool))
        self._worker = asyncio.create_task(self._run(), name="forwarder")
        self._validation = asyncio.create_task(self._validate_api_key_periodically(), name="api-key-validation")

    def send(self, payload: Payload) -> None:
        self._arrivals += 1
        self.endpoints[payload.endpoint].queue.append((self._arrivals, payload))
        self.queue_bytes += len(payload.body)
        while self.queue_bytes > self.config.forwarder_retry_queue_payloads_max_size:
            oldest = min((e for e in self.endpoints.values() if e.queue), key=lambda e: e.queue[0][0], default=None)
            if oldest is None or (oldest.queue[0][1] is payload and self.queue_bytes == len(payload.body)):
                break  # a single payload larger than the whole queue still gets its chance
            _, evicted = oldest.queue.popleft()
            self.queue_bytes -= len(evicted.body)
            self._spool_or_drop(evicted, "retry_queue_full")
        self._wakeup.set()

    def _spool_or_drop(self, payload: Payload, reason: str) -> None:
        """To the spool, written by a thread (a slow disk must not stall ingest); dropped and counted without one,
        or (while running) when the payloads already waiting for the disk exceed the memory queue's size (at least
        _SPOOL_BACKLOG_MIN): a disk that slow is counted, not stalled on."""
        limit = max(self.config.forwarder_retry_queue_payloads_max_size, _SPOOL_BACKLOG_MIN)
        backlog = self._to_spool_bytes > limit and not self._stopping
        if self.spool is None or backlog:
            self.stats.forward.payloads[payload.endpoint.value, "dropped"] += 1
            self.stats.dropped[reason] += payload.items
            logger.warning("%s: %s payload dropped (%s)", reason, payload.endpoint.value,
                           "no spool" if self.spool is None else "the disk is too slow")  # fmt: skip
            return
        self._to_spool.append(payload)
        self._to_spool_bytes += len(payload.body)
        if self._spooling is None or self._spooling.done():
            self._spooling = asyncio.create_task(self._write_spool(self.spool), name="spool-writer")

    async def _write_spool(self, spool: Spool) -> None:
        while self._to_spool:
            payload = self._to_spool[0]
            if not await asyncio.to_thread(spool.put, payload):  # counted by the spool
                logger.warning("%s payload dropped: the spool refused it", payload.endpoint.value)
            self._to_spool.popleft()
            self._to_spool_bytes -= len(payload.body)

    async def _run(self) -> None:
        """One payload at a time from each endpoint that is not blocked, in turn."""
        while True:
            now = time.monotonic()
            pending = [endpoint for endpoint in Endpoint if self._has_pending(endpoint)]
            ready = [endpoint for endpoint in pending if self.endpoints[endpoint].blocked_until <= now]
            if not ready:
                if self._stopping:
                    return  # close() spools what could not be sent
                self._wakeup.clear()
                timeout = min((self.endpoints[e].blocked_until for e in pending), default=now + 3600) - now
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), max(timeout, 0.001))
                continue
            for endpoint in ready:
                try:
                    await self._send_next(endpoint)
                except Exception:  # a bug costs the payload at hand, never the forwarder
                    self._drop_next(endpoint)

    def _drop_next(self, endpoint: Endpoint) -> None:
        """The payload a bug stopped: dropped and counted, so that it cannot stop the endpoint again and again."""
        state = self.endpoints[endpoint]
        items = 1
        if self.spool is not None and self.spool.files[endpoint]:
            self.spool.remove(self.spool.files[endpoint][0])
        elif state.queue:
            _, payload = state.queue.popleft()
            self.queue_bytes -= len(payload.body)
            items = payload.items
        self.stats.forward.payloads[endpoint.value, "dropped"] += 1
        self.stats.internal_error(f"forward ({endpoint.value})", items)

    def _has_pending(self, endpoint: Endpoint) -> bool:
        return bool(self.endpoints[endpoint].queue) or bool(self.spool and self.spool.files[endpoint])

    async def _send_next(self, endpoint: Endpoint) -> None:
        """The oldest payload of the endpoint: the spool's first (it holds the older ones), then memory."""
        state = self.endpoints[endpoint]
        spooled = self.spool.oldest(endpoint) if self.spool is not None else None
        if spooled is not None:
            path, payload = spooled
        elif state.queue:
            path, payload = None, state.queue[0][1]
        else:
            return
        status, retry_after = await self._post(payload)
        result = outcome(status)
        self.stats.forward.payloads[endpoint.value, result] += 1
        if result != "retried":  # readiness watches the rejections in a row (relay/runtime/health.py)
            rejected = result == "dropped"
            self.stats.info["rejected_streak"] = self.stats.info.get("rejected_streak", 0) + 1 if rejected else 0
            self.stats.info["last_rejection"] = status if rejected else self.stats.info.get("last_rejection")
        if result == "retried":
            state.errors += 1
            delay = backoff_seconds(
                state.errors,
                self.config.forwarder_backoff_base,
                self.config.forwarder_backoff_factor,
                self.config.forwarder_backoff_max,
            )
            state.blocked_until = time.monotonic() + max(delay, retry_after)
            return
        if path is not None:
            assert self.spool is not None
            self.spool.remove(path)
        else:
            state.queue.popleft()
            self.queue_bytes -= len(payload.body)
        if result == "sent":
            self.stats.forward.payload_bytes[endpoint.value] += len(payload.body)
            state.errors = max(0, state.errors - self.config.forwarder_recovery_interval)
        else:
            self.stats.dropped["payload_rejected"] += payload.items

    async def _post(self, payload: Payload) -> tuple[int | None, float]:
        """(HTTP status or None on a network error, seconds asked for by Retry-After on 429/503)."""
        assert self._session is not None
        headers = {**self._headers, "Content-Type": payload.endpoint.content_type}
        if payload.encoding:
            headers["Content-Encoding"] = payload.encoding
        url = self.url + payload.endpoint.value
        try:
            proxy = self.config.proxy_for(url)
            async with self._session.post(url, data=payload.body, headers=headers, proxy=proxy) as response:
                await response.read()
                status, retry_after = response.status, _retry_after(response.headers.get("Retry-After"))
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            self.stats.forward.http_errors[type(error).__name__] += 1
            self.log.log(
                logging.WARNING, payload.endpoint.value, "%s: %s; will retry",
                payload.endpoint.value, error or type(error).__name__,
            )  # fmt: skip
            return None, 0.0
        if status >= 400:
            self.stats.forward.http_errors[str(status)] += 1
            action = "dropping the payload" if outcome(status) == "dropped" else "will retry"
            self.log.log(
                logging.WARNING, f"{payload.endpoint.value}{status}", "%s: HTTP %d %s; %s",
                payload.endpoint.value, status, _DROPPED_STATUSES.get(status, ""), action,
            )  # fmt: skip
            if status == 403:
                self.stats.info["api_key_valid"] = False
        return status, retry_after if status in (429, 503) else 0.0

    async def _validate_api_key_periodically(self) -> None:
        while True:
            await self._validate_api_key()
            await asyncio.sleep(self.config.forwarder_apikey_validation_interval * 60)

    async def _validate_api_key(self) -> None:
        """GET /api/v1/validate, as the Agent does; an invalid key is reported and the relay keeps running."""
        assert self._session is not None
        try:
            url = self.api_url + "/api/v1/validate"
            proxy = self.config.proxy_for(url)
            async with self._session.get(url, headers=self._headers, proxy=proxy) as response:
                valid = response.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            logger.warning("API key validation failed: %s", error or type(error).__name__)
            return
        self.stats.info["api_key_valid"] = valid
        if valid:
            logger.info("API key %s is valid", redact(self.api_key))
        else:
            logger.error("API key %s is invalid (HTTP %d)", redact(self.api_key), response.status)

    async def close(self, timeout: float) -> None:
        """Send what is queued within `timeout`; spool what is left (or drop and count it without a spool)."""
        self._stopping = True
        self._wakeup.set()
        if self._validation is not None:
            self._validation.cancel()
        if self._worker is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._worker), timeout)
            except TimeoutError:
                self._worker.cancel()
                await asyncio.gather(self._worker, return_exceptions=True)
        unsent = sorted((item for state in self.endpoints.values() for item in state.queue), key=lambda item: item[0])
        for state in self.endpoints.values():
            state.queue.clear()
        self.queue_bytes = 0
        for _, payload in unsent:
            self._spool_or_drop(payload, "shutdown_unsent")
        if self._spooling is not None:
            await self._spooling
        if unsent:
            where = "spooled for the next start" if self.spool is not None else "dropped"
            logger.warning("shutdown: %d unsent payloads %s", len(unsent), where)
        if self._session is not None:
            await self._session.close()


class FanOutSink:
    """additional_endpoints: every payload goes to the main intake and to each (URL, API key) pair, each with its
    own queue, backoff, spool and counters, so that one slow or failing destination never holds up another."""

    def __init__(self, sinks: list[Sink]) -> None:
        self.sinks = sinks

    async def start(self) -> None:
        for sink in self.sinks:
            await sink.start()

    def send(self, payload: Payload) -> None:
        for sink in self.sinks:
            sink.send(payload)

    async def close(self, timeout: float) -> None:
        await asyncio.gather(*(sink.close(timeout) for sink in self.sinks))
