"""Enrich: parsed items → Contexts with the Agent's host, tag and name rules (comp/dogstatsd/server/impl/enrich.go)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from relay.config import Config
from relay.pipeline.model import Context, Event, Origin, ServiceCheck
from relay.pipeline.origin import NOTHING, Origins, Resolved

K = TypeVar("K")
V = TypeVar("V")
_STRIPPED_TAG_PREFIXES = ("dd.internal.entity_id:", "dd.internal.card:", "dd.internal.jmx_check_name:")
_GROUP_REFERENCE = re.compile(r"\$\{(\w+)\}|\$(\w+)")
# Context cache entries, cleared when full (a miss only costs a rebuild). Known metric lines never get here (the
# shape cache of relay/pipeline/ingest.py answers them), so it only needs to cover the reference path's working set.
_CACHE_LIMIT = 100_000


@dataclass(frozen=True, slots=True)
class Mapping:
    """One mapper rule: a compiled match and the name and tags it expands to ($1 or ${1} refer to groups)."""

    pattern: re.Pattern[str]
    anchored: bool
    name: str
    tags: tuple[tuple[str, str], ...]

    def apply(self, metric_name: str) -> tuple[str, tuple[str, ...]] | None:
        match = self.pattern.fullmatch(metric_name) if self.anchored else self.pattern.search(metric_name)
        if match is None:
            return None
        tags = tuple(f"{key}:{_expand(template, match)}" for key, template in self.tags)
        return _expand(self.name, match), tags


@dataclass(frozen=True, slots=True)
class MapperProfile:
    prefix: str
    mappings: tuple[Mapping, ...]


@dataclass(frozen=True, slots=True)
class TagRule:
    """One metric's metric_tag_filterlist rule (comp/filterlist's tagMatcher): the tag keys it removes (exclude)
    or the only ones it keeps (include). A tag's key is the text before its first ':', or the whole tag."""

    metric_name: str
    include: bool
    keys: frozenset[str]
    encoded_keys: frozenset[bytes] = field(init=False)  # the keys as UTF-8, for the lines' bytes

    @property
    def action(self) -> str:
        return "include" if self.include else "exclude"

    def keeps(self, tag: str) -> bool:
        return (tag.partition(":")[0] in self.keys) is self.include

    def cut(self, raw_tags: tuple[str, ...]) -> tuple[str, ...]:
        """The client's tags without those the rule removes; `host:` stays, as it names the host, not a tag.
        (keeps() inlined: this runs for every line of a filtered metric.)"""
        keys, include = self.keys, self.include
        return tuple(tag for tag in raw_tags if (tag.partition(":")[0] in keys) is include or tag.startswith("host:"))

    def cut_shape(self, suffix: bytes) -> bytes:
        """A line's text after its value, with the tags the rule removes cut from each `#` field (read as parse.py
        reads them): lines that differ only in those tags share one shape, so one cache entry. In bytes, as the
        line came (a tag's key compared encoded): this runs for every line of a filtered metric."""
        if b"#" not in suffix:
            return suffix
        keys, include = self.encoded_keys, self.include
        fields = suffix.split(b"|")
        for index, text in enumerate(fields):
            if text[:1] == b"#":
                tags = text[1:].split(b",")
                kept = [tag for tag in tags if (tag.partition(b":")[0] in keys) is include or tag[:5] == b"host:"]
                if len(kept) < len(tags):
                    fields[index] = b"#" + b",".join(kept)
        return b"|".join(fields)

    def __post_init__(self) -> None:
        object.__setattr__(self, "encoded_keys", frozenset(key.encode() for key in self.keys))


def build_tag_rules(entries: tuple[Any, ...]) -> dict[str, TagRule]:
    """metric_tag_filterlist (already validated by Config) → one rule per metric name. Entries for the same name
    merge as in the Agent's loadTagFilterList: the same action joins their keys, and exclude wins over include."""
    merged: dict[str, tuple[bool, frozenset[str]]] = {}
    for entry in entries:
        include, keys = entry.get("action", "exclude") == "include", frozenset(entry["tags"])
        known = merged.get(entry["metric_name"])
        if known is not None and known[0] == include:
            keys |= known[1]
        elif known is not None and include:  # an include after an exclude changes nothing
            continue
        merged[entry["metric_name"]] = (include, keys)
    return {name: TagRule(name, include, keys) for name, (include, keys) in merged.items()}


