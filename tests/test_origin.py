"""Each pod keeps its own metrics: the relay as a node's DaemonSet, with a kubelet stand-in serving its pods over
HTTPS (a service account token, a verified certificate), and the official client sending as an app pod would
(`c:ci-<container id>`, `card:`, DD_ENTITY_ID). What the intake stand-in receives is checked.

The tags and their cardinalities are the Agent's out-of-the-box Kubernetes tags
(https://docs.datadoghq.com/containers/kubernetes/tag/): kube_namespace, kube_deployment (from the ReplicaSet
owner), kube_replica_set, kube_container_name, image_name, short_image, image_tag, pod_phase, kube_ownerref_kind
and the kube_app_* labels (and kube_qos) are low; pod_name and kube_ownerref_name orchestrator; container_id high.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from datadog.dogstatsd.base import DogStatsd

from benchmarks.cgroup import MemoryCgroup, cgroup_unavailable
from relay.tools.doctor import diagnose
from relay.tools.status import render
from tests.conftest import config, run_relay, wait_for
from tests.standins import Certificates, make_certificates
from tests.standins.docker_engine import DockerEngine
from tests.standins.docker_engine import container as docker_container
from tests.standins.kubelet import Kubelet, closed_port, container, pod

WEB, API, STRANGER = "a" * 64, "b" * 64, "f" * 64
TOKEN = "relay-service-account-token"


def deployment_pod(name: str, uid: str, container_id: str) -> dict[str, Any]:
    """A pod of Deployment `name` in namespace shop, its one container `app` running registry/shop/<name>:1.4."""
    replica_set = f"{name}-7d4b9c6f5d"
    return pod(
        f"{replica_set}-x2x8q", uid, namespace="shop", owners=[("ReplicaSet", replica_set)],
        labels={"app.kubernetes.io/name": name, "pod-template-hash": "7d4b9c6f5d"},
        containers=[container("app", f"registry.example:5000/shop/{name}:1.4", container_id)],
    )  # fmt: skip


def low_tags(name: str) -> set[str]:
    return {
        "kube_namespace:shop", f"kube_deployment:{name}", f"kube_replica_set:{name}-7d4b9c6f5d",
        "kube_container_name:app", f"image_name:registry.example:5000/shop/{name}", f"short_image:{name}",
        "image_tag:1.4", "pod_phase:running", "kube_ownerref_kind:replicaset", f"kube_app_name:{name}",
        "kube_qos:BestEffort",
    }  # fmt: skip


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("kubelet-tls"))


@pytest.fixture
def kubelet(certificates: Certificates) -> Any:
    with Kubelet(certificates, token=TOKEN) as served:
        served.add(deployment_pod("web", "web-uid", WEB), deployment_pod("api", "api-uid", API))
        yield served


def node_relay(tmp_path: Path, url: str, kubelet_port: int, certificates: Certificates, **env: str) -> Any:
    token = tmp_path / "token"
    token.write_text(TOKEN)
    return run_relay(
        tmp_path, url,
        DD_KUBERNETES_KUBELET_HOST="127.0.0.1", DD_KUBERNETES_HTTPS_KUBELET_PORT=str(kubelet_port),
        DD_KUBERNETES_HTTP_KUBELET_PORT=str(closed_port()), DD_KUBELET_CLIENT_CA=str(certificates.ca),
        DD_KUBELET_AUTH_TOKEN_PATH=str(token), **{"DD_DOGSTATSD_ORIGIN_DETECTION_CLIENT": "true", **env},
    )  # fmt: skip


@pytest.fixture
def client() -> Any:
    """The official client at its defaults, as an app pod's would be; closed after the test."""
    made: list[DogStatsd] = []

    def make(port: int, **options: Any) -> DogStatsd:
        made.append(DogStatsd(host="127.0.0.1", port=port, **options))
        return made[-1]

    yield make
    for statsd in made:
        statsd.close_socket()


def contexts(series: list[dict[str, Any]], metric: str) -> dict[frozenset[str], float]:
    """{tags: total} of one metric over every flush (a rate's value times the 1 s flush interval: its count)."""
    totals: dict[frozenset[str], float] = {}
    for item in series:
        if item["metric"] == metric:
            tags = frozenset(item["tags"])
            totals[tags] = totals.get(tags, 0) + sum(value for _, value in item["points"])
    return totals


