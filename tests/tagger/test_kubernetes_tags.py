"""Each Kubernetes tag the tagger gives, with its source and cardinality, as the Datadog Agent gives it.

The pods are served by the kubelet stand-in over HTTPS and read through the tagger as the relay reads them. The
tables follow the Agent's documentation, https://docs.datadoghq.com/containers/kubernetes/tag/ ("Out-of-the-box
tags"), checked against its tagger (comp/core/tagger/collectors/workloadmeta_extract.go) where the page is silent:
a tag at `orchestrator` is not at `low`, a tag at `high` at neither, and each cardinality holds the ones below it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from relay.tagger import Tagger
from relay.tagger.kubernetes import cronjob_of, deployment_of, pod_entities, strip_runtime
from tests.conftest import config
from tests.standins.kubelet import Kubelet, closed_port, pod
from tests.tagger.conftest import TOKEN, eventually
from tests.tagger.pods import (
    ADHOC,
    AGENT,
    APP,
    APP_ENTITY,
    DB,
    MANUAL,
    MIGRATE_ENTITY,
    OTHER_PODS,
    REPORT,
    REPORT_CONTAINER,
    ROLLOUT,
    SIDECAR_ENTITY,
    WEB,
    WEB_POD,
)

# Pod-level tags, on the pod's entity (and each of its containers'):
# https://docs.datadoghq.com/containers/kubernetes/tag/ — (entity, tag, cardinality, the doc's source)
POD_TAGS = [
    (WEB, "kube_namespace:shop", "low", "Pod metadata"),
    (WEB, "pod_name:web-7d4b9c6f5d-x2x8q", "orchestrator", "Pod metadata"),
    (WEB, "pod_phase:running", "low", "Pod status (lower-cased)"),
    (WEB, "kube_qos:Burstable", "low", "Pod Quality of Service class"),
    (WEB, "kube_priority_class:high-priority", "low", "Pod priority class"),
    (WEB, "kube_ownerref_kind:replicaset", "low", "Pod ownerref (lower-cased kind)"),
    (WEB, "kube_ownerref_name:web-7d4b9c6f5d", "orchestrator", "Pod ownerref"),
    (WEB, "kube_replica_set:web-7d4b9c6f5d", "low", "Pod ownerref"),
    (WEB, "kube_deployment:web", "low", "Pod ownerref: the ReplicaSet less its pod-template hash"),
    (WEB, "kube_app_name:web", "low", "Pod label app.kubernetes.io/name"),
    (WEB, "kube_app_instance:web-prod", "low", "Pod label app.kubernetes.io/instance"),
    (WEB, "kube_app_version:1.4", "low", "Pod label app.kubernetes.io/version"),
    (WEB, "kube_app_component:frontend", "low", "Pod label app.kubernetes.io/component"),
    (WEB, "kube_app_part_of:shop", "low", "Pod label app.kubernetes.io/part-of"),
    (WEB, "kube_app_managed_by:helm", "low", "Pod label app.kubernetes.io/managed-by"),
    (WEB, "env:prod", "low", "Pod label tags.datadoghq.com/env"),
    (WEB, "service:web", "low", "Pod label tags.datadoghq.com/service"),
    (WEB, "version:1.4.2", "low", "Pod label tags.datadoghq.com/version"),
    (WEB, "team:checkout", "low", "Pod annotation ad.datadoghq.com/tags"),
    (WEB, "region:eu", "low", "Pod annotation ad.datadoghq.com/tags (a list of values)"),
    (WEB, "region:us", "low", "Pod annotation ad.datadoghq.com/tags (a list of values)"),
    (WEB, "request_shard:7", "high", "Pod annotation ad.datadoghq.com/tags, a name starting with +"),
    (REPORT, "kube_job:report-28900320", "orchestrator", "Pod ownerref: a Job of a CronJob"),
    (REPORT, "kube_cronjob:report", "low", "Pod ownerref: the Job less its schedule suffix"),
    (REPORT, "pod_phase:succeeded", "low", "Pod status"),
    (ADHOC, "kube_job:adhoc", "low", "Pod ownerref: a Job of its own"),
    (DB, "kube_stateful_set:db", "low", "Pod ownerref"),
    (DB, "persistentvolumeclaim:data-db-0", "low", "Pod spec (a StatefulSet's claim)"),
    (AGENT, "kube_daemon_set:node-agent", "low", "Pod ownerref"),
    (AGENT, "oshift_deployment:node-agent-3", "orchestrator", "Pod annotation openshift.io/deployment.name"),
    (AGENT, "oshift_deployment_config:agent", "low", "Pod annotation openshift.io/deployment-config.name"),
    (ROLLOUT, "kube_argo_rollout:canary", "low", "Pod ownerref and the rollouts-pod-template-hash label"),
    (ROLLOUT, "kube_deployment:canary", "low", "Pod ownerref"),
]

# Container-level tags, on the container's entity only:
# https://docs.datadoghq.com/containers/kubernetes/tag/ — (entity, tag, cardinality, the doc's source)
CONTAINER_TAGS = [
    (APP_ENTITY, "kube_container_name:app", "low", "Pod status"),
    (APP_ENTITY, f"container_id:{APP}", "high", "Pod status (runtime prefix stripped)"),
    (APP_ENTITY, "display_container_name:app_web-7d4b9c6f5d-x2x8q", "high", "Pod status"),
    (APP_ENTITY, "container_name:app", "high", "the Agent's container source (docs/containers/docker/tag)"),
    (APP_ENTITY, "image_name:my-registry:5000/shop/web", "low", "Pod spec"),
    (APP_ENTITY, "short_image:web", "low", "Pod spec"),
    (APP_ENTITY, "image_tag:1.4.2", "low", "Pod spec"),
    (APP_ENTITY, "image_id:my-registry:5000/shop/web@sha256:" + "1" * 64, "low", "Container image ID"),
    (APP_ENTITY, "tier:gold", "low", "Pod annotation ad.datadoghq.com/<container>.tags"),
    (SIDECAR_ENTITY, "service:web-proxy", "low", "Pod label tags.datadoghq.com/<container>.service"),
    (SIDECAR_ENTITY, "version:1.29", "low", "container envvar DD_VERSION"),
    (SIDECAR_ENTITY, "image_tag:v1.29", "low", "Pod spec"),
    (SIDECAR_ENTITY, "image_id:proxy@sha256:" + "2" * 64, "low", "Container image ID, docker-pullable:// stripped"),
    (SIDECAR_ENTITY, "docker_image:proxy:v1.29", "low", "a Docker runtime's container (docs/containers/docker/tag)"),
    (MIGRATE_ENTITY, "kube_container_name:migrate", "low", "Pod status (an init container)"),
    (REPORT_CONTAINER, "image_tag:2", "low", "Pod spec"),
]
LEVELS = ("low", "orchestrator", "high")


@pytest.fixture(scope="module")
def tagger(certificates: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tagger]:
    token = tmp_path_factory.mktemp("token") / "token"
    token.write_text(TOKEN)
    with Kubelet(certificates, token=TOKEN) as kubelet:
        kubelet.add(WEB_POD, *OTHER_PODS)
        settings = config(
            kubernetes_kubelet_host="127.0.0.1", kubernetes_https_kubelet_port=kubelet.port,
            kubernetes_http_kubelet_port=closed_port(), kubelet_client_ca=certificates.ca,
            kubelet_auth_token_path=token, kubelet_cache_pods_duration=0.1,
        )  # fmt: skip
        tagger = Tagger.from_config(settings)
        assert tagger is not None
        tagger.start()
        try:
            eventually(lambda: tagger.state()["pods"] == 1 + len(OTHER_PODS))
            yield tagger
        finally:
            tagger.stop()


def _case_id(case: tuple[str, str, str, str]) -> str:
    return f"{case[1].split(':')[0]}-{case[2]}"


@pytest.mark.parametrize("case", POD_TAGS + CONTAINER_TAGS, ids=_case_id)
def test_each_tag_has_the_agents_name_source_and_cardinality(tagger, case):
    entity, tag, cardinality, _source = case
    for level in LEVELS:
        tags = tagger.tags(entity, level)
        assert tags is not None, entity
        expected = LEVELS.index(level) >= LEVELS.index(cardinality)
        assert (tag in tags) is expected, f"{tag} at {level}: {tags}"


@pytest.mark.parametrize("case", [c for c in POD_TAGS if c[0] == WEB], ids=_case_id)
def test_a_containers_entity_holds_its_pods_tags_at_the_same_cardinality(tagger, case):
    _, tag, cardinality, _ = case
    for entity in (APP_ENTITY, SIDECAR_ENTITY, MIGRATE_ENTITY):
        assert tag in tagger.tags(entity, cardinality)
        if cardinality != "low":
            assert tag not in tagger.tags(entity, "low")


def test_the_pods_entity_holds_no_containers_tags_and_each_level_holds_the_one_below(tagger):
    pod_tags = tagger.tags(WEB, "high")
    assert not [tag for tag in pod_tags if tag.split(":")[0] in ("kube_container_name", "container_id", "image_name")]
    for entity in (WEB, APP_ENTITY, SIDECAR_ENTITY):
        low, orchestrator, high = (tagger.tags(entity, level) for level in LEVELS)
        assert set(low) < set(orchestrator) < set(high)
        assert len(set(high)) == len(high), "no tag twice"
        assert tagger.tags(entity, "none") == ()


def test_the_agents_exceptions_hold(tagger):
    """Only a Docker runtime's container has docker_image; a ReplicaSet made by hand has no Deployment; both the
    pod's and the container's own `service` label tag a container (the Agent merges them, it does not choose)."""
    assert not [tag for tag in tagger.tags(APP_ENTITY, "high") if tag.startswith("docker_image:")]
    assert not [tag for tag in tagger.tags(MANUAL, "high") if tag.startswith("kube_deployment:")]
    assert "kube_replica_set:cache-manual" in tagger.tags(MANUAL, "low")
    assert {"service:web", "service:web-proxy"} <= set(tagger.tags(SIDECAR_ENTITY, "low"))
    assert "service:web-proxy" not in tagger.tags(APP_ENTITY, "high")


def test_a_container_not_created_yet_is_no_entity_and_state_counts_the_rest(tagger):
    state = tagger.state()
    assert state["pods"] == 1 + len(OTHER_PODS)
    assert state["containers"] == 4  # app, sidecar, migrate, report: the pending one has no id yet


@pytest.mark.parametrize(
    ("replica_set", "deployment"),
    [("web-7d4b9c6f5d", "web"), ("api-v2-59d8f6c7b", "api-v2"), ("old-1234567890", "old"), ("cache-manual", ""),
     ("ab-x9", ""), ("plain", ""), ("vowels-abcde", "")],
)  # fmt: skip
def test_the_deployment_is_the_replica_sets_name_less_the_pod_template_hash(replica_set, deployment):
    assert deployment_of(replica_set) == deployment


@pytest.mark.parametrize(("job", "cronjob"), [("report-28900320", "report"), ("adhoc", ""), ("batch-x1", "")])
def test_the_cronjob_is_the_jobs_name_less_its_scheduled_minute(job, cronjob):
    assert cronjob_of(job) == cronjob


@pytest.mark.parametrize("runtime", ["containerd", "docker", "cri-o"])
def test_a_container_id_loses_its_runtime_prefix(runtime):
    assert strip_runtime(f"{runtime}://{APP}") == APP


def test_a_malformed_pod_list_gives_what_it_can():
    """A kubelet answer with null items, a pod without UID or a bad annotation costs that part only."""
    assert pod_entities({"items": None}) == {}
    assert pod_entities([]) == {}
    broken = pod("x", "x-uid", annotations={"ad.datadoghq.com/tags": "not json"})
    entities = pod_entities({"items": [{"metadata": {"name": "no-uid"}}, broken, "junk"]})
    assert list(entities) == ["kubernetes_pod_uid://x-uid"]
    assert "kube_namespace:default" in entities["kubernetes_pod_uid://x-uid"].entry()[1]