def build_profiles(profiles: tuple[Any, ...]) -> tuple[MapperProfile, ...]:
    """dogstatsd_mapper_profiles (already validated by Config) → compiled profiles."""
    built = []
    for profile in profiles:
        mappings = []
        for rule in profile.get("mappings", []):
            if rule.get("match_type", "wildcard") == "regex":
                pattern, anchored = re.compile(rule["match"]), False
            else:  # wildcard: "*" matches one dot-free segment
                pattern = re.compile(re.escape(rule["match"]).replace(r"\*", "([^.]*)"))
                anchored = True
            tags = tuple((str(k), str(v)) for k, v in (rule.get("tags") or {}).items())
            mappings.append(Mapping(pattern, anchored, str(rule["name"]), tags))
        built.append(MapperProfile(str(profile.get("prefix", "")), tuple(mappings)))
    return tuple(built)


def _expand(template: str, match: re.Match[str]) -> str:
    """Go's regexp.ExpandString: a group that does not exist expands to nothing."""

    def group(reference: re.Match[str]) -> str:
        name = reference.group(1) or reference.group(2)
        try:
            return match.group(int(name) if name.isdigit() else name) or ""
        except IndexError:
            return ""

    return _GROUP_REFERENCE.sub(group, template)


def _cached(cache: dict[K, V], key: K, limit: int, build: Callable[[], V]) -> V:
    """A bounded cache: cleared when full, since a miss only costs a rebuild."""
    try:
        return cache[key]
    except KeyError:
        pass
    if len(cache) >= limit:
        cache.clear()
    value = cache[key] = build()
    return value


