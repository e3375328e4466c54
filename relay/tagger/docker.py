"""Docker containers' tags from the Engine API, as the Agent's Docker collector and tagger give them.

`GET /containers/json` lists the running containers; `GET /containers/{id}/json` is asked once per container
(its name, image, labels and environment never change after creation). Tag names and cardinalities:
https://docs.datadoghq.com/containers/docker/tag/ and the Agent's workloadmeta_extract.go (handleContainer).
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit

from relay.tagger.kubernetes import CONTAINER_PREFIX
from relay.tagger.tags import TagList, add_image, add_label_tags, add_standard_env, env_map

STANDARD_LABELS = {"com.datadoghq.tags.env": "env", "com.datadoghq.tags.service": "service",
                   "com.datadoghq.tags.version": "version"}  # fmt: skip
AD_TAGS_LABEL = "com.datadoghq.ad.tags"
LOW_LABELS = {
    "com.docker.swarm.service.name": "swarm_service",
    "com.docker.stack.namespace": "swarm_namespace",
    "io.rancher.stack.name": "rancher_stack",
    "io.rancher.stack_service.name": "rancher_service",
    "org.opencontainers.image.revision": "git.commit.sha",
    "org.opencontainers.image.source": "git.repository_url",
}
HIGH_LABELS = {"io.rancher.container.name": "rancher_container"}
LOW_ENV = {
    "DD_GIT_COMMIT_SHA": "git.commit.sha",
    "DD_GIT_REPOSITORY_URL": "git.repository_url",
    "MARATHON_APP_ID": "marathon_app",
    "CHRONOS_JOB_NAME": "chronos_job",
    "CHRONOS_JOB_OWNER": "chronos_job_owner",
    "NOMAD_TASK_NAME": "nomad_task",
    "NOMAD_JOB_NAME": "nomad_job",
    "NOMAD_GROUP_NAME": "nomad_group",
    "NOMAD_NAMESPACE": "nomad_namespace",
    "NOMAD_DC": "nomad_dc",
}
ORCHESTRATOR_ENV = {"MESOS_TASK_ID": "mesos_task"}
MAX_BODY = 64 * 1024 * 1024


class DockerError(Exception):
    """The Engine API could not be asked (status 0), or answered with an error; the message says which."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


class _UnixConnection(http.client.HTTPConnection):
    """HTTP over the Engine's Unix socket."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class DockerClient:
    """The Engine API at docker_host: `unix:///var/run/docker.sock` or `tcp://host:2375` (plain HTTP)."""

    def __init__(self, docker_host: str, timeout: float = 3.0) -> None:
        parts = urlsplit(docker_host if "://" in docker_host else "unix://" + docker_host)
        if parts.scheme not in ("unix", "tcp", "http"):
            raise ValueError(f"docker_host: unix:// or tcp:// is supported, got {docker_host!r}")
        self.docker_host, self.timeout = docker_host, timeout
        self._unix = parts.path if parts.scheme == "unix" else ""
        self._tcp = (parts.hostname or "localhost", parts.port or 2375)

    def get(self, path: str) -> Any:
        connection = (
            _UnixConnection(self._unix, self.timeout)
            if self._unix
            else http.client.HTTPConnection(*self._tcp, timeout=self.timeout)
        )
        try:
            connection.request("GET", path, headers={"Accept": "application/json"})
            response = connection.getresponse()
            body = response.read(MAX_BODY + 1)
        except (OSError, http.client.HTTPException) as error:
            raise DockerError(f"cannot ask the Docker Engine at {self.docker_host}: {error!r}") from None
        finally:
            connection.close()
        if response.status != 200:
            message = f"{self.docker_host} {path}: {response.status} {_message(body) or response.reason}"
            raise DockerError(message, response.status)
        try:
            return json.loads(body)
        except ValueError as error:
            raise DockerError(f"{self.docker_host} {path}: not JSON: {error}") from None


def _message(body: bytes) -> str:
    """The Engine's error document is {"message": "..."}."""
    try:
        return str(json.loads(body).get("message", ""))
    except (ValueError, AttributeError):
        return ""


def container_tags(inspect: Mapping[str, Any]) -> TagList:
    """One container's tags from its `GET /containers/{id}/json` document."""
    config = inspect.get("Config") or {}
    labels: Mapping[str, str] = config.get("Labels") or {}
    env = env_map(config.get("Env") or ())
    tags = TagList()
    tags.high("container_name", str(inspect.get("Name") or "").lstrip("/"))
    tags.high("container_id", inspect.get("Id"))
    image = add_image(tags, str(config.get("Image") or ""), str(inspect.get("Image") or ""))
    if image:
        tags.low("docker_image", f"{image[0]}:{image[1]}")
    for label, tag in STANDARD_LABELS.items():
        tags.low(tag, labels.get(label))
    for label, tag in LOW_LABELS.items():
        tags.low(tag, labels.get(label))
    for label, tag in HIGH_LABELS.items():
        tags.high(tag, labels.get(label))
    add_label_tags(tags, labels.get(AD_TAGS_LABEL))
    add_standard_env(tags, env)
    for variable, tag in LOW_ENV.items():
        tags.low(tag, env.get(variable))
    for variable, tag in ORCHESTRATOR_ENV.items():
        tags.orchestrator(tag, env.get(variable))
    return tags


class DockerSource:
    """The tagger's view of a Docker Engine: the running containers' tags, each inspected once."""

    def __init__(self, client: DockerClient) -> None:
        self.client = client
        self._inspected: dict[str, TagList] = {}

    def describe(self) -> str:
        return f"docker {self.client.docker_host}"

    def fetch(self) -> dict[str, TagList]:
        listed = self.client.get("/containers/json")
        ids = [str(c["Id"]) for c in listed if isinstance(c, dict) and c.get("Id")] if isinstance(listed, list) else []
        known: dict[str, TagList] = {}
        for container_id in ids:
            tags = self._inspected.get(container_id)
            if tags is None:
                try:
                    tags = container_tags(self.client.get(f"/containers/{quote(container_id)}/json"))
                except DockerError as error:
                    if error.status != 404:
                        raise
                    continue  # removed between the list and the inspect
            known[container_id] = tags
        self._inspected = known  # forget removed containers
        return {CONTAINER_PREFIX + container_id: tags for container_id, tags in known.items()}
