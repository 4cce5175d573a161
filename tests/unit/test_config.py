"""params.yaml and config.py: one truth for defaults, per-dataset overrides, strict errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from vigil.config import (
    ConfigError,
    DataConfig,
    EvaluateConfig,
    GateConfig,
    GenerateConfig,
    ModelConfig,
    PrepareConfig,
    RegisterConfig,
    SweepConfig,
    TrainConfig,
    deep_merge,
    load_params,
)
from vigil.models import get_family

REPO = Path(__file__).resolve().parents[2]
SECTIONS = {
    "generate": GenerateConfig,
    "prepare": PrepareConfig,
    "train": TrainConfig,
    "sweep": SweepConfig,
    "evaluate": EvaluateConfig,
    "gate": GateConfig,
    "register": RegisterConfig,
}


def shipped() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("section", sorted(SECTIONS))
def test_config_defaults_equal_params_yaml(section):
    """Every key of the section is in params.yaml with the default config.py gives it."""
    default = SECTIONS[section]().model_dump(mode="json")
    assert shipped()[section] == default, f"params.yaml {section} differs from config.py"


def test_model_section_defaults_equal_params_yaml_family_by_family():
    raw = shipped()["model"]
    default = ModelConfig()
    assert raw["image_family"] == default.image_family
    assert raw["video_family"] == default.video_family
    families = {k: v for k, v in raw.items() if k not in ("image_family", "video_family")}
    assert {"conv_ae", "convlstm"} <= set(families)
    for name, knobs in families.items():
        assert knobs == get_family(name).config().model_dump(mode="json"), name
        assert default.family_config(name) == get_family(name).config()


def test_data_defaults_and_the_shipped_file_loads():
    assert shipped()["data"]["extra_dir"] == DataConfig.model_fields["extra_dir"].default
    params = load_params(REPO / "params.yaml")
    printing = params.for_dataset("print")  # the melt-pool video restores the context only
    assert printing.model.family_config("future_frame").restored_context
    assert not params.model.family_config("future_frame").restored_context
    assert printing.model_copy(update={"model": params.model, "train": params.train}) == params
    capsules = params.for_dataset("capsules")  # the synthetic capsules keep the seeds' model
    assert capsules.model.image_family == "conv_ae" and capsules.prepare.image.size == (64, 64)
    # the built-in datasets converge in 30 epochs (`make repro` stays short); real data gets
    # the default, bounded by the wall-clock budget
    assert printing.train.max_epochs == capsules.train.max_epochs == 30
    assert (params.train.max_epochs, params.train.max_minutes) == (100, 20)
    assert (params.model.image_family, params.prepare.image.size) == ("draem", (128, 128))


def test_dataset_overrides_deep_merge_over_the_global_sections(tmp_path):
    raw = shipped()
    raw["data"]["datasets"]["big"] = {
        "source": "data/raw/big",
        "modality": "image",
        "prepare": {"image": {"size": [96, 128]}},
        "model": {"conv_ae": {"latent_channels": 8}},
        "train": {"batch_size": 4},
        "evaluate": {"roi": [0, 0, 64, 64]},
    }
    params = load_params(write(tmp_path, raw))
    big = params.for_dataset("big")
    assert big.prepare.image.size == (96, 128)
    assert big.prepare.image.channels == params.prepare.image.channels  # merged, not replaced
    assert big.prepare.video == params.prepare.video
    assert big.model.family_config("conv_ae").latent_channels == 8
    assert big.model.family_config("conv_ae").depth == params.model.family_config("conv_ae").depth
    assert big.train.batch_size == 4 and big.train.lr == params.train.lr
    assert big.evaluate.roi == (0, 0, 64, 64)
    assert params.modality_prep("big").size == (96, 128)
    printing = params.for_dataset("print")  # other datasets keep the global settings
    assert printing.prepare == params.prepare and printing.evaluate == params.evaluate
    assert params.prepare.image.size == (128, 128)
    assert deep_merge({"a": {"b": 1, "c": 2}, "d": 3}, {"a": {"b": 5}}) == {
        "a": {"b": 5, "c": 2},
        "d": 3,
    }


@pytest.mark.parametrize(
    ("override", "needle"),
    [
        ({"prepare": {"image": {"sise": [32, 32]}}},
         "data.datasets.capsules.prepare.image.sise: unknown key"),
        ({"train": {"batch_sise": 4}}, "data.datasets.capsules.train.batch_sise: unknown key"),
        ({"evaluate": {"median_blur": 4}}, "data.datasets.capsules.evaluate.median_blur"),
        ({"model": {"conv_ae": {"dept": 2}}}, "data.datasets.capsules.model.conv_ae.dept: unknown key"),
        ({"sweep": {"n_trials": -1}}, "data.datasets.capsules.sweep.n_trials"),
    ],
)
def test_unknown_or_bad_override_key_is_named(tmp_path, override, needle):
    raw = shipped()
    raw["data"]["datasets"]["capsules"].update(override)
    path = write(tmp_path, raw)
    with pytest.raises(ConfigError) as error:
        load_params(path)
    assert str(path) in str(error.value) and needle in str(error.value), str(error.value)


def test_an_override_section_that_does_not_exist_is_refused(tmp_path):
    raw = shipped()
    raw["data"]["datasets"]["capsules"]["gate"] = {"precision": 0.5}  # not per dataset
    with pytest.raises(ConfigError, match=r"data\.datasets\.capsules\.gate: unknown key"):
        load_params(write(tmp_path, raw))


@pytest.mark.parametrize(
    ("model", "needle"),
    [
        ({"image_family": "nope"}, "unknown key or model family 'nope'"),
        ({"conv_ea": {"depth": 2}}, "model.conv_ea: unknown key or model family 'conv_ea'"),
        ({"video_family": "conv_ae"}, "model.video_family: 'conv_ae' is a image family"),
    ],
)
def test_unknown_family_lists_the_known_ones(tmp_path, model, needle):
    raw = shipped()
    raw["model"].update(model)
    with pytest.raises(ConfigError) as error:
        load_params(write(tmp_path, raw))
    text = str(error.value)
    assert needle in text, text
    if "unknown" in needle:
        assert "known families: " in text and "conv_ae" in text and "convlstm" in text


def test_unknown_family_in_a_dataset_override_is_named(tmp_path):
    raw = shipped()
    raw["data"]["datasets"]["capsules"]["model"] = {"image_family": "nope"}
    with pytest.raises(ConfigError) as error:
        load_params(write(tmp_path, raw))
    text = str(error.value)
    assert "data.datasets.capsules.model" in text and "'nope'" in text
    assert "known families: " in text and "conv_ae" in text
