"""Intake stand-in: an HTTP server that receives what Datadog's intake would, decodes it and keeps it.

Protobuf is decoded with Google's reference runtime against the agent-payload schema (built here from its
field numbers), so it checks our hand-written encoder independently. Used by the tests, the benchmarks and
`dogstatsd-relay intake`. It can also answer with chosen HTTP errors, to rehearse intake outages.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import zstandard
from aiohttp import web

from relay.config import redact
from relay.intake.page import metric_detail, metric_index, request_log

PAGE = resources.files("relay.intake").joinpath("page.html").read_text()
_LIMITS = {  # compressed, raw: what the public API documents
    "/api/v2/series": (512000, 5242880),
    "/api/v1/series": (3200000, 62914560),
}
_DEFAULT_LIMITS = (2621440, 4194304)


def _message_classes() -> tuple[Any, Any]:
    """MetricPayload and SketchPayload from DataDog/agent-payload proto/metrics/agent_payload.proto."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fdp = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(
        name="agent_payload.proto", package="datadog.agentpayload", syntax="proto3"
    )

    def message(parent: Any, name: str, *fields: tuple[str, int, int, int, str]) -> Any:
        msg = parent.add(name=name)
        for field_name, number, kind, label, type_name in fields:
            entry = msg.field.add(name=field_name, number=number, type=kind, label=label)
            if type_name:
                entry.type_name = type_name
        return msg

    one, many = fdp.LABEL_OPTIONAL, fdp.LABEL_REPEATED
    payload = message(
        file.message_type,
        "MetricPayload",
        ("series", 1, fdp.TYPE_MESSAGE, many, ".datadog.agentpayload.MetricPayload.MetricSeries"),
    )
    message(
        payload.nested_type,
        "MetricPoint",
        ("value", 1, fdp.TYPE_DOUBLE, one, ""),
        ("timestamp", 2, fdp.TYPE_INT64, one, ""),
    )
    message(
        payload.nested_type, "Resource", ("type", 1, fdp.TYPE_STRING, one, ""), ("name", 2, fdp.TYPE_STRING, one, "")
    )
    message(
        payload.nested_type,
        "MetricSeries",
        ("resources", 1, fdp.TYPE_MESSAGE, many, ".datadog.agentpayload.MetricPayload.Resource"),
        ("metric", 2, fdp.TYPE_STRING, one, ""),
        ("tags", 3, fdp.TYPE_STRING, many, ""),
        ("points", 4, fdp.TYPE_MESSAGE, many, ".datadog.agentpayload.MetricPayload.MetricPoint"),
        ("type", 5, fdp.TYPE_INT32, one, ""),
        ("unit", 6, fdp.TYPE_STRING, one, ""),
        ("source_type_name", 7, fdp.TYPE_STRING, one, ""),
        ("interval", 8, fdp.TYPE_INT64, one, ""),
    )
    sketches = message(
        file.message_type,
        "SketchPayload",
        ("sketches", 1, fdp.TYPE_MESSAGE, many, ".datadog.agentpayload.SketchPayload.Sketch"),
        ("metadata", 2, fdp.TYPE_MESSAGE, one, ".datadog.agentpayload.CommonMetadata"),
    )
    sketch = message(
        sketches.nested_type,
        "Sketch",
        ("metric", 1, fdp.TYPE_STRING, one, ""),
        ("host", 2, fdp.TYPE_STRING, one, ""),
        ("tags", 4, fdp.TYPE_STRING, many, ""),
        ("dogsketches", 7, fdp.TYPE_MESSAGE, many, ".datadog.agentpayload.SketchPayload.Sketch.Dogsketch"),
    )
    message(
        sketch.nested_type,
        "Dogsketch",
        ("ts", 1, fdp.TYPE_INT64, one, ""),
        ("cnt", 2, fdp.TYPE_INT64, one, ""),
        ("min", 3, fdp.TYPE_DOUBLE, one, ""),
        ("max", 4, fdp.TYPE_DOUBLE, one, ""),
        ("avg", 5, fdp.TYPE_DOUBLE, one, ""),
        ("sum", 6, fdp.TYPE_DOUBLE, one, ""),
        ("k", 7, fdp.TYPE_SINT32, many, ""),
        ("n", 8, fdp.TYPE_UINT32, many, ""),
    )
    message(file.message_type, "CommonMetadata")
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return (
        message_factory.GetMessageClass(pool.FindMessageTypeByName("datadog.agentpayload.MetricPayload")),
        message_factory.GetMessageClass(pool.FindMessageTypeByName("datadog.agentpayload.SketchPayload")),
    )


def decompress(body: bytes, encoding: str) -> bytes:
    if encoding == "zstd":
        return zstandard.ZstdDecompressor().decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    if encoding == "gzip":
        return gzip.decompress(body)
    return body


