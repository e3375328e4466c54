"""Forward: Payloads → Datadog's intake over HTTPS, with the Agent's retry rules (comp/forwarder/defaultforwarder).

400, 403 and 413 are dropped (retrying cannot help); network errors, 404, 429 and 5xx are retried with
jittered exponential backoff. Payloads wait in a queue bounded in bytes; when it is full the oldest is dropped.
Every outcome is counted.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import ssl
from collections import deque
from typing import Literal, Protocol

import aiohttp

from relay import __version__
from relay.config import Config, redact
from relay.model import Payload
from relay.telemetry import Stats

logger = logging.getLogger(__name__)

Outcome = Literal["sent", "dropped", "retried"]
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


def backoff_seconds(errors: int, base: float, factor: float, maximum: float) -> float:
    """The Agent's ExpBackoffPolicy: base * 2^n, jittered down to 1/factor of it, capped at `maximum`."""
    max_errors = math.floor(math.log2(maximum / base)) + 1
    delay = base * 2 ** min(errors, max_errors)
    if delay > maximum:
        return maximum
    return random.uniform(delay / factor, delay)


class HttpSink:
    """Sends payloads one at a time, in order; a failing intake pauses the queue with backoff."""

    def __init__(self, config: Config, stats: Stats) -> None:
        self.config = config
        self.stats = stats
        self.queue: deque[Payload] = deque()
        self.queue_bytes = 0
        self.errors = 0
        self._wakeup = asyncio.Event()
        self._stopping = asyncio.Event()
        self._session: aiohttp.ClientSession | None = None
        self._worker: asyncio.Task[None] | None = None
        self._validation: asyncio.Task[None] | None = None
        self._headers = {"DD-API-KEY": config.api_key, "User-Agent": f"dogstatsd-relay/{__version__}"}
        stats.gauges["retry_queue_bytes"] = lambda: self.queue_bytes
        stats.gauges["retry_queue_payloads"] = lambda: len(self.queue)
        stats.info["endpoint"] = config.intake_url
        stats.info["api_key"] = redact(config.api_key)
        stats.info["api_key_valid"] = None

    async def start(self) -> None:
        ssl_context: ssl.SSLContext | bool = False if self.config.skip_ssl_validation else ssl.create_default_context()
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.config.forwarder_timeout),
            connector=aiohttp.TCPConnector(ssl=ssl_context),
            trust_env=True,  # HTTPS_PROXY / NO_PROXY, as users of the Agent expect
        )
        self._worker = asyncio.create_task(self._run(), name="forwarder")
        self._validation = asyncio.create_task(self._validate_api_key_periodically(), name="api-key-validation")

    def send(self, payload: Payload) -> None:
        self.queue.append(payload)
        self.queue_bytes += len(payload.body)
        while self.queue_bytes > self.config.forwarder_retry_queue_payloads_max_size and len(self.queue) > 1:
            oldest = self.queue.popleft()
            self.queue_bytes -= len(oldest.body)
            self.stats.payloads[oldest.endpoint.value, "dropped"] += 1
            self.stats.dropped["retry_queue_full"] += oldest.items
            logger.warning("retry queue full: dropped the oldest %s payload", oldest.endpoint.value)
        self._wakeup.set()

    async def _run(self) -> None:
        while not (self._stopping.is_set() and not self.queue):
            if not self.queue:
                self._wakeup.clear()
                await _first(self._wakeup.wait(), self._stopping.wait())
                continue
            payload = self.queue[0]
            result = outcome(await self._post(payload))
            if result == "retried":
                self.stats.payloads[payload.endpoint.value, "retried"] += 1
                self.errors += 1
                delay = backoff_seconds(
                    self.errors,
                    self.config.forwarder_backoff_base,
                    self.config.forwarder_backoff_factor,
                    self.config.forwarder_backoff_max,
                )
                await asyncio.sleep(delay)  # close() cancels this at its timeout
                continue
            self.queue.popleft()
            self.queue_bytes -= len(payload.body)
            self.stats.payloads[payload.endpoint.value, result] += 1
            if result == "sent":
                self.stats.payload_bytes[payload.endpoint.value] += len(payload.body)
                self.errors = max(0, self.errors - self.config.forwarder_recovery_interval)
            else:
                self.stats.dropped["payload_rejected"] += payload.items

    async def _post(self, payload: Payload) -> int | None:
        assert self._session is not None
        headers = {**self._headers, "Content-Type": payload.endpoint.content_type}
        if payload.encoding:
            headers["Content-Encoding"] = payload.encoding
        url = self.config.intake_url + payload.endpoint.value
        try:
            async with self._session.post(url, data=payload.body, headers=headers) as response:
                await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            self.stats.http_errors[type(error).__name__] += 1
            logger.warning("%s: %s; will retry", payload.endpoint.value, error or type(error).__name__)
            return None
        if status >= 400:
            self.stats.http_errors[str(status)] += 1
            action = "dropping the payload" if outcome(status) == "dropped" else "will retry"
            logger.warning(
                "%s: HTTP %d %s; %s",
                payload.endpoint.value,
                status,
                _DROPPED_STATUSES.get(status, ""),
                action,
            )
            if status == 403:
                self.stats.info["api_key_valid"] = False
        return status

    async def _validate_api_key_periodically(self) -> None:
        while True:
            await self._validate_api_key()
            await asyncio.sleep(self.config.forwarder_apikey_validation_interval * 60)

    async def _validate_api_key(self) -> None:
        """GET /api/v1/validate, as the Agent does; an invalid key is reported and the relay keeps running."""
        assert self._session is not None
        try:
            async with self._session.get(self.config.api_url + "/api/v1/validate", headers=self._headers) as response:
                valid = response.status == 200
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            logger.warning("API key validation failed: %s", error or type(error).__name__)
            return
        self.stats.info["api_key_valid"] = valid
        if valid:
            logger.info("API key %s is valid", redact(self.config.api_key))
        else:
            logger.error("API key %s is invalid (HTTP %d)", redact(self.config.api_key), response.status)

    async def close(self, timeout: float) -> None:
        """Send what is queued within `timeout`; what is left is dropped and counted."""
        self._stopping.set()
        if self._validation is not None:
            self._validation.cancel()
        if self._worker is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._worker), timeout)
            except TimeoutError:
                self._worker.cancel()
                await asyncio.gather(self._worker, return_exceptions=True)
        for payload in self.queue:
            self.stats.payloads[payload.endpoint.value, "dropped"] += 1
            self.stats.dropped["shutdown_unsent"] += payload.items
        if self.queue:
            logger.error("shutdown: %d payloads could not be sent in %.0f s", len(self.queue), timeout)
        self.queue.clear()
        self.queue_bytes = 0
        if self._session is not None:
            await self._session.close()


class DryRunSink:
    """No API key: nothing leaves the machine; the relay prints each flush instead and counts the payloads."""

    def __init__(self, stats: Stats) -> None:
        self.stats = stats
        stats.info["endpoint"] = "none (dry run: no API key)"
        stats.info["api_key"] = ""
        stats.info["api_key_valid"] = None

    async def start(self) -> None:
        return None

    def send(self, payload: Payload) -> None:
        self.stats.payloads[payload.endpoint.value, "dry_run"] += 1

    async def close(self, timeout: float) -> None:
        return None


async def _first(*aws: object) -> None:
    """Wait until the first of several awaitables finishes; cancel the rest."""
    tasks = [asyncio.ensure_future(aw) for aw in aws]  # type: ignore[call-overload]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
