"""Config: precedence, environment names, coercion, errors naming the key, redaction."""

from __future__ import annotations

import pytest

from relay.config import Config, ConfigError


def test_agent_defaults():
    config = Config.load(None, {})
    assert (config.dogstatsd_port, config.dogstatsd_buffer_size, config.serializer_compressor_kind) == (
        8125,
        8192,
        "zstd",
    )
    assert config.histogram_aggregates == ("max", "median", "avg", "count")
    assert config.histogram_percentiles == ("0.95",)
    assert (config.dogstatsd_expiry_seconds, config.dogstatsd_context_expiry_seconds) == (300, 20)
    assert config.forwarder_retry_queue_payloads_max_size == 15 * 1024 * 1024
    assert (config.relay_flush_interval, config.relay_health_host, config.relay_health_port) == (10, "127.0.0.1", 8127)
    assert config.dogstatsd_socket == "" and config.udp_bind_host == "127.0.0.1"
    assert config.hostname  # detected
    assert config.intake_url == "https://app.datadoghq.com" and config.api_url == "https://api.datadoghq.com"


def test_precedence_file_then_environment_then_overrides(tmp_path):
    path = tmp_path / "relay.yaml"
    path.write_text(
        "dogstatsd_port: 9000\nsite: datadoghq.eu\nrelay:\n  flush_interval: 15\n  health_port: 9001\n"
        "use_v2_api:\n  series: false\ndogstatsd_tags: [a:b, c:d]\n"
    )
    config = Config.load(
        path, {"DD_DOGSTATSD_PORT": "9100", "DD_RELAY_HEALTH_PORT": "9101"}, {"dogstatsd_port": "9200"}
    )
    assert config.dogstatsd_port == 9200
    assert config.relay_health_port == 9101
    assert config.relay_flush_interval == 15
    assert config.use_v2_api_series is False
    assert config.dogstatsd_tags == ("a:b", "c:d")
    assert config.intake_url == "https://app.datadoghq.eu"


def test_environment_lists_booleans_and_json_maps():
    config = Config.load(
        None,
        {
            "DD_DOGSTATSD_TAGS": "hello:world2 extra:tags",
            "DD_DOGSTATSD_NON_LOCAL_TRAFFIC": "true",
            "DD_USE_V2_API_SERIES": "0",
            "DD_DOGSTATSD_MAPPER_PROFILES": '[{"name":"p","prefix":"a.","mappings":[{"match":"a.*","name":"b"}]}]',
            "DD_URL": "http://127.0.0.1:1",
        },
    )
    assert config.dogstatsd_tags == ("hello:world2", "extra:tags")
    assert config.dogstatsd_non_local_traffic is True and config.udp_bind_host == "0.0.0.0"
    assert config.use_v2_api_series is False
    assert config.dogstatsd_mapper_profiles[0]["name"] == "p"
    assert config.intake_url == "http://127.0.0.1:1" == config.api_url


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"DD_DOGSTATSD_PORT": "70000"}, "dogstatsd_port: must be 0..65535, got 70000"),
        ({"DD_DOGSTATSD_PORT": "eighty"}, "dogstatsd_port: must be an integer, got 'eighty'"),
        ({"DD_DOGSTATSD_NON_LOCAL_TRAFFIC": "maybe"}, "dogstatsd_non_local_traffic: must be a boolean, got 'maybe'"),
        ({"DD_SERIALIZER_COMPRESSOR_KIND": "lz4"}, "serializer_compressor_kind: must be one of zstd, zlib, deflate, gzip, none"),
        ({"DD_HISTOGRAM_AGGREGATES": "max p99"}, "histogram_aggregates: must be one of max, min, median, avg, sum, count"),
        ({"DD_HISTOGRAM_PERCENTILES": "0.95 2"}, "histogram_percentiles: '2' is not a number in [0, 1]"),
        ({"DD_RELAY_FLUSH_INTERVAL": "0"}, "relay.flush_interval: must be > 0, got 0"),
        ({"DD_DD_URL": "app.datadoghq.com"}, "dd_url: must start with http(s)://"),
        ({"DD_DOGSTATSD_EOL_REQUIRED": "udp tcp"}, "dogstatsd_eol_required: must be one of udp, uds, named_pipe"),
        ({"DD_DOGSTATSD_MAPPER_PROFILES": "{not json"}, "dogstatsd_mapper_profiles: must be a list"),
        ({"DD_DOGSTATSD_MAPPER_PROFILES": '[{"name":"p","mappings":[{"match":"a.b c"}]}]'},
         "dogstatsd_mapper_profiles: profile 'p': each mapping needs match and name"),
    ],
)  # fmt: skip
def test_invalid_values_name_the_key(environ, message):
    with pytest.raises(ConfigError) as error:
        Config.load(None, environ)
    assert str(error.value).startswith(message)


def test_unknown_keys_give_one_warning(tmp_path):
    path = tmp_path / "datadog.yaml"
    path.write_text("apm_config:\n  enabled: true\nlogs_enabled: true\ndogstatsd_port: 8126\n")
    warnings: list[str] = []
    config = Config.load(path, {}, warn=warnings.append)
    assert config.dogstatsd_port == 8126
    assert warnings == ["config: unknown keys ignored: apm_config, logs_enabled"]


@pytest.mark.parametrize(
    ("content", "message"),
    [("- a\n- b\n", "must hold a map"), ("a: [\n", "is not valid YAML")],
)
def test_bad_files(tmp_path, content, message):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        Config.load(path, {})


def test_unknown_override_key_is_an_error():
    with pytest.raises(ConfigError, match="nope: unknown configuration key"):
        Config.load(None, {}, {"nope": "1"})


def test_api_key_is_redacted_everywhere_it_is_shown():
    config = Config.load(None, {"DD_API_KEY": "abcdefghijklmnopqrstuvwxyz123456"})
    assert config.redacted()["api_key"] == "***23456"
    assert "abcdefghij" not in repr(config)
