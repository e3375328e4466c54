"""One worker of a sharded relay (relay.workers > 1): the usual pipeline, fed through a pipe, not a socket.

Lines come from the main process through `data`; counters go back through `reports` every second. An empty
message (or the main process going away) means: flush and stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from multiprocessing.connection import Connection

from relay.config import Config
from relay.logs import setup_logging
from relay.pipeline.assemble import Pipeline
from relay.runtime.loop import final_flush, flush_loop, run_loop
from relay.runtime.pipes import pump
from relay.tagger import Tagger
from relay.telemetry.worker_reports import worker_report


def worker_main(config: Config, index: int, data: Connection, reports: Connection) -> None:
    """The entry point of a worker process."""
    setup_logging(config.log_level, config.api_key)
    tagger = Tagger.from_config(config)  # each worker asks for its own origins' tags
    pipeline = Pipeline(config, tagger=tagger)
    if config.confd_path or config.relay_host_collectors:
        pipeline.load_checks()
    if tagger is not None:
        tagger.start()
    run_loop(run_worker(pipeline, data, reports))
    if tagger is not None:
        tagger.stop()


async def run_worker(pipeline: Pipeline, data: Connection, reports: Connection) -> None:
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, lambda: None)  # the main process decides when to stop
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    should_exit = asyncio.Event()
    await pipeline.sink.start()

    def receive(message: bytes) -> None:
        if message:
            pipeline.datagram(message, "shard")
        else:
            should_exit.set()

    pump(data, loop, receive)
    flusher = asyncio.create_task(flush_loop(pipeline, should_exit), name="flusher")
    reporter = asyncio.create_task(_report_every_second(pipeline, reports), name="reporter")
    await should_exit.wait()
    await final_flush(pipeline, flusher, should_exit)
    reporter.cancel()
    await asyncio.gather(reporter, return_exceptions=True)
    _send_report(pipeline, reports)  # the last one, after the final flush


async def _report_every_second(pipeline: Pipeline, reports: Connection) -> None:
    while True:
        await asyncio.sleep(1)
        _send_report(pipeline, reports)


def _send_report(pipeline: Pipeline, reports: Connection) -> None:
    with contextlib.suppress(OSError):  # the main process is gone: nobody to report to
        reports.send_bytes(json.dumps(worker_report(pipeline.stats)).encode())