class Enricher:
    """Turns a metric's name and raw tags into its Context; None when the name is blocklisted. The one owner of
    the tag rules: host and internal tags, dogstatsd_tags, mapper tags and metric_tag_filterlist."""

    def __init__(self, config: Config, origins: Origins | None = None) -> None:
        """`origins`: the container tagger's origin rules (relay/pipeline/origin.py), when a tagger runs."""
        self.origins = origins
        self.unresolved: set[str] = set()  # origins the tagger did not know when a context was made for them
        self.untagged = 0  # contexts and events made without their origin's tags (not known yet)
        self.hostname = config.hostname
        # dogstatsd_tags, and the host tags too when relay.host_tags_on_metrics (sidecars without an Agent).
        host_tags = config.host_tags if config.relay_host_tags_on_metrics else ()
        self.extra_tags = tuple(dict.fromkeys((*config.dogstatsd_tags, *host_tags)))
        namespace = config.statsd_metric_namespace
        self.namespace = namespace + "." if namespace and not namespace.endswith(".") else namespace
        self.namespace_exempt = tuple(config.statsd_metric_namespace_blacklist)
        self.blocklist = frozenset(config.statsd_metric_blocklist)
        self.blocklist_prefixes = (
            tuple(config.statsd_metric_blocklist) if config.statsd_metric_blocklist_match_prefix else ()
        )
        self.profiles = build_profiles(config.dogstatsd_mapper_profiles)
        self.tag_rules = build_tag_rules(config.metric_tag_filterlist)
        self._rule_of_name: dict[str, TagRule | None] = {}  # a line's name → its metric's rule, with a mapper
        self._cache: dict[tuple[str, tuple[str, ...]], Context | None] = {}
        self.cache_limit = min(_CACHE_LIMIT, 2 * config.relay_max_contexts or _CACHE_LIMIT)
        # One copy of each name and tag (a million contexts share a few); the C fast path shares it too.
        self.strings: dict[str, str] = {}

    def context(
        self, name: str, raw_tags: tuple[str, ...], origin: Origin | None = None, sender: str = ""
    ) -> Context | None:
        """`origin` (a line's c:, e:, card:) and `sender` (a Unix socket sender's container) add origin tags."""
        raw_tags = self._with_origin(raw_tags, origin, sender)
        rule = self.tag_rule(name) if self.tag_rules else None
        if rule is not None:  # the tags a rule removes make no cache entry of their own
            raw_tags = rule.cut(raw_tags)
        return _cached(self._cache, (name, raw_tags), self.cache_limit, lambda: self._build(name, raw_tags, rule))

    def origin_tags(self, raw_tags: tuple[str, ...], origin: Origin | None, sender: str = "") -> Resolved:
        """The tags of the line's origin; an origin the tagger does not know yet is remembered and counted."""
        if self.origins is None:
            return NOTHING
        resolved = self.origins.resolve(raw_tags, origin, sender)
        if resolved.unknown:
            if len(self.unresolved) >= self.cache_limit:
                self.unresolved.clear()
            self.unresolved.update(resolved.unknown)
            self.untagged += 1
        return resolved

    def _with_origin(self, raw_tags: tuple[str, ...], origin: Origin | None, sender: str) -> tuple[str, ...]:
        """A line's tags and, with a container tagger, its origin's."""
        return raw_tags + self.origin_tags(raw_tags, origin, sender).tags if self.origins is not None else raw_tags

    def forget_cached(self) -> None:
        """Empty the context cache (the memory guard, relay/pipeline/assemble.py): a miss only costs a rebuild."""
        self._cache.clear()

    def tag_rule(self, name: str) -> TagRule | None:
        """The metric_tag_filterlist rule of the metric that a line named `name` becomes (mapper, namespace)."""
        if not self.profiles and not self.namespace:
            return self.tag_rules.get(name)
        return _cached(self._rule_of_name, name, self.cache_limit, lambda: self.tag_rules.get(self._named(name)[0]))

    def tag_filter(self, name: str, raw_tags: tuple[str, ...]) -> tuple[TagRule, tuple[str, ...]] | None:
        """The rule of a metric line and the tags it removed from its context (for explain); None without one."""
        rule = self.tag_rule(name) if self.tag_rules else None
        if rule is None:
            return None
        _, mapped_tags = self._named(name)
        _, tags = self._host_and_tags(raw_tags + mapped_tags, None)
        return rule, tuple(tag for tag in tags if not rule.keeps(tag))

    def _named(self, name: str) -> tuple[str, tuple[str, ...]]:
        """The metric's name after the mapper and the namespace, and the tags the mapper adds."""
        mapped_tags: tuple[str, ...] = ()
        if self.profiles:
            mapped = self._map(name)
            if mapped is not None:
                name, mapped_tags = mapped
        if self.namespace and not name.startswith(self.namespace_exempt):
            name = self.namespace + name
        return name, mapped_tags

    def _build(self, name: str, raw_tags: tuple[str, ...], rule: TagRule | None) -> Context | None:
        name, mapped_tags = self._named(name)
        if name in self.blocklist or (self.blocklist_prefixes and name.startswith(self.blocklist_prefixes)):
            return None
        host, tags = self._host_and_tags(raw_tags + mapped_tags, None)
        if rule is not None:  # the mapper's tags and dogstatsd_tags too, as the Agent filters the whole context
            tags = tuple(tag for tag in tags if rule.keeps(tag))
        return Context(self._shared(name), self._shared(host), tuple(self._shared(tag) for tag in tags))

    def _shared(self, text: str) -> str:
        shared = self.strings.get(text)
        if shared is None:
            if len(self.strings) >= self.cache_limit:
                self.strings.clear()
            shared = self.strings[text] = text
        return shared

    def _map(self, name: str) -> tuple[str, tuple[str, ...]] | None:
        for profile in self.profiles:
            if profile.prefix != "*" and not name.startswith(profile.prefix):
                continue
            for mapping in profile.mappings:
                result = mapping.apply(name)
                if result is not None:
                    return result
        return None

    def _host_and_tags(self, raw_tags: tuple[str, ...], explicit_host: str | None) -> tuple[str, tuple[str, ...]]:
        """`host:` sets the host (empty allowed); dd.internal.entity_id, .card and .jmx_check_name and empty tags go
        (other dd.internal.* tags stay, as in the Agent); dogstatsd_tags are added."""
        host = None
        kept = set(raw_tags)
        kept.update(self.extra_tags)
        joined = ",".join(raw_tags)
        if "host:" in joined or "dd.internal." in joined or "" in kept:  # rare: look at each tag
            kept = set(self.extra_tags)
            for tag in raw_tags:
                if tag.startswith("host:"):
                    host = tag[5:]
                elif tag and not tag.startswith(_STRIPPED_TAG_PREFIXES):
                    kept.add(tag)
        if explicit_host:
            host = explicit_host
        return (self.hostname if host is None else host), tuple(sorted(kept))

    def event(self, event: Event, sender: str = "") -> Event:
        event.host, event.tags = self._host_and_tags(self._with_origin(event.tags, event.origin, sender), event.host)
        return event

    def service_check(self, check: ServiceCheck, sender: str = "") -> ServiceCheck:
        check.host, check.tags = self._host_and_tags(self._with_origin(check.tags, check.origin, sender), check.host)
        return check
