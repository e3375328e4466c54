"""Load generator fallback for machines without a C compiler; same arguments and output as loadgen.c."""

from __future__ import annotations

import json
import socket
import struct
import sys
import time
from pathlib import Path


def main(kind: str, where: str, path: str, rate: float, seconds: float) -> None:
    blob = Path(path).read_bytes()
    datagrams, at = [], 0
    while at + 4 <= len(blob):
        (length,) = struct.unpack_from("<I", blob, at)
        datagrams.append(blob[at + 4 : at + 4 + length])
        at += 4 + length
    family = socket.AF_UNIX if kind == "unix" else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.connect(where if kind == "unix" else ("127.0.0.1", int(where)))
    start = time.monotonic()
    deadline, sent, errors, index = start + seconds, 0, 0, 0
    while (now := time.monotonic()) < deadline:
        if rate and (now - start) * rate < sent + 1:
            time.sleep(0.0001)
            continue
        for _ in range(64):
            try:
                sock.send(datagrams[index])
                sent += 1
            except OSError:
                errors += 1
            index = (index + 1) % len(datagrams)
    print(json.dumps({"sent": sent, "seconds": time.monotonic() - start, "errors": errors}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5]))
