"""The pods the tag tables are read from: one of each owner kind, labels and annotations of each kind the
Agent reads, a Docker-runtime sidecar, an init container and one not created yet."""

from __future__ import annotations

from tests.standins.kubelet import container, pod

APP = "a" * 64
SIDECAR = "b" * 64
MIGRATE = "c" * 64
CRONJOB_CONTAINER = "d" * 64
WEB = "kubernetes_pod_uid://0b5a52a4-6c8e-4a0e-9d3c-2f1f2a6c7e01"
WEB_POD = pod(
    "web-7d4b9c6f5d-x2x8q",
    WEB.removeprefix("kubernetes_pod_uid://"),
    namespace="shop",
    labels={
        "app.kubernetes.io/name": "web",
        "app.kubernetes.io/instance": "web-prod",
        "app.kubernetes.io/version": "1.4",
        "app.kubernetes.io/component": "frontend",
        "app.kubernetes.io/part-of": "shop",
        "app.kubernetes.io/managed-by": "helm",
        "tags.datadoghq.com/env": "prod",
        "tags.datadoghq.com/service": "web",
        "tags.datadoghq.com/version": "1.4.2",
        "tags.datadoghq.com/sidecar.service": "web-proxy",
        "pod-template-hash": "7d4b9c6f5d",
    },
    annotations={
        "ad.datadoghq.com/tags": '{"team": "checkout", "+request_shard": "7", "region": ["eu", "us"]}',
        "ad.datadoghq.com/app.tags": '{"tier": "gold"}',
    },
    owners=[("ReplicaSet", "web-7d4b9c6f5d")],
    qos="Burstable",
    priority_class="high-priority",
    containers=[
        container("app", "my-registry:5000/shop/web:1.4.2", APP, image_id="my-registry:5000/shop/web@sha256:" + "1" * 64),
        container("sidecar", "proxy:v1.29", SIDECAR, runtime="docker", env={"DD_VERSION": "1.29"},
                  image_id="docker-pullable://proxy@sha256:" + "2" * 64),
        container("pending", "busybox", ""),  # not created yet: no containerID, no entity
    ],
    init_containers=[container("migrate", "my-registry:5000/shop/migrate:7", MIGRATE)],
)  # fmt: skip
REPORT = "kubernetes_pod_uid://report-uid"
ADHOC = "kubernetes_pod_uid://adhoc-uid"
DB = "kubernetes_pod_uid://db-uid"
AGENT = "kubernetes_pod_uid://agent-uid"
ROLLOUT = "kubernetes_pod_uid://rollout-uid"
MANUAL = "kubernetes_pod_uid://manual-uid"
OTHER_PODS = [
    pod("report-28900320-abcde", "report-uid", owners=[("Job", "report-28900320")], phase="Succeeded",
        containers=[container("report", "report:2", CRONJOB_CONTAINER)]),
    pod("adhoc-xk2p4", "adhoc-uid", owners=[("Job", "adhoc")]),
    pod("db-0", "db-uid", owners=[("StatefulSet", "db")],
        volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "data-db-0"}}]),
    pod("node-agent-7xk2p", "agent-uid", owners=[("DaemonSet", "node-agent")],
        annotations={"openshift.io/deployment.name": "node-agent-3", "openshift.io/deployment-config.name": "agent"}),
    pod("canary-6c9f8b7d4-zq2rm", "rollout-uid", owners=[("ReplicaSet", "canary-6c9f8b7d4")],
        labels={"rollouts-pod-template-hash": "6c9f8b7d4"}),
    pod("cache-manual-k2x9p", "manual-uid", owners=[("ReplicaSet", "cache-manual")]),
]  # fmt: skip
APP_ENTITY, SIDECAR_ENTITY = f"container_id://{APP}", f"container_id://{SIDECAR}"
MIGRATE_ENTITY, REPORT_CONTAINER = f"container_id://{MIGRATE}", f"container_id://{CRONJOB_CONTAINER}"
