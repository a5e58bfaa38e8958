import re
from pathlib import Path

import pytest

from tasks import cpu_profile
from tasks.settings import CPU_PROFILE_CAPS, SETTINGS, DeployError, check_value, readme_with_table, resolve


def test_defaults_apply_when_data_is_empty():
    settings = resolve("nas1", {})
    assert settings.model_store_dir == "/data/models"
    assert settings.gateway_rate_per_minute == 10
    assert settings.system_swappiness == 10


def test_host_data_overrides_a_default():
    assert resolve("nas1", {"engine_context_size": 4096}).engine_context_size == 4096


def test_unknown_key_is_refused_with_the_closest_known_key():
    with pytest.raises(DeployError, match=r"nas1: unknown data key `engine_thread`; did you mean `engine_threads`\?"):
        resolve("nas1", {"engine_thread": 4})


def test_keys_of_other_tools_pass_through():
    resolve("nas1", {"ssh_user": "deploy", "_sudo": True})


@pytest.mark.parametrize("key, value, expected", [
    ("engine_port", "8080", "int"),
    ("engine_port", True, "int"),
    ("preflight_allow_without_avx2", 1, "bool"),
    ("gateway_api_keys", ["sk-1"], "dict or None"),
])
def test_wrong_type_names_the_key_and_the_expected_type(key, value, expected):
    with pytest.raises(DeployError, match=f"`{key}` must be {expected}, got"):
        resolve("nas1", {key: value})


def test_every_setting_is_documented():
    for key, spec in SETTINGS.items():
        assert spec.doc.strip() and spec.types, key


@pytest.mark.parametrize("key, value, message", [
    ("engine_server", "vllm", "is 'vllm'; it must be one of 'llama-server', 'llama-cpp-python'"),
    ("engine_cpu_profile_cap", "x86-64-v5", "it must be one of None, 'x86-64-v2'"),
    ("engine_port", 0, "is 0; it must be at least 1"),
    ("gateway_port", 70000, "is 70000; it must be at most 65535"),
    ("gateway_rate_burst", -1, "at least 0"),
    ("engine_context_size", 16, "at least 128"),
    ("monitoring_ttft_p99_slo_s", 0, "at least 0.01"),
    ("gateway_max_body", "1 MB", "an nginx size"),
    ("gateway_max_body", "0", "an nginx size"),  # nginx reads 0 as no limit
    ("monitoring_retention_time", "30 days", "a Prometheus duration"),
    ("monitoring_retention_size", "2G", "a Prometheus size"),
    ("model_store_dir", "data/models", "an absolute path"),
    ("model_store_dir", "/srv/my models", "an absolute path"),
    ("model_name", "Bad Name", "lower-case letters"),
    ("model_sha256", "abc", "a sha256"),
    ("monitoring_alert_webhook", "ntfy.sh/topic", "an http:// or https:// URL"),
])
def test_a_value_outside_its_spec_names_the_key_and_what_is_allowed(key, value, message):
    with pytest.raises(DeployError, match=f"nas1: data key `{key}` .*{re.escape(message)}"):
        resolve("nas1", {key: value})


@pytest.mark.parametrize("key, value", [
    ("engine_server", "llama-cpp-python"), ("engine_cpu_profile_cap", None), ("engine_port", 65535),
    ("gateway_max_body", "512k"), ("monitoring_retention_time", "1h30m"), ("monitoring_retention_size", "500MB"),
    ("monitoring_retention_time", "0"), ("monitoring_retention_size", "0"), ("monitoring_retention_size", "512MiB"),
    ("monitoring_retention_size", "1.5GB"), ("model_store_dir", "/volume1/@appstore/nas-ai"),
    ("monitoring_ttft_p99_slo_s", 3), ("model_sha256", "0" * 64), ("monitoring_alert_webhook", "https://ntfy.sh/x"),
])
def test_values_inside_their_spec_pass(key, value):
    assert getattr(resolve("nas1", {key: value}), key) == value


def test_every_default_passes_its_own_spec():
    for key, spec in SETTINGS.items():
        assert check_value(key, spec.default) is None, key


def test_the_profile_caps_are_the_profiles_the_engine_builds():
    assert set(CPU_PROFILE_CAPS) == {name for name, _ in cpu_profile.X86_LEVELS + cpu_profile.ARM_LEVELS}


def test_the_readme_table_of_keys_is_generated_from_the_spec():
    readme = (Path(__file__).parent.parent.parent / "README.md").read_text()
    assert readme_with_table(readme) == readme, "README.md is stale: run `python -m tasks.settings --readme`"
    assert all(f"| `{key}` |" in readme for key in SETTINGS)
