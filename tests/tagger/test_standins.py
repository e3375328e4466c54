"""The stand-ins are worth what their shapes are: the kubelet's pods validate against the Kubernetes API's schemas
(offline, with kubernetes-validate, as tests/test_container.py validates the manifests), and the Docker stand-in
answers the Engine API's paths, versioned or not, with its error document for an unknown container."""

from __future__ import annotations

import http.client
import json
import socket
import subprocess

import yaml

from tests.standins import docker_engine, required_tool
from tests.standins.docker_engine import DockerEngine
from tests.standins.kubelet import Kubelet, container, pod
from tests.tagger.pods import OTHER_PODS, WEB_POD


def test_the_kubelet_stand_ins_pods_are_valid_v1_pods(tmp_path):
    validate = required_tool("kubernetes-validate", "pip install kubernetes-validate")
    pods = [WEB_POD, *OTHER_PODS, pod("lone", "lone-uid", containers=[container("c", "c:1", "f" * 64)])]
    path = tmp_path / "pods.yaml"
    path.write_text(yaml.safe_dump_all([{"apiVersion": "v1", "kind": "Pod", **pod} for pod in pods]))
    result = subprocess.run([validate, "--strict", "--quiet", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_kubelet_stand_in_serves_a_pod_list():
    with Kubelet() as kubelet:
        kubelet.add(WEB_POD)
        connection = http.client.HTTPConnection("127.0.0.1", kubelet.port, timeout=5)
        connection.request("GET", "/pods")
        document = json.loads(connection.getresponse().read())
        connection.close()
    assert (document["kind"], document["apiVersion"]) == ("PodList", "v1")
    assert [item["metadata"]["uid"] for item in document["items"]] == [WEB_POD["metadata"]["uid"]]


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=5)
        self.unix_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.unix_path)


def _get(engine: DockerEngine, path: str) -> tuple[int, object]:
    connection = _UnixConnection(str(engine.path))
    connection.request("GET", path)
    response = connection.getresponse()
    result = response.status, json.loads(response.read())
    connection.close()
    return result


def test_the_docker_stand_in_answers_the_engine_apis_paths(tmp_path):
    with DockerEngine(tmp_path / "docker.sock") as engine:
        engine.add(docker_engine.container("f" * 64, "web", "web:1"))
        status, listed = _get(engine, "/v1.43/containers/json")
        assert status == 200 and isinstance(listed, list) and listed[0]["Names"] == ["/web"]
        status, inspect = _get(engine, f"/containers/{'f' * 64}/json")
        assert status == 200 and isinstance(inspect, dict) and inspect["Config"]["Image"] == "web:1"
        assert _get(engine, "/containers/nope/json") == (404, {"message": "No such container: nope"})
