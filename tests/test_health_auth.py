"""The health endpoint's guard: probes and /metrics for anyone; /status and /debug/* for loopback or the token."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.files import AUTH_TOKEN, auth_token, write_once
from relay.runtime.health import OPEN_PATHS, REFUSED, allowed
from tests.conftest import free_port

# TEST-NET-2 (RFC 5737), never routed. Not TEST-NET-1: a test host's own network may use it.
HOST_ADDRESS, PEER_ADDRESS = "198.51.100.1", "198.51.100.2"
# What the peer runs inside its namespace: one GET, printed as `status body`.
GET = """import sys, urllib.request, urllib.error
request = urllib.request.Request(sys.argv[1], headers={"Authorization": sys.argv[2]} if sys.argv[2] else {})
try:
    with urllib.request.urlopen(request, timeout=10) as response:
        print(response.status, response.read(200))
except urllib.error.HTTPError as error:
    print(error.code, error.read().decode(), end="")
"""


@pytest.mark.parametrize(
    ("path", "remote", "authorization", "expected"),
    [
        ("/healthz", "203.0.113.9", "", True),
        ("/ready", "203.0.113.9", "", True),
        ("/metrics", "203.0.113.9", "", True),
        ("/status", "127.0.0.1", "", True),
        ("/debug/capture", "::1", "", True),
        ("/debug/capture", "::ffff:127.0.0.1", "", True),
        ("/debug/capture", "203.0.113.9", "", False),
        ("/debug/capture", "203.0.113.9", "Bearer wrong", False),
        ("/debug/capture", "203.0.113.9", "Bearer secret", True),
        ("/status", "203.0.113.9", "secret", False),
        ("/status", None, "", False),
        ("/reload", "203.0.113.9", "", False),  # any path not open is guarded, one added later too
    ],
)
def test_open_paths_answer_anyone_and_the_rest_loopback_or_the_token(path, remote, authorization, expected):
    assert allowed(path, remote, authorization, "secret") is expected
    assert {"/healthz", "/ready", "/metrics"} == OPEN_PATHS


def test_a_relay_without_a_token_answers_no_peer_that_is_not_loopback():
    assert not allowed("/status", "203.0.113.9", "Bearer ", None)


def test_the_token_is_made_once_0600_and_never_replaced(tmp_path):
    run_path = tmp_path / "run"
    assert auth_token(run_path) is None  # reading never creates
    token = auth_token(run_path, create=True)
    assert token is not None and len(bytes.fromhex(token)) == 32
    assert stat.S_IMODE((run_path / AUTH_TOKEN).stat().st_mode) == 0o600
    assert auth_token(run_path, create=True) == token == auth_token(run_path)
    assert write_once(run_path / AUTH_TOKEN, b"another\n") is False and auth_token(run_path) == token
    assert sorted(p.name for p in run_path.iterdir()) == [AUTH_TOKEN]  # no temporary file left


def _skip_or_fail(reason: str) -> None:
    """As tests/conftest.py's c_extension: CI runs as root with iproute2, so there a missing namespace fails."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason}: CI can create network namespaces")
    pytest.skip(reason)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=10)


@pytest.fixture
def peer_namespace() -> Iterator[str]:
    """A network namespace joined to this one by a veth pair: HOST_ADDRESS here, PEER_ADDRESS there, a peer that is
    not loopback. Yields the namespace's name; the namespace and the pair are always removed."""
    if shutil.which("ip") is None or os.geteuid() != 0:
        _skip_or_fail("needs root and iproute2 (`ip`), to make a network namespace")
    addresses = subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True, timeout=10).stdout
    if HOST_ADDRESS.rsplit(".", 1)[0] + "." in addresses:
        _skip_or_fail(f"{HOST_ADDRESS}/30 is in use on this host")
    name, host_end = f"relay-test-{os.getpid()}", f"rt{os.getpid() % 100000}h"
    try:
        _ip("netns", "add", name)
        _ip("link", "add", host_end, "type", "veth", "peer", "name", "peer0", "netns", name)
        _ip("addr", "add", f"{HOST_ADDRESS}/30", "dev", host_end)
        _ip("link", "set", host_end, "up")
        _ip("-n", name, "addr", "add", f"{PEER_ADDRESS}/30", "dev", "peer0")
        _ip("-n", name, "link", "set", "peer0", "up")
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as error:
        subprocess.run(["ip", "link", "del", host_end], capture_output=True, timeout=10)
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)
        _skip_or_fail(f"cannot make a network namespace here: {getattr(error, 'stderr', '') or error}")
    try:
        yield name
    finally:
        subprocess.run(["ip", "link", "del", host_end], capture_output=True, timeout=10)  # removes both ends
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=10)


def _from_peer(namespace: str, url: str, authorization: str = "") -> tuple[int, str]:
    out = subprocess.run(["ip", "netns", "exec", namespace, sys.executable, "-c", GET, url, authorization],
                         capture_output=True, text=True, timeout=30, check=True).stdout  # fmt: skip
    code, body = out.split(" ", 1)
    return int(code), body


def _wait_until_healthy(url: str, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1].decode()[-2000:]
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("the relay's /healthz did not answer within 20 s")


def test_a_peer_that_is_not_loopback_gets_the_traffic_only_with_the_token(peer_namespace, tmp_path):
    """The relay's health bound to HOST_ADDRESS; the peer asks from PEER_ADDRESS, in its own namespace. The CLI
    on this side reaches HOST_ADDRESS too (not loopback), and sends the token it reads under run_path."""
    health_port = free_port(socket.SOCK_STREAM)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DD_")}
    env.update(DD_DOGSTATSD_PORT=str(free_port()), DD_RELAY_HEALTH_HOST=HOST_ADDRESS,
               DD_RELAY_HEALTH_PORT=str(health_port), DD_RUN_PATH=str(tmp_path / "run"), DD_RELAY_HOST_COLLECTORS="",
               DD_ENABLE_METADATA_COLLECTION="false", XDG_CONFIG_HOME=str(tmp_path / "no-user-config"))  # fmt: skip
    relay = subprocess.Popen([sys.executable, "-m", "relay", "run"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    url = f"http://{HOST_ADDRESS}:{health_port}"
    try:
        _wait_until_healthy(url, relay)
        token = (tmp_path / "run" / AUTH_TOKEN).read_text().strip()
        assert _from_peer(peer_namespace, url + "/debug/capture?seconds=0.2") == (403, REFUSED)
        code, body = _from_peer(peer_namespace, url + "/debug/capture?seconds=0.2", f"Bearer {token}")
        assert code == 200 and body.startswith("b'")
        assert _from_peer(peer_namespace, url + "/healthz")[0] == 200
        status = subprocess.run([sys.executable, "-m", "relay", "status", "--json"], env=env, capture_output=True,
                                text=True, timeout=30)  # fmt: skip
        assert status.returncode == 0 and json.loads(status.stdout)["info"]["health"] == f"{HOST_ADDRESS}:{health_port}"
        env["DD_RUN_PATH"] = str(tmp_path / "elsewhere")  # no token there: refused, and told how to authenticate
        refused = subprocess.run([sys.executable, "-m", "relay", "status"], env=env, capture_output=True, text=True,
                                 timeout=30)  # fmt: skip
        assert refused.returncode == 1 and refused.stderr == f"status: {url}/status answered 403: {REFUSED}"
    finally:
        relay.terminate()
        relay.communicate(timeout=30)
    assert not list(Path(tmp_path / "elsewhere").glob("*"))  # a command reads the token, never makes one
