"""The tagger's fixtures: one CA and kubelet certificate per session, a token file, and a wait that polls."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from relay.tagger import Tagger
from tests.standins import Certificates, make_certificates

TOKEN = "stand-in-service-account-token"


@pytest.fixture(scope="session")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("kubelet-tls"))


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    return path


def eventually(condition: Callable[[], Any], timeout: float = 10.0, step: float = 0.02) -> Any:
    """Poll until `condition()` is truthy (the tagger works in its own thread); fail saying so otherwise."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(step)
    raise AssertionError(f"condition not met within {timeout} s")


@pytest.fixture
def started() -> Iterator[Callable[[Tagger], Tagger]]:
    """Starts a tagger and stops it after the test, whatever happens."""
    taggers: list[Tagger] = []

    def start(tagger: Tagger) -> Tagger:
        taggers.append(tagger)
        tagger.start()
        return tagger

    yield start
    for tagger in taggers:
        tagger.stop()
