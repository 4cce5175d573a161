"""Search space parsing and strict validation (no training)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from vigil.config import ModelConfig
from vigil.models.conv_ae.config import ConvAEConfig
from vigil.sweep.space import (
    SearchSpaceError,
    depth_for_side,
    grid,
    load_space,
    model_config,
    parse_space,
    suggest,
)

REPO = Path(__file__).resolve().parents[3]


def test_shipped_space_is_valid():
    space = load_space(REPO / "configs" / "search_space.yaml")
    assert set(space.knobs("conv_ae")) == {"encoding_side", "filters", "latent_channels"}
    assert set(space.knobs("convlstm")) == {"encoding_side", "filters", "hidden_channels"}


def test_log_range_grid_and_choices():
    space = parse_space(
        {
            "conv_ae": {
                "depth": {"choices": [2, 3]},
                "latent_channels": {"low": 4, "high": 20, "log": True},
            }
        }
    )
    assert grid(space.knobs("conv_ae")) == {"depth": [2, 3], "latent_channels": [4, 8, 16, 20]}


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (None, "empty"),
        ({"conv_ae": {"depht": {"choices": [2]}}}, "depht"),
        ({"conv_ae": {"depth": {"choices": []}}}, "conv_ae.depth"),
        ({"conv_ae": {"latent_channels": {"low": 8, "high": 4}}}, "conv_ae.latent_channels"),
        ({"conv_ae": {"depth": {"choices": [2]}}, "audio": {}}, "audio"),
        ({"image": {"depth": {"choices": [2]}}}, "unknown key or model family 'image'"),
        ({"conv_ae": {"batch_norm": {"choices": [0, 1]}}}, "cannot search batch_norm"),
        ({"convlstm": {"filters": {"low": 4, "high": 8, "lg": True}}}, "convlstm.filters"),
    ],
)
def test_invalid_space_names_the_key(raw, needle):
    with pytest.raises(SearchSpaceError) as info:
        parse_space(raw, "space.yaml")
    assert needle in str(info.value)
    assert "space.yaml" in str(info.value)


def test_missing_family_is_a_clear_error(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("conv_ae:\n  depth: {choices: [2, 3]}\n")
    with pytest.raises(SearchSpaceError, match="no knobs for the 'convlstm' model family"):
        load_space(path).knobs("convlstm")
    with pytest.raises(SearchSpaceError, match="not found"):
        load_space(tmp_path / "absent.yaml")


def test_suggest_feeds_a_valid_model_config():
    space = parse_space(
        {
            "conv_ae": {
                "depth": {"choices": [2, 3]},
                "latent_channels": {"low": 4, "high": 32, "log": True},
            }
        }
    )
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=1))
    trial = study.ask()
    values = suggest(trial, space.knobs("conv_ae"))
    base = ModelConfig.model_validate({"conv_ae": {"filters": 8, "skip": True}})
    cfg = model_config(base, "conv_ae", values)
    assert type(cfg) is ConvAEConfig
    assert cfg.depth in (2, 3) and 4 <= cfg.latent_channels <= 32
    assert cfg.filters == 8 and cfg.skip  # not searched: params.yaml value kept


@pytest.mark.parametrize(("size", "side", "depth"), [((64, 64), 8, 3), ((256, 256), 8, 5),
                                                     ((128, 96), 16, 3), ((16, 16), 32, 1)])
def test_encoding_side_follows_the_image_size(size, side, depth):
    base = ModelConfig.model_validate({})
    cfg = model_config(base, "conv_ae", {"encoding_side": side, "latent_channels": 8}, size)
    assert cfg.depth == depth and cfg.latent_channels == 8
    assert depth_for_side(side, *size) == depth


def test_encoding_side_sets_each_familys_own_depth_knob():
    base = ModelConfig.model_validate({})
    assert model_config(base, "convlstm", {"encoding_side": 16}, (64, 64)).encoder_depth == 2
    assert model_config(base, "future_frame", {"encoding_side": 8}, (64, 64)).depth == 3


def test_encoding_side_and_the_depth_knob_are_exclusive():
    with pytest.raises(SearchSpaceError, match="encoding_side or depth, not both"):
        parse_space({"conv_ae": {"encoding_side": {"choices": [8]}, "depth": {"choices": [3]}}})


@pytest.mark.parametrize("side", [0, -4])
def test_an_encoding_side_below_one_pixel_is_refused_when_the_file_is_read(side):
    with pytest.raises(SearchSpaceError, match=r"conv_ae.encoding_side: a side in pixels must be >= 1"):
        parse_space({"conv_ae": {"encoding_side": {"choices": [8, side]}}})
