"""Docker containers' tags from the Engine API stand-in on a Unix socket, with the Agent's names and
cardinalities: https://docs.datadoghq.com/containers/docker/tag/ ("Out-of-the-box tagging"), checked against the
Agent's tagger (workloadmeta_extract.go, handleContainer) for the labels and variables the page only names."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from relay.config import Config
from relay.tagger import Tagger
from tests.conftest import config
from tests.standins.docker_engine import DockerEngine, container
from tests.tagger.conftest import eventually

WEB, WORKER = "1" * 64, "2" * 64
WEB_CONTAINER = container(
    WEB, "shop-web-1", "my-registry:5000/shop/web:1.4.2", image_id="sha256:" + "9" * 64,
    labels={"com.datadoghq.tags.env": "prod", "com.datadoghq.tags.service": "web",
            "com.datadoghq.tags.version": "1.4.2", "com.datadoghq.ad.tags": '["team:checkout", "bad", "a:b:c"]',
            "com.docker.swarm.service.name": "shop_web", "com.docker.stack.namespace": "shop",
            "org.opencontainers.image.revision": "abc123"},
)  # fmt: skip
WORKER_CONTAINER = container(
    WORKER, "worker", "worker", env=["PATH=/bin", "DD_ENV=staging", "DD_SERVICE=worker", "MESOS_TASK_ID=task-7",
                                     "OTEL_RESOURCE_ATTRIBUTES=service.version=3.1, deployment.environment=qa"],
)  # fmt: skip
WEB_ENTITY, WORKER_ENTITY = f"container_id://{WEB}", f"container_id://{WORKER}"

# https://docs.datadoghq.com/containers/docker/tag/ — (entity, tag, cardinality, source)
DOCKER_TAGS = [
    (WEB_ENTITY, "container_name:shop-web-1", "high", "the container's name, less Docker's leading /"),
    (WEB_ENTITY, f"container_id:{WEB}", "high", "the container's id"),
    (WEB_ENTITY, "image_name:my-registry:5000/shop/web", "low", "Config.Image"),
    (WEB_ENTITY, "short_image:web", "low", "Config.Image"),
    (WEB_ENTITY, "image_tag:1.4.2", "low", "Config.Image"),
    (WEB_ENTITY, "docker_image:my-registry:5000/shop/web:1.4.2", "low", "Config.Image, name and tag"),
    (WEB_ENTITY, "image_id:sha256:" + "9" * 64, "low", "Image (the image's id)"),
    (WEB_ENTITY, "env:prod", "low", "label com.datadoghq.tags.env"),
    (WEB_ENTITY, "service:web", "low", "label com.datadoghq.tags.service"),
    (WEB_ENTITY, "version:1.4.2", "low", "label com.datadoghq.tags.version"),
    (WEB_ENTITY, "team:checkout", "high", "label com.datadoghq.ad.tags (the Agent adds them high)"),
    (WEB_ENTITY, "swarm_service:shop_web", "low", "label com.docker.swarm.service.name"),
    (WEB_ENTITY, "swarm_namespace:shop", "low", "label com.docker.stack.namespace"),
    (WEB_ENTITY, "git.commit.sha:abc123", "low", "label org.opencontainers.image.revision"),
    (WORKER_ENTITY, "image_tag:latest", "low", "Config.Image without a tag"),
    (WORKER_ENTITY, "env:staging", "low", "envvar DD_ENV"),
    (WORKER_ENTITY, "service:worker", "low", "envvar DD_SERVICE"),
    (WORKER_ENTITY, "version:3.1", "low", "envvar OTEL_RESOURCE_ATTRIBUTES service.version"),
    (WORKER_ENTITY, "env:qa", "low", "envvar OTEL_RESOURCE_ATTRIBUTES deployment.environment"),
    (WORKER_ENTITY, "mesos_task:task-7", "orchestrator", "envvar MESOS_TASK_ID"),
]
LEVELS = ("low", "orchestrator", "high")


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[DockerEngine]:
    with DockerEngine(tmp_path / "docker.sock") as engine:
        engine.add(WEB_CONTAINER, WORKER_CONTAINER)
        yield engine


@pytest.fixture
def tagger(engine: DockerEngine, started) -> Tagger:
    tagger = Tagger.from_config(config(docker_host=engine.url, kubelet_cache_pods_duration=0.1))
    assert tagger is not None
    started(tagger)
    eventually(lambda: tagger.state()["containers"] == 2)
    return tagger


@pytest.mark.parametrize("case", DOCKER_TAGS, ids=lambda case: f"{case[1].split(':')[0]}-{case[2]}")
def test_each_docker_tag_has_the_agents_name_source_and_cardinality(tagger, case):
    entity, tag, cardinality, _source = case
    for level in LEVELS:
        expected = LEVELS.index(level) >= LEVELS.index(cardinality)
        assert (tag in tagger.tags(entity, level)) is expected, f"{tag} at {level}: {tagger.tags(entity, level)}"


def test_an_ad_tags_item_that_is_not_one_name_and_one_value_is_skipped(tagger):
    assert not [tag for tag in tagger.tags(WEB_ENTITY, "high") if tag.startswith(("bad", "a:"))]


def test_each_container_is_inspected_once_and_a_removed_one_goes(tagger, engine):
    polls = tagger.state()["polls"]
    eventually(lambda: tagger.state()["polls"] >= polls + 3)
    assert engine.requests.count(f"/containers/{WEB}/json") == 1
    generation = tagger.generation
    engine.remove(WORKER)
    eventually(lambda: tagger.tags(WORKER_ENTITY, "low") is None)
    assert tagger.generation > generation and tagger.tags(WEB_ENTITY, "low")
    state = tagger.state()
    assert state["source"] == f"docker {engine.url}" and (state["pods"], state["containers"]) == (0, 1)


def test_an_engine_that_is_not_there_costs_only_tags(tmp_path, started):
    tagger = started(Tagger.from_config(config(docker_host=f"unix://{tmp_path}/absent.sock",
                                               kubelet_cache_pods_duration=0.1)))  # fmt: skip
    state = eventually(lambda: (s := tagger.state())["errors"] >= 1 and s)
    assert "cannot ask the Docker Engine" in str(state["last_error"])
    assert tagger.tags(WEB_ENTITY, "low") is None


def test_docker_host_comes_from_the_environment_too(engine):
    tagger = Tagger.from_config(Config.load(None, {"DOCKER_HOST": engine.url}))
    assert tagger is not None and tagger.state()["source"] == f"docker {engine.url}"
