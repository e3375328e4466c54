"""The official clients' own telemetry, read as it passes through.

A client that cannot send (its socket's queue full: EAGAIN over a Unix socket; its own queue full) drops the
datagram where no server can see it. The official clients count those drops and, with their telemetry on (their
default), send the counts every 10 s as `datadog.dogstatsd.client.packets_dropped` (all of them),
`..._writer` (the send failed) and `..._queue` (the client's own queue was full), tagged `client:` (py, go, ...)
and `client_transport:` (udp, uds). These lines flow on to Datadog like any other; here their sums are also
counted, by transport, client and kind, so that status and doctor show the loss only the clients saw.
"""

from __future__ import annotations

from collections import Counter

from relay.pipeline.buckets import Bucket
from relay.pipeline.model import Context

KINDS = {
    "datadog.dogstatsd.client.packets_dropped": "total",
    "datadog.dogstatsd.client.packets_dropped_writer": "writer",
    "datadog.dogstatsd.client.packets_dropped_queue": "queue",
}


class ClientDrops:
    """The contexts of the clients' drop counters (by slot), and what their closed buckets add up to."""

    def __init__(self, counted: Counter[tuple[str, str, str]]) -> None:
        self.counted = counted  # (transport, client, kind) → datagrams the clients dropped
        self.slots: dict[int, tuple[str, str, str]] = {}

    def watch(self, slot: int, context: Context) -> None:
        """Called for every new context: one dict lookup unless it is a client's drop counter."""
        kind = KINDS.get(context.name)
        if kind is not None:
            tags = dict(tag.partition(":")[::2] for tag in context.tags)
            self.slots[slot] = (tags.get("client_transport", "unknown"), tags.get("client", "unknown"), kind)

    def read(self, bucket: Bucket) -> None:
        """A closed bucket's sums (counters hold value / sample rate) into the counts."""
        for slot, key in self.slots.items():
            value = bucket.counters.get(slot)
            if value:
                self.counted[key] += round(value)

    def forget(self, slot: int) -> None:
        self.slots.pop(slot, None)