async def known_pods(relay: Any, count: int) -> None:
    await wait_for(lambda: (relay.status().get("tagger") or {}).get("pods") == count, timeout=15)


async def test_two_pods_of_two_deployments_keep_their_own_contexts(intake, client, kubelet, certificates, tmp_path):
    stand_in, url = intake
    async with node_relay(tmp_path, url, kubelet.port, certificates) as relay:
        await known_pods(relay, 2)
        web, api = (client(relay.udp_port, container_id=f"ci-{cid}") for cid in (WEB, API))
        stranger = client(relay.udp_port, container_id=f"ci-{STRANGER}")  # a container the kubelet does not list
        for statsd in (web, api, stranger):
            for _ in range(50):
                statsd.increment("orders.count", tags=["route:/checkout"])
        await wait_for(lambda: sum(contexts(stand_in.series, "orders.count").values()) == 150)
        status, metrics = relay.status(), relay.metrics_text()
        await relay.stop()
    found = contexts(stand_in.series, "orders.count")
    assert found == {
        frozenset({"route:/checkout", *low_tags("web")}): 50,
        frozenset({"route:/checkout", *low_tags("api")}): 50,
        frozenset({"route:/checkout"}): 50,  # unknown: no kube tags, counts whole
    }
    assert status["tagger"]["origins_unresolved"] == 1 and status["tagger"]["last_error"] == ""
    assert kubelet.requests and all(auth == f"Bearer {TOKEN}" for _, auth in kubelet.requests)
    # what an operator sees: status, doctor and /metrics
    assert f"Source: kubelet https://127.0.0.1:{kubelet.port}" in render(status)
    assert "Pods: 2  Containers: 2" in render(status) and "Origins not known: 1" in render(status)
    (finding,) = [f for f in diagnose(config(), status, lambda url, headers: 200) if f[1] == "tagger"]
    assert finding[0] == "WARN" and "1 origins" in finding[2]
    assert "relay_tagger_pods 2.0" in metrics and "relay_tagger_origins_unresolved 1.0" in metrics


async def test_cardinality_and_the_entity_id(intake, client, kubelet, certificates, tmp_path, monkeypatch):
    """card:orchestrator adds pod_name and kube_ownerref_name; card:high the container's id. DD_ENTITY_ID alone
    (no container id) gives its pod's tags, and the dd.internal.entity_id tag never reaches the intake."""
    stand_in, url = intake
    async with node_relay(tmp_path, url, kubelet.port, certificates) as relay:
        await known_pods(relay, 2)
        client(relay.udp_port, container_id=f"ci-{WEB}", cardinality="orchestrator").increment("card.orch")
        client(relay.udp_port, container_id=f"ci-{WEB}", cardinality="high").increment("card.high")
        client(relay.udp_port, container_id=f"ci-{WEB}", cardinality="none").increment("card.none")
        monkeypatch.setenv("DD_ENTITY_ID", "api-uid")
        client(relay.udp_port).gauge("entity.only", 7)
        await wait_for(lambda: {"card.orch", "card.high", "card.none", "entity.only"} <= {
            s["metric"] for s in stand_in.series
        })  # fmt: skip
        await relay.stop()
    pod_name = "pod_name:web-7d4b9c6f5d-x2x8q"
    (orch,) = contexts(stand_in.series, "card.orch")
    assert {pod_name, "kube_ownerref_name:web-7d4b9c6f5d"} | low_tags("web") <= orch
    (high,) = contexts(stand_in.series, "card.high")
    assert {pod_name, f"container_id:{WEB}"} | low_tags("web") <= high
    assert contexts(stand_in.series, "card.none") == {frozenset(): 1}
    (entity,) = contexts(stand_in.series, "entity.only")
    assert (
        low_tags("api")
        - {"kube_container_name:app", "image_name:registry.example:5000/shop/api", "short_image:api", "image_tag:1.4"}
        <= entity
    )  # fmt: skip  (a pod's, not a container's)
    assert not any(tag.startswith("dd.internal") for s in stand_in.series for tag in s["tags"])


async def test_a_pod_listed_later_gets_its_tags_within_10_seconds(intake, client, kubelet, certificates, tmp_path):
    stand_in, url = intake
    late = "e" * 64
    async with node_relay(tmp_path, url, kubelet.port, certificates) as relay:
        await known_pods(relay, 2)
        statsd = client(relay.udp_port, container_id=f"ci-{late}")
        statsd.increment("late.count")
        await wait_for(lambda: contexts(stand_in.series, "late.count") == {frozenset(): 1})
        kubelet.add(deployment_pod("late", "late-uid", late))
        started = asyncio.get_running_loop().time()
        while frozenset(low_tags("late")) not in contexts(stand_in.series, "late.count"):
            assert asyncio.get_running_loop().time() - started < 10, contexts(stand_in.series, "late.count")
            statsd.increment("late.count")
            await asyncio.sleep(0.2)
        await relay.stop()


async def test_a_kubelet_that_is_down_costs_tags_never_lines(intake, client, certificates, tmp_path):
    stand_in, url = intake
    async with node_relay(tmp_path, url, closed_port(), certificates) as relay:
        statsd = client(relay.udp_port, container_id=f"ci-{WEB}")
        for _ in range(1000):
            statsd.increment("down.count")
        await wait_for(lambda: contexts(stand_in.series, "down.count") == {frozenset(): 1000})
        await wait_for(lambda: relay.status()["tagger"]["errors"] >= 1)
        status = relay.status()
        await relay.stop()
    assert status["tagger"]["pods"] == 0 and "refused" in status["tagger"]["last_error"].lower()
    (finding,) = [f for f in diagnose(config(), status, lambda url, headers: 200) if f[1] == "tagger"]
    assert finding[0] == "FAIL" and "DD_KUBERNETES_KUBELET_HOST" in finding[2]
    assert "[WARNING] last error" in render(status)


async def test_client_container_ids_are_ignored_without_origin_detection_client(
    intake, client, kubelet, certificates, tmp_path
):
    """dogstatsd_origin_detection_client off (the Agent's default): a c: field adds nothing."""
    stand_in, url = intake
    async with node_relay(tmp_path, url, kubelet.port, certificates,
                          DD_DOGSTATSD_ORIGIN_DETECTION_CLIENT="false") as relay:  # fmt: skip
        await known_pods(relay, 2)
        client(relay.udp_port, container_id=f"ci-{WEB}").increment("plain.count")
        await wait_for(lambda: contexts(stand_in.series, "plain.count") == {frozenset(): 1})
        await relay.stop()


def test_the_stand_in_kubelet_refuses_a_request_without_the_token(kubelet):
    """The relay's success above is not the stand-in's leniency."""
    import http.client
    import ssl

    context = ssl.create_default_context(cafile=str(kubelet.certificates.ca))
    connection = http.client.HTTPSConnection("127.0.0.1", kubelet.port, context=context, timeout=5)
    connection.request("GET", "/pods")
    assert connection.getresponse().status == 401
    with socket.create_connection(("127.0.0.1", kubelet.port)):
        pass


SENDER = """
import sys
from datadog.dogstatsd.base import DogStatsd
# No container id of its own: the relay finds it from the pid. Buffered: a few datagrams, none lost to a full
# socket queue (that loss is issue 23's, measured by the client-uds benchmark).
statsd = DogStatsd(socket_path=sys.argv[1], disable_buffering=False)
for _ in range(100):
    statsd.increment("sender.count", tags=["route:/pay"])
statsd.event("deployed", "v2")
statsd.flush()
"""


