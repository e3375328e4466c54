"""`python -m benchmarks.profile_packed [SECONDS] [mix]`: where a packed datagram's time goes, end to end on one
core.

The relay at its defaults, pinned to the server core; the C generator on the load core sends plain counters
(`bench.cN:1|c`, 1,000 contexts, 20 a datagram), or with `mix` the 6-type mix of the `mix` scenario, flat out;
`perf record` samples the relay's process (every thread: the reader's recvmmsg and copy, the wake-ups, the
slicing, ingest) and the hottest symbols are printed with the accepted lines/s. Needs `perf` (Debian's
linux-perf); prints the rate alone without it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.harness import LOAD_CPU, Intake, Relay, compiled, write_datagrams
from benchmarks.load import datagrams


def main(seconds: float = 6.0, mix: bool = False) -> None:
    lines = [b"bench.c%d:1|c" % (i % 1000) for i in range(20 * 5000)]
    grams = [b"\n".join(lines[i : i + 20]) for i in range(0, len(lines), 20)]
    file = write_datagrams(datagrams(20, 1000, True, 5000) if mix else grams)
    binary = compiled("loadgen")
    if binary is None:
        sys.exit("no C compiler: the generator is needed")
    intake = Intake()
    relay = Relay(intake.url)
    data = Path(tempfile.mkdtemp(prefix="relay-profile-")) / "perf.data"
    core = ",".join(map(str, LOAD_CPU))
    load = subprocess.Popen(["taskset", "-c", core, str(binary), "udp", "127.0.0.1", str(relay.port), str(file), "0",
                             str(seconds + 4)], stdout=subprocess.DEVNULL)  # fmt: skip
    try:
        time.sleep(2)
        before = relay.accepted_lines() or 0
        perf = shutil.which("perf")
        if perf:
            record = [perf, "record", "-F", "999", "-g", "-o", str(data), "-p", str(relay.process.pid)]
            subprocess.run([*record, "--", "sleep", str(seconds)], capture_output=True, check=False)
        else:
            time.sleep(seconds)
        print(f"accepted: {((relay.accepted_lines() or 0) - before) / seconds:,.0f} lines/s")
        load.wait()
    finally:
        relay.stop()
        intake.stop()
        file.unlink()
    if perf:
        report = [perf, "report", "-i", str(data), "--no-children", "--sort", "symbol,dso", "--stdio", "-g", "none"]
        shown = subprocess.run(report, capture_output=True, text=True).stdout
        print("\n".join([line for line in shown.splitlines() if "%" in line and not line.startswith("#")][:20]))


if __name__ == "__main__":
    main(float(sys.argv[1]) if len(sys.argv) > 1 else 6.0, "mix" in sys.argv[2:])
