"""The report's false-alarm / escape examples are drawn on the input each item was prepared from,
at its resolution (bounded to REPORT_MAX_SIDE), exactly as serving overlays a decoded input;
the prepared frame only when the source is gone or changed. Real prepare on tiny synthetic
images, a tiny untrained detector."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from vigil.config import DatasetSpec, EvaluateConfig, PrepareConfig
from vigil.data.prepare import prepare_dataset
from vigil.data.prepared import PreparedDataset
from vigil.detector import Detector, DetectorRecord
from vigil.evaluation import plots
from vigil.evaluation.outputs import REPORT_MAX_SIDE, bounded, example_panels
from vigil.evaluation.splits import score_split
from vigil.models.conv_ae.config import ConvAEConfig
from vigil.models.spec import build_model, model_spec

SMALL = (60, 80)  # (H, W) of the defect inputs
LARGE = (900, 1200)  # of the good test inputs: over REPORT_MAX_SIDE


def _write(path: Path, shape: tuple[int, int], seed: int, defect: bool = False) -> None:
    rng = np.random.default_rng(seed)
    image = np.clip(rng.normal(100, 10, (*shape, 3)), 0, 255).astype(np.uint8)
    if defect:
        image[shape[0] // 4 : shape[0] // 2, shape[1] // 4 : shape[1] // 2] = (0, 0, 255)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)


@pytest.fixture()
def scored(tmp_path: Path):
    source = tmp_path / "parts"
    for i in range(8):
        _write(source / "train" / "good" / f"{i:03d}.png", SMALL, i)
    for i in range(4):
        _write(source / "test" / "good" / f"{i:03d}.png", LARGE, 100 + i)
        _write(source / "test" / "crack" / f"{i:03d}.png", SMALL, 200 + i, defect=True)
    cfg = PrepareConfig.model_validate({"image": {"size": [16, 16]}, "video": {"size": [16, 16]}})
    spec = DatasetSpec(source="parts", modality="image")
    prepare_dataset("parts", spec, cfg, tmp_path / "prepared", base_dir=tmp_path, progress=False)
    data = PreparedDataset.load(tmp_path / "prepared")
    torch.manual_seed(0)
    net_cfg = ConvAEConfig(depth=2, filters=4, latent_channels=2)
    model = model_spec("conv_ae", 3, (16, 16), net_cfg, prep=data.prep)
    record = DetectorRecord(spec=model, postprocess=EvaluateConfig(median_blur=1), threshold=0.0)
    detector = Detector(build_model(model), record)
    return source, data, detector, score_split(detector, data, "test")


def test_examples_show_the_source_input_at_its_resolution_as_serving_overlays_it(
    scored, tmp_path: Path
):
    source, data, detector, test = scored
    panels = example_panels(data, test, np.arange(len(test.rows)), detector, tmp_path)
    assert data.frames.shape[1:3] == (16, 16)
    sizes = set()
    for i, panel in enumerate(panels):
        item = data.items[int(test.rows[i])]
        decoded = cv2.imread(str(source / item.origin))
        if decoded.shape[:2] == LARGE:  # bounded: the long side is REPORT_MAX_SIDE, aspect kept
            shown = (REPORT_MAX_SIDE * 3 // 4, REPORT_MAX_SIDE)
            assert "1200x900 input, shown at 512x384" in panel["caption"]
        else:
            shown = SMALL
            assert "80x60 input" in panel["caption"] and "shown at" not in panel["caption"]
        # the very overlay serving returns for this decoded input (Detector.score), bounded
        served = detector.score([decoded], overlay=True)[0].overlay
        np.testing.assert_allclose(panel["overlay"], bounded(served), atol=2)
        np.testing.assert_array_equal(panel["image"], bounded(decoded)[..., ::-1])  # as RGB
        assert panel["image"].shape[:2] == panel["overlay"].shape[:2] == shown
        assert panel["pred_mask"].shape == shown
        if item.has_mask:
            assert panel["mask"].shape == shown
        sizes.add(shown)
    assert sizes == {SMALL, (384, 512)}

    # pixel for pixel in the figure too: three cells at least as wide as the bounded input
    png = plots.plot_examples(panels, tmp_path / "examples.png", "worst")
    assert cv2.imread(str(png)).shape[1] >= 3 * REPORT_MAX_SIDE


def test_a_source_gone_or_changed_since_prepare_shows_the_prepared_frame(scored, tmp_path: Path):
    source, data, detector, test = scored
    rows = [data.items[int(r)] for r in test.rows]
    gone = next(i for i, it in enumerate(rows) if it.defect == "crack")
    changed = next(i for i, it in enumerate(rows) if it.defect == "good")
    (source / rows[gone].origin).unlink()
    _write(source / rows[changed].origin, SMALL, seed=999)  # same name, other bytes
    panels = example_panels(data, test, np.array([gone, changed]), detector, tmp_path)
    for panel, i in zip(panels, (gone, changed), strict=True):
        assert panel["caption"].endswith("prepared frame")
        np.testing.assert_array_equal(panel["image"], data.frames[int(test.rows[i])])
        assert panel["overlay"].shape[:2] == (16, 16)
