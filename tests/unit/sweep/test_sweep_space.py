"""Search space parsing and strict validation (no training)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from vigil.config import ModelConfig
from vigil.sweep.space import SearchSpaceError, grid, load_space, model_config, parse_space, suggest

REPO = Path(__file__).resolve().parents[3]


def test_shipped_space_is_valid():
    space = load_space(REPO / "configs" / "search_space.yaml")
    assert set(space.knobs("image")) == {"depth", "filters", "latent_channels"}
    assert set(space.knobs("video")) == {"encoder_depth", "filters", "hidden_channels"}


def test_log_range_grid_and_choices():
    space = parse_space(
        {
            "image": {
                "depth": {"choices": [2, 3]},
                "latent_channels": {"low": 4, "high": 20, "log": True},
            }
        }
    )
    assert grid(space.knobs("image")) == {"depth": [2, 3], "latent_channels": [4, 8, 16, 20]}


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (None, "empty"),
        ({"image": {"depht": {"choices": [2]}}}, "depht"),
        ({"image": {"depth": {"choices": []}}}, "image.depth"),
        ({"image": {"latent_channels": {"low": 8, "high": 4}}}, "image.latent_channels"),
        ({"image": {"depth": {"choices": [2]}}, "audio": {}}, "audio"),
        ({"video": {"filters": {"low": 4, "high": 8, "lg": True}}}, "video.filters"),
    ],
)
def test_invalid_space_names_the_key(raw, needle):
    with pytest.raises(SearchSpaceError) as info:
        parse_space(raw, "space.yaml")
    assert needle in str(info.value)
    assert "space.yaml" in str(info.value)


def test_missing_modality_is_a_clear_error(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("image:\n  depth: {choices: [2, 3]}\n")
    with pytest.raises(SearchSpaceError, match="no knobs for the 'video' model"):
        load_space(path).knobs("video")
    with pytest.raises(SearchSpaceError, match="not found"):
        load_space(tmp_path / "absent.yaml")


def test_suggest_feeds_a_valid_model_config():
    space = parse_space(
        {
            "image": {
                "depth": {"choices": [2, 3]},
                "latent_channels": {"low": 4, "high": 32, "log": True},
            }
        }
    )
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=1))
    trial = study.ask()
    values = suggest(trial, space.knobs("image"))
    cfg = model_config(ModelConfig(), "image", values)
    assert cfg.depth in (2, 3) and 4 <= cfg.latent_channels <= 32
    assert cfg.filters == ModelConfig().image.filters  # not searched: params.yaml value kept
