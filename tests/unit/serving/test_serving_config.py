"""Serving settings: strict validation of configs/serving.yaml, and the repo's file is valid."""

from __future__ import annotations

from pathlib import Path

import pytest

from vigil.config import ConfigError
from vigil.serving import ServingConfig, load_serving_config

REPO = Path(__file__).resolve().parents[3]


def test_repo_serving_yaml_is_valid_and_matches_defaults_where_documented():
    config = load_serving_config(REPO / "configs" / "serving.yaml")
    assert config.follow.alias == "champion"
    assert config.limits.max_request_bytes == 20 * 1024 * 1024
    assert config.watch.alert_frames is None  # the model's own, chosen at evaluate


def test_unknown_key_is_an_error_naming_file_and_key(tmp_path):
    path = tmp_path / "serving.yaml"
    path.write_text("follow:\n  poll_intervall_s: 5\n")
    with pytest.raises(ConfigError) as error:
        load_serving_config(path)
    message = str(error.value)
    assert str(path) in message and "follow.poll_intervall_s: unknown key" in message


def test_bad_value_is_an_error(tmp_path):
    path = tmp_path / "serving.yaml"
    path.write_text("limits:\n  max_batch: 0\n")
    with pytest.raises(ConfigError, match="limits.max_batch"):
        load_serving_config(path)


def test_missing_explicit_file_is_an_error_but_none_gives_defaults(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_serving_config(tmp_path / "absent.yaml")
    assert load_serving_config(None) == ServingConfig()
