"""Origin: the tags of the container or pod a line comes from, as the Agent adds them (its tagger's legacy
origin rules, comp/core/tagger: enrichTags), from what the line says (`c:`, `card:`, `dd.internal.entity_id`).

The tags come from a container tagger (relay/tagger: the kubelet's pods, or Docker's containers), handed in by
the runtime; the pipeline only asks it, by the Agent's entity ids (`container_id://<id>`,
`kubernetes_pod_uid://<uid>`). An origin the tagger does not know yet gives no tags, never a delay: the line goes
on, and is learned again once the tagger knows more (`Origins.generation`).
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

from relay.config import TAG_CARDINALITIES, Config
from relay.pipeline.model import Origin

ENTITY_ID_TAG = "dd.internal.entity_id:"
CARDINALITY_TAG = "dd.internal.card:"
_CARDINALITY_NAMES = {**{name: name for name in TAG_CARDINALITIES}, "orch": "orchestrator"}


class ContainerTagger(Protocol):
    """What the pipeline asks of relay/tagger.Tagger."""

    def tags(self, entity: str, cardinality: str) -> tuple[str, ...] | None: ...

    def container_of_inode(self, inode: int) -> str | None: ...

    def container_of_pid(self, pid: int) -> str | None: ...

    @property
    def generation(self) -> int: ...

    def state(self) -> dict[str, object]: ...


class Resolved(NamedTuple):
    """What an origin added: its tags, the entities they came from, and those the tagger did not know."""

    tags: tuple[str, ...]
    entities: tuple[str, ...]
    unknown: tuple[str, ...]
    cardinality: str


NOTHING = Resolved((), (), (), "none")


def container_of(field: str) -> tuple[str, int]:
    """A `c:` field's container id and cgroup inode: `ci-<id>`, `in-<inode>`, both (`ci-<id>,in-<inode>`), the
    older bare `<id>`, or the APM form `cid-<id>`. A bad inode is 0 (the line itself is kept)."""
    container, inode = "", 0
    parts = field.split(",") if "," in field else [field]
    for part in parts:
        if part.startswith("ci-"):
            container = part[3:]
        elif part.startswith("in-"):
            inode = int(part[3:]) if part[3:].isdigit() else 0
        elif part.startswith("cid-") and len(parts) == 1:
            container = part[4:]
        elif len(parts) == 1:
            container = part
    return container, inode


def cardinality_of(text: str, default: str) -> str:
    """A `card:` value (case-insensitive, `orch` for orchestrator); an unknown one is `low`, as in the Agent."""
    return _CARDINALITY_NAMES.get(text.lower(), "low") if text else default


class Origins:
    """Resolves a line's origin to tags with dogstatsd_origin_detection_client, dogstatsd_tag_cardinality and
    dogstatsd_entity_id_precedence; the one owner of those rules."""

    def __init__(self, config: Config, tagger: ContainerTagger) -> None:
        self.tagger = tagger
        self.client_origins = config.dogstatsd_origin_detection_client
        self.default_cardinality = config.dogstatsd_tag_cardinality
        self.entity_id_precedence = config.dogstatsd_entity_id_precedence

    @property
    def generation(self) -> int:
        return self.tagger.generation

    def container_of_pid(self, pid: int) -> str:
        """A Unix socket sender's container ("" for a host process, or one gone)."""
        return self.tagger.container_of_pid(pid) or ""

    def known(self, entity: str) -> bool:
        """Whether the tagger knows an entity now (an unknown `c:` inode, kept as itself, is looked up again)."""
        if entity.startswith("c:"):
            return bool(self._container(entity[2:]))
        return self.tagger.tags(entity, "low") is not None

    def resolve(self, raw_tags: tuple[str, ...], origin: Origin | None, sender_container: str = "") -> Resolved:
        """The origin tags of one line: its `dd.internal.entity_id` pod; else its client's container (`c:`, with
        dogstatsd_origin_detection_client); and the Unix socket sender's container unless the entity id takes
        precedence. `card:` (else `dd.internal.card`) picks the cardinality; `none` adds nothing."""
        pod_uid, card_tag = _internal_tags(raw_tags)
        client = origin if origin is not None and self.client_origins else None
        cardinality = cardinality_of(client.cardinality if client and client.cardinality else card_tag,
                                     self.default_cardinality)  # fmt: skip
        if cardinality == "none":
            return NOTHING
        entities: list[str] = []
        unknown: list[str] = []
        if sender_container and not (pod_uid and self.entity_id_precedence):
            entities.append(f"container_id://{sender_container}")
        if pod_uid and pod_uid != "none":
            entities.append(f"kubernetes_pod_uid://{pod_uid}")
        elif not pod_uid and client is not None and client.container:
            container = self._container(client.container)
            if container:
                entities.append(f"container_id://{container}")
            else:
                unknown.append(f"c:{client.container}")  # an inode no container has (yet)
        tags: dict[str, None] = {}
        for entity in entities:
            found = self.tagger.tags(entity, cardinality)
            if found is None:
                unknown.append(entity)
            else:
                tags.update(dict.fromkeys(found))
        return Resolved(tuple(tags), tuple(entities), tuple(unknown), cardinality)

    def _container(self, field: str) -> str:
        """The container a `c:` field names, its cgroup inode looked up where it gives no id."""
        container, inode = container_of(field)
        if not container and inode:
            container = self.tagger.container_of_inode(inode) or ""
        return container


def _internal_tags(raw_tags: tuple[str, ...]) -> tuple[str, str]:
    """The `dd.internal.entity_id` (a pod's uid) and `dd.internal.card` values among a line's tags."""
    pod_uid = card = ""
    for tag in raw_tags:
        if tag.startswith(ENTITY_ID_TAG):
            pod_uid = tag[len(ENTITY_ID_TAG) :]
        elif tag.startswith(CARDINALITY_TAG):
            card = tag[len(CARDINALITY_TAG) :]
    return pod_uid, card
