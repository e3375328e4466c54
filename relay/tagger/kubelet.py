"""The kubelet's pod list, fetched as the Agent fetches it (pkg/util/kubernetes/kubelet/kubelet_client.go).

HTTPS on kubernetes_https_kubelet_port with the service account's bearer token (re-read when the file changes:
projected tokens rotate), the certificate verified against kubelet_client_ca unless kubelet_tls_verify is false.
When HTTPS cannot connect at all (refused, unreachable, no answer to the connect), the read-only HTTP port is
tried, as the Agent falls back to it. A 401 or a certificate the CA does not vouch for is reported, never answered
by going to plain HTTP: that would send the pod list (and hide the mistake) over an unauthenticated channel.
Only the stdlib, in the tagger's thread: nothing here runs on the event loop.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
from typing import Any

from relay.tagger.kubernetes import pod_entities
from relay.tagger.tags import TagList

SERVICE_ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
DEFAULT_CA = SERVICE_ACCOUNT + "/ca.crt"
DEFAULT_TOKEN = SERVICE_ACCOUNT + "/token"
PODS_PATH = "/pods"
MAX_BODY = 256 * 1024 * 1024  # a node's pod list is a few MB; past this something is wrong


class KubeletError(Exception):
    """The kubelet answered, or could not be asked, in a way that gives no pod list; the message says which."""


class CannotConnect(KubeletError):
    """No TCP connection at all: the port is closed, the host unreachable, or the connect timed out."""


class BearerToken:
    """The token file, read again whenever it changes (a projected service account token rotates hourly)."""

    def __init__(self, path: str, required: bool) -> None:
        self.path, self.required = path, required
        self._seen: tuple[int, int, int] | None = None
        self._token = ""

    def value(self) -> str:
        try:
            info = os.stat(self.path)
        except OSError as error:
            if self.required:
                raise KubeletError(f"cannot read the kubelet token {self.path}: {error.strerror}") from None
            return ""
        seen = (info.st_ino, info.st_mtime_ns, info.st_size)
        if seen != self._seen:
            try:
                with open(self.path, encoding="utf-8") as file:
                    self._token = file.read().strip()
            except OSError as error:
                raise KubeletError(f"cannot read the kubelet token {self.path}: {error.strerror}") from None
            self._seen = seen
        return self._token


class KubeletClient:
    """GET /pods from one kubelet; remembers whether HTTPS or the HTTP fallback answered last."""

    def __init__(
        self,
        host: str,
        https_port: int = 10250,
        http_port: int = 10255,
        tls_verify: bool = True,
        ca_path: str = "",
        token_path: str = "",
        timeout: float = 3.0,
    ) -> None:
        self.host, self.https_port, self.http_port = host, https_port, http_port
        self.tls_verify, self.timeout = tls_verify, timeout
        self.ca_path = ca_path or (DEFAULT_CA if os.path.exists(DEFAULT_CA) else "")
        self.token = BearerToken(token_path or DEFAULT_TOKEN, required=bool(token_path))
        self.scheme = "https" if https_port > 0 else "http"
        self._context: ssl.SSLContext | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.https_port if self.scheme == 'https' else self.http_port}"

    def pods(self) -> Any:
        """The PodList document. HTTPS first (again after the HTTP fallback fails); raises KubeletError."""
        if self.scheme == "http":
            try:
                return self._get("http", PODS_PATH)
            except CannotConnect:
                if self.https_port <= 0:
                    raise
                self.scheme = "https"
        try:
            return self._get("https", PODS_PATH)
        except CannotConnect:
            if self.http_port <= 0:
                raise
            document = self._get("http", PODS_PATH)  # raises its own error when HTTP cannot answer either
            self.scheme = "http"
            return document

    def _get(self, scheme: str, path: str) -> Any:
        port = self.https_port if scheme == "https" else self.http_port
        try:
            sock = socket.create_connection((self.host, port), timeout=self.timeout)
        except OSError as error:
            raise CannotConnect(f"cannot connect to the kubelet at {scheme}://{self.host}:{port}: {error}") from None
        connection = http.client.HTTPConnection(self.host, port, timeout=self.timeout)
        headers = {"Accept": "application/json"}
        try:
            connection.sock = self._tls(sock) if scheme == "https" else sock
            if scheme == "https" and (token := self.token.value()):
                headers["Authorization"] = f"Bearer {token}"
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            body = response.read(MAX_BODY + 1)
        except ssl.SSLError as error:
            raise KubeletError(f"TLS with the kubelet at {scheme}://{self.host}:{port} failed: {error}") from None
        except (OSError, http.client.HTTPException) as error:
            raise KubeletError(f"the kubelet at {scheme}://{self.host}:{port} did not answer: {error!r}") from None
        finally:
            connection.close()
        return self._document(scheme, port, response.status, response.reason, body)

    def _document(self, scheme: str, port: int, status: int, reason: str, body: bytes) -> Any:
        where = f"{scheme}://{self.host}:{port}{PODS_PATH}"
        if status == 401:
            raise KubeletError(f"{where}: 401 {reason}: the kubelet refused the token from {self.token.path}")
        if status == 403:
            raise KubeletError(f"{where}: 403 {reason}: the service account may not get nodes/pods (or nodes/proxy)")
        if status != 200:
            raise KubeletError(f"{where}: {status} {reason}")
        if len(body) > MAX_BODY:
            raise KubeletError(f"{where}: the pod list is over {MAX_BODY} bytes")
        try:
            return json.loads(body)
        except ValueError as error:
            raise KubeletError(f"{where}: not JSON: {error}") from None

    def _tls(self, sock: socket.socket) -> ssl.SSLSocket:
        if self._context is None:
            self._context = self._make_context()
        try:
            return self._context.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise

    def _make_context(self) -> ssl.SSLContext:
        if not self.tls_verify:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return context
        try:
            return ssl.create_default_context(cafile=self.ca_path or None)
        except (OSError, ssl.SSLError) as error:
            raise KubeletError(f"cannot load the kubelet CA {self.ca_path}: {error}") from None


class KubeletSource:
    """The tagger's view of a kubelet: what it is, and each entity's tags now."""

    def __init__(self, client: KubeletClient) -> None:
        self.client = client

    def describe(self) -> str:
        return f"kubelet {self.client.url}"

    def fetch(self) -> dict[str, TagList]:
        return pod_entities(self.client.pods())
