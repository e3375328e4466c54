"""How the tagger asks the kubelet, as the Agent does: HTTPS with the service account's token, the certificate
checked against kubelet_client_ca (or not, with kubelet_tls_verify false), plain HTTP only when HTTPS cannot
connect; and what a kubelet that is down, slow, or changing costs: only tags, with the reason in state().

Every kubelet here is the stand-in on a real socket; nothing of the HTTP or TLS layer is mocked.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from relay.tagger import Tagger
from relay.tagger.kubelet import KubeletClient, KubeletSource
from tests.conftest import config
from tests.standins import make_certificates
from tests.standins.kubelet import Kubelet, Silent, closed_port, container, pod
from tests.tagger.conftest import TOKEN, eventually

APP = "e" * 64
WEB = pod("web-1", "web-uid", containers=[container("app", "web:1", APP)])
ENTITY = f"container_id://{APP}"


def kubelet_tagger(https_port: int, http_port: int, **keys: Any) -> Tagger:
    settings = config(
        kubernetes_kubelet_host="127.0.0.1", kubernetes_https_kubelet_port=https_port,
        kubernetes_http_kubelet_port=http_port, kubelet_cache_pods_duration=0.1, **keys,
    )  # fmt: skip
    tagger = Tagger.from_config(settings)
    assert tagger is not None
    return tagger


def test_https_with_the_token_and_the_ca_gives_the_pods_tags(certificates, token_file, started):
    with Kubelet(certificates, token=TOKEN) as kubelet:
        kubelet.add(WEB)
        tagger = started(kubelet_tagger(kubelet.port, closed_port(), kubelet_client_ca=certificates.ca,
                                        kubelet_auth_token_path=token_file))  # fmt: skip
        eventually(lambda: tagger.tags(ENTITY, "low"))
        assert "kube_container_name:app" in tagger.tags(ENTITY, "low")
        assert kubelet.requests[0] == ("/pods", f"Bearer {TOKEN}")
        state = tagger.state()
        assert state["source"] == f"kubelet https://127.0.0.1:{kubelet.port}"
        assert (state["pods"], state["containers"], state["errors"], state["last_error"]) == (1, 1, 0, "")
        assert state["polls"] >= 1 and isinstance(state["last_success_at"], float)
        assert state["last_error_at"] is None


def test_a_wrong_token_is_an_error_in_state_and_never_a_fall_back_to_http(certificates, tmp_path, started):
    (tmp_path / "token").write_text("not-the-token")
    with Kubelet(certificates, token=TOKEN) as secure, Kubelet() as read_only:
        read_only.add(WEB)
        tagger = started(kubelet_tagger(secure.port, read_only.port, kubelet_client_ca=certificates.ca,
                                        kubelet_auth_token_path=tmp_path / "token"))  # fmt: skip
        state = eventually(lambda: (s := tagger.state())["errors"] >= 2 and s)
        assert "401" in str(state["last_error"]) and str(tmp_path / "token") in str(state["last_error"])
        assert isinstance(state["last_error_at"], float) and state["last_success_at"] is None
        assert tagger.tags(ENTITY, "low") is None and tagger.tags("kubernetes_pod_uid://web-uid", "low") is None
        assert read_only.requests == []


def test_a_certificate_the_ca_does_not_vouch_for_is_refused_unless_verification_is_off(
    certificates, token_file, tmp_path, started
):
    """kubelet_client_ca names another CA: the handshake fails (and HTTP is not tried). With kubelet_tls_verify
    false the same kubelet is read, as the Agent reads one whose certificate it cannot check."""
    other = make_certificates(tmp_path)
    with Kubelet(certificates, token=TOKEN) as kubelet, Kubelet() as read_only:
        kubelet.add(WEB)
        refused = started(kubelet_tagger(kubelet.port, read_only.port, kubelet_client_ca=other.ca,
                                         kubelet_auth_token_path=token_file))  # fmt: skip
        state = eventually(lambda: (s := refused.state())["errors"] >= 1 and s)
        assert "CERTIFICATE_VERIFY_FAILED" in str(state["last_error"]), state["last_error"]
        assert refused.tags(ENTITY, "low") is None and read_only.requests == []
        unverified = started(kubelet_tagger(kubelet.port, read_only.port, kubelet_tls_verify=False,
                                            kubelet_auth_token_path=token_file))  # fmt: skip
        eventually(lambda: unverified.tags(ENTITY, "low"))
        assert unverified.state()["source"].startswith("kubelet https://")


def test_http_is_tried_when_https_cannot_connect_and_it_carries_no_token(token_file, started):
    with Kubelet() as read_only:
        read_only.add(WEB)
        tagger = started(kubelet_tagger(closed_port(), read_only.port, kubelet_auth_token_path=token_file))
        eventually(lambda: tagger.tags(ENTITY, "high"))
        assert tagger.state()["source"] == f"kubelet http://127.0.0.1:{read_only.port}"
        assert tagger.state()["errors"] == 0
        assert {authorization for _, authorization in read_only.requests} == {""}


def test_a_pod_listed_later_appears_within_one_poll_and_one_removed_goes(certificates, token_file, started):
    with Kubelet(certificates, token=TOKEN) as kubelet:
        tagger = started(kubelet_tagger(kubelet.port, closed_port(), kubelet_client_ca=certificates.ca,
                                        kubelet_auth_token_path=token_file))  # fmt: skip
        eventually(lambda: tagger.state()["polls"] >= 2)
        generation = tagger.generation
        assert tagger.tags(ENTITY, "low") is None
        kubelet.add(WEB)
        added_at = time.monotonic()
        eventually(lambda: tagger.tags(ENTITY, "low"))
        assert time.monotonic() - added_at < 0.1 + 1.0  # one poll interval, and the request's own time
        assert tagger.generation > generation
        generation = tagger.generation
        eventually(lambda: tagger.state()["polls"] >= 6)
        assert tagger.generation == generation, "an unchanged pod list bumps nothing"
        kubelet.remove("web-uid")
        eventually(lambda: tagger.tags(ENTITY, "low") is None)
        assert tagger.generation > generation and tagger.state()["pods"] == 0


def test_a_rotated_token_is_read_again(certificates, token_file, started):
    """A projected service account token is rewritten in place: the next request carries the new one."""
    with Kubelet(certificates, token=TOKEN) as kubelet:
        kubelet.add(WEB)
        tagger = started(kubelet_tagger(kubelet.port, closed_port(), kubelet_client_ca=certificates.ca,
                                        kubelet_auth_token_path=token_file))  # fmt: skip
        eventually(lambda: tagger.tags(ENTITY, "low"))
        token_file.write_text("rotated-token\n")
        kubelet.token = "rotated-token"
        eventually(lambda: ("/pods", "Bearer rotated-token") in kubelet.requests)
        errors, polls = tagger.state()["errors"], tagger.state()["polls"]
        assert errors <= 1  # at most a poll that fell between the two writes
        eventually(lambda: tagger.state()["polls"] >= polls + 3)
        assert tagger.state()["errors"] == errors and tagger.tags(ENTITY, "low")


def test_a_kubelet_that_is_down_costs_only_tags_and_stop_is_prompt(token_file, started):
    tagger = started(kubelet_tagger(closed_port(), closed_port(), kubelet_auth_token_path=token_file))
    state = eventually(lambda: (s := tagger.state())["errors"] >= 2 and s)
    assert "cannot connect" in str(state["last_error"]) and state["last_success_at"] is None
    assert tagger.tags(ENTITY, "high") is None and tagger.generation == 0
    began = time.monotonic()
    tagger.stop()
    assert time.monotonic() - began < 1.0


def test_a_kubelet_that_never_answers_times_out_and_stop_does_not_wait_for_it(tmp_path):
    silent = Silent()
    try:
        client = KubeletClient("127.0.0.1", https_port=silent.port, http_port=0, tls_verify=False,
                               token_path=str(tmp_path / "none"), timeout=0.3)  # fmt: skip
        tagger = Tagger(KubeletSource(client), interval=0.1)
        tagger.start()
        state = eventually(lambda: (s := tagger.state())["errors"] >= 1 and s)
        assert "timed out" in str(state["last_error"]) or "did not answer" in str(state["last_error"])
        long_client = KubeletClient("127.0.0.1", https_port=silent.port, http_port=0, tls_verify=False, timeout=5)
        slow = Tagger(KubeletSource(long_client), interval=0.1)
        slow.start()
        time.sleep(0.2)  # in the middle of its 5-second request
        began = time.monotonic()
        slow.stop()
        tagger.stop()
        assert time.monotonic() - began < 1.5
        assert slow.state()["polls"] == 1 and slow.tags(ENTITY, "low") is None
    finally:
        silent.close()


def test_a_kubelet_back_after_an_outage_gives_tags_again(certificates, token_file, started):
    """The poller thread survives failures: the same tagger reads the kubelet once it listens again."""
    port = closed_port()
    tagger = started(kubelet_tagger(port, closed_port(), kubelet_client_ca=certificates.ca,
                                    kubelet_auth_token_path=token_file))  # fmt: skip
    eventually(lambda: tagger.state()["errors"] >= 1)
    with Kubelet(certificates, token=TOKEN, port=port) as kubelet:
        kubelet.add(WEB)
        eventually(lambda: tagger.tags(ENTITY, "low"))
        state = tagger.state()
        assert state["last_success_at"] is not None and state["last_success_at"] > state["last_error_at"]


def test_a_missing_explicit_token_file_is_reported(tmp_path: Path, certificates, started):
    with Kubelet(certificates, token=TOKEN) as kubelet:
        tagger = started(kubelet_tagger(kubelet.port, closed_port(), kubelet_client_ca=certificates.ca,
                                        kubelet_auth_token_path=tmp_path / "absent"))  # fmt: skip
        state = eventually(lambda: (s := tagger.state())["errors"] >= 1 and s)
        assert "cannot read the kubelet token" in str(state["last_error"])
        assert kubelet.requests == []
