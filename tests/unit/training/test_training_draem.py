"""The DRAEM-style family in the real pipeline, shrunk: ``fit`` (synthetic anomalies, a
wall-clock budget), the evaluate stage, and the detector and MLflow package it writes scoring
exactly as evaluated."""

from __future__ import annotations

import mlflow
import pytest
import numpy as np
import torch
import torch.nn.functional as F
from conftest import make_image_dataset

from vigil.config import SCORES, parse_params
from vigil.data.prepared import PreparedDataset
from vigil.detector import Detector
from vigil.evaluation.evaluate import evaluate
from vigil.evaluation.splits import score_split
from vigil.models.draem.config import DraemConfig
from vigil.models.draem.network import DraemNetwork
from vigil.models.error_maps import error_map
from vigil.models.registry import get_family
from vigil.registry.package import load_detector, save_package
from vigil.training import fit

TINY_DRAEM = {"depth": 2, "filters": 4, "latent_channels": 4, "seg_filters": 4, "seg_depth": 2,
              "seg_stride": 1, "error_stride": 1, "crop": 24}


def draem_params(**train):
    return parse_params({
        "data": {"datasets": {"tiny": {"source": "tests/tiny", "modality": "image"}}},
        "prepare": {"image": {"size": [32, 32], "channels": 3}},
        "model": {"image_family": "draem", "draem": TINY_DRAEM},
        "train": {"max_epochs": 2, "batch_size": 8, "accelerator": "cpu",
                  "log_images_every_n_epochs": 1, **train},
    })


def test_network_maps_are_probabilities_of_the_input_size():
    family = get_family("draem")
    assert family.modality == "image" and set(family.searchable) <= set(DraemConfig.model_fields)
    net = family.build(1, DraemConfig(**TINY_DRAEM, anomaly_map="segmentation")).eval()
    assert isinstance(net, DraemNetwork)
    assert net.encoding_shape(30, 36) == (4, 8, 9)  # padded to a multiple of 4
    with torch.no_grad():
        out = net(torch.rand(2, 1, 30, 36))
    assert out.reconstruction.shape == (2, 1, 30, 36) and out.error_map.shape == (2, 1, 30, 36)
    assert 0 <= float(out.error_map.min()) and float(out.error_map.max()) <= 1
    assert torch.allclose(out.score, out.error_map.amax(dim=(1, 2, 3)))


def test_a_stride_2_segmentation_net_runs_at_half_resolution_and_maps_the_input_size():
    cfg = DraemConfig(**{**TINY_DRAEM, "seg_stride": 2, "anomaly_map": "segmentation"})
    net = DraemNetwork(1, cfg).eval()
    assert net.encoding_shape(30, 36) == (4, 8, 10)  # padded to 32 x 40: a multiple of 2**(2 + 1)
    seen = []
    net.segmenter.stem.register_forward_hook(lambda _m, _i, out: seen.append(out.shape[-2:]))
    with torch.no_grad():
        out = net(torch.rand(2, 1, 30, 36))
    assert seen == [(16, 20)]  # the padded 32 x 40, halved by the stem
    assert out.error_map.shape == (2, 1, 30, 36)
    assert 0 <= float(out.error_map.min()) and float(out.error_map.max()) <= 1


def test_a_stride_2_error_map_is_the_error_of_the_halved_images_upsampled():
    cfg = DraemConfig(**{**TINY_DRAEM, "anomaly_map": "reconstruction"})
    full = DraemNetwork(1, cfg).eval()
    half = DraemNetwork(1, cfg.model_copy(update={"error_stride": 2})).eval()
    half.load_state_dict(full.state_dict())
    x = torch.rand(2, 1, 30, 36)
    with torch.no_grad():
        reconstruction = full(x).reconstruction
        out = half(x)
    assert torch.equal(out.reconstruction, reconstruction)  # only the map changes
    coarse = error_map(F.avg_pool2d(x, 2), F.avg_pool2d(reconstruction, 2), cfg.error_map)
    assert out.error_map.shape == (2, 1, 30, 36)
    assert torch.allclose(out.error_map, F.interpolate(coarse, size=(30, 36), mode="bilinear"))
    odd = torch.rand(1, 1, 31, 37)  # an odd side keeps its last row and column
    with torch.no_grad():
        assert half(odd).error_map.shape == (1, 1, 31, 37)


