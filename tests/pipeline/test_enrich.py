"""Enrich: host and tag rules, namespace, blocklist and mapper profiles (spec section 1.7)."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from relay.pipeline.enrich import Enricher
from relay.pipeline.model import Context, Event, ServiceCheck
from tests.conftest import config


def enricher(**overrides: object) -> Enricher:
    return Enricher(config(hostname="default-host", **overrides))


def test_host_tag_sets_the_host_and_is_removed():
    assert enricher().context("m", ("host:web-1", "env:prod")) == Context("m", "web-1", ("env:prod",))


def test_empty_host_tag_gives_an_empty_host():
    assert enricher().context("m", ("host:",)) == Context("m", "", ())


def test_internal_and_empty_tags_are_stripped_and_dogstatsd_tags_added():
    context = enricher(dogstatsd_tags="team:core env:prod").context(
        "m", ("dd.internal.entity_id:abc", "dd.internal.card:high", "", "dd.internal.jmx_check_name:x", "a")
    )
    assert context == Context("m", "default-host", ("a", "env:prod", "team:core"))


def test_namespace_with_its_exemptions():
    with_namespace = enricher(statsd_metric_namespace="app")
    assert with_namespace.context("requests", ()).name == "app.requests"
    assert with_namespace.context("jvm.heap", ()).name == "jvm.heap"
    assert with_namespace.context("datadog.tracer.x", ()).name == "datadog.tracer.x"
    assert enricher(statsd_metric_namespace="app.").context("x", ()).name == "app.x"


def test_blocklist_exact_and_by_prefix():
    exact = enricher(statsd_metric_blocklist="noisy.metric")
    assert exact.context("noisy.metric", ()) is None and exact.context("noisy.metric.2", ()) is not None
    prefix = enricher(statsd_metric_blocklist="noisy", statsd_metric_blocklist_match_prefix="true")
    assert prefix.context("noisy.metric.2", ()) is None and prefix.context("quiet", ()) is not None


def test_blocklist_applies_to_the_namespaced_name():
    assert enricher(statsd_metric_namespace="app", statsd_metric_blocklist="app.x").context("x", ()) is None


def test_mapper_profiles_wildcard_and_regex():
    profiles = [
        {
            "name": "airflow",
            "prefix": "airflow.",
            "mappings": [
                {"match": "airflow.job.duration_sec.*.*", "name": "airflow.job.duration", "tags": {"job_type": "$1", "job_name": "${2}"}},
                {"match": r"airflow\.pool\.(\w+)\.open", "match_type": "regex", "name": "airflow.pool.open", "tags": {"pool": "$1"}},
            ],
        }
    ]  # fmt: skip
    mapper = enricher(dogstatsd_mapper_profiles=json.dumps(profiles))
    assert mapper.context("airflow.job.duration_sec.a.b", ("x",)) == Context(
        "airflow.job.duration", "default-host", ("job_name:b", "job_type:a", "x")
    )
    assert mapper.context("airflow.pool.default.open", ()) == Context(
        "airflow.pool.open", "default-host", ("pool:default",)
    )
    assert (
        mapper.context("airflow.job.duration_sec.a.b.c", ()).name == "airflow.job.duration_sec.a.b.c"
    )  # * is one segment
    assert mapper.context("other.job.duration_sec.a.b", ()).name == "other.job.duration_sec.a.b"


def test_events_and_service_checks_take_h_then_host_tag_then_default():
    e = enricher(dogstatsd_tags="extra")
    assert e.event(Event("t", "x", host="h1", tags=("host:h2", "b", "a", "b"))).host == "h1"
    event = e.event(Event("t", "x", tags=("host:h2", "b", "a", "b")))
    assert (event.host, event.tags) == ("h2", ("a", "b", "extra"))
    assert e.service_check(ServiceCheck("c", 0, tags=("host:",))).host == ""
    assert e.service_check(ServiceCheck("c", 0)).host == "default-host"


tags = st.lists(st.sampled_from(["a", "b:1", "c:2", "host:x", "d"]), max_size=6)


@given(tags, st.randoms())
def test_tag_order_and_duplicates_never_split_a_context(tag_list, random):
    shuffled = list(tag_list) + list(tag_list[:2])
    random.shuffle(shuffled)
    e = enricher()
    assert e.context("m", tuple(tag_list)) == e.context("m", tuple(shuffled))
