"""The origin fields as the Agent's parser reads them (comp/dogstatsd/server/impl/parse.go: `c:`, `e:`, `card:`
on metrics, events and service checks) and its tagger's legacy origin rules (comp/core/tagger: enrichTags)."""

from __future__ import annotations

import pytest

from relay.pipeline.model import Origin
from relay.pipeline.origin import Origins, cardinality_of, container_of
from relay.pipeline.parse import parse_line
from tests.conftest import config
from tests.pipeline.test_ingest import Containers


@pytest.mark.parametrize(
    ("line", "origin"),
    [
        (b"m:1|c|c:ci-abc", Origin(container="ci-abc")),
        (b"m:1|c|#a:b|c:in-42|card:High|e:it-false,cn-web,pu-9", Origin("in-42", "it-false,cn-web,pu-9", "High")),
        (b"m:1|c|c:old|c:ci-new", Origin(container="ci-new")),  # a repeated field overwrites the earlier one
        (b"m:1|c|cx:1|k:2|#c:ci-tag", None),  # fields that only start like one, and a tag, are not origins
        (b"_e{1,1}:t|x|c:ci-e|card:low", Origin(container="ci-e", cardinality="low")),
        (b"_sc|svc|0|e:pu-7|#x", Origin(external="pu-7")),
    ],
)
def test_the_origin_fields_of_each_kind_of_line(line, origin):
    assert parse_line(line).origin == origin


def test_container_fields_and_cardinalities():
    assert container_of("ci-abc") == ("abc", 0)
    assert container_of("in-42") == ("", 42)
    assert container_of("ci-abc,in-42") == ("abc", 42)
    assert container_of("cid-abc") == ("abc", 0)
    assert container_of("abc") == ("abc", 0)  # the older bare id
    assert container_of("in-x") == ("", 0)  # a bad inode: no origin, the line kept
    assert [cardinality_of(text, "low") for text in ("", "ORCH", "high", "None", "bogus")] == [
        "low", "orchestrator", "high", "none", "low"
    ]  # fmt: skip


def origins(**overrides: str) -> Origins:
    return Origins(config(dogstatsd_origin_detection_client="true", **overrides), Containers())


def test_the_entity_id_wins_over_the_client_container_and_none_discards_both():
    entity = ("dd.internal.entity_id:p1",)
    assert origins().resolve(entity, Origin(container="ci-k1")).tags == ("kube_namespace:pods",)
    assert origins().resolve(("dd.internal.entity_id:none",), Origin(container="ci-k1")).tags == ()
    assert origins().resolve((), Origin(container="ci-k1")).tags == ("kube_deployment:one",)
    assert origins().resolve((), Origin(container="in-7")).entities == ("container_id://k2",)


def test_the_sender_container_and_entity_id_precedence():
    both = origins().resolve(("dd.internal.entity_id:p1",), None, sender_container="k2")
    assert both.tags == ("kube_deployment:two", "kube_namespace:pods")  # the union, as the Agent's legacy mode
    alone = origins(dogstatsd_entity_id_precedence="true").resolve(("dd.internal.entity_id:p1",), None, "k2")
    assert alone.tags == ("kube_namespace:pods",)


def test_cardinality_comes_from_card_then_the_tag_then_the_configuration():
    high = origins(dogstatsd_tag_cardinality="orchestrator")
    assert high.resolve((), Origin(container="ci-k1")).tags == ("kube_deployment:one", "pod_name:one-x")
    assert (
        origins().resolve(("dd.internal.card:orchestrator",), Origin(container="ci-k1")).cardinality == "orchestrator"
    )
    assert origins().resolve(("dd.internal.card:high",), Origin("ci-k1", cardinality="low")).cardinality == "low"
    assert origins().resolve((), Origin("ci-k1", cardinality="none")).tags == ()


def test_without_origin_detection_client_only_the_entity_id_counts():
    plain = Origins(config(), Containers())
    assert plain.resolve((), Origin(container="ci-k1", cardinality="high")).tags == ()
    assert plain.resolve(("dd.internal.entity_id:p1",), None).tags == ("kube_namespace:pods",)


def test_an_unknown_origin_is_named_and_then_known():
    tagger = Containers()
    resolver = Origins(config(dogstatsd_origin_detection_client="true"), tagger)
    unknown = resolver.resolve((), Origin(container="ci-new"))
    assert unknown.tags == () and unknown.unknown == ("container_id://new",)
    assert not resolver.known("container_id://new")
    tagger.known = {**tagger.known, "container_id://new": {"low": ("kube_deployment:new",), "orchestrator": ()}}
    assert resolver.known("container_id://new")
    assert resolver.resolve((), Origin(container="in-99")).unknown == ("c:in-99",)