@dataclass
class Request:
    """What one request looked like on the wire."""

    method: str
    path: str
    status: int
    headers: dict[str, str]
    compressed_size: int
    raw_size: int
    at: float = 0.0
    api_key: str = ""  # as sent: every answer shows it redacted (`***` and its last five characters)
    items: int = 0  # decoded items: series, sketches, service checks or events


@dataclass
class Intake:
    """Keeps every decoded item; `faults` holds statuses to answer instead of 202, one per request, in order."""

    api_key: str = ""  # when set, any other key is answered with 403
    keep: int = 1_000_000
    series: list[dict[str, Any]] = field(default_factory=list)
    sketches: list[dict[str, Any]] = field(default_factory=list)
    service_checks: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    requests: list[Request] = field(default_factory=list)
    faults: deque[int] = field(default_factory=deque)
    failing_paths: dict[str, int] = field(default_factory=dict)  # path → status answered while it is set
    retry_after: str = ""  # sent with 429 and 503 answers when set
    behaviour: str = "normal"  # or: hang (never answer), slow (answer after 0.3 s), reset (cut the connection),
    #                            garbage (202 with a body that is not JSON), to rehearse a broken intake
    objects: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)  # dashboard | monitor | downtime
    api_calls: list[tuple[str, str]] = field(default_factory=list)
    host_metadata: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._metric_payload, self._sketch_payload = _message_classes()

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/api/v1/validate", self._validate)
        app.router.add_post("/api/v2/series", self._receive)
        app.router.add_post("/api/v1/series", self._receive)
        app.router.add_post("/api/beta/sketches", self._receive)
        app.router.add_post("/api/v1/check_run", self._receive)
        app.router.add_post("/intake/", self._receive)
        for kind in ("dashboard", "monitor", "downtime"):  # what `dogstatsd-relay provision` calls
            app.router.add_get(f"/api/v1/{kind}", self._list_objects)
            app.router.add_post(f"/api/v1/{kind}", self._save_object)
            app.router.add_put(f"/api/v1/{kind}/{{id}}", self._save_object)
        app.router.add_get("/_received", self._received)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/", self._page)
        app.router.add_get("/_api/metrics", self._api_metrics)
        app.router.add_get("/_api/metric", self._api_metric)
        app.router.add_get("/_api/requests", self._api_requests)
        app.router.add_get("/_api/recent", self._api_recent)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> tuple[web.AppRunner, int]:
        """Serve in the running loop; returns the runner (call cleanup()) and the bound port."""
        # Bodies stay compressed: the intake checks the compressed size, then decodes them itself.
        runner = web.AppRunner(self.app(), access_log=None, auto_decompress=False, shutdown_timeout=2.0)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def _key_ok(self, request: web.Request) -> bool:
        return not self.api_key or request.headers.get("DD-API-KEY") == self.api_key

    async def _healthz(self, request: web.Request) -> web.Response:
        """For a container's health check (the compose stack's): the stand-in answers."""
        return web.Response(text="ok\n")

    async def _validate(self, request: web.Request) -> web.Response:
        if self._key_ok(request):
            return web.json_response({"valid": True})
        return web.json_response({"errors": ["Forbidden"]}, status=403)

    async def _receive(self, request: web.Request) -> web.Response:
        if self.behaviour == "hang":
            await asyncio.sleep(3600)
        if self.behaviour == "reset":
            assert request.transport is not None
            request.transport.abort()  # mid-exchange: the client sees a reset, never a status
            return web.Response(status=500)
        if self.behaviour == "slow":
            await asyncio.sleep(0.3)
        body = await request.read()
        status, raw = self._status_for(request, body)
        headers = {k: v for k, v in request.headers.items() if k.lower() != "dd-api-key"}
        received = Request(request.method, request.path, status, headers, len(body), len(raw), time.time(),
                           request.headers.get("DD-API-KEY", ""))  # fmt: skip
        self.requests.append(received)
        if status != 202:
            headers = {"Retry-After": self.retry_after} if self.retry_after and status in (429, 503) else {}
            return web.json_response({"errors": [f"status {status}"]}, status=status, headers=headers)
        received.items = self._decode(request.path, raw)
        if self.behaviour == "garbage":
            return web.Response(body=b"\x00\xffnot json at all", status=202)
        return web.json_response({"errors": []}, status=202)

    def _status_for(self, request: web.Request, body: bytes) -> tuple[int, bytes]:
        if request.path in self.failing_paths:
            return self.failing_paths[request.path], b""
        if self.faults:
            return self.faults.popleft(), b""
        if not self._key_ok(request):
            return 403, b""
        max_compressed, max_raw = _LIMITS.get(request.path, _DEFAULT_LIMITS)
        try:
            raw = decompress(body, request.headers.get("Content-Encoding", ""))
        except (zlib.error, zstandard.ZstdError, OSError, EOFError):
            return 400, b""
        if len(body) > max_compressed or len(raw) > max_raw:
            return 413, raw
        return 202, raw

    def _decode(self, path: str, raw: bytes) -> int:
        """Keep what the payload holds; returns how many items that was."""
        if path == "/api/v2/series":
            decoded: list[dict[str, Any]] = [_series_v2(s) for s in self._metric_payload.FromString(raw).series]
            self.series.extend(decoded)
        elif path == "/api/beta/sketches":
            decoded = [_sketch(s) for s in self._sketch_payload.FromString(raw).sketches]
            self.sketches.extend(decoded)
        elif path == "/api/v1/series":
            decoded = [_series_v1(s) for s in json.loads(raw)["series"]]
            self.series.extend(decoded)
        elif path == "/api/v1/check_run":
            decoded = json.loads(raw)
            self.service_checks.extend(decoded)
        else:
            document = json.loads(raw)
            if "host-tags" in document:  # host metadata shares /intake/ with events
                self.host_metadata.append(document)
                return 1
            decoded = [{**e, "_source_group": source} for source, events in document["events"].items() for e in events]
            self.events.extend(decoded)
        for items in (self.series, self.sketches, self.service_checks, self.events, self.requests):
            del items[: max(0, len(items) - self.keep)]
        return len(decoded)

    async def _list_objects(self, request: web.Request) -> web.Response:
        kind = request.path.rsplit("/", 1)[1]
        self.api_calls.append((request.method, request.path_qs))
        if not self._key_ok(request):
            return web.json_response({"errors": ["Forbidden"]}, status=403)
        items = list(self.objects.get(kind, {}).values())
        if kind == "dashboard":
            return web.json_response({"dashboards": [{"id": i["id"], "title": i["title"]} for i in items]})
        if kind == "monitor" and "name" in request.query:
            items = [i for i in items if request.query["name"] in i.get("name", "")]
        return web.json_response(items)

    async def _save_object(self, request: web.Request) -> web.Response:
        kind = request.path.split("/")[3]
        self.api_calls.append((request.method, request.path_qs))
        if not self._key_ok(request):
            return web.json_response({"errors": ["Forbidden"]}, status=403)
        store = self.objects.setdefault(kind, {})
        body = await request.json()
        identifier = int(request.match_info["id"]) if "id" in request.match_info else len(store) + 1
        store[identifier] = {**body, "id": identifier}
        return web.json_response(store[identifier])

    async def _received(self, request: web.Request) -> web.Response:
        """All it decoded, for the tests and benchmarks; the API keys redacted, as the stand-in may be published."""
        return web.json_response(
            {
                "series": self.series,
                "sketches": self.sketches,
                "service_checks": self.service_checks,
                "events": self.events,
                "requests": [{**r.__dict__, "api_key": redact(r.api_key)} for r in self.requests],
            }
        )

    async def _page(self, request: web.Request) -> web.Response:
        """What arrived, for a person: search, a plot per metric, the request log (relay/intake/page.html)."""
        return web.Response(text=PAGE, content_type="text/html")

    async def _api_metrics(self, request: web.Request) -> web.Response:
        return web.json_response(metric_index(self.series, self.sketches, request.query.get("q", "")))

    async def _api_metric(self, request: web.Request) -> web.Response:
        return web.json_response(metric_detail(self.series, self.sketches, request.query.get("name", "")))

    async def _api_requests(self, request: web.Request) -> web.Response:
        return web.json_response(request_log(self.requests))

    async def _api_recent(self, request: web.Request) -> web.Response:
        totals = {"requests": len(self.requests), "series": sum(len(s["points"]) for s in self.series),
                  "sketches": len(self.sketches), "events": len(self.events),
                  "service_checks": len(self.service_checks)}  # fmt: skip
        recent = {"events": self.events[-20:][::-1], "service_checks": self.service_checks[-20:][::-1]}
        return web.json_response({"totals": totals, **recent})


