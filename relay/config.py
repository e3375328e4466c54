"""Config: defaults → datadog.yaml-style file → DD_* environment → CLI overrides, frozen once at start.

Field names are datadog.yaml keys; a dotted key (`use_v2_api.series`, `relay.flush_interval`) is stored with
the dot as an underscore and named in the field's metadata. The environment variable of a key is
"DD_" + key upper-cased with "." as "_". This module is the only reader of os.environ.
"""

from __future__ import annotations

import json
import os
import re
import socket
import typing
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from relay.config_checks import (
    additional_endpoints,
    http_url,
    mapper_profiles,
    memory_size,
    not_negative,
    one_of,
    percentiles,
    port,
    positive,
    tag_filterlist,
)

COMPRESSOR_KINDS = ("zstd", "zlib", "deflate", "gzip", "none")
HISTOGRAM_AGGREGATES = ("max", "min", "median", "avg", "sum", "count")
LOG_LEVELS = ("trace", "debug", "info", "warn", "warning", "error", "critical", "off")
EOL_TRANSPORTS = ("udp", "uds", "named_pipe")
TAG_CARDINALITIES = ("none", "low", "orchestrator", "high")  # card: values, in order
HOST_COLLECTORS = ("cpu", "load", "memory", "uptime", "file_handle", "disk", "io", "network")
NAMESPACE_BLACKLIST = (
    "datadog.agent", "datadog.dogstatsd", "datadog.process", "datadog.trace_agent", "datadog.tracer",
    "activemq", "activemq_58", "airflow", "cassandra", "confluent", "hazelcast", "hive", "ignite", "jboss",
    "jvm", "kafka", "presto", "sidekiq", "solr", "tomcat", "runtime",
)  # fmt: skip


class ConfigError(Exception):
    """Bad configuration; the message names the key, the value and what is allowed."""


def _key(default: Any, key: str = "", check: Callable[[Any], str | None] | None = None, **kw: Any) -> Any:
    """A config field; `key` is its datadog.yaml name when it differs from the field name."""
    return field(default=default, metadata={"key": key, "check": check}, **kw)


STRUCTURED_FIELDS = ("dogstatsd_mapper_profiles", "metric_tag_filterlist")  # lists of maps: YAML or JSON only
SECRET_FIELDS = ("api_key", "app_key", "additional_endpoints")  # never echoed in an error


def _endpoint_pairs(value: Any) -> tuple[tuple[str, str], ...]:
    """additional_endpoints: {url: [api keys]} (a JSON string in the environment) → ((url, key), ...)."""
    if isinstance(value, str):
        value = json.loads(value) if value.strip() else {}
    if isinstance(value, tuple):
        return value
    if not isinstance(value, dict) or not all(isinstance(keys, list | str) for keys in value.values()):
        raise ValueError(value)
    pairs = [(str(url).rstrip("/"), str(key).strip()) for url, keys in value.items()
             for key in ([keys] if isinstance(keys, str) else keys)]  # fmt: skip
    return tuple(dict.fromkeys(pairs))


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """The relay's whole configuration; built once by `load`, never mutated."""

    api_key: str = field(default="", repr=False, metadata={"key": "", "check": lambda v: _not_redacted(v)})
    app_key: str = field(default="", repr=False, metadata={"key": "", "check": lambda v: _not_redacted(v)})
    site: str = _key("datadoghq.com", check=lambda v: None if v else "must not be empty")
    dd_url: str = _key("", check=http_url)
    hostname: str = _key("")
    log_level: str = _key("info", check=one_of(LOG_LEVELS))
    tags: tuple[str, ...] = _key(())  # host tags: sent with the host metadata, like the Agent
    extra_tags: tuple[str, ...] = _key(())
    env: str = _key("")
    enable_metadata_collection: bool = _key(True)  # the host metadata payload (host tags)
    skip_ssl_validation: bool = _key(False)
    proxy_http: str = _key("", key="proxy.http", check=http_url)
    proxy_https: str = _key("", key="proxy.https", check=http_url)
    proxy_no_proxy: tuple[str, ...] = _key((), key="proxy.no_proxy")
    additional_endpoints: tuple[Any, ...] = _key((), check=additional_endpoints)  # dual shipping {url: [keys]}
    # Listeners
    dogstatsd_port: int = _key(8125, check=port)
    bind_host: str = _key("localhost")
    dogstatsd_non_local_traffic: bool = _key(False)
    dogstatsd_socket: str = _key("")
    dogstatsd_stream_socket: str = _key("")
    dogstatsd_buffer_size: int = _key(8192, check=positive)
    # The Agent leaves 0 (the OS default, 208 KiB on Linux); 4 MiB rides out a few ms of scheduling delay at 1 M
    # lines/s. 0 keeps the OS default.
    dogstatsd_so_rcvbuf: int = _key(4 * 1024 * 1024, check=not_negative)
    dogstatsd_eol_required: tuple[str, ...] = _key((), check=one_of(EOL_TRANSPORTS))
    statsd_forward_host: str = _key("")  # tee every packet, as received, to another StatsD server
    statsd_forward_port: int = _key(0, check=port)
    # Names and tags
    dogstatsd_tags: tuple[str, ...] = _key(())
    statsd_metric_namespace: str = _key("")
    statsd_metric_namespace_blacklist: tuple[str, ...] = _key(NAMESPACE_BLACKLIST)
    statsd_metric_blocklist: tuple[str, ...] = _key(())
    statsd_metric_blocklist_match_prefix: bool = _key(False)
    dogstatsd_mapper_profiles: tuple[Any, ...] = _key((), check=mapper_profiles)
    # Per metric name, the tag keys to drop (exclude) or the only ones to keep (include), before a context is made.
    metric_tag_filterlist: tuple[Any, ...] = _key((), check=tag_filterlist)
    # Origin detection and the container tagger (the Agent's keys and defaults)
    dogstatsd_origin_detection: bool = _key(False)  # Unix sockets: the sender's pid (SO_PASSCRED) to its container
    dogstatsd_origin_detection_client: bool = _key(False)  # use the container id a client sends (c:, e:)
    dogstatsd_tag_cardinality: str = _key("low", check=one_of(TAG_CARDINALITIES[1:]))
    dogstatsd_entity_id_precedence: bool = _key(False)  # dd.internal.entity_id alone, no other origin's tags
    kubernetes_kubelet_host: str = _key("")  # the tagger asks this kubelet; on Kubernetes, the node's IP
    kubernetes_service_host: str = _key("")  # set by Kubernetes in every pod: the tagger is on
    kubernetes_https_kubelet_port: int = _key(10250, check=port)
    kubernetes_http_kubelet_port: int = _key(10255, check=port)
    kubelet_tls_verify: bool = _key(True)
    kubelet_client_ca: str = _key("")  # "": the service account's ca.crt
    kubelet_auth_token_path: str = _key("")  # "": the service account's token
    kubelet_cache_pods_duration: float = _key(5.0, check=positive)
    docker_host: str = _key("")  # the Docker Engine API (unix:///var/run/docker.sock): the tagger is on
    # Aggregation
    histogram_aggregates: tuple[str, ...] = _key(("max", "median", "avg", "count"), check=one_of(HISTOGRAM_AGGREGATES))
    histogram_percentiles: tuple[str, ...] = _key(("0.95",), check=percentiles)
    histogram_copy_to_distribution: bool = _key(False)
    histogram_copy_to_distribution_prefix: str = _key("")
    dogstatsd_expiry_seconds: int = _key(300, check=not_negative)
    dogstatsd_context_expiry_seconds: int = _key(20, check=not_negative)
    dogstatsd_no_aggregation_pipeline: bool = _key(True)
    # Serializer
    serializer_compressor_kind: str = _key("zstd", check=one_of(COMPRESSOR_KINDS))
    serializer_zstd_compressor_level: int = _key(1, check=lambda v: None if 1 <= v <= 22 else "must be 1..22")
    use_v2_api_series: bool = _key(True, key="use_v2_api.series")
    serializer_max_series_payload_size: int = _key(512000, check=positive)
    serializer_max_series_uncompressed_payload_size: int = _key(5242880, check=positive)
    serializer_max_series_points_per_payload: int = _key(10000, check=positive)
    serializer_max_payload_size: int = _key(2621440, check=positive)
    serializer_max_uncompressed_payload_size: int = _key(4194304, check=positive)
    # Forwarder
    forwarder_timeout: float = _key(20.0, check=positive)
    forwarder_backoff_base: float = _key(2.0, check=positive)
    forwarder_backoff_factor: float = _key(2.0, check=lambda v: None if v >= 1 else "must be >= 1")
    forwarder_backoff_max: float = _key(64.0, check=positive)
    forwarder_recovery_interval: int = _key(2, check=not_negative)
    forwarder_retry_queue_payloads_max_size: int = _key(15 * 1024 * 1024, check=positive)
    forwarder_apikey_validation_interval: int = _key(60, check=positive)
    # Disk spool. The Agent's default is 0 (off); the relay spools by default, so that an outage loses nothing.
    forwarder_storage_max_size_in_bytes: int = _key(512 * 1024 * 1024, check=not_negative)
    forwarder_storage_max_disk_ratio: float = _key(0.8, check=lambda v: None if 0 < v <= 1 else "must be in (0, 1]")
    run_path: str = _key("")
    # The relay's own keys
    relay_flush_interval: int = _key(10, key="relay.flush_interval", check=positive)
    relay_health_host: str = _key("127.0.0.1", key="relay.health_host")
    relay_health_port: int = _key(8127, key="relay.health_port", check=port)
    relay_shutdown_timeout: float = _key(10.0, key="relay.shutdown_timeout", check=not_negative)
    relay_self_metrics: bool = _key(False, key="relay.self_metrics")
    relay_spool_dir: str = _key("", key="relay.spool_dir")
    relay_max_contexts: int = _key(1_000_000, key="relay.max_contexts", check=not_negative)
    # One metric's share of the contexts: past it that metric alone folds. 0: half of the context limit.
    relay_max_contexts_per_metric: int = _key(0, key="relay.max_contexts_per_metric", check=not_negative)
    # The memory the relay may use: "" reads the container's limit (its cgroup), else the host's memory.
    relay_memory_limit: str = _key("", key="relay.memory_limit", check=memory_size)
    confd_path: str = _key("")  # checks: conf.d directory ("" = no checks); checks.d is looked for beside it
    additional_checksd: tuple[str, ...] = _key(())
    relay_checks_base: str = _key("auto", key="relay.checks_base", check=one_of(("auto", "builtin")))
    relay_host_tags_on_metrics: bool = _key(False, key="relay.host_tags_on_metrics")
    relay_host_collectors: tuple[str, ...] = _key(
        HOST_COLLECTORS, key="relay.host_collectors", check=one_of(HOST_COLLECTORS)
    )
    relay_workers: str = _key(
        "1",
        key="relay.workers",
        check=lambda v: None if v == "auto" or (v.isdigit() and 1 <= int(v) <= 64) else "must be 1..64 or auto",
    )
    relay_probe_interval: float = _key(1.0, key="relay.probe_interval", check=not_negative)  # 0: no probe
    relay_ready_max_probe_loss: float = _key(
        0.01, key="relay.ready_max_probe_loss", check=lambda v: None if 0 <= v <= 1 else "must be in [0, 1]"
    )
    relay_ready_max_retry_queue_bytes: int = _key(
        12 * 1024 * 1024, key="relay.ready_max_retry_queue_bytes", check=not_negative
    )
    relay_ready_max_flush_lag: float = _key(30.0, key="relay.ready_max_flush_lag", check=positive)
    # The native reader's queue between the socket and ingest (0: the event loop reads the sockets itself).
    relay_receive_queue_bytes: int = _key(64 * 1024 * 1024, key="relay.receive_queue_bytes", check=not_negative)
    # relay.workers > 1: lines waiting for each worker's pipe (a worker that lags fills this, never the loop).
    relay_worker_queue_bytes: int = _key(32 * 1024 * 1024, key="relay.worker_queue_bytes", check=positive)
    relay_socket_mode: str = _key(
        "0660",
        key="relay.socket_mode",
        check=lambda v: None if re.fullmatch(r"0?[0-7]{3}", v) else "must be octal, like 0660",
    )

    @property
    def host_tags(self) -> tuple[str, ...]:
        """tags, extra_tags and env:<env>, as the Agent builds its host tags."""
        env = (f"env:{self.env}",) if self.env else ()
        return tuple(dict.fromkeys((*self.tags, *self.extra_tags, *env)))

    @property
    def worker_count(self) -> int:
        """relay.workers: `auto` is one worker per core."""
        return (os.cpu_count() or 1) if self.relay_workers == "auto" else int(self.relay_workers)

    @property
    def run_directory(self) -> Path:
        """run_path, or the user's state directory."""
        return Path(self.run_path) if self.run_path else Path.home() / ".local" / "state" / "dogstatsd-relay"

    @property
    def spool_path(self) -> Path:
        """relay.spool_dir, or `transactions_to_retry` (the Agent's name) under run_path."""
        return Path(self.relay_spool_dir) if self.relay_spool_dir else self.run_directory / "transactions_to_retry"

    @classmethod
    def load(
        cls,
        path: Path | None,
        environ: Mapping[str, str],
        overrides: Mapping[str, str] | None = None,
        warn: Callable[[str], None] = lambda message: None,
    ) -> Config:
        """Build the config; raises ConfigError naming the first bad key. Unknown keys give one warning."""
        raw: dict[str, Any] = {}
        unknown: list[str] = []
        if path is not None:
            raw.update(_read_yaml(path, unknown))
        for name, env_names in ENV_NAMES.items():
            for env_name in env_names:
                if env_name in environ:
                    raw[name] = environ[env_name]
        for key, value in (overrides or {}).items():
            if key not in FIELD_BY_KEY:
                raise ConfigError(f"{key}: unknown configuration key")
            raw[FIELD_BY_KEY[key]] = value
        if unknown:
            warn(f"config: unknown keys ignored: {', '.join(sorted(unknown))}")
        config = cls(**{name: _coerce(name, value) for name, value in raw.items()})
        config.validate()
        if not config.hostname:
            config = replace(config, hostname=socket.gethostname())
        return config

    def validate(self) -> None:
        for f in fields(self):
            check = f.metadata["check"]
            problem = check(getattr(self, f.name)) if check else None
            if problem and f.name in SECRET_FIELDS:
                raise ConfigError(f"{key_of(f.name)}: {problem}")  # the value is never shown
            if problem:
                raise ConfigError(f"{key_of(f.name)}: {problem}, got {_show(getattr(self, f.name), f.name)}")

    @property
    def intake_url(self) -> str:
        """Where payloads go: `dd_url` overrides `site`, as in the Agent."""
        return (self.dd_url or f"https://app.{self.site}").rstrip("/")

    @property
    def api_url(self) -> str:
        """Where the API key is validated; a `dd_url` (a proxy or stand-in) serves that too."""
        return (self.dd_url or f"https://api.{self.site}").rstrip("/")

    def proxy_for(self, url: str) -> str | None:
        """The Agent's proxy.* keys: by the URL's scheme, unless its host is listed in proxy.no_proxy."""
        scheme, _, rest = url.partition("://")
        host = rest.split("/", 1)[0].rsplit(":", 1)[0]
        if any(host == entry or host.endswith("." + entry.lstrip(".")) for entry in self.proxy_no_proxy):
            return None
        return (self.proxy_https if scheme == "https" else self.proxy_http) or None

    def eol_required_for(self, transport: str) -> bool:
        """dogstatsd_eol_required names udp and uds; a Unix stream socket (uds_stream) follows the uds rule."""
        return transport.partition("_")[0] in self.dogstatsd_eol_required

    @property
    def udp_bind_host(self) -> str:
        if self.dogstatsd_non_local_traffic:
            return "0.0.0.0"
        return "127.0.0.1" if self.bind_host == "localhost" else self.bind_host

    def redacted(self) -> dict[str, Any]:
        """Every key with its effective value; the API key shown as the Agent does."""
        values = {key_of(name): value for name, value in asdict(self).items()}
        values["run_path"], values["relay.spool_dir"] = str(self.run_directory), str(self.spool_path)  # effective
        values["api_key"] = redact(self.api_key)
        values["app_key"] = redact(self.app_key)
        values["additional_endpoints"] = {url: [redact(k) for u, k in self.additional_endpoints if u == url]
                                          for url, _ in self.additional_endpoints}  # fmt: skip
        return {key: list(v) if isinstance(v, tuple) else v for key, v in values.items()}


def _not_redacted(key: str) -> str | None:
    """A key as `config` prints it (`***` and its end), fed back as configuration, would be sent as the key."""
    if key.startswith("***"):
        return "is a redacted key, as `dogstatsd-relay config` prints it: put the whole key there"
    return None


def redact(api_key: str) -> str:
    """`***` plus the last five characters, like the Agent's status page."""
    return "***" + api_key[-5:] if api_key else ""


# Datadog's sites, as `dogstatsd-relay init` offers them: the `site` value and the name Datadog gives it.
SITES = {
    "datadoghq.com": "US1", "us3.datadoghq.com": "US3", "us5.datadoghq.com": "US5", "datadoghq.eu": "EU1",
    "ap1.datadoghq.com": "AP1", "ap2.datadoghq.com": "AP2", "ddog-gov.com": "US1-FED",
}  # fmt: skip
SYSTEM_CONFIG = Path("/etc/dogstatsd-relay/datadog.yaml")


def user_config(environ: Mapping[str, str]) -> Path:
    """The user's configuration file: $XDG_CONFIG_HOME/dogstatsd-relay/datadog.yaml (~/.config by default)."""
    base = environ.get("XDG_CONFIG_HOME") or str(Path(environ.get("HOME") or Path.home()) / ".config")
    return Path(base) / "dogstatsd-relay" / "datadog.yaml"


def find_config(explicit: Path | None, environ: Mapping[str, str]) -> Path | None:
    """The file every command reads: --config, else the user's file, else /etc/dogstatsd-relay/datadog.yaml, else
    none (environment variables and defaults only)."""
    if explicit is not None:
        return explicit
    return next((path for path in (user_config(environ), SYSTEM_CONFIG) if path.is_file()), None)


def key_of(field_name: str) -> str:
    return KEY_BY_FIELD[field_name]


def _read_yaml(path: Path, unknown: list[str]) -> dict[str, Any]:
    try:
        document = yaml.safe_load(path.read_text()) or {}
    except OSError as error:
        raise ConfigError(f"--config: cannot read {path}: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"--config: {path} is not valid YAML: {error}") from None
    if not isinstance(document, dict):
        raise ConfigError(f"--config: {path} must hold a map of datadog.yaml keys")
    raw: dict[str, Any] = {}
    _flatten(document, "", raw, unknown)
    return raw


def _flatten(document: dict[str, Any], prefix: str, raw: dict[str, Any], unknown: list[str]) -> None:
    """Nested maps become dotted keys (`relay: {flush_interval: 5}` → `relay.flush_interval`)."""
    for key, value in document.items():
        dotted = f"{prefix}{key}"
        if dotted in FIELD_BY_KEY:
            raw[FIELD_BY_KEY[dotted]] = value
        elif isinstance(value, dict) and any(k.startswith(dotted + ".") for k in FIELD_BY_KEY):
            _flatten(value, dotted + ".", raw, unknown)
        else:
            unknown.append(dotted)


def _coerce(name: str, value: Any) -> Any:
    """Turn a YAML or environment value into the field's type, or raise ConfigError naming the key."""
    kind = FIELD_TYPES[name]
    try:
        if kind is bool:
            return _to_bool(value)
        if kind is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind is str:
            if isinstance(value, dict | list):
                raise ValueError
            return str(value)
        if name == "additional_endpoints":
            return _endpoint_pairs(value)
        return _to_tuple(value, structured=name in STRUCTURED_FIELDS)
    except (ValueError, TypeError):
        expected = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}.get(kind, "a list")
        if name == "additional_endpoints":
            expected = "a map of URL to a list of API keys"
        raise ConfigError(f"{key_of(name)}: must be {expected}, got {_show(value, name)}") from None


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off", ""):
        return False
    raise ValueError(value)


