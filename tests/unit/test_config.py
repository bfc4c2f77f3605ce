"""Settings from the environment."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from worker.config import Settings, SettingsError
from worker.settingsdoc import (
    HUB,
    README,
    REGENERATE,
    env_name,
    hub_entry,
    hub_env,
    readme_table,
    settings_table,
)


def test_defaults() -> None:
    s = Settings.from_env({})
    assert s.comfy_url == "http://127.0.0.1:8188"
    assert s.volume_root == Path("/runpod-volume")
    assert (s.max_input_image_mb, s.inline_output_max_mb, s.download_connections) == (20.0, 15.0, 8)
    assert not s.bucket_configured and not s.allow_private_urls and not s.progress_updates
    assert "huggingface.co" in s.allowed_model_hosts and "civitai.com" in s.allowed_model_hosts


def test_server_address_is_an_alias_of_comfy_host() -> None:
    assert Settings.from_env({"SERVER_ADDRESS": "10.0.0.2"}).comfy_url == "http://10.0.0.2:8188"
    both = Settings.from_env({"SERVER_ADDRESS": "10.0.0.2", "COMFY_HOST": "comfy", "COMFY_PORT": "9000"})
    assert both.comfy_url == "http://comfy:9000"
    assert Settings.from_env({"COMFY_HOST": "http://h:1234"}).comfy_url == "http://h:1234"


def test_progress_updates_on_when_running_on_runpod() -> None:
    assert Settings.from_env({"RUNPOD_WEBHOOK_POST_OUTPUT": "https://api/x"}).progress_updates
    assert not Settings.from_env(
        {"RUNPOD_WEBHOOK_POST_OUTPUT": "x", "PROGRESS_UPDATES": "false"}
    ).progress_updates


def test_lists_and_secrets() -> None:
    s = Settings.from_env({"ALLOWED_MODEL_HOSTS": " Example.com, cdn.example.com ,", "HF_TOKEN": "hf_secret"})
    assert s.allowed_model_hosts == ("example.com", "cdn.example.com")
    assert "hf_secret" not in repr(s)


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"COMFY_PORT": "http"}, "COMFY_PORT must be a valid integer, got 'http'"),
        ({"ALLOW_PRIVATE_URLS": "perhaps"}, "ALLOW_PRIVATE_URLS must be true or false"),
        ({"MAX_INPUT_IMAGE_MB": "-1"}, "MAX_INPUT_IMAGE_MB must be greater than or equal to 0.001"),
        ({"JOB_TIMEOUT_S": "soon"}, "JOB_TIMEOUT_S must be a valid number"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL must be 'DEBUG', 'INFO', 'WARNING' or 'ERROR'"),
    ],
)
def test_bad_values_say_which_variable(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(fragment)):
        Settings.from_env(env)


def test_empty_means_unset_and_values_are_trimmed() -> None:
    s = Settings.from_env({"COMFY_PORT": " ", "MODEL_READ_TIMEOUT_S": " 5 ", "LOG_LEVEL": "debug"})
    assert (s.comfy_port, s.model_read_timeout_s, s.log_level) == (8188, 5.0, "DEBUG")
    assert Settings.from_env({"PATH": "/bin", "comfy_port": "1"}) == Settings()


# --------------------------------------------------------------------------------------------- generated docs


def test_readme_table_is_generated_from_the_declaration() -> None:
    current = readme_table(README.read_text(encoding="utf-8"))
    assert current == settings_table(), f"README.md's settings table is out of date: run {REGENERATE}"


def test_hub_entries_are_generated_from_the_declaration() -> None:
    hub = json.loads(HUB.read_text(encoding="utf-8"))
    assert hub["config"]["env"] == hub_env(hub), (
        f".runpod/hub.json's settings are out of date: run {REGENERATE}"
    )


def test_hub_defaults_change_nothing() -> None:
    """A deployment that keeps the Hub's defaults behaves as one that sets nothing (but for the values the
    image itself sets, which the Hub repeats)."""
    unset = Settings.from_env({})
    for field in Settings.model_fields.values():
        entry = hub_entry(field)["input"]
        if "image" not in (field.json_schema_extra or {}):
            value = entry["default"]
            env = {env_name(field): str(value).lower() if isinstance(value, bool) else str(value)}
            assert Settings.from_env(env) == unset, env
