"""The pieces every tag source shares: a tag list by cardinality, image names, the unified service tags.

They follow the Datadog Agent's tagger (its `taglist` and `workloadmeta_extract`), so that a metric relayed here
carries the tags the Agent on the same node would give it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

LOW, ORCHESTRATOR, HIGH = "low", "orchestrator", "high"
CARDINALITIES = ("none", LOW, ORCHESTRATOR, HIGH)  # the index in a snapshot's entry is the position here

# Unified service tagging: the environment variables a container sets, as the Agent reads them.
STANDARD_ENV = {"DD_ENV": "env", "DD_VERSION": "version", "DD_SERVICE": "service", "OTEL_SERVICE_NAME": "service"}
OTEL_RESOURCE_ATTRIBUTES = {
    "service.name": "service",
    "service.version": "version",
    "deployment.environment": "env",
    "deployment.environment.name": "env",
}

# A snapshot entry: the tags at each cardinality of CARDINALITIES, cumulative (orchestrator holds low's too).
Entry = tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], tuple[str, ...]]


class TagList:
    """Tags by cardinality, as the Agent's tag list: an empty name or value adds nothing, a tag is kept once."""

    __slots__ = ("_tags",)

    def __init__(self) -> None:
        self._tags: dict[str, dict[str, None]] = {LOW: {}, ORCHESTRATOR: {}, HIGH: {}}

    def add(self, cardinality: str, name: str, value: str | None) -> None:
        if name and value:
            self._tags[cardinality][f"{name}:{value}"] = None

    def low(self, name: str, value: str | None) -> None:
        self.add(LOW, name, value)

    def orchestrator(self, name: str, value: str | None) -> None:
        self.add(ORCHESTRATOR, name, value)

    def high(self, name: str, value: str | None) -> None:
        self.add(HIGH, name, value)

    def auto(self, name: str, value: str) -> None:
        """An annotation's tag: a name starting with `+` is high cardinality, any other low (the Agent's AddAuto)."""
        if name.startswith("+"):
            self.high(name[1:], value)
        else:
            self.low(name, value)

    def copy(self) -> TagList:
        other = TagList()
        other._tags = {cardinality: dict(tags) for cardinality, tags in self._tags.items()}
        return other

    def entry(self) -> Entry:
        """The snapshot's entry: no tags at `none`, then low, low + orchestrator, and all of them."""
        low = tuple(self._tags[LOW])
        orchestrator = low + tuple(tag for tag in self._tags[ORCHESTRATOR] if tag not in self._tags[LOW])
        seen = set(orchestrator)
        return (), low, orchestrator, orchestrator + tuple(tag for tag in self._tags[HIGH] if tag not in seen)


def split_image(image: str) -> tuple[str, str, str] | None:
    """An image reference → (image_name, short_image, image_tag), as the Agent splits it: a digest suffix is
    dropped, the tag is what follows the last colon after the last slash ("latest" when none), the short name is
    the last path segment. None for an empty name or a bare sha256 id (no name to give)."""
    if not image or image.startswith("sha256:"):
        return None
    name = image
    if (digest := name.rfind("@sha")) > 0:
        name = name[:digest]
    tag = ""
    colon, slash = name.rfind(":"), name.rfind("/")
    if colon > slash:
        name, tag = name[:colon], name[colon + 1 :]
    return name, name[slash + 1 :] if slash >= 0 else name, tag or "latest"


def add_image(tags: TagList, image: str, image_id: str = "") -> tuple[str, str] | None:
    """image_name, short_image, image_tag and image_id, all low cardinality; returns (name, tag) when known."""
    tags.low("image_id", image_id)
    parts = split_image(image)
    if parts is None:
        return None
    name, short, tag = parts
    tags.low("image_name", name)
    tags.low("short_image", short)
    tags.low("image_tag", tag)
    return name, tag


def add_standard_env(tags: TagList, env: Mapping[str, str]) -> None:
    """env, service and version from DD_* and OpenTelemetry variables (standard tags are low cardinality)."""
    for variable, tag in STANDARD_ENV.items():
        tags.low(tag, env.get(variable))
    for pair in env.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
        key, sep, value = pair.partition("=")
        if sep and key.strip() in OTEL_RESOURCE_ATTRIBUTES:
            tags.low(OTEL_RESOURCE_ATTRIBUTES[key.strip()], value.strip())


def _json(text: str, kind: type) -> Any:
    """The JSON document of an annotation or label when it is a `kind` (dict, list), else None."""
    try:
        document = json.loads(text)
    except ValueError:
        return None
    return document if isinstance(document, kind) else None


def add_json_tags(tags: TagList, text: str | None) -> bool:
    """A `{"name": "value" | ["values"]}` annotation (ad.datadoghq.com/tags). False when it is not such a map."""
    if not text:
        return True
    document = _json(text, dict)
    if document is None:
        return False
    for name, value in document.items():
        for item in value if isinstance(value, list) else [value] if isinstance(value, str) else []:
            tags.auto(str(name), item if isinstance(item, str) else json.dumps(item))
    return True


def add_label_tags(tags: TagList, text: str | None) -> bool:
    """A `["name:value", ...]` container label (com.datadoghq.ad.tags): the Agent adds them high cardinality and
    skips an item that is not exactly one name and one value."""
    if not text:
        return True
    document = _json(text, list)
    if document is None:
        return False
    for item in document:
        parts = str(item).split(":")
        if len(parts) == 2:
            tags.high(parts[0], parts[1])
    return True


def env_map(pairs: Iterable[Any]) -> dict[str, str]:
    """A container's environment as a map, from `NAME=value` strings (Docker) or {name, value} maps (a pod spec;
    a value taken from a Secret or the downward API is not known here and is skipped, as the Agent does)."""
    env: dict[str, str] = {}
    for pair in pairs or ():
        if isinstance(pair, str):
            name, _, value = pair.partition("=")
            env[name] = value
        elif isinstance(pair, dict) and isinstance(pair.get("value"), str):
            env[str(pair.get("name", ""))] = pair["value"]
    return env
