"""A Docker Engine API stand-in on a Unix socket: `GET /containers/json` (the running containers' summaries) and
`GET /containers/{id}/json` (one container's inspect document), versioned (`/v1.43/...`) or not, in the Engine
API's shapes; an unknown container is a 404 with the Engine's {"message": ...} body.
"""

from __future__ import annotations

import json
import re
import socketserver
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

PATHS = re.compile(r"^(?:/v[0-9.]+)?/containers/(?:(json)|([^/]+)/json)(?:\?.*)?$")


def container(
    container_id: str,
    name: str,
    image: str,
    image_id: str = "sha256:" + "ab" * 32,
    labels: dict[str, str] | None = None,
    env: list[str] | None = None,
) -> dict[str, Any]:
    """A container's inspect document (GET /containers/{id}/json), the fields the list also shows included."""
    return {
        "Id": container_id,
        "Created": "2025-01-01T00:00:00.000000000Z",
        "Path": "/entrypoint.sh",
        "Args": [],
        "State": {"Status": "running", "Running": True, "Paused": False, "Restarting": False, "OOMKilled": False,
                  "Dead": False, "Pid": 4242, "ExitCode": 0, "Error": "",
                  "StartedAt": "2025-01-01T00:00:01.000000000Z", "FinishedAt": "0001-01-01T00:00:00Z"},
        "Image": image_id,
        "Name": "/" + name,
        "RestartCount": 0,
        "Driver": "overlay2",
        "Platform": "linux",
        "HostConfig": {"NetworkMode": "bridge"},
        "Mounts": [],
        "Config": {"Hostname": container_id[:12], "User": "", "Env": env or ["PATH=/usr/bin:/bin"], "Cmd": [],
                   "Image": image, "Labels": labels or {}},
        "NetworkSettings": {"Networks": {}},
    }  # fmt: skip


def summary(inspect: dict[str, Any]) -> dict[str, Any]:
    """The same container as GET /containers/json lists it."""
    return {
        "Id": inspect["Id"],
        "Names": [inspect["Name"]],
        "Image": inspect["Config"]["Image"],
        "ImageID": inspect["Image"],
        "Command": " ".join([inspect["Path"], *inspect["Args"]]),
        "Created": 1735689600,
        "Ports": [],
        "Labels": inspect["Config"]["Labels"],
        "State": inspect["State"]["Status"],
        "Status": "Up 5 minutes",
        "HostConfig": {"NetworkMode": "bridge"},
        "NetworkSettings": {"Networks": {}},
        "Mounts": [],
    }


class _Server(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True


class DockerEngine:
    """The Engine on a Unix socket at `path`; containers can be added and removed while it runs."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._containers: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self.requests: list[str] = []
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.path}"

    def add(self, *containers: dict[str, Any]) -> None:
        with self._lock:
            for item in containers:
                self._containers[item["Id"]] = item

    def remove(self, container_id: str) -> None:
        with self._lock:
            del self._containers[container_id]

    def answer(self, path: str) -> tuple[int, Any]:
        match = PATHS.match(path)
        with self._lock:
            if match and match.group(1):
                return 200, [summary(c) for c in self._containers.values()]
            if match and match.group(2) in self._containers:
                return 200, self._containers[match.group(2)]
        if match:
            return 404, {"message": f"No such container: {match.group(2)}"}
        return 404, {"message": "page not found"}

    def start(self) -> DockerEngine:
        self._server = _Server(str(self.path), _handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)
        self.path.unlink(missing_ok=True)

    def __enter__(self) -> DockerEngine:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _handler(engine: DockerEngine) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            engine.requests.append(self.path)
            status, document = engine.answer(self.path)
            body = json.dumps(document).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Api-Version", "1.43")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def address_string(self) -> str:
            return "unix"  # a Unix socket's peer has no address

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler
