"""Mutational fuzzing of the parser and both ingest fast paths, from valid datagrams.

The suite runs a few thousand cases; `make fuzz` runs a million (FUZZ_CASES, FUZZ_SECONDS bound the run).
Every case: nothing raises, and the fast paths (Python and C) agree with the reference parser.
"""

from __future__ import annotations

import logging
import os
import random
import time

from relay.pipeline.parse import parse_datagram
from tests.pipeline.test_ingest import outcome, pipeline

SEEDS = [
    b"page.views:1|c|#env:prod,page:home", b"latency:12.5|ms|@0.5|#route:/a", b"queue:7|g", b"users:alice|s",
    b"payload:3:4:5|d|#t", b"x:1|g|T1700000000", b"_e{5,4}:title|text|p:low|t:error|#a:b",
    b"_sc|db.up|2|d:1700000000|h:host|#db:main|m:down", b"h:0x1p3|h", b"a:1|c|c:abc|e:it-false|card:high",
]  # fmt: skip


def mutate(rng: random.Random, data: bytes) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        choice = rng.randrange(5)
        position = rng.randrange(len(data) + 1)
        if choice == 0 and data:
            data[min(position, len(data) - 1)] ^= 1 << rng.randrange(8)
        elif choice == 1:
            data[position:position] = bytes([rng.choice(b":|#@,\n\r\x00\xff.0-_T{}")])
        elif choice == 2 and data:
            del data[position : position + rng.randint(1, 4)]
        elif choice == 3:
            data[position:position] = rng.choice(SEEDS)
        else:
            data[position:position] = rng.randbytes(rng.randint(1, 6))
    return bytes(data)


def test_mutated_datagrams(speedups, cases: int = int(os.environ.get("FUZZ_CASES", "20000"))):
    logging.disable(logging.CRITICAL)  # millions of expected parse errors
    try:
        _fuzz(cases)
    finally:
        logging.disable(logging.NOTSET)


def _fuzz(cases: int) -> None:
    rng = random.Random(int(os.environ.get("FUZZ_SEED", "20261123")))
    deadline = time.monotonic() + float(os.environ.get("FUZZ_SECONDS", "60"))
    implementations = [False, True]  # the Python fast path, and the C one (the fixture requires it)
    for batch in range(0, cases, 200):
        datagrams = [mutate(rng, b"\n".join(rng.sample(SEEDS, rng.randint(1, 4)))) for _ in range(200)]
        for data in datagrams:
            list(parse_datagram(data, eol_required=True))
        reference = pipeline()
        for data in datagrams * 2:
            reference.reference(data, "udp", 1000.0)
        expected = outcome(reference)  # outcome() flushes: take it once
        for accelerate in implementations:
            fast = pipeline(accelerate)
            for data in datagrams * 2:
                fast.datagram(data, "udp", 1000.0)
            assert outcome(fast) == expected, (accelerate, datagrams)
        if time.monotonic() > deadline:
            print(f"fuzz: stopped at the time bound after {batch + 200:,} cases")
            return
    print(f"fuzz: {cases:,} cases")
