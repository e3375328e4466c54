"""`dogstatsd-relay init`: the site and the API key asked in a terminal (or given by flags), the key checked
against that site, and a configuration file written where every command looks for it, readable by its owner only.

The key is read with echo off and never printed: only `***` and its last five characters, as the Agent shows it.
"""

from __future__ import annotations

import getpass
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from relay import __version__
from relay.config import SITES, SYSTEM_CONFIG, redact, user_config
from relay.files import write_atomically

Ask = Callable[[str], str]


def validate_key(api_url: str, api_key: str) -> tuple[bool | None, str]:
    """(True, '') when the site accepts the key, (False, why) when it rejects it, (None, why) when it cannot tell."""
    request = urllib.request.Request(
        api_url.rstrip("/") + "/api/v1/validate",
        headers={"DD-API-KEY": api_key, "User-Agent": f"dogstatsd-relay/{__version__}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            valid = json.load(response).get("valid", response.status == 200)
            return bool(valid), "" if valid else f"{api_url} says the key is not valid"
    except urllib.error.HTTPError as error:
        if error.code in (401, 403):
            return False, f"{api_url} rejected the key (HTTP {error.code})"
        return None, f"{api_url} answered HTTP {error.code}"
    except (OSError, ValueError) as error:
        return None, f"cannot reach {api_url}: {getattr(error, 'reason', error)}"


def default_target(environ: dict[str, str] | os._Environ[str]) -> Path:
    """Where `init` writes when not told: /etc/dogstatsd-relay for root (a system service), else the user's file."""
    return SYSTEM_CONFIG if os.geteuid() == 0 and not environ.get("XDG_CONFIG_HOME") else user_config(environ)


def write_config(path: Path, site: str, api_key: str, dd_url: str) -> None:
    """Set `site` and `api_key` (and `dd_url` when given) in the file, keeping its other keys; mode 0600."""
    document: dict[str, Any] = {}
    if path.is_file():
        loaded = yaml.safe_load(path.read_text())
        document = loaded if isinstance(loaded, dict) else {}
    document.update(site=site, api_key=api_key)
    if dd_url:
        document["dd_url"] = dd_url
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "# Written by `dogstatsd-relay init`: datadog.yaml keys (see docs/CONFIGURATION.md).\n"
    write_atomically(path, (header + yaml.safe_dump(document, sort_keys=False)).encode(), 0o600)


def run_init(
    target: Path | None, site: str | None, api_key_file: Path | None, dd_url: str, environ: Any,
    ask: Ask = input, ask_secret: Ask = getpass.getpass, out: Callable[[str], None] = print,
) -> int:  # fmt: skip
    """Interactive when the key is not given by file; 0 once a valid key is written, 1 otherwise."""
    interactive = api_key_file is None
    if interactive and not sys.stdin.isatty():
        out("init: no terminal to ask in: give --site and --api-key-file (a file holding the key)")
        return 1
    path = target or default_target(environ)
    if site is None:
        site = _ask_site(ask, out) if interactive else "datadoghq.com"
    if site not in SITES and not dd_url:
        out(f"init: unknown site {site!r}; Datadog's sites: {', '.join(SITES)}")
        return 1
    api_url = dd_url or f"https://api.{site}"
    while True:
        if api_key_file is not None:
            try:
                api_key = api_key_file.read_text().strip()
            except OSError as error:
                out(f"init: cannot read --api-key-file {api_key_file}: {error.strerror}")
                return 1
        else:
            api_key = ask_secret("Datadog API key (input hidden): ").strip()
        if not api_key:
            out("init: the API key is empty")
            if not interactive:
                return 1
            continue
        valid, why = validate_key(api_url, api_key)
        if valid:
            break
        out(f"init: the API key {redact(api_key)} is not valid: {why}" if valid is False else f"init: {why}")
        if not interactive:
            return 1
        if valid is None and ask("Save it without checking? [y/N] ").strip().lower() in ("y", "yes"):
            break
        out("Try again (Ctrl-C to stop); keys are at https://app." + site + "/organization-settings/api-keys")
    write_config(path, site, api_key, dd_url)
    out(f"init: the API key {redact(api_key)} is valid for {site}; wrote {path} (mode 0600)")
    out("Start the relay with: dogstatsd-relay run" + ("" if path in (user_config(environ), SYSTEM_CONFIG)
                                                        else f" --config {path}"))  # fmt: skip
    return 0


def _ask_site(ask: Ask, out: Callable[[str], None]) -> str:
    names = list(SITES)
    out("Datadog site (the domain in your Datadog address):")
    for number, (site, region) in enumerate(SITES.items(), 1):
        out(f"  {number}. {site} ({region})")
    while True:
        answer = ask(f"Site [1-{len(names)} or a domain, default 1]: ").strip()
        if not answer:
            return names[0]
        if answer.isdigit() and 1 <= int(answer) <= len(names):
            return names[int(answer) - 1]
        if answer in SITES:
            return answer
        out(f"  not a site: {answer!r}")
