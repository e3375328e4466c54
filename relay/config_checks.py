"""The checks of configuration values: each returns None, or what is allowed, for ConfigError to name with the key."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any


def port(value: int) -> str | None:
    return None if 0 <= value <= 65535 else "must be 0..65535"


def positive(value: float) -> str | None:
    return None if value > 0 else "must be > 0"


def not_negative(value: float) -> str | None:
    return None if value >= 0 else "must be >= 0"


def one_of(allowed: tuple[str, ...]) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        values = value if isinstance(value, tuple) else (value,)
        bad = [v for v in values if v not in allowed]
        return f"must be one of {', '.join(allowed)}" if bad else None

    return check


def percentiles(values: tuple[str, ...]) -> str | None:
    for value in values:
        try:
            if 0 <= float(value) <= 1:
                continue
        except ValueError:
            pass
        return f"{value!r} is not a number in [0, 1]"
    return None


BYTE_UNITS = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3, "ki": 1024, "mi": 1024**2, "gi": 1024**3}


def parse_bytes(text: str) -> int:
    """A memory size as Kubernetes writes it: bytes, or a number with k/M/G (powers of 1000) or Ki/Mi/Gi (1024);
    a trailing B is allowed (`512MiB`). Raises ValueError."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgG]i?)?[bB]?\s*", text)
    if match is None:
        raise ValueError(text)
    return int(float(match.group(1)) * BYTE_UNITS[(match.group(2) or "").lower()])


def memory_size(value: str) -> str | None:
    try:
        return None if not value or parse_bytes(value) > 0 else "must be > 0"
    except ValueError:
        return "must be a size in bytes, like 536870912, 512Mi or 1Gi"


def tag_filterlist(entries: tuple[Any, ...]) -> str | None:
    """metric_tag_filterlist: [{metric_name, action: include|exclude (default exclude), tags: [tag keys]}]."""
    for entry in entries:
        if not isinstance(entry, dict) or not isinstance(entry.get("metric_name"), str) or not entry["metric_name"]:
            return "each entry must be a map with metric_name, action and tags"
        if entry.get("action", "exclude") not in ("include", "exclude"):
            return f"{entry['metric_name']!r}: action must be include or exclude"
        if not isinstance(tags := entry.get("tags"), list) or not all(isinstance(tag, str) and tag for tag in tags):
            return f"{entry['metric_name']!r}: tags must be a list of tag keys"
    return None


def http_url(value: str) -> str | None:
    return None if not value or value.startswith(("http://", "https://")) else "must start with http(s)://"


def additional_endpoints(pairs: tuple[Any, ...]) -> str | None:
    for url, api_key in pairs:
        if http_url(url) or not url:
            return f"{url!r}: each URL must start with http(s)://"
        if not api_key:
            return f"{url!r}: empty API key"
    return None


def mapper_profiles(profiles: tuple[Any, ...]) -> str | None:
    for profile in profiles:
        if not isinstance(profile, dict) or not isinstance(profile.get("mappings", []), list):
            return "each profile must be a map with name, prefix and a list of mappings"
        for mapping in profile.get("mappings", []):
            if not isinstance(mapping, dict) or not mapping.get("match") or not mapping.get("name"):
                return f"profile {profile.get('name')!r}: each mapping needs match and name"
            if mapping.get("match_type", "wildcard") not in ("wildcard", "regex"):
                return f"profile {profile.get('name')!r}: match_type must be wildcard or regex"
            if mapping.get("match_type") == "regex":
                try:
                    re.compile(mapping["match"])
                except re.error as error:
                    return f"profile {profile.get('name')!r}: bad regex {mapping['match']!r}: {error}"
            elif not re.fullmatch(r"[a-zA-Z0-9\-_*.]+", str(mapping["match"])):
                return f"profile {profile.get('name')!r}: wildcard {mapping['match']!r} has invalid characters"
    return None
