"""A kubelet's PodList → each pod's and each container's tags, with the Agent's names and cardinalities.

The Agent's tagger (comp/core/tagger/collectors/workloadmeta_extract.go) and its kubelet collector are the model;
the tag table is https://docs.datadoghq.com/containers/kubernetes/tag/. A pod's entity holds the pod-level tags;
each container's holds its pod's plus its own, as the Agent merges the pod and container sources.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from relay.tagger.tags import TagList, add_image, add_json_tags, add_standard_env, env_map

POD_PREFIX = "kubernetes_pod_uid://"
CONTAINER_PREFIX = "container_id://"

APP_LABELS = {
    "app.kubernetes.io/name": "kube_app_name",
    "app.kubernetes.io/instance": "kube_app_instance",
    "app.kubernetes.io/version": "kube_app_version",
    "app.kubernetes.io/component": "kube_app_component",
    "app.kubernetes.io/part-of": "kube_app_part_of",
    "app.kubernetes.io/managed-by": "kube_app_managed_by",
}
STANDARD_LABEL_PREFIX = "tags.datadoghq.com/"  # tags.datadoghq.com/env, or tags.datadoghq.com/<container>.env
STANDARD_TAGS = ("env", "service", "version")
POD_TAGS_ANNOTATION = "ad.datadoghq.com/tags"
CONTAINER_TAGS_ANNOTATION = "ad.datadoghq.com/{}.tags"
OWNER_TAGS = {  # an owner's kind → the low-cardinality tag its name gives (ReplicaSet and Job: see _owner_tags)
    "Deployment": "kube_deployment",
    "DaemonSet": "kube_daemon_set",
    "ReplicationController": "kube_replication_controller",
    "StatefulSet": "kube_stateful_set",
}
ARGO_ROLLOUT_LABEL = "rollouts-pod-template-hash"
AUTOSCALER_ANNOTATION = "autoscaling.datadoghq.com/autoscaler-id"
# The runes Kubernetes draws a ReplicaSet's pod-template hash from (k8s.io/apimachinery's rand), and digits (the
# hash of Kubernetes before 1.8, and the minutes a CronJob writes after its Job's name).
HASH_RUNES = frozenset("bcdfghjklmnpqrstvwxz2456789")
DIGITS = frozenset("0123456789")


def strip_runtime(container_id: str) -> str:
    """`containerd://<id>`, `docker://<id>`, `cri-o://<id>` → `<id>`."""
    return container_id.partition("://")[2] or container_id


def deployment_of(replica_set: str) -> str:
    """The Deployment a ReplicaSet belongs to: its name less a `-<hash>` suffix of three or more hash runes (or
    digits); "" when the name has no such suffix (a ReplicaSet made by hand)."""
    name, dash, suffix = replica_set.rpartition("-")
    if not dash or len(suffix) < 3 or not (set(suffix) <= HASH_RUNES or set(suffix) <= DIGITS):
        return ""
    return name


def cronjob_of(job: str) -> str:
    """The CronJob a Job belongs to: its name less a `-<scheduled minutes>` suffix of three or more digits."""
    name, dash, suffix = job.rpartition("-")
    return name if dash and len(suffix) >= 3 and set(suffix) <= DIGITS else ""


def pod_entities(pod_list: Any) -> dict[str, TagList]:
    """{`kubernetes_pod_uid://<uid>` | `container_id://<id>`: its tags} for every pod of a PodList."""
    entities: dict[str, TagList] = {}
    items = pod_list.get("items") if isinstance(pod_list, dict) else None
    for pod in items or ():
        if isinstance(pod, dict):
            _add_pod(pod, entities)
    return entities


def _add_pod(pod: Mapping[str, Any], entities: dict[str, TagList]) -> None:
    meta = pod.get("metadata") or {}
    uid = meta.get("uid")
    if not uid:
        return  # the Agent skips a pod without a UID too
    tags = _pod_tags(pod)
    entities[POD_PREFIX + uid] = tags
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    for specs, statuses in (
        (spec.get("initContainers"), status.get("initContainerStatuses")),
        (spec.get("containers"), status.get("containerStatuses")),
    ):
        by_name = {c.get("name"): c for c in specs or () if isinstance(c, dict)}
        for container in statuses or ():
            if isinstance(container, dict) and container.get("containerID"):  # none yet: not created
                container_id = strip_runtime(container["containerID"])
                entities[CONTAINER_PREFIX + container_id] = _container_tags(
                    pod, tags, container, by_name.get(container.get("name")) or {}
                )


def _pod_tags(pod: Mapping[str, Any]) -> TagList:
    meta, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
    labels: Mapping[str, str] = meta.get("labels") or {}
    annotations: Mapping[str, str] = meta.get("annotations") or {}
    tags = TagList()
    tags.orchestrator("pod_name", meta.get("name"))
    tags.low("kube_namespace", meta.get("namespace"))
    tags.low("pod_phase", str(status.get("phase") or "").lower())
    tags.low("kube_priority_class", spec.get("priorityClassName"))
    tags.low("kube_qos", status.get("qosClass"))
    tags.low("kube_runtime_class", spec.get("runtimeClassName"))
    for tag in STANDARD_TAGS:
        tags.low(tag, labels.get(STANDARD_LABEL_PREFIX + tag))
    for label, tag in APP_LABELS.items():
        tags.low(tag, labels.get(label))
    if annotations.get(AUTOSCALER_ANNOTATION):
        tags.low("kube_autoscaler_kind", "datadogpodautoscaler")
    add_json_tags(tags, annotations.get(POD_TAGS_ANNOTATION))
    tags.low("oshift_deployment_config", annotations.get("openshift.io/deployment-config.name"))
    tags.orchestrator("oshift_deployment", annotations.get("openshift.io/deployment.name"))
    for owner in meta.get("ownerReferences") or ():
        if isinstance(owner, dict):
            _owner_tags(tags, owner, pod)
    return tags


def _owner_tags(tags: TagList, owner: Mapping[str, Any], pod: Mapping[str, Any]) -> None:
    kind, name = str(owner.get("kind") or ""), str(owner.get("name") or "")
    tags.low("kube_ownerref_kind", kind.lower())
    tags.orchestrator("kube_ownerref_name", name)
    if kind in OWNER_TAGS:
        tags.low(OWNER_TAGS[kind], name)
    if kind == "StatefulSet":
        for volume in (pod.get("spec") or {}).get("volumes") or ():
            tags.low("persistentvolumeclaim", ((volume or {}).get("persistentVolumeClaim") or {}).get("claimName"))
    elif kind == "Job":
        cronjob = cronjob_of(name)
        tags.low("kube_cronjob", cronjob)
        tags.add("orchestrator" if cronjob else "low", "kube_job", name)  # one Job per run: orchestrator
    elif kind == "ReplicaSet":
        deployment = deployment_of(name)
        tags.low("kube_deployment", deployment)
        if deployment and ((pod.get("metadata") or {}).get("labels") or {}).get(ARGO_ROLLOUT_LABEL):
            tags.low("kube_argo_rollout", deployment)
        tags.low("kube_replica_set", name)


def _container_tags(
    pod: Mapping[str, Any], pod_tags: TagList, status: Mapping[str, Any], spec: Mapping[str, Any]
) -> TagList:
    meta = pod.get("metadata") or {}
    labels: Mapping[str, str] = meta.get("labels") or {}
    name, pod_name = str(status.get("name") or ""), str(meta.get("name") or "")
    container_id = strip_runtime(str(status["containerID"]))
    tags = pod_tags.copy()
    tags.low("kube_container_name", name)
    tags.high("container_id", container_id)
    tags.high("container_name", name)  # the container source's name: the kubelet's is the pod spec's
    if name and pod_name:
        tags.high("display_container_name", f"{name}_{pod_name}")
    image_id = str(status.get("imageID") or "").removeprefix("docker-pullable://")
    image = add_image(tags, str(spec.get("image") or status.get("image") or ""), image_id)
    if image and str(status["containerID"]).startswith("docker://"):
        tags.low("docker_image", f"{image[0]}:{image[1]}")
    for tag in STANDARD_TAGS:
        tags.low(tag, labels.get(f"{STANDARD_LABEL_PREFIX}{name}.{tag}"))
    add_standard_env(tags, env_map(spec.get("env") or ()))
    add_json_tags(tags, (meta.get("annotations") or {}).get(CONTAINER_TAGS_ANNOTATION.format(name)))
    return tags
