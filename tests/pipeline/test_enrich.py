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


def filtering(*rules: dict[str, object], **overrides: object) -> Enricher:
    return enricher(metric_tag_filterlist=json.dumps(list(rules)), **overrides)


def test_exclude_drops_the_listed_keys_with_or_without_a_value():
    e = filtering({"metric_name": "spike.req", "tags": ["request_id", "debug"]})
    context = e.context("spike.req", ("request_id:42", "debug", "env:prod", "request_ids:7", "debug:"))
    assert context == Context("spike.req", "default-host", ("env:prod", "request_ids:7"))


def test_include_keeps_only_the_listed_keys_and_never_touches_the_host():
    e = filtering({"metric_name": "api.latency", "action": "include", "tags": ["env", "host"]}, dogstatsd_tags="team:a")
    context = e.context("api.latency", ("env:prod", "user:7", "host:web-1", "pod"))
    assert context == Context("api.latency", "web-1", ("env:prod",))  # dogstatsd_tags are the context's tags too


def test_metrics_without_a_rule_are_untouched():
    e = filtering({"metric_name": "spike.req", "tags": ["request_id"]})
    assert e.context("other", ("request_id:1",)).tags == ("request_id:1",)
    assert e.context("spike.req.count", ("request_id:1",)).tags == ("request_id:1",)  # exact names only
    assert enricher().context("spike.req", ("request_id:1",)).tags == ("request_id:1",)


def test_the_rule_names_the_metric_after_the_mapper_and_the_namespace():
    profiles = [{"name": "p", "prefix": "jobs.", "mappings": [{"match": "jobs.*.done", "name": "jobs.done", "tags": {"job": "$1"}}]}]  # fmt: skip
    e = filtering(
        {"metric_name": "app.jobs.done", "tags": ["job", "run_id"]},
        {"metric_name": "jobs.done", "tags": ["env"]},  # the name before the namespace: never applies
        dogstatsd_mapper_profiles=json.dumps(profiles),
        statsd_metric_namespace="app",
    )
    context = e.context("jobs.backup.done", ("run_id:9", "env:prod"))
    assert context == Context("app.jobs.done", "default-host", ("env:prod",))  # the mapper's job: tag went too
    assert e.tag_rule("jobs.backup.done").metric_name == "app.jobs.done" and e.tag_rule("other") is None


def test_entries_for_one_metric_merge_and_exclude_wins_as_in_the_agent():
    e = filtering(
        {"metric_name": "m", "action": "include", "tags": ["a"]},
        {"metric_name": "m", "tags": ["b"]},
        {"metric_name": "m", "action": "include", "tags": ["c"]},
        {"metric_name": "m", "action": "exclude", "tags": ["d"]},
        {"metric_name": "n", "action": "include", "tags": ["a"]},
        {"metric_name": "n", "action": "include", "tags": ["b"]},
    )
    assert (e.tag_rule("m").action, e.tag_rule("m").keys) == ("exclude", {"b", "d"})
    assert (e.tag_rule("n").action, e.tag_rule("n").keys) == ("include", {"a", "b"})


def test_a_removed_tag_makes_no_context_cache_entry_and_explain_sees_what_went():
    e = filtering({"metric_name": "spike.req", "tags": ["request_id"]})
    contexts = {e.context("spike.req", (f"request_id:{i}", "env:prod")) for i in range(1000)}
    assert contexts == {Context("spike.req", "default-host", ("env:prod",))} and len(e._cache) == 1
    rule, removed = e.tag_filter("spike.req", ("request_id:5", "env:prod"))
    assert (rule.metric_name, rule.action, removed) == ("spike.req", "exclude", ("request_id:5",))
    assert e.tag_filter("other", ("request_id:5",)) is None


@given(st.lists(st.sampled_from(["r:1", "r:2", "r", "x:1", "host:h", "", "r:\ufffd", "y"]), max_size=6))
def test_a_shape_cut_reads_as_the_parsed_tags_cut(tag_list):
    """Ingest keys the shape cache by the cut line, so cutting the bytes must give the tags cut by `cut`."""
    for action in ("include", "exclude"):
        rule = filtering({"metric_name": "m", "action": action, "tags": ["r", "host"]}).tag_rule("m")
        suffix = b"c|@0.5|#" + ",".join(tag_list).encode()
        cut = rule.cut_shape(suffix)
        assert cut.split(b"|")[:2] == [b"c", b"@0.5"]
        assert tuple(cut.split(b"|#")[1].decode().split(",")) == (rule.cut(tuple(tag_list)) or ("",))
        assert rule.cut_shape(cut) == cut  # cutting twice changes nothing: a cut shape is a shape of its own