_TYPE_NAMES = {0: "unspecified", 1: "count", 2: "rate", 3: "gauge"}


def _series_v2(series: Any) -> dict[str, Any]:
    resources = {r.type: r.name for r in series.resources}
    return {
        "metric": series.metric,
        "type": _TYPE_NAMES.get(series.type, str(series.type)),
        "interval": series.interval,
        "points": [(p.timestamp, p.value) for p in series.points],
        "tags": list(series.tags),
        "host": resources.get("host"),
        "device": resources.get("device"),
    }


def _series_v1(series: dict[str, Any]) -> dict[str, Any]:
    return {
        "metric": series["metric"],
        "type": series["type"],
        "interval": series["interval"],
        "points": [(ts, value) for ts, value in series["points"]],
        "tags": series["tags"],
        "host": series["host"],
        "device": series.get("device"),
    }


def _sketch(sketch: Any) -> dict[str, Any]:
    return {
        "metric": sketch.metric,
        "host": sketch.host,
        "tags": list(sketch.tags),
        "points": [
            {
                "ts": d.ts,
                "cnt": d.cnt,
                "min": d.min,
                "max": d.max,
                "avg": d.avg,
                "sum": d.sum,
                "k": list(d.k),
                "n": list(d.n),
            }
            for d in sketch.dogsketches
        ],
    }
