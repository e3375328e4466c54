"""`dogstatsd-relay explain`: one datagram through the real stages, each line accounted for."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from relay.tools.explain import explain, render
from tests.conftest import config


def test_every_line_is_explained_and_what_would_leave_is_shown():
    cfg = config(hostname="h", statsd_metric_blocklist="blocked", statsd_metric_namespace="app")
    data = b"page.views:1|c|@0.5|#env:prod,host:web-1\nbad line\nblocked:1|g\n_sc|svc|2|m:down\nsize:3|d\nt:5|g|T1000"
    result = explain(cfg, data, 2000.0)
    outcomes = [line["outcome"] for line in result["lines"]]
    assert outcomes == [
        "aggregated", "rejected: invalid dogstatsd message format", "aggregated", "sent", "aggregated",
        "timestamped: sent as it is",
    ]  # fmt: skip
    assert result["lines"][0]["context"] == {"name": "app.page.views", "host": "web-1", "tags": ("env:prod",)}
    series = {s["metric"]: s for s in result["would_send"]["series"]}
    assert series["app.page.views"]["points"] == [(2000, 0.2)] and series["app.t"]["points"] == [(1000, 5.0)]
    assert result["would_send"]["sketches"][0]["keys"] == [1409]
    assert {p["endpoint"] for p in result["payloads"]} == {"/api/v2/series", "/api/beta/sketches", "/api/v1/check_run"}
    assert "rejected: invalid dogstatsd message format" in render(result)


def test_blocklisted_names_say_so():
    cfg = config(hostname="h", statsd_metric_blocklist="blocked")
    result = explain(cfg, b"blocked:1|g", 2000.0)
    assert result["lines"][0]["outcome"] == "dropped: the name is in statsd_metric_blocklist"
    assert result["would_send"]["series"] == []


def test_the_command_line():
    env = {k: v for k, v in os.environ.items() if not k.startswith("DD_")}
    text = subprocess.run(
        [sys.executable, "-m", "relay", "explain", "a:1|c\\nnope"], env=env, capture_output=True, text=True
    )
    assert text.returncode == 1  # a line was rejected
    assert "line 2 (metric): rejected" in text.stdout and "payload /api/v2/series" in text.stdout
    as_json = subprocess.run(
        [sys.executable, "-m", "relay", "explain", "a:1|c", "--json"], env=env, capture_output=True, text=True
    )
    assert json.loads(as_json.stdout)["lines"][0]["outcome"] == "aggregated" and as_json.returncode == 0


def test_nan_is_dropped_not_aggregated():
    result = explain(config(hostname="h"), b"a:nan|g\nb:1:nan:2|h", 2000.0)
    assert [line["outcome"] for line in result["lines"]] == [
        "dropped: 1 value(s) as nan_or_inf", "aggregated; dropped 1 value(s) as nan_or_inf",
    ]  # fmt: skip
    assert "a" not in {s["metric"] for s in result["would_send"]["series"]}


def test_a_tag_filterlist_rule_shows_what_it_removed():
    rules = [{"metric_name": "spike.req", "tags": ["request_id"]}, {"metric_name": "quiet", "tags": ["request_id"]}]
    cfg = config(hostname="h", metric_tag_filterlist=json.dumps(rules))
    data = b"spike.req:1|c|#request_id:42,env:prod\nspike.req:2|c|#request_id:43,env:prod\nquiet:1|g|#env:a\nloud:1|g"
    result = explain(cfg, data, 2000.0)
    first, second, untouched, no_rule = result["lines"]
    assert first["tag_filter"] == {
        "metric_name": "spike.req", "action": "exclude", "keys": ["request_id"], "removed": ["request_id:42"],
    }  # fmt: skip
    assert first["context"]["tags"] == ("env:prod",) and second["tag_filter"]["removed"] == ["request_id:43"]
    assert untouched["tag_filter"]["removed"] == [] and "tag_filter" not in no_rule
    [series] = [s for s in result["would_send"]["series"] if s["metric"] == "spike.req"]
    assert series["points"] == [(2000, 0.3)] and series["tags"] == ["env:prod"]  # one context, both counts
    text = render(result)
    assert "  metric_tag_filterlist: spike.req exclude ['request_id']: removed ['request_id:42']\n" in text
    assert "  metric_tag_filterlist: quiet exclude ['request_id']: removed nothing\n" in text
