"""model_spec / build_model / save_trained / load_trained: JSON spec + safetensors weights."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from vigil.config import ImagePrep, VideoPrep
from vigil.models import UnknownFamilyError, get_family, known_families
from vigil.models.blocks import ImageTooSmallError
from vigil.models.conv_ae.config import ConvAEConfig
from vigil.models.conv_ae.network import ConvAutoencoder
from vigil.models.convlstm.config import ConvLSTMConfig
from vigil.models.convlstm.network import FramePredictor
from vigil.models.spec import (
    ModelSpecError,
    build_model,
    load_trained,
    model_spec,
    save_trained,
)

PREP = ImagePrep(size=(32, 32))

def test_spec_is_json_and_rebuilds_the_network(tmp_path):
    prep = ImagePrep(size=(32, 32), normalize="zscore")
    spec = model_spec("conv_ae", 3, (32, 32), ConvAEConfig(depth=2, filters=4), prep=prep)
    assert spec["family"] == "conv_ae" and spec["modality"] == "image"
    assert spec["prep"]["normalize"] == "zscore"
    assert json.loads(json.dumps(spec)) == spec
    model = build_model(spec)
    assert isinstance(model, ConvAutoencoder)
    assert isinstance(model.output, torch.nn.Identity)  # zscore inputs: no sigmoid
    video = model_spec("convlstm", 1, (32, 32), ConvLSTMConfig(filters=4), prep=VideoPrep())
    assert isinstance(build_model(video), FramePredictor)
    assert isinstance(build_model(video).output, torch.nn.Sigmoid)


def test_save_then_load_gives_identical_outputs(tmp_path):
    torch.manual_seed(0)
    cfg = ConvAEConfig(depth=2, filters=4, error_head=True)
    spec = model_spec("conv_ae", 3, (32, 32), cfg, prep=PREP)
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
    with pytest.raises(ModelSpecError, match="ConvAEConfig"):
        model_spec("conv_ae", 3, (32, 32), ConvLSTMConfig(), prep=PREP)
    with pytest.raises(ModelSpecError, match="unknown key or model family 'nope'"):
        model_spec("nope", 3, (32, 32), ConvAEConfig(), prep=PREP)
    too_small = model_spec("conv_ae", 3, (16, 16), ConvAEConfig(depth=5), prep=PREP)
    with pytest.raises(ImageTooSmallError, match="image 16x16 is too small for depth 5: needs at least 32x32"):
        build_model(too_small)
    with pytest.raises(ModelSpecError, match="model.json"):
        load_trained(tmp_path)
    spec = model_spec("conv_ae", 3, (32, 32), ConvAEConfig(depth=2, filters=4), prep=PREP)
    save_trained(tmp_path, build_model(spec), spec)
    other = model_spec("conv_ae", 3, (32, 32), ConvAEConfig(depth=2, filters=8), prep=PREP)
    (tmp_path / "model.json").write_text(json.dumps(other))
    with pytest.raises(ModelSpecError, match="do not match"):
        load_trained(tmp_path)
    legacy = {k: v for k, v in spec.items() if k != "family"}
    (tmp_path / "model.json").write_text(json.dumps(legacy))
    with pytest.raises(ModelSpecError, match=r"older vigil; retrain it .*train@"):
        load_trained(tmp_path)


def test_a_spec_saved_before_a_knob_existed_loads_with_the_value_it_was_trained_with(tmp_path):
    from vigil.models.draem.config import DraemConfig
    from vigil.models.spec import model_config

    cfg = DraemConfig(depth=2, filters=4, latent_channels=4, seg_filters=4, seg_depth=2,
                      seg_decoder="concat")
    spec = model_spec("draem", 1, (32, 32), cfg, prep=PREP)
    save_trained(tmp_path, build_model(spec), spec)
    del spec["model"]["seg_decoder"]  # written before the knob existed, when concat was the only
    del spec["model"]["heat_map"]  # and before the heat map could differ from the scored map
    del spec["model"]["error_stride"]  # and before the error map could run at half resolution
    (tmp_path / "model.json").write_text(json.dumps(spec))
    _, loaded_spec = load_trained(tmp_path)
    assert model_config(loaded_spec).seg_decoder == "concat"
    assert model_config(loaded_spec).heat_map == "same"
    assert model_config(loaded_spec).error_stride == 1
    assert DraemConfig().seg_decoder == "add"  # while new models get the current defaults
    assert DraemConfig().heat_map == "auto"


@pytest.mark.parametrize("size,stride", [((128, 128), 1), ((256, 320), 2), ((255, 512), 1)])
def test_draem_auto_strides_are_stored_resolved_by_the_image_size(size, stride):
    from vigil.models.draem.config import HALF_RES_SEG_SIDE, DraemConfig
    from vigil.models.draem.network import DraemNetwork

    cfg = DraemConfig(depth=2, filters=4, latent_channels=4, seg_filters=4, seg_depth=2)
    assert cfg.seg_stride == cfg.error_stride == "auto" and HALF_RES_SEG_SIDE == 256
    spec = model_spec("draem", 1, size, cfg, prep=ImagePrep(size=size, channels=1))
    assert spec["model"]["seg_stride"] == spec["model"]["error_stride"] == stride
    network = build_model(spec)
    assert network.segmenter.stride == network.cfg.error_stride == stride
    pinned = model_spec("draem", 1, size,
                        cfg.model_copy(update={"seg_stride": 1, "error_stride": 1}),
                        prep=ImagePrep(size=size, channels=1))
    assert pinned["model"]["seg_stride"] == pinned["model"]["error_stride"] == 1  # set: kept
    for knob in ("seg_stride", "error_stride"):
        unresolved = cfg.model_copy(update={"seg_stride": 1, "error_stride": 1, knob: "auto"})
        with pytest.raises(ValueError, match=f"{knob}.*at_size"):
            DraemNetwork(1, unresolved)  # unresolved: the network cannot know the size


def test_families_are_found_by_name_with_their_records():
    assert {"conv_ae", "convlstm"} <= set(known_families())
    image, video = get_family("conv_ae"), get_family("convlstm")
    assert (image.modality, image.config) == ("image", ConvAEConfig)
    assert (video.modality, video.config) == ("video", ConvLSTMConfig)
    assert set(image.searchable) <= set(ConvAEConfig.model_fields)
    assert set(video.searchable) <= set(ConvLSTMConfig.model_fields)
    assert isinstance(image.build(3, ConvAEConfig(depth=2, filters=4)), ConvAutoencoder)
    assert isinstance(video.build(1, ConvLSTMConfig(filters=4)), FramePredictor)
    with pytest.raises(UnknownFamilyError, match=r"model\.image_family: .*'nope'.*conv_ae"):
        get_family("nope", key="model.image_family")
