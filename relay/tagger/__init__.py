"""The container tagger: which pod or container a metric came from, and that entity's tags, as the Agent's.

A daemon thread polls the kubelet's pod list (or the Docker Engine) every kubelet_cache_pods_duration seconds and
swaps in an immutable snapshot {entity: tags by cardinality}; `tags()` reads it without a lock, so the event loop
never waits on the network. A kubelet that is down or slow costs only tags: the error is counted, shown by
`state()`, logged at most once a minute, and the last good snapshot stays. Imports flow runtime → tagger; this
package knows nothing of the pipeline.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Protocol

from relay.config import Config
from relay.logs import RateLimitedLog
from relay.tagger.cgroups import CgroupResolver
from relay.tagger.docker import DockerClient, DockerSource
from relay.tagger.kubelet import KubeletClient, KubeletSource
from relay.tagger.kubernetes import CONTAINER_PREFIX, POD_PREFIX
from relay.tagger.tags import CARDINALITIES, Entry, TagList

__all__ = ["Tagger"]

logger = logging.getLogger(__name__)
CARDINALITY_INDEX = {name: index for index, name in enumerate(CARDINALITIES)}
HOST_CGROUP_ROOT = "/host/sys/fs/cgroup"  # where a containerized relay (and the Agent) mounts the node's tree
STOP_WAIT = 1.0
REQUEST_TIMEOUT = 3.0


class Source(Protocol):
    """Where entities come from: the kubelet or the Docker Engine."""

    def describe(self) -> str: ...

    def fetch(self) -> dict[str, TagList]: ...


class Tagger:
    """Entity → tags at a cardinality; pid or cgroup inode → container id. Thread-safe and cheap to ask."""

    def __init__(
        self,
        source: Source,
        interval: float = 5.0,
        proc_root: str = "/proc",
        cgroup_root: str = "/sys/fs/cgroup",
    ) -> None:
        self.source, self.interval = source, interval
        self.cgroups = CgroupResolver(proc_root, cgroup_root)
        self._snapshot: dict[str, Entry] = {}
        self._generation = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._log = RateLimitedLog(logger, window=60.0)
        self._polls = self._errors = 0
        self._last_error = ""
        self._last_error_at: float | None = None
        self._last_success_at: float | None = None
        self._failing = False

    @classmethod
    def from_config(cls, config: Config, proc_root: str = "/proc", cgroup_root: str | None = None) -> Tagger | None:
        """The kubelet's tagger when on Kubernetes (kubernetes_kubelet_host, or KUBERNETES_SERVICE_HOST that
        Kubernetes sets in every pod), else Docker's when docker_host is set, else None. The node's cgroup tree is
        read at /host/sys/fs/cgroup when mounted there (the Agent's convention in a container)."""
        if cgroup_root is None:
            cgroup_root = HOST_CGROUP_ROOT if os.path.isdir(HOST_CGROUP_ROOT) else "/sys/fs/cgroup"
        source: Source
        if config.kubernetes_kubelet_host or config.kubernetes_service_host:
            client = KubeletClient(
                # The Agent tries the configured host, then the Docker daemon's hostname (the node's); the relay's
                # hostname is the node's name on a node, and in the DaemonSet (DD_HOSTNAME from spec.nodeName).
                host=config.kubernetes_kubelet_host or config.hostname or "localhost",
                https_port=config.kubernetes_https_kubelet_port,
                http_port=config.kubernetes_http_kubelet_port,
                tls_verify=config.kubelet_tls_verify,
                ca_path=config.kubelet_client_ca,
                token_path=config.kubelet_auth_token_path,
                timeout=REQUEST_TIMEOUT,
            )
            source = KubeletSource(client)
        elif config.docker_host:
            source = DockerSource(DockerClient(config.docker_host, timeout=REQUEST_TIMEOUT))
        else:
            return None
        return cls(source, config.kubelet_cache_pods_duration, proc_root=proc_root, cgroup_root=cgroup_root)

    def start(self) -> None:
        """Polls at once, then every `interval` seconds, in a daemon thread."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="relay-tagger", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Returns within about a second: a request in flight (a few seconds' timeout at most) is left to end on
        its own in the daemon thread, and its result is dropped."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(STOP_WAIT)

    def tags(self, entity: str, cardinality: str) -> tuple[str, ...] | None:
        """`container_id://<id>` or `kubernetes_pod_uid://<uid>` → its tags up to `cardinality` (low, orchestrator
        or high; each holds the ones before it); None while the entity is not (yet) known."""
        entry = self._snapshot.get(entity)
        if entry is None:
            return None
        index = CARDINALITY_INDEX.get(cardinality)
        if index is None:
            raise ValueError(f"cardinality must be one of {', '.join(CARDINALITIES)}, got {cardinality!r}")
        return entry[index]

    def container_of_pid(self, pid: int) -> str | None:
        """The container a process runs in (/proc/<pid>/cgroup), None for a host process; cached a few seconds."""
        return self.cgroups.container_of_pid(pid)

    def container_of_inode(self, inode: int) -> str | None:
        """The container whose cgroup directory has this inode (a client's `c:in-<inode>`), or None."""
        return self.cgroups.container_of_inode(inode)

    @property
    def generation(self) -> int:
        """Bumped whenever the snapshot changes (an entity appears or goes, or its tags change): an origin that
        was unknown, or tagged from an older snapshot, is worth asking about again."""
        return self._generation

    def state(self) -> dict[str, object]:
        snapshot = self._snapshot
        return {
            "source": self.source.describe(),
            "pods": sum(1 for entity in snapshot if entity.startswith(POD_PREFIX)),
            "containers": sum(1 for entity in snapshot if entity.startswith(CONTAINER_PREFIX)),
            "polls": self._polls,
            "errors": self._errors,
            "last_error": self._last_error,
            "last_error_at": self._last_error_at,
            "last_success_at": self._last_success_at,
        }

    def _run(self) -> None:
        while not self._stop.is_set():
            self.poll()
            self._stop.wait(self.interval)

    def poll(self) -> None:
        """One fetch; never raises (this runs in the poller thread, where an exception would end the polling)."""
        self._polls += 1
        try:
            entities = self.source.fetch()
        except Exception as error:  # a kubelet's or Docker's failure of any kind costs tags, never the relay
            self._errors += 1
            self._last_error, self._last_error_at = str(error) or repr(error), time.time()
            self._failing = True
            self._log.log(logging.WARNING, "tagger", "tagger: %s: %s", self.source.describe(), self._last_error)
            return
        if self._stop.is_set():
            return  # stopped while the request was in flight
        snapshot = {entity: tags.entry() for entity, tags in entities.items()}
        if snapshot != self._snapshot:
            self._snapshot = snapshot  # one reference swap: readers see the old dict or the new one, whole
            self._generation += 1
        self._last_success_at = time.time()
        if self._failing:
            self._failing = False
            logger.info("tagger: %s answers again (%d entities)", self.source.describe(), len(snapshot))
