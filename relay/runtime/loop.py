"""What every relay process runs around its pipeline: the event loop, and the timer that flushes it.

The standalone relay and each worker of a sharded one run `flush_loop`; neither owns the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Coroutine
from typing import Any

from relay.memory import MemoryGuard
from relay.pipeline.assemble import Pipeline

logger = logging.getLogger(__name__)


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run the relay's coroutine on uvloop where it is installed (Linux, macOS), on asyncio's own loop elsewhere."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


class LongLivedObjects:
    """Contexts, shapes and slots live for minutes and hold no reference cycle, yet the cyclic garbage collector
    scans every one of them again and again as they pile up: about 40 % of the cost of a new context (profiled
    under the first-sight benchmark). So what survived half a second is frozen out of its sight (gc.freeze), and every
    FULL_COLLECTION_SECONDS everything is unfrozen and collected once, so that a cycle frozen by mistake (an
    exception's traceback, say) is freed within that time."""

    FULL_COLLECTION_SECONDS = 300

    def __init__(self) -> None:
        self.next_full_collection = time.monotonic() + self.FULL_COLLECTION_SECONDS

    def freeze(self) -> None:
        if time.monotonic() >= self.next_full_collection:
            gc.unfreeze()
            gc.collect()
            self.next_full_collection = time.monotonic() + self.FULL_COLLECTION_SECONDS
        gc.freeze()


async def flush_loop(pipeline: Pipeline, should_exit: asyncio.Event, guard: MemoryGuard | None = None) -> None:
    """Flush just after each bucket boundary, so a bucket leaves as soon as it is closed. In between, every
    half second, fold the distribution samples that piled up into their sketches (bounded memory under a
    flood; short pauses, so the socket buffer rides them out) and take what survived out of the collector's
    sight. Returns once should_exit is set, never in the middle of a flush: a flush cancelled half way would
    lose the buckets it had taken out. `guard`: the memory guard, which looks at the memory at the same pace."""
    interval = pipeline.config.relay_flush_interval
    collector = LongLivedObjects()
    while not should_exit.is_set():
        now = time.time()
        next_flush = now + interval - now % interval + 0.05
        while (left := next_flush - time.time()) > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(should_exit.wait(), min(left, 0.5))
            if should_exit.is_set():
                return  # the final flush takes every bucket
            pipeline.aggregator.fold_samples()
            pipeline.ingest.learn_origins_again()
            collector.freeze()
            if guard is not None:
                guard.check(time.time())
        try:
            await pipeline.flush()
        except Exception:
            logger.exception("flush failed")


async def final_flush(pipeline: Pipeline, flusher: asyncio.Task[None], should_exit: asyncio.Event) -> None:
    """Let a flush in progress finish, flush every bucket (open ones too), send within relay.shutdown_timeout
    (what cannot be sent is spooled)."""
    should_exit.set()
    await asyncio.gather(flusher, return_exceptions=True)
    try:
        await pipeline.flush(force=True)
    except Exception:
        logger.exception("final flush failed")
    await pipeline.sink.close(pipeline.config.relay_shutdown_timeout)
