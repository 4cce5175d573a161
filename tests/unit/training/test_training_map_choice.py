"""``model.<family>.<map knob>: auto`` and ``evaluate.score: auto``: the evaluate stage picks the
(map, score) pair with the best tune AUROC off the same weights, ships the map in the detector's
spec and the score in its post-processing, keeps the first of each when tune has no labelled
anomalies, and leaves out a map the configuration cannot give."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_image_dataset, make_video_dataset
from sklearn.metrics import roc_auc_score

from vigil.config import SCORES, EvaluateConfig
from vigil.data.prepared import PreparedDataset
from vigil.detector import Detector, DetectorRecord
from vigil.evaluation.map_choice import (
    MARGIN,
    choose_heat,
    choose_map,
    needs_choice,
    pick,
    with_score,
)
from vigil.evaluation.splits import pixel_metrics, score_split
from vigil.models.draem.config import ANOMALY_MAPS, DraemConfig
from vigil.models.draem.network import DraemNetwork
from vigil.models.future_frame.config import FutureFrameConfig
from vigil.models.future_frame.network import FutureFramePredictor
from vigil.models.registry import get_family
from vigil.models.spec import model_spec

TINY = {"depth": 2, "filters": 4, "latent_channels": 4, "seg_filters": 4, "seg_depth": 2,
        "seg_stride": 1, "error_stride": 1}


def _detector(
    data: PreparedDataset, anomaly_map: str = "auto", score: str = "auto"
) -> Detector:
    torch.manual_seed(0)
    cfg = DraemConfig(**TINY, anomaly_map=anomaly_map)
    network = DraemNetwork(data.channels, cfg).eval()
    network.rec_scale.fill_(0.05)  # a fused map whose terms differ from either alone
    spec = model_spec("draem", data.channels, data.size, cfg, prep=data.prep)
    return Detector(network, DetectorRecord(spec=spec, postprocess=EvaluateConfig(score=score)))


def _with(detector: Detector, anomaly_map: str, score: str) -> Detector:
    return with_score(detector.with_model(anomaly_map=anomaly_map), score)


def test_the_family_declares_its_map_knob_and_auto_reads_as_the_first_choice():
    family = get_family("draem")
    assert family.map_knob == "anomaly_map" and family.map_choices == ANOMALY_MAPS
    assert DraemConfig().anomaly_map == "auto"
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        auto = DraemNetwork(3, DraemConfig(**TINY)).eval()
        first = DraemNetwork(3, DraemConfig(**TINY, anomaly_map=ANOMALY_MAPS[0])).eval()
        first.load_state_dict(auto.state_dict())
        assert torch.equal(auto(x).error_map, first(x).error_map)


def test_the_pair_with_the_best_tune_auroc_ships_with_the_same_weights(tmp_path):
    data = PreparedDataset.load(make_image_dataset(tmp_path / "tiny"))
    detector = _detector(data)
    assert needs_choice(detector) and detector.postprocess.summary == SCORES[0]
    chosen, tune, aucs = choose_map(detector, data)
    pairs = [(m, s) for m in ANOMALY_MAPS for s in SCORES]
    assert list(aucs) == [f"{m} / {s}" for m, s in pairs]
    for anomaly_map, score in pairs:  # each AUROC is that pair's own, measured on tune
        scores = score_split(_with(detector, anomaly_map, score), data, "tune").scores
        assert aucs[f"{anomaly_map} / {score}"] == pytest.approx(
            roc_auc_score(data.labels("tune"), scores))
    picked = f"{chosen.record.spec['model']['anomaly_map']} / {chosen.postprocess.score}"
    assert picked == pick(aucs) and not needs_choice(chosen)
    assert tune is not None and tune.split == "tune"
    np.testing.assert_array_equal(tune.scores, score_split(chosen, data, "tune").scores)
    for name, tensor in detector.network.state_dict().items():
        assert torch.equal(tensor, chosen.network.state_dict()[name]), name


def test_the_first_pair_ships_unless_another_beats_it_on_tune_by_more_than_the_margin():
    assert pick({"a": 0.90, "b": 0.90 + MARGIN, "c": 0.5}) == "a"  # a near-tie is noise
    assert pick({"a": 0.90, "b": 0.93, "c": 0.95, "d": 0.95}) == "c"  # the best, the earlier
    assert pick({"a": 0.44, "b": 0.85}) == "b"  # Ped2's tune clip: prediction / mean


def test_without_labelled_tune_anomalies_the_first_choice_is_kept(tmp_path):
    data = PreparedDataset.load(make_image_dataset(tmp_path / "tiny", labelled_tune=False))
    chosen, tune, aucs = choose_map(_detector(data), data)
    assert aucs == {} and tune is None
    assert chosen.record.spec["model"]["anomaly_map"] == ANOMALY_MAPS[0]
    assert chosen.postprocess.score == SCORES[0]


def test_a_fixed_map_and_score_are_not_chosen_again_and_a_fixed_map_keeps_its_map(tmp_path):
    data = PreparedDataset.load(make_image_dataset(tmp_path / "tiny"))
    assert not needs_choice(_detector(data, "segmentation", "max"))
    chosen, _, aucs = choose_map(_detector(data, "segmentation"), data)  # the score only
    assert list(aucs) == list(SCORES)
    assert chosen.record.spec["model"]["anomaly_map"] == "segmentation"


def test_video_frame_maps_without_an_appearance_term_leave_the_appearance_map_out(tmp_path):
    data = PreparedDataset.load(make_video_dataset(tmp_path / "vid", size=16))
    cfg = FutureFrameConfig(context=2, depth=2, filters=4, bottleneck_channels=4,
                            appearance=False)
    torch.manual_seed(0)
    network = FutureFramePredictor(data.channels, cfg).eval()
    spec = model_spec("future_frame", data.channels, data.size, cfg, prep=data.prep)
    detector = Detector(network, DetectorRecord(spec=spec, postprocess=EvaluateConfig()))
    chosen, tune, aucs = choose_map(detector, data)
    assert list(aucs) == [f"{m} / {s}" for m in ("fused", "prediction") for s in SCORES]
    assert chosen.record.spec["model"]["frame_map"] in ("fused", "prediction")
    # video: each AUROC is the one of the raw frame scores; the tune scores returned are the
    # moving average a stream computes
    again = score_split(chosen, data, "tune")
    np.testing.assert_allclose(tune.scores, again.scores, equal_nan=True)
    ok = again.scored
    picked = f"{chosen.record.spec['model']['frame_map']} / {chosen.postprocess.score}"
    assert aucs[picked] == pytest.approx(roc_auc_score(again.labels[ok], again.raw[ok]))


def test_a_heat_map_apart_from_the_scored_map_changes_the_maps_and_not_the_scores(tmp_path):
    data = PreparedDataset.load(make_image_dataset(tmp_path / "tiny"))
    fused = _detector(data, anomaly_map="fused", score="topk_mean")
    shown = fused.with_model(heat_map="segmentation")
    segmentation = fused.with_model(anomaly_map="segmentation")
    frames = np.asarray(data.frames[data.indices("test")])
    fused_scores, shown_scores = fused.score_prepared(frames), shown.score_prepared(frames)
    np.testing.assert_array_equal(shown_scores.raw, fused_scores.raw)  # scored off the fused map
    np.testing.assert_allclose(shown_scores.maps, segmentation.score_prepared(frames).maps)
    assert not np.allclose(shown_scores.maps, fused_scores.maps)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():  # the scored map itself, or auto before evaluate, gives no heat map
        assert fused.with_model(heat_map="fused").network(x).heat_map is None
        assert fused.network(x).heat_map is None


def test_the_heat_map_with_the_best_tune_pixel_auroc_ships_beside_the_scored_map(tmp_path):
    data = PreparedDataset.load(make_image_dataset(tmp_path / "tiny"))
    detector = _detector(data, anomaly_map="fused", score="topk_mean")
    assert detector.record.spec["model"]["heat_map"] == "auto"
    chosen, chosen_tune, aucs = choose_heat(detector, data)
    assert list(aucs) == ["same", "segmentation", "reconstruction"]
    for heat, auc in aucs.items():  # each the pixel AUROC of that heat map on tune
        reader = detector.with_model(heat_map=heat)
        assert auc == pytest.approx(
            pixel_metrics(data, score_split(reader, data, "tune"))["pixel_auroc"])
    assert chosen.record.spec["model"]["heat_map"] == pick(aucs)
    np.testing.assert_array_equal(  # the image scores do not move
        score_split(chosen, data, "tune").scores, score_split(detector, data, "tune").scores)
    np.testing.assert_array_equal(chosen_tune.maps, score_split(chosen, data, "tune").maps)


def test_without_masked_tune_anomalies_the_heat_map_is_the_scored_map(tmp_path):
    data = PreparedDataset.load(make_image_dataset(tmp_path / "tiny", labelled_tune=False))
    chosen, _, aucs = choose_heat(_detector(data, anomaly_map="fused", score="topk_mean"), data)
    assert aucs == {} and chosen.record.spec["model"]["heat_map"] == "same"

