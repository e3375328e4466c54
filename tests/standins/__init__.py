"""Stand-ins for the services the relay's tagger asks, in the real APIs' shapes: a kubelet and a Docker Engine.

They serve real sockets on this machine (127.0.0.1, a Unix socket) so the relay's own HTTP and TLS code runs
unchanged against them. Tools they need (the `openssl` CLI for the kubelet's certificates) are required in CI and
skipped with the reason elsewhere, as tests/test_container.py does for its tools.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest


def required_tool(name: str, install: str) -> str:
    """The tool's path; missing, the test fails in CI (which must have it) and skips elsewhere, saying why."""
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])  # the venv's bin too
    path = shutil.which(name, path=search)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is missing in CI: .ci/run installs it ({install})")
        pytest.skip(f"{name} is not installed here ({install}); .ci/run installs it")
    return path


@dataclass(frozen=True)
class Certificates:
    """A private CA and a server certificate it signed, valid for 127.0.0.1 and localhost, as PEM files."""

    ca: Path
    cert: Path
    key: Path


def make_certificates(directory: Path) -> Certificates:
    """A CA and a kubelet serving certificate, made with the openssl CLI (EC keys: quick to make)."""
    openssl = required_tool("openssl", "apt-get install openssl")
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    (directory / "server.ext").write_text(
        "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nsubjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n"
    )
    commands = [
        ["req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=stand-in kubelet CA"],
        ["req", *key, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
         "-out", "server.crt", "-days", "2", "-extfile", "server.ext"],
    ]  # fmt: skip
    for command in commands:
        result = subprocess.run([openssl, *command], cwd=directory, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
    return Certificates(directory / "ca.crt", directory / "server.crt", directory / "server.key")
