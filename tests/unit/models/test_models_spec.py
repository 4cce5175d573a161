"""model_spec / build_model / save_trained / load_trained: JSON spec + safetensors weights."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from vigil.config import ImageModelConfig, ImagePrep, VideoModelConfig, VideoPrep
from vigil.models import (
    ConvAutoencoder,
    FramePredictor,
    ImageTooSmallError,
    ModelSpecError,
    build_model,
    load_trained,
    model_spec,
    save_trained,
)


def test_spec_is_json_and_rebuilds_the_network(tmp_path):
    prep = ImagePrep(size=(32, 32), normalize="zscore")
    spec = model_spec("image", 3, (32, 32), ImageModelConfig(depth=2, filters=4), prep=prep)
    assert json.loads(json.dumps(spec)) == spec
    model = build_model(spec)
    assert isinstance(model, ConvAutoencoder)
    assert isinstance(model.output, torch.nn.Identity)  # zscore inputs: no sigmoid
    video = model_spec("video", 1, (32, 32), VideoModelConfig(filters=4), prep=VideoPrep())
    assert isinstance(build_model(video), FramePredictor)
    assert isinstance(build_model(video).output, torch.nn.Sigmoid)


def test_save_then_load_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    spec = model_spec("image", 3, (32, 32), ImageModelConfig(depth=2, filters=4, error_head=True))
    model = build_model(spec).eval()
    weights = save_trained(tmp_path, model, spec)
    assert weights.name == "weights.safetensors"
    assert set(load_file(weights)) == set(model.state_dict())
    loaded, loaded_spec = load_trained(tmp_path)
    assert loaded_spec == spec and not loaded.training
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x).score, model(x).score)
    assert not list(tmp_path.glob("*.tmp"))


def test_bad_specs_and_folders(tmp_path):
    with pytest.raises(ModelSpecError, match="ImageModelConfig"):
        model_spec("image", 3, (32, 32), VideoModelConfig())
    too_small = model_spec("image", 3, (16, 16), ImageModelConfig(depth=5))
    with pytest.raises(ImageTooSmallError, match="image 16x16 is too small for depth 5: needs at least 32x32"):
        build_model(too_small)
    with pytest.raises(ModelSpecError, match="model.json"):
        load_trained(tmp_path)
    spec = model_spec("image", 3, (32, 32), ImageModelConfig(depth=2, filters=4))
    save_trained(tmp_path, build_model(spec), spec)
    other = model_spec("image", 3, (32, 32), ImageModelConfig(depth=2, filters=8))
    (tmp_path / "model.json").write_text(json.dumps(other))
    with pytest.raises(ModelSpecError, match="do not match"):
        load_trained(tmp_path)
