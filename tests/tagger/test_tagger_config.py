"""Which tagger the configuration makes (the Agent's keys and variables), and the interface's edges."""

from __future__ import annotations

import pytest

from relay.config import Config
from relay.tagger import Tagger
from relay.tagger.kubelet import KubeletClient


def load(**environ: str) -> Config:
    return Config.load(None, environ)


def test_no_kubernetes_and_no_docker_makes_no_tagger():
    assert Tagger.from_config(load()) is None


def test_kubernetes_sets_kubernetes_service_host_in_every_pod_and_that_turns_the_kubelet_tagger_on():
    """With no kubelet host configured the relay's hostname is asked (the node's: DD_HOSTNAME from spec.nodeName
    in the DaemonSet), as the Agent asks the Docker daemon's hostname; the ports are the Agent's defaults."""
    tagger = Tagger.from_config(load(KUBERNETES_SERVICE_HOST="10.96.0.1", DD_HOSTNAME="node-1"))
    assert tagger is not None
    assert tagger.state()["source"] == "kubelet https://node-1:10250"
    client = tagger.source.client  # type: ignore[attr-defined]
    assert isinstance(client, KubeletClient) and client.http_port == 10255 and client.tls_verify
    assert tagger.interval == 5.0


def test_the_kubelet_host_and_ports_come_from_the_agents_variables():
    tagger = Tagger.from_config(
        load(DD_KUBERNETES_KUBELET_HOST="10.0.0.7", DD_KUBERNETES_HTTPS_KUBELET_PORT="11250",
             DD_KUBELET_CACHE_PODS_DURATION="2.5", DOCKER_HOST="unix:///var/run/docker.sock")
    )  # fmt: skip
    assert tagger is not None and tagger.interval == 2.5
    assert tagger.state()["source"] == "kubelet https://10.0.0.7:11250", "the kubelet wins over Docker"
    ipv6 = Tagger.from_config(load(DD_KUBERNETES_KUBELET_HOST="fd00::7"))
    assert ipv6 is not None and ipv6.state()["source"] == "kubelet https://[fd00::7]:10250"


def test_a_state_before_any_poll_says_so():
    tagger = Tagger.from_config(load(DOCKER_HOST="unix:///var/run/docker.sock"))
    assert tagger is not None
    assert tagger.state() == {
        "source": "docker unix:///var/run/docker.sock", "pods": 0, "containers": 0, "polls": 0, "errors": 0,
        "last_error": "", "last_error_at": None, "last_success_at": None,
    }  # fmt: skip
    assert tagger.generation == 0 and tagger.tags("container_id://x", "low") is None
    tagger.stop()  # never started: nothing to wait for


def test_an_unknown_cardinality_is_a_mistake_of_the_caller():
    tagger = Tagger.from_config(load(DOCKER_HOST="tcp://127.0.0.1:2375"))
    assert tagger is not None
    tagger._snapshot = {"container_id://x": ((), ("a:1",), ("a:1", "b:2"), ("a:1", "b:2", "c:3"))}
    assert tagger.tags("container_id://x", "orchestrator") == ("a:1", "b:2")
    assert tagger.tags("container_id://x", "none") == ()
    with pytest.raises(ValueError, match="cardinality"):
        tagger.tags("container_id://x", "medium")


def test_docker_host_must_be_a_unix_socket_or_tcp():
    with pytest.raises(ValueError, match="docker_host"):
        Tagger.from_config(load(DOCKER_HOST="ssh://user@host"))
