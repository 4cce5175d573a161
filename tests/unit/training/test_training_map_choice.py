"""``model.draem.anomaly_map: auto``: the evaluate stage picks the map with the best tune image
AUROC off the same weights, ships it in the detector's spec, and keeps the family's first choice
when tune has no labelled anomalies."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_image_dataset
from sklearn.metrics import roc_auc_score

from vigil.config import EvaluateConfig
from vigil.data.prepared import PreparedDataset
from vigil.detector import Detector, DetectorRecord
from vigil.evaluation.map_choice import choose_map, needs_choice
from vigil.evaluation.splits import score_split
from vigil.models.draem.config import ANOMALY_MAPS, DraemConfig
from vigil.models.draem.network import DraemNetwork
from vigil.models.registry import get_family
from vigil.models.spec import model_spec

TINY = {"depth": 2, "filters": 4, "latent_channels": 4, "seg_filters": 4, "seg_depth": 2}


def _detector(data: PreparedDataset, anomaly_map: str = "auto") -> Detector:
    torch.manual_seed(0)
    cfg = DraemConfig(**TINY, anomaly_map=anomaly_map)
    network = DraemNetwork(data.channels, cfg).eval()
    network.rec_scale.fill_(0.05)  # a fused map whose terms differ from either alone
    spec = model_spec("draem", data.channels, data.size, cfg, prep=data.prep)
    return Detector(network, DetectorRecord(spec=spec, postprocess=EvaluateConfig()))


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


def test_the_map_with_the_best_tune_auroc_ships_with_the_same_weights(tmp_path):
    data = PreparedDataset.load(make_image_dataset(tmp_path / "tiny"))
    detector = _detector(data)
    assert needs_choice(detector)
    chosen, tune, aucs = choose_map(detector, data)
    assert list(aucs) == list(ANOMALY_MAPS)
    for choice in ANOMALY_MAPS:  # each AUROC is that map's own, measured on tune
        scores = score_split(detector.with_model(anomaly_map=choice), data, "tune").scores
        assert aucs[choice] == pytest.approx(roc_auc_score(data.labels("tune"), scores))
    picked = chosen.record.spec["model"]["anomaly_map"]
    assert aucs[picked] == max(aucs.values()) and not needs_choice(chosen)
    assert tune is not None and tune.split == "tune"
    np.testing.assert_array_equal(tune.scores, score_split(chosen, data, "tune").scores)
    for name, tensor in detector.network.state_dict().items():
        assert torch.equal(tensor, chosen.network.state_dict()[name]), name


def test_without_labelled_tune_anomalies_the_first_choice_is_kept(tmp_path):
    data = PreparedDataset.load(make_image_dataset(tmp_path / "tiny", labelled_tune=False))
    chosen, tune, aucs = choose_map(_detector(data), data)
    assert aucs == {} and tune is None
    assert chosen.record.spec["model"]["anomaly_map"] == ANOMALY_MAPS[0]


def test_a_fixed_map_is_not_chosen_again(tmp_path):
    data = PreparedDataset.load(make_image_dataset(tmp_path / "tiny"))
    assert not needs_choice(_detector(data, "segmentation"))
