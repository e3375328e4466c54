"""Logs: one line per event on stderr, the API key redacted, hot-path messages rate-limited."""

from __future__ import annotations

import logging
import sys
import time

from relay.config import redact

_LEVELS = {"trace": logging.DEBUG, "warn": logging.WARNING, "off": logging.CRITICAL + 10}


class RedactApiKey(logging.Filter):
    """Replaces the API key wherever it appears in a formatted message (an exception text included)."""

    def __init__(self, api_key: str) -> None:
        super().__init__()
        # A real key is 32 characters; a very short test value would mangle every line that holds its letters.
        self.api_key = api_key if len(api_key) >= 8 else ""

    def filter(self, record: logging.LogRecord) -> bool:
        if self.api_key:
            message = record.getMessage()
            if self.api_key in message:
                record.msg, record.args = message.replace(self.api_key, redact(self.api_key)), None
            if record.exc_info and not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            if record.exc_text and self.api_key in record.exc_text:
                record.exc_text = record.exc_text.replace(self.api_key, redact(self.api_key))
        return True


def level_of(name: str) -> int:
    """A `log_level` value (the Agent's names: trace, debug, info, warn, error, critical, off) as logging's."""
    level = _LEVELS.get(name.lower(), getattr(logging, name.upper(), logging.INFO))
    return level if isinstance(level, int) else logging.INFO


def setup_logging(level: str, api_key: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s UTC | RELAY | %(levelname)s | (%(name)s) | %(message)s", "%Y-%m-%d %H:%M:%S")
    )
    handler.formatter.converter = time.gmtime  # type: ignore[union-attr]
    handler.addFilter(RedactApiKey(api_key))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level_of(level))
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


class RateLimitedLog:
    """At most one line per key per window; the next line after a quiet spell says how many were suppressed.

    Vector's tracing-limit, simplified: the first occurrence is logged, later ones are counted until the window
    has passed, then one line is logged with the count of what was suppressed in between.
    """

    def __init__(self, logger: logging.Logger, window: float = 10.0) -> None:
        self.logger = logger
        self.window = window
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def log(self, level: int, key: str, message: str, *args: object, exc_info: bool = False) -> None:
        """`exc_info`: add the traceback of the exception being handled, as logging does."""
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.window:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return
        self._last[key] = now
        suppressed = self._suppressed.pop(key, 0)
        if suppressed:
            message += " (%d similar messages suppressed)"
            args = (*args, suppressed)
        self.logger.log(level, message, *args, exc_info=exc_info)
