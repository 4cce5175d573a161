"""What the evaluate stage writes besides metrics: plot data (CSV) and report figures."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from vigil.atomic import atomic_write_text
from vigil.config import EvaluateConfig
from vigil.data.prepared import PreparedDataset
from vigil.detector import Detector
from vigil.detector.postprocess import binarize
from vigil.evaluation import metrics as M
from vigil.evaluation import plots
from vigil.evaluation.splits import SplitScores

PLOTS_DIR = "plots"


def write_json(path: Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


def write_csv(path: Path, columns: dict[str, Any]) -> Path:
    """Columns of equal length -> CSV with a header (floats with 6 significant digits)."""
    names = list(columns)
    cols = [list(columns[n]) for n in names]
    lengths = {len(c) for c in cols}
    if len(lengths) > 1:
        raise ValueError(f"{path}: columns of unequal length {dict(zip(names, map(len, cols)))}")

    def cell(v: Any) -> Any:
        if isinstance(v, (float, np.floating)):
            return "" if not math.isfinite(float(v)) else f"{float(v):.6g}"
        return v.item() if isinstance(v, np.generic) else v

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(names)
    writer.writerows(zip(*([cell(v) for v in c] for c in cols)))
    return atomic_write_text(path, buffer.getvalue())


def finite_metrics(values: dict[str, Any]) -> dict[str, float]:
    """Numbers only (bools as 0/1), NaN/inf/None dropped: what metrics.json and MLflow take."""
    out: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, bool):
            out[key] = int(value)
        elif isinstance(value, (int, float, np.integer, np.floating)) and math.isfinite(value):
            out[key] = value.item() if isinstance(value, np.generic) else value
    return out


def write_plot_data(out_dir: Path, test: SplitScores, threshold: float) -> dict[str, Path]:
    ok = test.scored
    labels, scores = test.labels[ok], test.scores[ok]
    pr = M.pr_curve(labels, scores)
    roc = M.roc_curve(labels, scores)
    roc_thresholds = np.where(np.isfinite(roc["thresholds"]), roc["thresholds"], np.nan)
    plots_dir = out_dir / PLOTS_DIR
    paths = {
        "pr": write_csv(plots_dir / "pr.csv", {
            "recall": pr["recall"], "precision": pr["precision"],
            "threshold": np.r_[pr["thresholds"], np.nan],
        }),
        "roc": write_csv(plots_dir / "roc.csv", {
            "fpr": roc["fpr"], "tpr": roc["tpr"], "threshold": roc_thresholds,
        }),
        "scores": write_csv(plots_dir / "scores.csv", {
            "row": test.rows, "defect": test.defects, "label": test.labels,
            "score": test.scores,
        }),
    }
    if test.clips:
        names, frames = [], []
        for name, a, b in test.clips:
            names += [name] * (b - a)
            frames += list(range(b - a))
        paths["timeline"] = write_csv(plots_dir / "timeline.csv", {
            "step": np.arange(len(frames)), "clip": names, "frame": frames,
            "score": test.scores, "raw_score": test.raw,
            "label": test.labels, "threshold": np.full(len(frames), threshold),
        })
    return paths


def _example_panels(
    data: PreparedDataset, test: SplitScores, order: np.ndarray, cfg: EvaluateConfig,
    pixel_thr: float, detector: Detector,
) -> list[dict]:
    panels = []
    for i in order:
        row = int(test.rows[i])
        image = np.asarray(data.frames[row])
        item = data.items[row]
        where = f"{item.video} frame {item.frame}" if item.video else Path(item.origin).name
        panels.append({
            "image": image,
            "overlay": detector.overlay(test.maps[i], frame=image),
            "pred_mask": binarize(test.maps[i], pixel_thr, cfg.min_area),
            "mask": np.asarray(data.masks[row]) if item.has_mask else None,
            "caption": f"{item.defect} · {where} · score {test.scores[i]:.4g}",
        })
    return panels


def draw_figures(
    data: PreparedDataset, test: SplitScores, metrics: dict[str, Any],
    calibration: M.Calibration, detector: Detector, fig_dir: Path,
) -> dict[str, Path]:
    """All report figures; returns {title: png path}."""
    ok = test.scored
    labels, scores = test.labels[ok], test.scores[ok]
    pr = M.pr_curve(labels, scores)
    roc = M.roc_curve(labels, scores)
    auroc = metrics.get("image_auroc", metrics.get("frame_auroc"))
    unit = "frames" if data.modality == "video" else "images"
    cfg = detector.postprocess
    pixel_thr = detector.record.pixel_threshold or 0.0
    figures = {}
    if test.clips:
        clips = [{"name": n, "scores": test.scores[a:b], "raw": test.raw[a:b],
                  "labels": test.labels[a:b]} for n, a, b in test.clips]
        figures["Score over time (test clips)"] = plots.plot_timeline(
            clips, calibration.threshold, fig_dir / "timeline.png")
    figures["Precision-recall curve"] = plots.plot_pr(
        pr["precision"], pr["recall"], fig_dir / "pr_curve.png", calibration.target_precision,
        (metrics["recall_at_threshold"], metrics["precision_at_threshold"]))
    figures["ROC curve"] = plots.plot_roc(roc["fpr"], roc["tpr"], auroc, fig_dir / "roc_curve.png")
    figures["Score histograms per defect type"] = plots.plot_score_histograms(
        test.scores, test.defects, calibration.threshold, fig_dir / "score_hist.png")
    n = cfg.n_report_examples
    if n:
        thr = calibration.threshold
        valid = np.flatnonzero(ok)
        alarms = valid[(test.labels[valid] == 0) & (test.scores[valid] >= thr)]
        escapes = valid[(test.labels[valid] == 1) & (test.scores[valid] < thr)]
        worst_alarms = alarms[np.argsort(-test.scores[alarms], kind="stable")][:n]
        worst_escapes = escapes[np.argsort(test.scores[escapes], kind="stable")][:n]
        for title, rows, name, what in (
            (f"False alarms (normal {unit} at or above the threshold)", worst_alarms,
             "false_alarms.png", f"{len(alarms)} false alarms"),
            (f"Escapes (anomalous {unit} below the threshold)", worst_escapes,
             "escapes.png", f"{len(escapes)} escapes"),
        ):
            if len(rows):  # none: the report says so instead of showing items that are neither
                figures[title] = plots.plot_examples(
                    _example_panels(data, test, rows, cfg, pixel_thr, detector), fig_dir / name,
                    f"{what} at threshold {thr:.4g} (worst {len(rows)} shown)")
    return figures
