import pytest

from tasks.settings import SETTINGS, DeployError, resolve


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
    for key, (_default, types, doc) in SETTINGS.items():
        assert doc.strip() and types, key
