"""Hostile input against a running relay: it never crashes, counts what it drops and keeps the good lines."""

from __future__ import annotations

import socket

from tests.conftest import run_relay, wait_for
from tests.test_e2e import total

GOOD = b"good.line:1|c"
ABUSE = [
    b"x" * 65000,  # a 64 KiB datagram, truncated at dogstatsd_buffer_size
    b"\xff\xfe\xfd:1|c|#\xc3\x28,\xa0\xa1",  # invalid UTF-8 in name and tags
    b"nul\x00name:1|c|#a\x00b",
    b"many.tags:1|c|#" + b",".join(b"t%d:%d" % (i, i) for i in range(5000)),
    b"ts.huge:1|g|T99999999999999999999999",
    b"ts.negative:1|g|T-5",
    b"ts.far:1|g|T9223372036854775807",
    b"nan:nan|g\ninf:+Inf|c\nneg.inf:-inf|h",
    b"rate.zero:1|c|@0\nrate.negative:1|c|@-1\nrate.nan:1|h|@nan",
    b"_e{100,100}:short|event",  # lengths that lie
    b"_e{-1,5}:x|hello",
    b"_e{999999999999999999999,1}:x|y",
    b"_sc|name|9|m:bad status",
    b"::::||||####@@@@",
    b"\n\n\r\n\r\r\n",
    b"a:" + b"9" * 5000 + b"|c",
]


async def test_garbage_never_crashes_the_relay_and_good_lines_beside_it_count(intake, tmp_path):
    stand_in, url = intake
    # A 60 kB read buffer: thousands of tags fit whole, the 64 KiB datagram is still cut.
    async with run_relay(tmp_path, url, DD_DOGSTATSD_BUFFER_SIZE="60000") as relay:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)
            for abuse in ABUSE:
                sock.sendto(GOOD + b"\n" + abuse[:65000] + b"\n" + GOOD, ("127.0.0.1", relay.udp_port))
        sent = len(ABUSE)
        await wait_for(lambda: relay.status()["listeners"]["udp"]["packets"] == sent)
        await wait_for(lambda: total(stand_in.series, "good.line") >= 2 * sent - 2)
        status = relay.status()
        code, _, err = await relay.stop()
    assert code == 0, err
    # The 64 KiB datagram loses its tail (and the second good line) to truncation; every other one keeps both.
    assert total(stand_in.series, "good.line") == 2 * sent - 1
    assert status["listeners"]["udp"]["truncated"] == 1
    assert status["messages"]["metric"]["error"] >= 6 and status["messages"]["event"]["error"] == 3
    assert status["dropped"]["nan_or_inf"] == 3
    assert status["dropped"].get("internal_error", 0) == 0
    many = next(s for s in stand_in.series if s["metric"] == "many.tags")
    assert len(many["tags"]) == 5000
    assert any(s["metric"] == "\ufffd\ufffd\ufffd" for s in stand_in.series)  # invalid UTF-8 kept, as U+FFFD
    assert total(stand_in.series, "rate.zero") == 1 and total(stand_in.series, "rate.negative") == 1
    print(
        f"reliability: {sent} hostile datagrams: relay up, {status['messages']['metric']['error']} metric and "
        f"{status['messages']['event']['error']} event lines rejected and counted, {status['dropped']['nan_or_inf']} "
        f"NaN/Inf samples dropped and counted, {total(stand_in.series, 'good.line'):g} of {2 * sent - 1} good "
        "neighbours delivered (the last one of the 64 KiB datagram is truncated, as in the Agent)"
    )