def test_an_additive_decoder_has_fewer_weights_and_maps_the_input_size():
    concat = DraemNetwork(1, DraemConfig(**TINY_DRAEM, anomaly_map="segmentation",
                                         seg_decoder="concat")).eval()
    added = DraemNetwork(1, DraemConfig(**TINY_DRAEM, anomaly_map="segmentation")).eval()

    def weights(net):
        return sum(p.numel() for p in net.segmenter.ups.parameters())

    assert weights(added) < weights(concat)
    widths = [lateral.out_channels for lateral in added.segmenter.laterals]
    assert widths == [up[0].in_channels for up in added.segmenter.ups] == [8, 4]
    with torch.no_grad():
        out = added(torch.rand(2, 1, 30, 36))
    assert out.error_map.shape == (2, 1, 30, 36)
    assert 0 <= float(out.error_map.min()) and float(out.error_map.max()) <= 1


def test_draem_trains_evaluates_and_packages_with_identical_scores(mlflow_store, tmp_path):
    data_dir = make_image_dataset(tmp_path / "data" / "prepared" / "tiny")
    params = draem_params(max_minutes=10)
    model_dir = tmp_path / "models" / "tiny"
    result = fit(params, data_dir, model_dir)
    assert result.spec["family"] == "draem" and result.epochs == 2
    run = mlflow.MlflowClient().get_run(result.run_id)
    for name in ("train_loss", "val_loss", "train_segmentation_loss", "val_reconstruction_loss"):
        assert run.data.metrics[name] > 0, name
    assert float(run.data.params["train.max_minutes"]) == 10

    evaluated = evaluate(params, "tiny", data_dir, model_dir, tmp_path / "reports" / "tiny",
                         log_mlflow=False)
    for key in ("image_auroc", "pixel_auroc", "aupro", "recall_at_precision", "false_alarm_rate"):
        assert np.isfinite(evaluated.metrics[key]), key

    data = PreparedDataset.load(data_dir)
    detector = Detector.load(evaluated.detector_dir)
    assert detector.record.family == "draem"
    # anomaly_map and score auto: chosen on tune, shipped in the spec, named in the report
    assert detector.record.spec["model"]["anomaly_map"] in get_family("draem").map_choices
    assert detector.postprocess.score in SCORES
    assert "map and score chosen on tune (AUROC of each: fused / topk_mean" in (
        evaluated.report_path.read_text())
    test = score_split(detector, data, "test")
    frames = np.asarray(data.frames[test.rows])
    packaged = load_detector(save_package(tmp_path / "pkg", evaluated.detector_dir))
    again = packaged.score_prepared(frames)
    np.testing.assert_array_equal(again.scores, test.scores)
    np.testing.assert_array_equal(again.maps, test.maps)


def test_a_wall_clock_budget_stops_training_after_a_validated_epoch(mlflow_store, tmp_path):
    data_dir = make_image_dataset(tmp_path / "data" / "prepared" / "tiny")
    params = draem_params(max_epochs=500, max_minutes=0.001, patience=500)
    result = fit(params, data_dir, tmp_path / "models" / "tiny")
    assert 1 <= result.epochs < 500 and result.objective > 0


@pytest.mark.parametrize("mode", ["reconstruction", "segmentation", "fused"])
def test_anomaly_map_modes_and_the_fused_scales_from_normal_images(mode):
    from vigil.data.torch_datasets import ImageDataset  # noqa: F401  (type of the val images)
    from vigil.models.draem.training import set_map_scales

    torch.manual_seed(0)
    net = DraemNetwork(1, DraemConfig(**{**TINY_DRAEM, "anomaly_map": mode, "error_map": "ssim"})).eval()
    images = [torch.rand(1, 32, 32) for _ in range(6)]
    set_map_scales(net, images, batch_size=4)
    x = torch.stack(images)
    with torch.no_grad():
        reconstruction, segmentation, rec_error = net.terms(x)
        out = net(x)
    assert float(net.seg_scale) == pytest.approx(float(segmentation.mean()), rel=1e-4)
    assert float(net.rec_scale) == pytest.approx(float(rec_error.mean()), rel=1e-4)
    assert torch.allclose(out.reconstruction, reconstruction)  # forward computes what mode needs
    if mode == "reconstruction":
        assert torch.allclose(out.error_map, rec_error)
    elif mode == "segmentation":
        assert torch.allclose(out.error_map, segmentation)
    else:  # both terms weigh 1 on the normal images the scales came from
        assert float(out.error_map.mean()) == pytest.approx(2.0, rel=1e-3)
