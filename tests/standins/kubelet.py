"""A kubelet stand-in: `GET /pods` answers a v1 PodList, over HTTPS with a bearer token (the secure port, 10250)
or over plain HTTP without one (the read-only port, 10255), as a real kubelet does.

Pods are built by `pod()` in the shape the kubelet serves (metadata, spec, status with containerStatuses) and
can be added or removed while it runs; tests/tagger validates them against the Kubernetes schemas.
"""

from __future__ import annotations

import json
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.standins import Certificates

NODE = "node-1"


def pod(
    name: str,
    uid: str,
    namespace: str = "default",
    containers: list[dict[str, Any]] | None = None,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
    owners: list[tuple[str, str]] | None = None,
    phase: str = "Running",
    qos: str = "BestEffort",
    init_containers: list[dict[str, Any]] | None = None,
    volumes: list[dict[str, Any]] | None = None,
    priority_class: str = "",
) -> dict[str, Any]:
    """A pod as a kubelet lists it. `containers`: container() results; `owners`: (kind, name) references."""
    containers = containers or []
    init_containers = init_containers or []
    metadata: dict[str, Any] = {"name": name, "namespace": namespace, "uid": uid,
                                "creationTimestamp": "2025-01-01T00:00:00Z"}  # fmt: skip
    if labels:
        metadata["labels"] = labels
    if annotations:
        metadata["annotations"] = annotations
    if owners:
        metadata["ownerReferences"] = [
            {"apiVersion": "batch/v1" if kind == "Job" else "apps/v1", "kind": kind, "name": owner,
             "uid": f"{owner}-uid", "controller": True, "blockOwnerDeletion": True}
            for kind, owner in owners
        ]  # fmt: skip
    spec: dict[str, Any] = {"nodeName": NODE, "containers": [c["spec"] for c in containers]}
    if init_containers:
        spec["initContainers"] = [c["spec"] for c in init_containers]
    if volumes:
        spec["volumes"] = volumes
    if priority_class:
        spec["priorityClassName"] = priority_class
    status: dict[str, Any] = {"phase": phase, "qosClass": qos, "hostIP": "10.0.0.1", "podIP": "10.1.0.7",
                              "containerStatuses": [c["status"] for c in containers]}  # fmt: skip
    if init_containers:
        status["initContainerStatuses"] = [c["status"] for c in init_containers]
    return {"metadata": metadata, "spec": spec, "status": status}


def container(
    name: str,
    image: str,
    container_id: str = "",
    runtime: str = "containerd",
    env: dict[str, str] | None = None,
    image_id: str = "",
    status_image: str = "",
) -> dict[str, Any]:
    """A container's spec and its status; no `container_id`: not created yet (the status has no containerID)."""
    spec: dict[str, Any] = {"name": name, "image": image}
    if env:
        spec["env"] = [{"name": key, "value": value} for key, value in env.items()]
    status: dict[str, Any] = {
        "name": name, "image": status_image or image, "imageID": image_id, "ready": bool(container_id),
        "restartCount": 0, "started": bool(container_id),
        "state": {"running": {"startedAt": "2025-01-01T00:00:01Z"}} if container_id
        else {"waiting": {"reason": "ContainerCreating"}},
    }  # fmt: skip
    if container_id:
        status["containerID"] = f"{runtime}://{container_id}"
    return {"spec": spec, "status": status}


class Kubelet:
    """A kubelet on 127.0.0.1 (on `port`, or a free one): HTTPS needing `token` when `certificates` are given,
    plain HTTP otherwise."""

    def __init__(self, certificates: Certificates | None = None, token: str = "", port: int = 0) -> None:
        self.certificates, self.token, self._port = certificates, token, port
        self._pods: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self.requests: list[tuple[str, str]] = []  # (path, Authorization header)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        assert self._server is not None, "start() first"
        return int(self._server.server_address[1])

    def add(self, *pods: dict[str, Any]) -> None:
        with self._lock:
            for item in pods:
                self._pods[item["metadata"]["uid"]] = item

    def remove(self, uid: str) -> None:
        with self._lock:
            del self._pods[uid]

    def pod_list(self) -> dict[str, Any]:
        """The PodList document, as the kubelet serves it (its items carry no kind of their own)."""
        with self._lock:
            items = list(self._pods.values())
        return {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}

    def start(self) -> Kubelet:
        server = ThreadingHTTPServer(("127.0.0.1", self._port), _handler(self))
        server.daemon_threads = True
        server.handle_error = lambda request, address: None  # type: ignore[method-assign]  # a refused handshake
        if self.certificates is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self.certificates.cert, self.certificates.key)
            server.socket = context.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> Kubelet:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _handler(kubelet: Kubelet) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            authorization = self.headers.get("Authorization", "")
            kubelet.requests.append((self.path, authorization))
            if kubelet.certificates is not None and authorization != f"Bearer {kubelet.token}":
                self._send(401, b"Unauthorized\n", "text/plain; charset=utf-8")
            elif self.path != "/pods":
                self._send(404, b"404 page not found\n", "text/plain; charset=utf-8")
            else:
                self._send(200, json.dumps(kubelet.pod_list()).encode(), "application/json")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


def closed_port() -> int:
    """A port on 127.0.0.1 nothing listens on: a connect is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Silent:
    """A listening socket that never accepts: connects succeed (the kernel's backlog), no answer ever comes."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = int(self.sock.getsockname()[1])

    def close(self) -> None:
        self.sock.close()