def _to_tuple(value: Any, structured: bool) -> tuple[Any, ...]:
    """Lists come as YAML lists, JSON arrays, or (in the environment) space-separated words."""
    if isinstance(value, str):
        text = value.strip()
        if structured or text.startswith("["):
            value = json.loads(text) if text else []
        else:
            return tuple(text.split())
    if value is None:
        return ()
    if not isinstance(value, list | tuple):
        raise ValueError(value)
    return tuple(v if structured else str(v) for v in value)


def _show(value: Any, name: str) -> str:
    if name in SECRET_FIELDS:
        return "(not shown: it holds API keys)"
    text = repr(list(value) if isinstance(value, tuple) else value)
    return text if len(text) <= 80 else text[:77] + "..."


def _env_names(key: str) -> tuple[str, ...]:
    name = "DD_" + key.upper().replace(".", "_")
    also = {"dd_url": "DD_URL", "kubernetes_service_host": "KUBERNETES_SERVICE_HOST", "docker_host": "DOCKER_HOST"}
    return (name, also[key]) if key in also else (name,)


KEY_BY_FIELD: dict[str, str] = {f.name: f.metadata["key"] or f.name for f in fields(Config)}
FIELD_BY_KEY: dict[str, str] = {key: name for name, key in KEY_BY_FIELD.items()}
ENV_NAMES: dict[str, tuple[str, ...]] = {name: _env_names(key) for name, key in KEY_BY_FIELD.items()}
FIELD_TYPES: dict[str, Any] = {
    name: tuple if typing.get_origin(hint) is tuple else hint for name, hint in typing.get_type_hints(Config).items()
}