@pytest.mark.parametrize("queue_bytes", ["67108864", "0"], ids=["native-reader", "event-loop-reader"])
async def test_the_unix_socket_senders_container_from_its_pid(intake, kubelet, certificates, short_tmp, queue_bytes):
    """dogstatsd_origin_detection: a client that names no origin, in a container's cgroup (made here: a directory
    named by its id, as a container runtime names it), gets its pod's tags from the pid the kernel gives with each
    datagram (SO_PASSCRED), as the Agent does. A client outside any container gets none, and both count whole."""
    reason = cgroup_unavailable()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"no cgroup in CI ({reason}): the pid origin test did not run")
        pytest.skip(reason)
    stand_in, url = intake
    path = short_tmp / "dsd.socket"
    async with node_relay(short_tmp, url, kubelet.port, certificates, DD_DOGSTATSD_SOCKET=str(path),
                          DD_DOGSTATSD_ORIGIN_DETECTION="true", DD_RELAY_RECEIVE_QUEUE_BYTES=queue_bytes) as relay:  # fmt: skip
        await known_pods(relay, 2)
        with MemoryCgroup(None, name=WEB) as container:  # the web pod's container
            contained = subprocess.run([sys.executable, "-c", SENDER, str(path)], preexec_fn=container.preexec,
                                       capture_output=True, text=True, timeout=60)  # fmt: skip
        outside = subprocess.run([sys.executable, "-c", SENDER, str(path)], capture_output=True, text=True, timeout=60)
        assert contained.returncode == 0 and outside.returncode == 0, contained.stderr + outside.stderr
        await wait_for(lambda: sum(contexts(stand_in.series, "sender.count").values()) == 200)
        await wait_for(lambda: len([e for e in stand_in.events if e["msg_title"] == "deployed"]) == 2)
        await relay.stop()
    assert contexts(stand_in.series, "sender.count") == {
        frozenset({"route:/pay", *low_tags("web")}): 100, frozenset({"route:/pay"}): 100,
    }  # fmt: skip
    tagged = [e for e in stand_in.events if e["msg_title"] == "deployed" and "kube_deployment:web" in e.get("tags", [])]
    assert len(tagged) == 1


async def test_in_the_compose_stack_the_docker_engine_names_the_sender(intake, client, short_tmp):
    """docker_host: the Docker Engine API (a stand-in on a Unix socket, in the Engine's shape) tags each container's
    lines: image tags and com.datadoghq.tags.* labels low, the container's name high
    (https://docs.datadoghq.com/containers/docker/tag/)."""
    stand_in, url = intake
    labels = {"com.datadoghq.tags.env": "local", "com.datadoghq.tags.service": "demo"}
    with DockerEngine(short_tmp / "docker.sock") as engine:
        engine.add(docker_container(WEB, "demo-app-1", "python:3.11-slim", labels=labels))
        async with run_relay(short_tmp, url, DD_DOCKER_HOST=engine.url,
                             DD_DOGSTATSD_ORIGIN_DETECTION_CLIENT="true") as relay:  # fmt: skip
            await wait_for(lambda: (relay.status().get("tagger") or {}).get("containers") == 1)
            client(relay.udp_port, container_id=f"ci-{WEB}").increment("demo.count")
            client(relay.udp_port, container_id=f"ci-{WEB}", cardinality="high").increment("demo.high")
            await wait_for(lambda: {"demo.count", "demo.high"} <= {s["metric"] for s in stand_in.series})
            await relay.stop()
    low = {"env:local", "service:demo", "image_name:python", "short_image:python", "image_tag:3.11-slim"}
    (tags,) = contexts(stand_in.series, "demo.count")
    assert low <= tags and "container_name:demo-app-1" not in tags
    (high,) = contexts(stand_in.series, "demo.high")
    assert low | {"container_name:demo-app-1", f"container_id:{WEB}"} <= high


async def test_explain_shows_the_origin_and_the_tags_it_added(kubelet, certificates, tmp_path):
    token = tmp_path / "token"
    token.write_text(TOKEN)
    environment = {key: value for key, value in os.environ.items() if not key.startswith("DD_")}
    environment |= {"DD_KUBERNETES_KUBELET_HOST": "127.0.0.1", "DD_KUBERNETES_HTTPS_KUBELET_PORT": str(kubelet.port),
                    "DD_KUBELET_CLIENT_CA": str(certificates.ca), "DD_KUBELET_AUTH_TOKEN_PATH": str(token),
                    "DD_DOGSTATSD_ORIGIN_DETECTION_CLIENT": "true", "XDG_CONFIG_HOME": str(tmp_path)}  # fmt: skip
    command = [sys.executable, "-m", "relay", "explain", f"orders.count:1|c|c:ci-{API}|card:orchestrator"]
    shown = await asyncio.to_thread(subprocess.run, command, env=environment, capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    origin = next(line for line in shown.stdout.splitlines() if line.strip().startswith("origin:"))
    assert f"container_id://{API}" in origin and "(orchestrator)" in origin
    assert "kube_deployment:api" in origin and "pod_name:api-7d4b9c6f5d-x2x8q" in origin
