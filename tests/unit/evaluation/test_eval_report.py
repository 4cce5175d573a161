"""Figures and the self-contained HTML report."""

from __future__ import annotations

import base64
import re

import cv2
import numpy as np

from vigil.evaluation import plots
from vigil.detector.postprocess import overlay
from vigil.evaluation.report import fmt, render_report, write_report


def read_png(path):
    image = cv2.imread(str(path))
    assert image is not None, f"{path} is not a readable PNG"
    return image


def test_figures_are_written_as_pngs(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.r_[np.zeros(20), np.ones(10)]
    scores = np.r_[rng.normal(0, 1, 20), rng.normal(2, 1, 10)]
    defects = ["good"] * 20 + ["crack"] * 5 + ["hole"] * 5
    paths = [
        plots.plot_pr(np.array([0.5, 0.8, 1.0]), np.array([1.0, 0.5, 0.0]), tmp_path / "pr.png",
                      0.9, (0.5, 0.8)),
        plots.plot_roc(np.array([0, 0.2, 1]), np.array([0, 0.8, 1]), 0.9, tmp_path / "roc.png"),
        plots.plot_score_histograms(scores, defects, 1.0, tmp_path / "hist.png"),
        plots.plot_timeline(
            [{"name": "clip_a", "scores": np.r_[np.nan, scores[:29]], "raw": scores,
              "labels": labels}], 1.0, tmp_path / "timeline.png"),
    ]
    image = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
    heat = rng.random((16, 16)).astype(np.float32)
    panel = {"image": image, "overlay": overlay(image, heat, 1.0), "caption": "crack · 001",
             "pred_mask": (heat > 0.5).astype(np.uint8), "mask": (heat > 0.7).astype(np.uint8)}
    gray = {**panel, "image": image[..., :1], "mask": None}
    paths.append(plots.plot_examples([panel, gray], tmp_path / "examples.png", "worst"))
    paths.append(plots.plot_examples([], tmp_path / "none.png", "no examples"))
    for path in paths:
        assert read_png(path).shape[0] > 100
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)


def test_report_inlines_figures_and_escapes_text(tmp_path):
    png = plots.plot_roc(np.array([0, 1]), np.array([0, 1]), 0.5, tmp_path / "roc.png")
    html = render_report(
        "vigil evaluation: <caps>",
        {"dataset": "caps", "gate": "PASS"},
        {"image_auroc": 0.98765, "aupro": None},
        {"threshold": 0.0123, "gate_can_pass": True},
        {"Per defect type": [{"defect": "crack", "n": 3, "auroc_vs_good": 0.5}]},
        {"ROC curve": png},
        notes=["threshold <from tune>"],
    )
    assert "&lt;caps&gt;" in html and "<caps>" not in html
    assert "0.9877" in html and "&mdash;" in html and "<td>crack</td>" in html
    encoded = re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)", html).group(1)
    assert base64.b64decode(encoded) == png.read_bytes()
    out = write_report(tmp_path / "sub" / "report.html", html)
    assert out.read_text() == html
    assert [p.name for p in out.parent.iterdir()] == ["report.html"]  # no temp files left


def test_fmt():
    assert fmt(float("nan")) == "&mdash;" and fmt(True) == "yes" and fmt(3) == "3"
    assert fmt(0.123456) == "0.1235"
    assert fmt("FAIL") == "<span class='fail'>FAIL</span>" and fmt("<b>") == "&lt;b&gt;"
